"""Hostile peers on raw sockets: idle connections, partial and oversized A-ASSOCIATE-RQs.

What a peer on the hospital network can do to the listener without ever
completing an association. The tests in ``test_hostile_peers.py`` use these;
:func:`run_hostile_peers` runs them all at once against a node process while
a legitimate sender stores, for the CI test and a benchmark.

References
----------
DICOM PS3.8 Section 9.3.2 (A-ASSOCIATE-RQ PDU structure) and 9.3.8 (A-ABORT).
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

#: PS3.7 Annex A.2.1 DICOM Application Context Name.
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)


def association_request(called: str, calling: str) -> bytes:
    """A complete, valid A-ASSOCIATE-RQ PDU proposing Verification (Implicit VR LE)."""
    context = _item(0x20, bytes([1, 0, 0, 0])
                    + _item(0x30, VERIFICATION.encode())
                    + _item(0x40, IMPLICIT_VR_LITTLE_ENDIAN.encode()))
    user_information = _item(0x50, _item(0x51, struct.pack(">L", 16384))
                             + _item(0x52, b"1.2.826.0.1.3680043.9.7433"))
    body = (struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + context + user_information)
    return pdu_header(0x01, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The six bytes that start every PDU: type, reserved, length (PS3.8 Section 9.3.1)."""
    return struct.pack(">BBL", pdu_type, 0, length)


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the listener that sends nothing yet."""
    return socket.create_connection((host, port), timeout=5)


def wait_closed(sock: socket.socket, within_s: float) -> float | None:
    """Seconds until the node closed ``sock`` (reading and discarding what it sent).

    None when it was still open after ``within_s``.
    """
    start = time.monotonic()
    while True:
        remaining = within_s - (time.monotonic() - start)
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            return None
        except OSError:  # reset: closed too
            return time.monotonic() - start


def received_before_close(sock: socket.socket, within_s: float) -> bytes:
    """Everything the node sent on ``sock`` until it closed it (or ``within_s`` passed)."""
    data = bytearray()
    deadline = time.monotonic() + within_s
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass
class HostilePeersReport:
    """What :func:`run_hostile_peers` measured on a node process under the attacks."""

    attacks: dict[str, int]
    instances: int
    stored: int = 0
    sender_wait_s: float = 0.0
    sender_attempts: int = 0
    node_threads_max: int = 0
    node_cpu_fraction: float = 0.0
    peak_rss_mb: float = 0.0
    problems: list[str] = field(default_factory=list)


def _node_threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def _node_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class _Attacker(threading.Thread):
    """Repeats one attack against ``port`` until stopped (bounded by ``until``)."""

    def __init__(self, port: int, count: int, attack: Callable[[int], socket.socket | None],
                 stop: threading.Event, until: float) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.attack = port, count, attack
        self.stop, self.until = stop, until
        self.sockets: list[socket.socket] = []

    def run(self) -> None:
        while not self.stop.is_set() and time.monotonic() < self.until:
            for sock in list(self.sockets):  # keep ``count`` of them open, as an attacker would
                if wait_closed(sock, within_s=0.0) is not None:
                    sock.close()
                    self.sockets.remove(sock)
            while len(self.sockets) < self.count and not self.stop.is_set():
                try:
                    sock = self.attack(self.port)
                except OSError:
                    break
                if sock is not None:
                    self.sockets.append(sock)
            self.stop.wait(0.5)
        for sock in self.sockets:
            sock.close()


def idle_socket(port: int) -> socket.socket:
    return connect(port)


def partial_request(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(association_request("THERANODE", "PARTIAL")[:40])
    return sock


def oversized_request(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(pdu_header(0x01, 256 * 1024 * 1024))
    try:
        sock.sendall(bytes(1024 * 1024))
    except OSError:
        pass
    return sock


def run_hostile_peers(work: Path, instances: int = 20, idle_sockets: int = 50,
                      partial_requests: int = 10, oversized_requests: int = 10,
                      idle_associations: int = 8, max_wait_s: float = 120.0,
                      security: dict[str, object] | None = None) -> HostilePeersReport:
    """A legitimate sender stores ``instances`` CTs into a node process under every attack.

    Idle TCP sockets, partial and oversized A-ASSOCIATE-RQs are kept at their
    counts (reconnected when the node closes them), and ``idle_associations``
    associations echo every second and never store. The sender retries a
    refused association until ``max_wait_s``.
    """
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from service.store import open_database
    from service.store.index import IndexStore
    from tests.reliability.load import peak_rss_mb
    from tests.reliability.processes import start_node, write_config
    from tests.service import factory

    config = work / "node.toml"
    data_dir = work / "data"
    port = write_config(config, data_dir, security=dict(security or {}))
    report = HostilePeersReport(
        attacks={"idle sockets": idle_sockets, "partial A-ASSOCIATE-RQs": partial_requests,
                 "256 MB A-ASSOCIATE-RQ headers": oversized_requests,
                 "idle associations (C-ECHO every 1 s)": idle_associations},
        instances=instances)
    cts = [factory.ct("HOSTILE1", datetime(2024, 5, 7, 9, 15), frame="1.2.826.0.1.3680043.9.1",
                      series="1.2.826.0.1.3680043.9.2") for _ in range(instances)]
    node = start_node(config, port)
    stop = threading.Event()
    until = time.monotonic() + max_wait_s + 30
    attackers = [_Attacker(port, n, attack, stop, until) for n, attack in (
        (idle_sockets, idle_socket), (partial_requests, partial_request),
        (oversized_requests, oversized_request)) if n]
    echo_ae = AE(ae_title="IDLESCU")
    echo_ae.add_requested_context(Verification)
    idlers = []
    try:
        for _ in range(idle_associations):
            assoc = echo_ae.associate("127.0.0.1", port, ae_title="THERANODE")
            if assoc.is_established:
                idlers.append(assoc)
        for attacker in attackers:
            attacker.start()
        time.sleep(1.0)
        cpu_start, wall_start = _node_cpu_s(node.process.pid), time.monotonic()
        sender = AE(ae_title="MODALITY")
        sender.add_requested_context(factory.CT, ExplicitVRLittleEndian)
        sender.acse_timeout = sender.network_timeout = sender.dimse_timeout = 10
        started = time.monotonic()
        while time.monotonic() - started < max_wait_s:
            report.sender_attempts += 1
            report.node_threads_max = max(report.node_threads_max,
                                          _node_threads(node.process.pid))
            for assoc in idlers:
                if assoc.is_established:
                    assoc.send_c_echo()
            assoc = sender.associate("127.0.0.1", port, ae_title="THERANODE")
            if assoc.is_established:
                report.sender_wait_s = time.monotonic() - started
                statuses = [int(assoc.send_c_store(ct).get("Status", -1)) for ct in cts]
                assoc.release()
                if any(statuses):
                    report.problems.append(f"statuses other than Success: {sorted(set(statuses))}")
                break
            time.sleep(1.0)
        else:
            report.problems.append(f"the sender found no slot within {max_wait_s:g} s")
        report.node_cpu_fraction = ((_node_cpu_s(node.process.pid) - cpu_start)
                                    / (time.monotonic() - wall_start))
        report.node_threads_max = max(report.node_threads_max, _node_threads(node.process.pid))
        report.peak_rss_mb = peak_rss_mb(node.process.pid)
    finally:
        stop.set()
        for attacker in attackers:
            attacker.join(timeout=10)
        for assoc in idlers:
            if assoc.is_established:
                assoc.abort()
        if node.stop() != 0:
            report.problems.append("the node did not stop cleanly")
    index = IndexStore(open_database(data_dir / "theranode.db"))
    uids = [str(ct.SOPInstanceUID) for ct in cts]
    report.stored = sum(1 for uid in uids if index.instance(uid) is not None)
    if report.stored != instances:
        report.problems.append(f"{instances - report.stored} acknowledged instance(s) missing")
    return report
