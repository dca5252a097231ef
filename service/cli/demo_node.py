"""The demo's temporary node: a real ``theranode serve`` in a child process.

:func:`demo_node_settings` turns the configuration in effect into the
temporary node's (loopback port, its own data folder, the demo's receiver as
its only destination, a short quiet period),
:func:`~theranode.config.writing.settings_toml` writes it as a configuration
file, and :class:`TemporaryNode` starts the node in its own
process group, waits for its C-ECHO answer and stops it (SIGTERM, then
SIGKILL to the group).

References
----------
DICOM PS3.4 A.4 (Verification SOP Class: the readiness check); PS3.7 9.1.5 (C-ECHO).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from pynetdicom import AE

from theranode.config.schema import Destination, Settings
from theranode.service.errors import DemoError
from theranode.service.receive.scp import VERIFICATION

logger = logging.getLogger(__name__)

#: The temporary node's quiet period (s): the demo sends each cycle in one go.
DEMO_QUIET_PERIOD_S = 2.0
#: First line (a comment) of the temporary node's configuration file.
DEMO_CONFIG_COMMENT = "written by `theranode demo` for its temporary node"
#: The temporary node's planner interval (s).
DEMO_POLL_INTERVAL_S = 1.0
#: Longest wait for the temporary node to answer a C-ECHO after its start (s).
NODE_START_TIMEOUT_S = 90.0
#: Longest wait for the temporary node to stop after SIGTERM, before SIGKILL (s).
NODE_STOP_TIMEOUT_S = 30.0
#: Lines of ``node.log`` printed when the temporary node fails.
LOG_TAIL_LINES = 30

def free_port() -> int:
    """A TCP port on the loopback address that is free now (bound to port 0, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_node_settings(base: Settings, data_dir: Path, port: int, receiver_port: int,
                       demo_ae: str) -> Settings:
    """``base`` made into the demo's node: loopback port ``port``, data in ``data_dir``,
    the receiver its only destination, ``demo_ae`` allowed to call, no TLS (the demo
    talks plain DICOM on the loopback address), logs on standard error, a short quiet
    period; every other setting as in ``base``."""
    allowed = base.security.allowed_calling_ae_titles
    return dataclasses.replace(
        base,
        node=dataclasses.replace(base.node, bind="127.0.0.1", port=port,
                                 data_dir=str(data_dir)),
        security=dataclasses.replace(
            base.security, tls_cert="", tls_key="", tls_ca="",
            allowed_calling_ae_titles=allowed if demo_ae in allowed else [*allowed, demo_ae],
            allowed_hosts=[] if not base.security.allowed_hosts else
            [*base.security.allowed_hosts, "127.0.0.1"]),
        logging=dataclasses.replace(base.logging, file=""),
        protocol=dataclasses.replace(
            base.protocol, quiet_period_s=min(base.protocol.quiet_period_s, DEMO_QUIET_PERIOD_S)),
        jobs=dataclasses.replace(
            base.jobs, poll_interval_s=min(base.jobs.poll_interval_s, DEMO_POLL_INTERVAL_S)),
        destinations=[Destination(name="demo", ae_title=demo_ae, host="127.0.0.1",
                                  port=receiver_port)],
        source="theranode demo",
    )


def answers_echo(host: str, port: int, called_ae: str, calling_ae: str) -> bool:
    """Whether the node at ``host:port`` accepts an association and answers a C-ECHO."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    pynetdicom_log.setLevel(logging.CRITICAL)  # "connection refused" until a node listens
    try:
        assoc = ae.associate(host, port, ae_title=called_ae)
    finally:
        pynetdicom_log.setLevel(level)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and status.Status == 0x0000
    finally:
        assoc.release()


class TemporaryNode:
    """A ``theranode serve`` child process in its own process group.

    Its standard output and error go to ``log``.
    """

    def __init__(self, config: Path, log: Path, port: int, ae_title: str) -> None:
        self.config, self.log, self.port, self.ae_title = config, log, port, ae_title
        with open(log, "ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "theranode", "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, calling_ae: str, timeout_s: float = NODE_START_TIMEOUT_S) -> None:
        """Return once the node answers a C-ECHO.

        Raises
        ------
        DemoError
            The node exited, or did not answer within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise DemoError(f"The temporary node exited at start-up (exit status "
                                f"{self.process.returncode}).")
            if self._echo(calling_ae):
                return
            time.sleep(0.25)
        raise DemoError(f"The temporary node did not answer a C-ECHO on 127.0.0.1:{self.port} "
                        f"within {timeout_s:g} s.")

    def _echo(self, calling_ae: str) -> bool:
        return answers_echo("127.0.0.1", self.port, self.ae_title, calling_ae)

    def stop(self, timeout_s: float = NODE_STOP_TIMEOUT_S) -> int:
        """SIGTERM and wait (the node stops gracefully); SIGKILL its whole process group
        (workers included) after ``timeout_s``. Returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("The temporary node did not stop within %g s: killed", timeout_s)
        with contextlib.suppress(ProcessLookupError):  # workers left by a kill or a crash
            os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return [f"({self.log} cannot be read: {exc})"]
        return text.splitlines()[-lines:]


@contextlib.contextmanager
def stop_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP end the demo as Ctrl-C does (through ``finally``: the node stops)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
