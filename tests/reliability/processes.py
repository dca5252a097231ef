"""The node as a real ``theranode serve`` process, for fault tests and benchmarks.

A fault test must kill the same program an administrator runs, so these
helpers write a TOML configuration and start ``python -m service.cli serve``
with its log (configured by the CLI itself, as in production) in a file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, numbers, booleans and lists of them are valid TOML


def write_config(path: Path, data_dir: Path, port: int | None = None,
                 **sections: dict[str, Any]) -> int:
    """Write a node configuration to ``path``; returns the DICOM port it listens on."""
    port = port or free_port()
    node = {"ae_title": "THERANODE", "bind": "127.0.0.1", "port": port,
            "data_dir": str(data_dir), **sections.pop("node", {})}
    security = {"min_free_disk_mb": 0, **sections.pop("security", {})}
    lines = []
    for name, values in {"node": node, "security": security, **sections}.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return port


@dataclass
class NodeProcess:
    """A running ``theranode serve``."""

    config: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, like a power cut for the process."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return int(self.process.returncode)


def start_node(config: Path, port: int, log: Path | None = None,
               timeout_s: float = 60) -> NodeProcess:
    """Start ``theranode serve --config config`` and wait until it listens."""
    log = log or config.with_suffix(".log")
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=handle, cwd=ROOT,
        )
    try:
        wait_for_port(port, timeout_s)
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"the node did not start:\n{log.read_text(errors='replace')}") from None
    return NodeProcess(config, port, log, process)
