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
                if _closed_by_peer(sock):
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


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the node has closed ``sock`` (what it sent is read and dropped), without waiting."""
    while True:
        try:
            if not sock.recv(65536, socket.MSG_DONTWAIT):
                return True
        except BlockingIOError:
            return False
        except OSError:  # reset
            return True


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

    from tests.reliability.load import peak_rss_mb
    from tests.reliability.processes import start_node, write_config
    from tests.service import factory
    from theranode.service.store import open_database
    from theranode.service.store.index import IndexStore

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


# --- A whole course under every attack, with bombs sent on another association -------------

_PDU_NAMES = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x07: "A-ABORT"}


@dataclass(frozen=True)
class NodeSample:
    """The node process at one moment (``/proc``): memory, CPU, threads, connections."""

    rss_mb: float
    peak_rss_mb: float
    cpu_s: float
    threads: int
    connections: int


def sample_node(pid: int, port: int) -> NodeSample:
    """RSS and peak RSS (VmRSS, VmHWM), utime + stime, threads, and the TCP connections
    ESTABLISHED on the node's listening ``port`` (``/proc/net/tcp``, node side only)."""
    status = {line.split(":")[0]: line.split()[1:]
              for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line}
    established = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "01" and int(local.split(":")[1], 16) == port:
            established += 1
    return NodeSample(int(status["VmRSS"][0]) / 1024, int(status["VmHWM"][0]) / 1024,
                      _node_cpu_s(pid), int(status["Threads"][0]), established)


@dataclass(frozen=True)
class AttackFigures:
    """One attack kind held at ``count`` against the node, measured over its own stage.

    ``opened`` counts the objects the attacker made in the stage (a socket the node
    closed at once is reopened, and counted again); ``answer`` is what one probe of
    the kind got from the node and ``closed_after_s`` when (None: still open).
    """

    kind: str
    count: int
    opened: int
    answer: str
    closed_after_s: float | None
    before: NodeSample
    after: NodeSample

    @property
    def cpu_s_per_object(self) -> float:
        return (self.after.cpu_s - self.before.cpu_s) / max(self.opened, 1)

    @property
    def rss_delta_mb(self) -> float:
        return self.after.rss_mb - self.before.rss_mb


@dataclass(frozen=True)
class BombFigures:
    """One bomb sent alone (no other store under way), and what it cost the node."""

    name: str
    wire_bytes: int
    status: int
    comment: str
    expected_status: int
    seconds: float
    before: NodeSample
    after: NodeSample

    @property
    def cpu_s(self) -> float:
        return self.after.cpu_s - self.before.cpu_s


@dataclass
class HostileCourseReport:
    """What :func:`run_hostile_course` measured, and every broken promise it found."""

    cycles: int
    course_instances: int
    attacks: list[AttackFigures] = field(default_factory=list)
    bombs: list[BombFigures] = field(default_factory=list)
    bombs_during_course: list[tuple[str, int]] = field(default_factory=list)
    baseline: NodeSample | None = None
    end: NodeSample | None = None
    threads_max: int = 0
    connections_max: int = 0
    idle_associations_reclaimed: int = 0
    first_slot_s: float = 0.0
    store_s: float = 0.0
    computed_s: float = 0.0
    acknowledged: int = 0
    course_cpu_s: float = 0.0
    jobs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    quiet: HostileCourseReport | None = None  # the same course with no attacker, to compare


class _IdleAssociations(threading.Thread):
    """``count`` associations that only C-ECHO every second; one the node ends is reopened."""

    def __init__(self, port: int, count: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port, self.count, self.stop = port, count, stop
        self.opened = self.ended = 0
        self.held: list[object] = []

    def run(self) -> None:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title="IDLESCU")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
        while not self.stop.is_set():
            alive = [a for a in self.held if a.is_established]  # type: ignore[attr-defined]
            self.ended += len(self.held) - len(alive)
            self.held = alive
            while len(self.held) < self.count and not self.stop.is_set():
                assoc = ae.associate("127.0.0.1", self.port, ae_title="THERANODE")
                self.opened += 1
                if not assoc.is_established:
                    break
                self.held.append(assoc)
            for assoc in self.held:
                try:
                    assoc.send_c_echo()  # type: ignore[attr-defined]
                except Exception:  # ended by the node meanwhile: reopened next round
                    pass
            self.stop.wait(1.0)
        for assoc in self.held:
            if assoc.is_established:  # type: ignore[attr-defined]
                assoc.abort()  # type: ignore[attr-defined]


def _probe(attack: Callable[[int], socket.socket], port: int, within_s: float,
           out: dict[str, object]) -> None:
    """What the node sends one ``attack`` socket, and after how long it closes it."""
    started = time.monotonic()
    try:
        sock = attack(port)
    except OSError as exc:
        out.update(answer=f"connection refused ({exc.__class__.__name__})", closed_after_s=0.0)
        return
    with sock:
        data = received_before_close(sock, within_s)
        elapsed = time.monotonic() - started
        still_open = elapsed >= within_s
    answer = (_PDU_NAMES.get(data[0], f"PDU type 0x{data[0]:02X}") if data
              else "closed without a PDU")
    out.update(answer="nothing, still open" if still_open and not data else answer,
               closed_after_s=None if still_open else elapsed)


