"""Scale-out under faults: two ``theranode serve`` and two ``theranode worker`` processes on one
PostgreSQL database and one data folder, with a node and a worker SIGKILLed midway.

:func:`run_cluster` starts the processes an administrator runs (docs/scale-out.md): every
node and worker reads the same ``[database] url`` and ``[node] data_dir`` (the shared archive)
under a name of its own (``[node] name``: its ``incoming/<name>`` folder, the ``runner`` of the
jobs it computes). One DICOM destination (:class:`~tests.reliability.destination.
RecordingDestination`) receives the results from whichever node holds the outbox.

Senders store the patients' courses through a :class:`Balancer`, as through a TCP load
balancer in front of both nodes: a load balancer spreads *connections*, so each association
goes to the next node in turn, and one that is down is skipped (its health check failed).
Every sender opens a new association every :data:`PER_ASSOCIATION` instances, so every series
is split between both nodes: deduplication, the series-owner check and grouping all meet
instances of one series and one patient that arrived at different nodes at the same moment.
Each patient's time points are shared by two senders (two cameras of one department), which
store in parallel.

The run goes in waves, one per cycle number, as :mod:`tests.reliability.combined_kills`'s: a
patient's next cycle arrives only after the previous cycle's results went out, so the jobs
do not depend on timing: per patient and wave one cycle job and one course job (version =
wave), as in a clean run. :func:`run_cluster` with ``database_url=None`` is that clean run: one
node on SQLite computing its own jobs (``[jobs] workers`` = the cluster's worker count).

The faults (:class:`Faults`), both in the first wave: node ``node-a`` is SIGKILLed once
:attr:`Faults.node_kill_fraction` of the wave's instances are acknowledged, stays down
:attr:`Faults.node_down_s` (the senders go on through node ``node-b``) and is restarted; the
worker computing the first job of :attr:`Faults.worker_job_kind` (a course job by default:
the shortest to run again) is SIGKILLed a seeded moment into the job and restarted at once.
Its job's request is left ``doing`` by a worker whose heartbeat stopped; the periodic sweep
of a live worker counts the lost run and requests the job again, after ``[jobs]
stalled_after_s`` and within the sweep's period (:mod:`theranode.service.jobs.queue`).

What a run must show is checked by :func:`archive_problems` (every acknowledged instance
indexed exactly once and archived whole), :func:`job_problems` (per target and inputs one
``done`` job, nothing failed) and, against the clean run,
:func:`tests.reliability.combined_kills.compare_with_clean` (the same jobs from the same
inputs, the same doses, RT Dose pixels, course totals and result objects, every object at
the destination, first arrivals in production order; a resend of an object the destination
had acknowledged before a kill, the same UID with the same bytes, is allowed, docs/
conformance.md; a different object under one UID is not).

Shared by tests/reliability/test_scale_out.py and ``benchmarks/scale_out.py``.
"""

from __future__ import annotations

import functools
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import evt
from pynetdicom.events import Event

from tests.peers import free_port
from tests.reliability.combined_kills import CombinedReport, computed, course_run
from tests.reliability.course_runs import (
    NodeDatabase,
    course_files,
)
from tests.reliability.destination import RecordingDestination
from tests.reliability.kills import Sender, content_digest, sender_of_files
from tests.reliability.outage import CourseRun
from tests.reliability.processes import ROOT, NodeProcess, start_node, write_config
from tests.service.nodes import scu
from tests.waiting import wait_for
from theranode.dicomio.synthetic_course import CourseManifest
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.database import sqlite_url
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobState, JobStore

NODE_NAMES = ("node-a", "node-b")
WORKER_NAMES = ("worker-1", "worker-2")
#: Short timings, so that a run takes a minute rather than an hour. ``stalled_after_s``: a
#: killed worker's job runs again within that plus the sweep's period (10 s).
CLUSTER_SETTINGS: dict[str, dict[str, Any]] = {
    "protocol": {"quiet_period_s": 2.0},
    "jobs": {"poll_interval_s": 0.5, "stalled_after_s": 4.0},
    "outbox": {"retry_base_s": 0.2, "retry_max_s": 1.0},
}
#: Instances a sender stores on one association before it opens the next (on the next node).
PER_ASSOCIATION = 10
PACS_ANSWER_DELAY_S = 0.05
WORKER_START_TIMEOUT_S = 60.0
SETTLE_S = 2.0  # after the last delivery: long enough for any (wrong) second send to show


