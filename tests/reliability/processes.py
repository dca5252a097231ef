"""The node as a real ``theranode serve`` process, for fault tests and benchmarks.

A fault test must kill the same program an administrator runs, so these
helpers write a TOML configuration and start ``python -m theranode serve``
with its log (configured by the CLI itself, as in production) in a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import free_port, wait_for_port
from theranode.config.writing import toml_value

ROOT = Path(__file__).resolve().parents[2]


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
        lines += [f"{key} = {toml_value(value)}" for key, value in values.items()]
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

    def signal(self, signum: int, whole_group: bool = False) -> None:
        """Send ``signum`` to the node, or to its whole process group as a terminal's Ctrl-C
        (SIGINT) or a service manager stopping a control group (SIGTERM) does. The group is
        the node's own only when it was started with ``own_process_group``."""
        if whole_group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)

    def wait(self, timeout_s: float = 60) -> int:
        """Wait for the node to exit; returns its exit code."""
        return self.process.wait(timeout=timeout_s)

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
               timeout_s: float = 60, own_process_group: bool = False) -> NodeProcess:
    """Start ``theranode serve --config config`` and wait until it listens.

    With ``own_process_group`` the node leads a new session and process group
    (as under a terminal or a service manager), which :meth:`NodeProcess.signal`
    can signal as a whole.
    """
    log = log or config.with_suffix(".log")
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "theranode", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=handle, cwd=ROOT,
            start_new_session=own_process_group,
        )
    try:
        wait_for_port(port, timeout_s)
    except TimeoutError:
        process.kill()
        raise RuntimeError(f"the node did not start:\n{log.read_text(errors='replace')}") from None
    return NodeProcess(config, port, log, process)