def _send_bomb_retrying(port: int, case: object, folder: Path, tries: int = 60) -> object:
    """:func:`send_bombs` for one case; a refused association (every slot taken) is retried."""
    from tests.reliability.bombs import send_bombs

    for _ in range(tries - 1):
        try:
            return send_bombs(port, [case], folder)[0]  # type: ignore[list-item]
        except ConnectionError:
            time.sleep(1.0)
    return send_bombs(port, [case], folder)[0]  # type: ignore[list-item]


def run_hostile_course(work: Path, manifest: object, cycles: int, bomb_cases: list[object],
                       expected_status: dict[str, int], idle_sockets: int = 50,
                       partial_requests: int = 10, oversized_requests: int = 10,
                       idle_associations: int = 8, settle_s: float = 3.0,
                       timeout_s: float = 600.0,
                       security: dict[str, object] | None = None) -> HostileCourseReport:
    """A legitimate sender stores a whole course while every hostile peer attacks; then it
    is computed.

    The attacks start one kind at a time (each measured over ``settle_s``: node
    RSS, CPU, threads, connections; a probe of the kind records the node's
    answer), then each bomb of ``bomb_cases`` is sent alone on its own
    association and measured. With every attack still held, the sender stores
    ``manifest``'s course (retrying a refused or broken association, as a
    modality does) while another association sends every bomb again. Then the
    run waits for ``cycles`` cycle jobs and the course job, checks each
    acknowledged instance indexed and archived whole
    (:func:`tests.reliability.kills.verify`) and every bomb answered
    ``expected_status[name]``.
    """
    from tests.peers import free_port
    from tests.reliability.course_runs import (
        NodeDatabase,
        course_files,
        write_node_config,
    )
    from tests.reliability.destination import RecordingDestination
    from tests.reliability.kills import keep_sending, sender_of_files, verify
    from tests.reliability.processes import start_node
    from tests.waiting import wait_for
    from theranode.service.store.jobs import JobState

    files = course_files(manifest)  # type: ignore[arg-type]
    sender = sender_of_files("MODALITY", files)
    report = HostileCourseReport(cycles=cycles, course_instances=len(files))
    destination = RecordingDestination(free_port())
    destination.start()
    config, port, data_dir = write_node_config(work, destination.port,
                                               security=dict(security or {}))
    acse_timeout_s = float((security or {}).get("acse_timeout_s", 30.0))  # type: ignore[arg-type]
    node = start_node(config, port)
    pid = node.process.pid
    db = NodeDatabase(data_dir)
    stop = threading.Event()
    until = time.monotonic() + timeout_s
    attackers: list[threading.Thread] = []
    idlers = _IdleAssociations(port, idle_associations, stop)
    bomb_folder = work / "bombs"
    bomb_folder.mkdir(parents=True, exist_ok=True)

    def watch() -> None:
        sample = sample_node(pid, port)
        report.threads_max = max(report.threads_max, sample.threads)
        report.connections_max = max(report.connections_max, sample.connections)

    try:
        time.sleep(1.0)
        report.baseline = sample_node(pid, port)
        for kind, count, attack in (("idle sockets", idle_sockets, idle_socket),
                                    ("partial A-ASSOCIATE-RQs", partial_requests,
                                     partial_request),
                                    ("256 MiB A-ASSOCIATE-RQ headers", oversized_requests,
                                     oversized_request)):
            if not count:
                continue
            probe: dict[str, object] = {}
            prober = threading.Thread(target=_probe, daemon=True,
                                      args=(attack, port, acse_timeout_s + 5.0, probe))
            before = sample_node(pid, port)
            prober.start()
            attacker = _Attacker(port, count, attack, stop, until)
            attacker.opened = 0  # type: ignore[attr-defined]
            counted = _counting(attack, attacker)
            attacker.attack = counted
            attacker.start()
            attackers.append(attacker)
            time.sleep(settle_s)
            watch()
            after = sample_node(pid, port)
            prober.join(timeout=acse_timeout_s + 10.0)
            report.attacks.append(AttackFigures(
                kind, count, attacker.opened, str(probe.get("answer", "no answer recorded")),
                probe.get("closed_after_s"), before, after))  # type: ignore[arg-type]
        if idle_associations:
            before = sample_node(pid, port)
            idlers.start()
            time.sleep(settle_s)
            watch()
            after = sample_node(pid, port)
            report.attacks.append(AttackFigures(
                "idle associations (C-ECHO every 1 s)", idle_associations, idlers.opened,
                f"A-ASSOCIATE-AC for {len(idlers.held)} of {idlers.opened}", None,
                before, after))
        for case in bomb_cases:
            before = sample_node(pid, port)
            answer = _send_bomb_retrying(port, case, bomb_folder)
            after = sample_node(pid, port)
            watch()
            report.bombs.append(BombFigures(
                answer.name, answer.wire_bytes, answer.status, answer.comment,  # type: ignore
                expected_status[answer.name], answer.seconds, before, after))  # type: ignore
        bomber_answers: list[object] = []

        def bomber() -> None:
            for case in bomb_cases:
                bomber_answers.append(_send_bomb_retrying(port, case, bomb_folder))

        before_course = sample_node(pid, port)
        started = time.monotonic()
        storing = threading.Thread(target=keep_sending, args=(port, sender), daemon=True)
        bombing = threading.Thread(target=bomber, daemon=True)
        storing.start()
        bombing.start()
        while storing.is_alive() and time.monotonic() < until:
            if not report.first_slot_s and (sender.connected or sender.acknowledged):
                report.first_slot_s = time.monotonic() - started
            watch()
            storing.join(timeout=0.1)
        report.store_s = time.monotonic() - started
        if storing.is_alive():
            report.problems.append(f"the sender had not stored its course after {timeout_s:g} s")
        bombing.join(timeout=max(until - time.monotonic(), 1.0))
        report.bombs_during_course = [(a.name, a.status) for a in bomber_answers]  # type: ignore
        try:
            wait_for(lambda: (watch(), len(db.of_kind("cycle", JobState.DONE)) == cycles
                              and bool(db.of_kind("course", JobState.DONE)))[1],
                     max(until - time.monotonic(), 1.0), "every cycle and the course done")
        except AssertionError as exc:
            report.problems.append(str(exc))
        report.computed_s = time.monotonic() - started
        report.end = sample_node(pid, port)
        report.course_cpu_s = report.end.cpu_s - before_course.cpu_s
        report.jobs = [f"{j.kind} {j.label}: {j.state.value}" for j in db.all_jobs()]
        for job in db.all_jobs():
            if job.state is not JobState.DONE:
                report.problems.append(f"{job.kind} job {job.label} ended {job.state.value}: "
                                       f"{job.message[:200]}")
    finally:
        stop.set()
        for thread in attackers:
            thread.join(timeout=10)
        if idlers.is_alive():
            idlers.join(timeout=10)
        report.idle_associations_reclaimed = idlers.ended
        if node.stop() != 0:
            report.problems.append("the node did not stop cleanly")
        destination.stop()
        db.close()
    report.acknowledged = len(sender.acknowledged)
    if report.acknowledged != len(files):
        report.problems.append(f"{report.acknowledged} of {len(files)} course files acknowledged")
    report.problems += verify(data_dir, [sender])
    for name, status in [(b.name, b.status) for b in report.bombs] + report.bombs_during_course:
        if status != expected_status[name]:
            report.problems.append(f"bomb {name} answered 0x{status:04X}, documented "
                                   f"0x{expected_status[name]:04X}")
    if len(report.bombs_during_course) != len(bomb_cases):
        report.problems.append(f"{len(report.bombs_during_course)} of {len(bomb_cases)} bombs "
                               "answered during the course")
    return report