# -- the processes ----------------------------------------------------------------------
def write_cluster_config(path: Path, data_dir: Path, name: str, database_url: str | None,
                         destination_port: int, **sections: dict[str, Any]) -> int:
    """A node's or worker's configuration (one DICOM destination ``PACS``); returns its port."""
    merged = {key: {**values, **sections.pop(key, {})} for key, values in CLUSTER_SETTINGS.items()}
    if database_url is not None:
        merged["database"] = {"url": database_url}
    every: dict[str, Any] = {"node": {"name": name}, **merged, **sections}
    port = write_config(path, data_dir, None, **every)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                     f'host = "127.0.0.1"\nport = {destination_port}\n')
    return port


def start_worker(config: Path, timeout_s: float = WORKER_START_TIMEOUT_S) -> NodeProcess:
    """Start ``theranode worker --config config``; wait until it takes jobs (its log says so)."""
    log = config.with_suffix(".log")
    mark = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "theranode", "worker", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=handle, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    while "computing up to" not in log.read_bytes()[mark:].decode(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"the worker did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)
    return NodeProcess(config, 0, log, process)


@dataclass
class Cluster:
    """The nodes and workers of a run, by name, and how to restart each."""

    nodes: dict[str, NodeProcess]
    workers: dict[str, NodeProcess]

    def ports(self) -> list[int]:
        return [node.port for node in self.nodes.values()]

    def restart_node(self, name: str) -> None:
        node = self.nodes[name]
        self.nodes[name] = start_node(node.config, node.port)

    def restart_worker(self, name: str) -> None:
        self.workers[name] = start_worker(self.workers[name].config)

    def stop(self) -> list[str]:
        """SIGTERM every process at once; a name per process that did not exit 0."""
        processes = {**self.nodes, **self.workers}
        with ThreadPoolExecutor(max_workers=max(1, len(processes))) as pool:
            codes = dict(zip(processes, pool.map(_stopped, processes.values()), strict=True))
        return [name for name, code in codes.items() if code != 0]


def _stopped(process: NodeProcess) -> int:
    try:
        return process.stop()
    except subprocess.TimeoutExpired:
        return -1


def start_cluster(work: Path, data_dir: Path, database_url: str | None, destination_port: int,
                  nodes: int, workers: int, **sections: dict[str, Any]) -> Cluster:
    """``nodes`` nodes and ``workers`` workers on one data folder (and database, when given).

    Without ``database_url`` there is one node on SQLite, computing its own jobs with
    ``workers`` job processes; ``workers`` then starts no worker process. The first node
    starts alone (it creates the schema); the others start together.
    """
    work.mkdir(parents=True, exist_ok=True)
    shared = database_url is not None
    cluster = Cluster({}, {})
    starts: list[Callable[[], None]] = []
    for name in NODE_NAMES[:nodes if shared else 1]:
        jobs = {**sections.get("jobs", {}), **({} if shared else {"workers": workers})}
        config = work / f"{name}.toml"
        port = write_cluster_config(config, data_dir, name, database_url, destination_port,
                                    **{**sections, "jobs": jobs})
        starts.append(functools.partial(_start_into, cluster.nodes, name, start_node, config,
                                        port))
    for name in WORKER_NAMES[:workers if shared else 0]:
        config = work / f"{name}.toml"
        write_cluster_config(config, data_dir, name, database_url, destination_port, **sections)
        starts.append(functools.partial(_start_into, cluster.workers, name, start_worker, config))
    try:
        starts[0]()
        with ThreadPoolExecutor(max_workers=4) as pool:
            for future in [pool.submit(start) for start in starts[1:]]:
                future.result()
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_into(processes: dict[str, NodeProcess], name: str,
                start: Callable[..., NodeProcess], *args: Any) -> None:
    processes[name] = start(*args)


# -- the senders and the load balancer ------------------------------------------------------
@dataclass
class Balancer:
    """Round robin over the nodes' ports, connection by connection, as a TCP load balancer."""

    ports: list[int]
    _turn: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Instances acknowledged through each port (did both nodes take a share?).
    acknowledged: Counter[int] = field(default_factory=Counter)

    def next_ports(self) -> list[int]:
        """Every port, starting with the one whose turn it is (the others are the fallback)."""
        with self._lock:
            start = self._turn % len(self.ports)
            self._turn += 1
        return self.ports[start:] + self.ports[:start]

    def count(self, port: int) -> None:
        with self._lock:
            self.acknowledged[port] += 1


def _no_delay(event: Event) -> None:
    """TCP_NODELAY on the sender's socket (without it each C-STORE waits for a delayed ACK)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_one_association(balancer: Balancer, sender: Sender, per_association: int) -> bool:
    """Store up to ``per_association`` pending files on the next node that accepts an
    association; False when no node did."""
    for port in balancer.next_ports():
        ae = scu(sender.name)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2  # notice a killed node soon
        assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE",
                             evt_handlers=[(evt.EVT_CONN_OPEN, _no_delay)])
        if not assoc.is_established:
            continue
        try:
            for uid, path, digest in sender.pending()[:per_association]:
                try:
                    answer = assoc.send_c_store(path)
                except Exception:
                    return True
                if "Status" in answer and answer.Status == 0x0000:
                    sender.acknowledged[uid] = digest
                    balancer.count(port)
                if not assoc.is_established:
                    return True
            assoc.release()
        finally:
            if assoc.is_established:
                assoc.abort()
        return True
    return False


def keep_sending(balancer: Balancer, sender: Sender, retry_s: float = 0.2,
                 per_association: int = PER_ASSOCIATION) -> None:
    """Store every file of ``sender`` through ``balancer``, ``per_association`` files per
    association; what was not acknowledged is sent again on a later association, as a
    modality retries."""
    while sender.pending():
        if not _store_one_association(balancer, sender, per_association):
            time.sleep(retry_s)


def patient_senders(manifests: list[CourseManifest], cycle: int,
                    per_patient: int = 2) -> list[Sender]:
    """``per_patient`` senders per patient for ``cycle``: the cycle's files (in
    :func:`~tests.reliability.course_runs.course_files` order) dealt out time point by time
    point, so that two cameras store one patient's time points in parallel."""
    senders = []
    for i, manifest in enumerate(manifests):
        points = [tp for tp in manifest.time_points if tp.time_point.cycle_number == cycle]
        for s in range(per_patient):
            files: list[Path] = []
            for tp in points[s::per_patient]:
                files += [*tp.ct_files, *tp.spect_files]
                files += [tp.rtstruct_file] if tp.rtstruct_file is not None else []
            if files:
                senders.append(sender_of_files(f"CAMERA{i}{chr(65 + s)}", files))
    return senders


