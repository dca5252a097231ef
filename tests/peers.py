"""Real DICOM peers for integration tests: dcmtk, dicom3tools, Orthanc, Chromium.

A test that needs a peer calls :func:`require_tool`. On a developer machine
without the tool the test is skipped; when the ``CI`` environment variable is
set the missing tool is an error, because CI installs every peer
(``.ci/run``) and a silent skip there would hide a missing install step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ORTHANC_BINARIES = ("Orthanc", "/usr/sbin/Orthanc")


def in_ci() -> bool:
    """True when running under CI (the ``CI`` variable is set and not false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_tool(name: str) -> str:
    """Path of the executable ``name``; skip the test (fail under CI) when absent."""
    candidates = ORTHANC_BINARIES if name.lower() == "orthanc" else (name,)
    for candidate in candidates:
        path = shutil.which(candidate)
        if path:
            return path
    message = f"{name} is not installed; .ci/run installs it (apt-get)."
    if in_ci():
        pytest.fail(f"Required peer missing under CI: {message}")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = 20.0, host: str = "127.0.0.1") -> None:
    """Block until something listens on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"Nothing listened on {host}:{port} after {timeout_s} s")


@dataclass
class OrthancPeer:
    """A running Debian Orthanc, reachable on loopback."""

    rest_url: str
    dicom_port: int
    aet: str
    storage_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.rest_url + path, timeout=30) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        with urllib.request.urlopen(self.rest_url + path, timeout=30) as response:
            return bytes(response.read())

    def post(self, path: str, body: bytes | dict[str, Any] | list[Any] | str) -> Any:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(self.rest_url + path, data=data, method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = response.read()
        return json.loads(payload) if payload.strip() else None

    def upload(self, path: Path) -> Any:
        return self.post("/instances", path.read_bytes())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_orthanc(
    work_dir: Path,
    modalities: dict[str, dict[str, Any]] | None = None,
    lua_script: str | None = None,
    stable_age_s: int = 2,
    aet: str = "ORTHANC",
) -> Iterator[OrthancPeer]:
    """Start Orthanc with its storage in ``work_dir`` on free loopback ports.

    ``modalities`` maps a symbolic name to ``{"AET":…, "Host":…, "Port":…}``.
    Orthanc is started with ``TCP_NODELAY=1`` (docs/interoperability.md: without it the
    linked dcmtk stalls on Nagle/delayed-ACK at ~20 instances/s).
    """
    binary = require_tool("orthanc")
    work_dir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config: dict[str, Any] = {
        "Name": "theranode-test-pacs",
        "StorageDirectory": str(work_dir / "db"),
        "IndexDirectory": str(work_dir / "db"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {
            name: {"AllowStore": True, "AllowEcho": True, **spec}
            for name, spec in (modalities or {}).items()
        },
        "StableAge": stable_age_s,
        "SyncStorageArea": True,
        "HttpTimeout": 120,
        "DicomScuTimeout": 60,
    }
    if lua_script is not None:
        script = work_dir / "route.lua"
        script.write_text(lua_script)
        config["LuaScripts"] = [str(script)]
    config_path = work_dir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = work_dir / "orthanc.log"
    env = dict(os.environ, TCP_NODELAY="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    peer = OrthancPeer(
        rest_url=f"http://127.0.0.1:{http_port}",
        dicom_port=dicom_port,
        aet=aet,
        storage_dir=work_dir / "db",
        process=process,
        log_path=log_path,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                peer.get("/system")
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Orthanc did not start:\n{peer.log()}") from None
                time.sleep(0.1)
        wait_for_port(dicom_port)
        yield peer
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