def _counting(attack: Callable[[int], socket.socket],
              attacker: _Attacker) -> Callable[[int], socket.socket]:
    """``attack`` counting each object it makes on ``attacker.opened``."""

    def counted(port: int) -> socket.socket:
        sock = attack(port)
        attacker.opened += 1  # type: ignore[attr-defined]
        return sock

    return counted


def course_bombs(inflated_mb: int = 1024, items: int = 200_000, elements: int = 600_000,
                 contour_points: int = 1_000_001) -> tuple[list[object], dict[str, int]]:
    """The bombs of :mod:`tests.reliability.bombs` and :mod:`tests.reliability.contour_bombs`
    and the status each is documented to get (docs/conformance.md).

    Defaults are the issue's full sizes, each past a shipped limit (0xC102); the
    2,000-plane structure set is within every limit and stored (0x0000). Smaller
    sizes go with lowered limits (the CI test).
    """
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

    from tests.reliability.bombs import BombCase, deflate_bomb, element_bomb, item_bomb
    from tests.reliability.contour_bombs import plane_bomb, point_bomb
    from tests.service import factory

    limit_exceeded, success = 0xC102, 0x0000
    cases = [
        BombCase("deflate", deflate_bomb(inflated_mb), DeflatedExplicitVRLittleEndian,
                 factory.CT),
        BombCase("deflated items", item_bomb(2 * items, deflated=True),
                 DeflatedExplicitVRLittleEndian, factory.RTSTRUCT),
        BombCase("items", item_bomb(items, deflated=False), ExplicitVRLittleEndian,
                 factory.RTSTRUCT),
        BombCase("elements", element_bomb(elements), ExplicitVRLittleEndian, factory.RTSTRUCT),
        BombCase("contour points", point_bomb(contour_points, contours=500),
                 ExplicitVRLittleEndian, factory.RTSTRUCT),
        BombCase("2,000 contour planes", plane_bomb(), ExplicitVRLittleEndian,
                 factory.RTSTRUCT),
    ]
    expected = {case.name: limit_exceeded for case in cases}
    expected["2,000 contour planes"] = success
    return list(cases), expected