def all_files(manifests: list[CourseManifest], cycles: Iterable[int]) -> int:
    return sum(len(course_files(m, tuple(cycles))) for m in manifests)


# -- reading the shared database --------------------------------------------------------
class ClusterDatabase(NodeDatabase):
    """:class:`~tests.reliability.course_runs.NodeDatabase` on a database named by URL."""

    def __init__(self, data_dir: Path, url: str) -> None:
        self.data_dir = data_dir
        self.url = url
        self.jobs = JobStore(open_database(url))

    def close(self) -> None:
        self.jobs.db.close()


# -- the run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Faults:
    """What to kill in the first wave (see the module docstring)."""

    node: str | None = "node-a"
    node_kill_fraction: float = 0.3
    node_down_s: float = 1.5
    kill_worker: bool = True
    worker_job_kind: str = "course"  # the kind of job whose worker is killed
    worker_delay_s: tuple[float, float] = (0.5, 2.0)
    seed: int = 17


NO_FAULTS = Faults(node=None, kill_worker=False)


@dataclass
class ScaleOutReport:
    """What a run did, what the faults hit, and what it produced."""

    patients: int
    cycles: int
    instances: int
    nodes: int
    workers: int
    kills: int = 0
    moments: list[str] = field(default_factory=list)
    acknowledged_while_node_down: int = 0
    worker_kill_hit_job: bool = False
    acknowledged_per_node: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    run: CourseRun | None = None

    def combined(self) -> CombinedReport:
        """The report as :func:`tests.reliability.combined_kills.compare_with_clean` takes it."""
        return CombinedReport(self.patients, self.cycles, self.instances, kills=self.kills,
                              problems=list(self.problems), run=self.run)


class _Waves:
    """The senders' timeline, one wave per cycle number, on its own thread."""

    def __init__(self, balancer: Balancer, waves: list[list[Sender]], db: NodeDatabase,
                 patients: int, timeout_s: float) -> None:
        self.balancer = balancer
        self.waves = waves
        self.db = db
        self.patients = patients
        self.timeout_s = timeout_s
        self.error: BaseException | None = None
        self.completed = False
        self._thread = threading.Thread(target=self._run, name="waves", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(self.timeout_s * len(self.waves))
        if self._thread.is_alive() or not self.completed:
            raise AssertionError(f"the senders' timeline did not finish: {self.error}")

    def _run(self) -> None:
        try:
            for number, senders in enumerate(self.waves):
                self._wave(number, senders)
            self.completed = True
        except Exception as exc:  # reported by join()
            self.error = exc

    def _wave(self, number: int, senders: list[Sender]) -> None:
        threads = [threading.Thread(target=keep_sending, args=(self.balancer, s), daemon=True)
                   for s in senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(self.timeout_s)
        if any(s.pending() for s in senders):
            raise AssertionError(f"wave {number + 1}: the senders could not store everything")
        done = self.patients * (number + 1)
        wait_for(lambda: computed(self.db, done), self.timeout_s,
                 f"wave {number + 1}: every cycle and course computed", poll_s=0.1)
        wait_for(self.db.all_delivered, self.timeout_s,
                 f"wave {number + 1}: every result delivered", poll_s=0.1)


def _acknowledged(senders: list[Sender]) -> int:
    return sum(len(s.acknowledged) for s in senders)


def _kill_node(cluster: Cluster, faults: Faults, senders: list[Sender], url: str,
               data_dir: Path, report: ScaleOutReport, timeout_s: float) -> None:
    """SIGKILL ``faults.node`` midway through the first wave's transfer; restart it after
    ``faults.node_down_s``, then check what was acknowledged so far."""
    assert faults.node is not None
    total = sum(len(s.files) for s in senders)
    wait_for(lambda: _acknowledged(senders) >= faults.node_kill_fraction * total, timeout_s,
             "the first wave's transfer under way", poll_s=0.01)
    before = _acknowledged(senders)
    cluster.nodes[faults.node].kill()
    report.kills += 1
    time.sleep(faults.node_down_s)
    during = _acknowledged(senders) - before
    report.acknowledged_while_node_down = during
    cluster.restart_node(faults.node)
    report.moments.append(f"SIGKILL {faults.node} with {before} of {total} instances "
                          f"acknowledged; {during} acknowledged by the other node while it "
                          f"was down {faults.node_down_s:g} s")
    report.problems += archive_problems(data_dir, url, senders)


def _running_on_a_worker(db: NodeDatabase, kind: str) -> JobRecord | None:
    running = [j for j in db.jobs.in_states(JobState.RUNNING)
               if j.runner in WORKER_NAMES and j.kind == kind]
    return running[0] if running else None


def _kill_worker(cluster: Cluster, faults: Faults, db: ClusterDatabase, report: ScaleOutReport,
                 timeout_s: float) -> None:
    """SIGKILL the worker of the first job of ``faults.worker_job_kind`` to run, a seeded
    moment into it; restart it."""
    job = wait_for(lambda: _running_on_a_worker(db, faults.worker_job_kind), timeout_s,
                   f"a {faults.worker_job_kind} job running on a worker", poll_s=0.05)
    assert job is not None
    time.sleep(random.Random(faults.seed).uniform(*faults.worker_delay_s))
    now = db.jobs.get(job.id)
    report.worker_kill_hit_job = now is not None and now.state is JobState.RUNNING \
        and now.runner == job.runner
    cluster.workers[job.runner].kill()
    report.kills += 1
    report.moments.append(f"SIGKILL {job.runner} while job {job.id} ({job.kind} {job.label}) "
                          f"was {now.state.value if now else 'gone'}")
    cluster.restart_worker(job.runner)


def run_cluster(work: Path, manifests: list[CourseManifest], database_url: str | None,
                nodes: int = 2, workers: int = 2, faults: Faults = NO_FAULTS,
                senders_per_patient: int = 2, timeout_s: float = 300) -> ScaleOutReport:
    """Store ``manifests`` wave by wave through the nodes; kill what ``faults`` says."""
    cycles = sorted({tp.time_point.cycle_number for tp in manifests[0].time_points})
    waves = [patient_senders(manifests, c, senders_per_patient) for c in cycles]
    senders = [s for wave in waves for s in wave]
    shared = database_url is not None
    report = ScaleOutReport(len(manifests), len(cycles), sum(len(s.files) for s in senders),
                            nodes if shared else 1, workers)
    data_dir = work / "data"
    url = database_url or sqlite_url(data_dir / "theranode.db")
    destination = RecordingDestination(free_port(), answer_delay_s=PACS_ANSWER_DELAY_S)
    destination.start()
    started = time.monotonic()
    cluster = start_cluster(work, data_dir, database_url, destination.port, nodes, workers)
    db = ClusterDatabase(data_dir, url)
    balancer = Balancer(cluster.ports())
    timeline = _Waves(balancer, waves, db, len(manifests), timeout_s)
    try:
        timeline.start()
        if faults.node is not None:
            _kill_node(cluster, faults, waves[0], url, data_dir, report, timeout_s)
        if faults.kill_worker:
            _kill_worker(cluster, faults, db, report, timeout_s)
        timeline.join()
        time.sleep(SETTLE_S)
        report.problems += [f"{name} did not stop cleanly" for name in cluster.stop()]
        report.seconds = time.monotonic() - started
        report.run = course_run(db, destination, report.seconds)
        names = {node.port: name for name, node in cluster.nodes.items()}
        report.acknowledged_per_node = {names[p]: n for p, n in balancer.acknowledged.items()}
        report.problems += archive_problems(data_dir, url, senders, final=True,
                                            node_names=list(cluster.nodes))
        report.problems += job_problems(report.run.jobs)
        return report
    finally:
        cluster.stop()
        destination.stop()
        db.close()


# -- the checks -------------------------------------------------------------------------------
def _stored_problems(data_dir: Path, uid: str, row: dict[str, Any] | None,
                     digest: str) -> list[str]:
    if row is None:
        return [f"acknowledged {uid} is not indexed"]
    path = data_dir / row["path"]
    stored = path.read_bytes() if path.is_file() else b""
    if sha256_hex(stored) != row["sha256"] or content_digest(dcmread(BytesIO(stored))) != digest:
        return [f"acknowledged {uid} is not archived whole"]
    return []


def archive_problems(data_dir: Path, url: str, senders: list[Sender], final: bool = False,
                     node_names: Iterable[str] = ()) -> list[str]:
    """Every instance a sender saw acknowledged indexed exactly once, its file whole (the
    file's sha256 is the row's, and its pixel data what was sent); with ``final``, also
    every file sent acknowledged, nothing else indexed, quarantined or in conflict, and no
    half-written file left in a node's ``incoming/<name>``."""
    acknowledged = {uid: digest for s in senders for uid, digest in dict(s.acknowledged).items()}
    index = IndexStore(open_database(url))
    try:
        with index.lock:
            rows = index.db.query("select sop_instance_uid, path, sha256 from instances")
        counts = index.counts()
    finally:
        index.db.close()
    problems = indexed_more_than_once(rows)
    by_uid = {r["sop_instance_uid"]: r for r in rows}
    for uid, digest in sorted(acknowledged.items()):
        problems += _stored_problems(data_dir, uid, by_uid.get(uid), digest)
    if not final:
        return problems
    sent = sum(len(s.files) for s in senders)
    if len(acknowledged) != sent or len(rows) != sent:
        problems.append(f"{len(acknowledged)} acknowledged and {len(rows)} indexed of {sent} sent")
    if counts["quarantine"] or counts["conflicts"]:
        problems.append(f"{counts['quarantine']} quarantined, {counts['conflicts']} conflicts "
                        f"(expected none)")
    for name in node_names:
        incoming = data_dir / "incoming" / name
        if incoming.is_dir() and any(incoming.iterdir()):
            problems.append(f"half-written files left in incoming/{name} after a clean stop")
    return problems


def indexed_more_than_once(rows: list[dict[str, Any]]) -> list[str]:
    """A problem per SOP Instance UID with more than one index row."""
    counts = Counter(r["sop_instance_uid"] for r in rows)
    return [f"{uid} indexed {n} times" for uid, n in sorted(counts.items()) if n > 1]


def job_problems(jobs: list[JobRecord]) -> list[str]:
    """Every job ended ``done``, and per target and inputs (fingerprint) exactly one did."""
    problems = [f"job {j.id} ({j.kind} {j.label}) ended {j.state.value}: {j.message[:200]}"
                for j in jobs if j.state is not JobState.DONE]
    done = Counter((j.target, j.fingerprint) for j in jobs if j.state is JobState.DONE)
    problems += [f"{target} computed {n} times from the same inputs"
                 for (target, _), n in sorted(done.items()) if n > 1]
    return problems


def rerun_jobs(run: CourseRun) -> list[JobRecord]:
    """Jobs started more than once (a killed worker's job, run again elsewhere)."""
    return [j for j in run.jobs if j.attempts > 1]

