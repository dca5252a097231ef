"""Crash safety of the whole node: SIGKILLs while several senders store courses and jobs run.

:func:`run_combined` plays a compressed hospital timeline against a real
``theranode serve`` with one DICOM destination (a PACS that takes
:data:`PACS_ANSWER_DELAY_S` to file each result object). Several senders (a
modality or a PACS each, one patient's course each) store in parallel; every
cycle of every patient is computed and its results and the course result go
to the destination.

The run goes in *waves*, one per cycle number (the weeks between two cycles
of a patient, compressed): the first :data:`OPENING_SENDERS` senders store
their patient's cycle together; as soon as one of those cycles is being
computed, the other senders start storing theirs; the wave ends when every
result of the wave has reached the destination. A wave therefore passes
through four phases: ingest only, ingest while jobs run, jobs only, delivery
only. Because a patient's next cycle arrives only after the previous cycle's
results went out, the jobs a run makes do not depend on timing: per patient
and wave one cycle job (a single-time-point cycle scaled from the course's
multi-time-point cycle) and one course job (version = wave), as in a clean run.

The kills are spread over the waves' phases (:func:`kill_slots`); each
lands a seeded random delay after its phase is under way (at once when the
phase it was aimed at is already over), and the phase it
actually hit is recorded from what the senders and the node were doing at
that instant (:func:`observe`). After each restart every instance a sender
saw acknowledged must be indexed and archived whole, and every indexed file
whole (:func:`tests.reliability.kills.verify`); the senders resend whatever
was not acknowledged, as an SCU retries (:func:`tests.reliability.kills.keep_sending`).

With ``kills=0`` the scenario is the clean run :func:`compare_with_clean`
compares a kill run with: the same jobs (same input fingerprints, same
versions, each done once), the same doses, RT Dose pixels and course totals,
the same result objects per job, every one received by the destination.
Shared by tests/reliability/test_combined_kills.py and ``benchmarks/reliability.py``.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.peers import free_port
from tests.reliability.course_runs import (
    FAULT_SUPERSAMPLING,
    NodeDatabase,
    course_files,
    course_totals_gy,
    outputs_by_cycle,
    write_node_config,
)
from tests.reliability.destination import RecordingDestination
from tests.reliability.job_kills import arrival_problems, moment, result_problems
from tests.reliability.kills import (
    Sender,
    check_all_filed,
    identical_duplicates,
    keep_sending,
    sender_of_files,
    verify,
)
from tests.reliability.outage import SETTLE_S, CourseRun
from tests.reliability.processes import NodeProcess, start_node
from tests.waiting import wait_for
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course
from theranode.service.store.jobs import JobRecord, JobState

INGEST, INGEST_JOBS, JOBS, DELIVERY, IDLE = (
    "ingest", "ingest + jobs", "jobs", "delivery", "idle")
#: The phases a wave passes through, in order; a kill is aimed at one of them.
STAGES = (INGEST, INGEST_JOBS, JOBS, DELIVERY)
#: Every phase a kill can hit, in report order (idle: a cycle waiting out its quiet period).
PHASES = (*STAGES, IDLE)
#: Longest seeded delay between a phase being under way and the kill aimed at it.
KILL_DELAY_S = {INGEST: 0.4, INGEST_JOBS: 0.4, JOBS: 6.0, DELIVERY: 0.3}
PACS_ANSWER_DELAY_S = 0.35  # longer than a delivery kill's delay: a kill can always land
OPENING_SENDERS = 2
COMBINED_SEED = 70


def write_patients(root: Path, patients: int, cycles: tuple[int, ...],
                   seed: int = COMBINED_SEED,
                   supersampling: int = FAULT_SUPERSAMPLING) -> list[CourseManifest]:
    """One synthetic course (``cycles`` of it) per patient, each with its own seed and UIDs."""
    return [write_course(root / f"patient-{i}",
                         CourseWriteSpec(cycles=cycles, patient_id=f"COMBINED-{i:02d}",
                                         patient_name=f"Combined^Patient{i}",
                                         supersampling=supersampling), seed + i)
            for i in range(patients)]


@dataclass
class CombinedReport:
    """What a combined run did, what each kill hit, and what it produced."""

    patients: int
    cycles: int
    instances: int
    kills: int = 0
    phases: list[str] = field(default_factory=list)  # the phase each kill hit
    moments: list[str] = field(default_factory=list)
    acknowledged: int = 0
    indexed: int = 0
    duplicates_after_restart: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # broken promises of the archive
    run: CourseRun | None = None

    def spread(self) -> dict[str, int]:
        """Kills per phase hit, in :data:`PHASES` order."""
        counts = Counter(self.phases)
        return {phase: counts[phase] for phase in PHASES if counts[phase]}


def _phase(storing: bool, computing: bool, delivering: bool) -> str:
    if storing:
        return INGEST_JOBS if computing else INGEST
    if computing:
        return JOBS
    return DELIVERY if delivering else IDLE


def observe(db: NodeDatabase, senders: list[Sender]) -> tuple[str, str]:
    """The phase the node is in right now, and a line saying what is going on."""
    storing = sum(s.storing() for s in senders)
    what, computing = moment(db)
    phase = _phase(storing > 0, computing, bool(db.deliveries("pending")))
    return phase, f"{storing} sender(s) storing; {what}"


def kill_slots(kills: int, wave_instances: list[int]) -> list[tuple[int, int]]:
    """(wave, stage) each kill is aimed at.

    Each wave takes a share of the kills in proportion to the instances its
    senders store (a single-time-point cycle's short transfer cannot take as
    many kills as a four-time-point one), spread evenly over its four phases.
    """
    total = sum(wave_instances)
    slots: list[tuple[int, int]] = []
    for wave in range(len(wave_instances)):
        share = round(kills * sum(wave_instances[:wave + 1]) / total) - len(slots)
        slots += [(wave, k * len(STAGES) // share) for k in range(share)]
    return slots


def computed(db: NodeDatabase, jobs_per_kind: int) -> bool:
    """At least ``jobs_per_kind`` cycle and course jobs done; raises at a failed or
    incomplete job, which no wait would mend."""
    jobs = db.all_jobs()
    ended = [j for j in jobs if j.state in (JobState.FAILED, JobState.INCOMPLETE)]
    if ended:
        raise AssertionError(f"job {ended[0].id} ({ended[0].kind} {ended[0].label}) ended "
                             f"{ended[0].state.value}: {ended[0].message[:200]}")
    done = Counter(j.kind for j in jobs if j.state is JobState.DONE)
    return done["cycle"] >= jobs_per_kind and done["course"] >= jobs_per_kind


class _Waves:
    """The senders' timeline (module docstring), run on its own thread.

    ``progress`` is the (wave, stage) under way; ``(waves, 0)`` when every
    wave is over. A wave starts only while ``node_up`` is set (the kill loop
    clears it from a kill until the restarted node is verified), so that a
    short transfer does not pass unseen during a restart.
    """

    def __init__(self, port: int, waves: list[list[Sender]], db: NodeDatabase,
                 timeout_s: float) -> None:
        self.port = port
        self.waves = waves
        self.db = db
        self.timeout_s = timeout_s
        self.progress = (0, 0)
        self.node_up = threading.Event()
        self.node_up.set()
        self.completed = False
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="waves", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join(self.timeout_s * len(self.waves))
        if self._thread.is_alive():
            raise AssertionError("the senders' timeline did not finish")
        if not self.completed:
            raise AssertionError(f"the senders' timeline stopped: "
                                 f"{self.error or 'see the traceback above'}") from self.error

    def _run(self) -> None:
        try:
            for number, senders in enumerate(self.waves):
                self._wave(number, senders)
            self.completed = True
        except (AssertionError, OSError, sqlite3.Error) as exc:  # reported by join()
            self.error = exc
        finally:
            self.progress = (len(self.waves), 0)

    def _store(self, senders: list[Sender]) -> list[threading.Thread]:
        threads = [threading.Thread(target=keep_sending, args=(self.port, s), daemon=True)
                   for s in senders]
        for thread in threads:
            thread.start()
        return threads

    def _wave(self, number: int, senders: list[Sender]) -> None:
        before = len(senders) * number  # cycle jobs (and course jobs) of the earlier waves
        if not self.node_up.wait(self.timeout_s):
            raise AssertionError(f"wave {number + 1}: the node did not come back")
        self.progress = (number, 0)
        threads = self._store(senders[:OPENING_SENDERS])
        wait_for(lambda: sum(j.attempts > 0 for j in self.db.of_kind("cycle")) > before,
                 self.timeout_s, f"wave {number + 1}: a cycle job started", poll_s=0.02)
        self.progress = (number, 1)
        threads += self._store(senders[OPENING_SENDERS:])
        for thread in threads:
            thread.join(self.timeout_s)
        if any(s.pending() for s in senders):
            raise AssertionError(f"wave {number + 1}: the senders could not store everything")
        self.progress = (number, 2)
        wait_for(lambda: computed(self.db, before + len(senders)), self.timeout_s,
                 f"wave {number + 1}: every cycle and course computed", poll_s=0.02)
        self.progress = (number, 3)
        wait_for(self.db.all_delivered, self.timeout_s,
                 f"wave {number + 1}: every result delivered", poll_s=0.02)


@dataclass
class _Node:
    """The node under test and how to restart it."""

    config: Path
    port: int
    process: NodeProcess

    def kill_and_restart(self) -> None:
        self.process.kill()
        self.process = start_node(self.config, self.port)


def _kill(node: _Node, waves: _Waves, db: NodeDatabase, slot: tuple[int, int],
          delay_s: float, report: CombinedReport) -> None:
    """Wait for ``slot``'s phase to be under way (or over), wait ``delay_s``, kill, restart."""
    aimed = STAGES[slot[1]]
    senders = [s for wave in waves.waves for s in wave]
    wait_for(lambda: waves.progress >= slot, waves.timeout_s, f"wave {slot[0] + 1} {aimed}")
    wait_for(lambda: waves.progress > slot or observe(db, senders)[0] == aimed,
             waves.timeout_s, f"wave {slot[0] + 1}: {aimed} under way", poll_s=0.01)
    time.sleep(delay_s)
    waves.node_up.clear()
    phase, what = observe(db, senders)
    node.kill_and_restart()
    report.kills += 1
    report.phases.append(phase)
    report.moments.append(f"kill {report.kills} (aimed at wave {slot[0] + 1} {aimed}, hit "
                          f"{phase}): {what}")
    report.problems += verify(db.data_dir, senders)
    waves.node_up.set()


def course_run(db: NodeDatabase, destination: RecordingDestination, seconds: float) -> CourseRun:
    """The run's jobs, objects and arrivals; outputs keyed ``PATIENTID/cycle``, course totals
    ``PATIENTID vVERSION VOI``.

    Jobs carry the PatientID in place of the patient key: keys are keyed by each
    node's own site secret, so two runs (two data folders) give one patient two
    keys, and only the PatientID says which jobs are the same.
    """
    outputs, totals = {}, {}
    patient_ids = db.patient_ids()
    jobs = [replace(j, patient_key=patient_ids.get(j.patient_key, j.patient_key))
            for j in db.all_jobs()]
    for key, patient_id in patient_ids.items():
        outputs.update({f"{patient_id}/{n}": o for n, o in outputs_by_cycle(db, key).items()})
        for job in db.of_kind("course", JobState.DONE):
            if job.patient_key == key:
                totals.update({f"{patient_id} v{job.version} {voi}": gy
                               for voi, gy in course_totals_gy(db, job).items()})
    return CourseRun(jobs, db.result_objects(), list(destination.arrivals), outputs,
                     totals, 0, 0, seconds)


def run_combined(work: Path, manifests: list[CourseManifest], kills: int = 0, seed: int = 7,
                 timeout_s: float = 600) -> CombinedReport:
    """Store ``manifests`` (one patient each) wave by wave; kill the node ``kills`` times."""
    rng = random.Random(seed)
    cycles = sorted({tp.time_point.cycle_number for tp in manifests[0].time_points})
    waves = [[sender_of_files(f"MODALITY{i}", course_files(m, (c,)))
              for i, m in enumerate(manifests)] for c in cycles]
    senders = [s for wave in waves for s in wave]
    report = CombinedReport(len(manifests), len(cycles), sum(len(s.files) for s in senders))
    destination = RecordingDestination(free_port(), answer_delay_s=PACS_ANSWER_DELAY_S)
    destination.start()
    config, port, data_dir = write_node_config(work, destination.port)
    started = time.monotonic()
    node = _Node(config, port, start_node(config, port))
    db, timeline_db = NodeDatabase(data_dir), NodeDatabase(data_dir)
    timeline = _Waves(port, waves, timeline_db, timeout_s)
    try:
        timeline.start()
        for slot in kill_slots(kills, [sum(len(s.files) for s in wave) for wave in waves]):
            _kill(node, timeline, db, slot, rng.uniform(0.0, KILL_DELAY_S[STAGES[slot[1]]]),
                  report)
        timeline.join()
        time.sleep(SETTLE_S)
        if node.process.stop() != 0:
            report.problems.append("the node did not stop cleanly after the last kill")
        report.seconds = time.monotonic() - started
        report.run = course_run(db, destination, report.seconds)
        report.acknowledged = sum(len(s.acknowledged) for s in senders)
        report.indexed = db.query("select count(*) as n from instances")[0]["n"]
        report.problems += check_all_filed(data_dir, senders)
        report.duplicates_after_restart = identical_duplicates(node.process)
        return report
    finally:
        node.process.stop()
        destination.stop()
        db.close()
        timeline_db.close()


# -- the comparison with the clean run -------------------------------------------------
Signature = tuple[str, str, str, int | None]


def _signature(job: JobRecord) -> Signature:
    """What a job is, independent of the run: PatientID, kind, cycle or course label, version."""
    return job.patient_key, job.kind, job.label, job.version


def job_problems(run: CourseRun, clean: CourseRun) -> list[str]:
    """Each of the clean run's jobs done exactly once, from the same inputs; no other job."""
    problems = []
    found, expected = (Counter(_signature(j) for j in r.jobs) for r in (run, clean))
    problems += [f"job {s} computed {n} times" for s, n in found.items() if n > 1]
    if found.keys() != expected.keys():
        problems.append(f"jobs {sorted(found.keys() - expected.keys())} are not the clean "
                        f"run's; missing {sorted(expected.keys() - found.keys())}")
    inputs = {_signature(j): j.fingerprint for j in clean.jobs}
    for job in run.jobs:
        if job.state is not JobState.DONE:
            problems.append(f"job {job.id} ({job.kind} {job.label}) ended {job.state.value} "
                            f"version {job.version}: {job.message[:200]}")
        if inputs.get(_signature(job), job.fingerprint) != job.fingerprint:
            problems.append(f"job {_signature(job)} computed from other inputs than the clean run")
    return problems


def _objects_by_job(run: CourseRun) -> dict[Signature, list[str]]:
    signature_of = {j.id: _signature(j) for j in run.jobs}
    objects: dict[Signature, list[str]] = defaultdict(list)
    for row in run.objects:
        objects[signature_of[row["job_id"]]].append(row["sop_instance_uid"])
    return dict(objects)


def object_problems(run: CourseRun, clean: CourseRun) -> list[str]:
    """Every job produced the clean run's result objects (SOP Instance UIDs, in order), once."""
    found, expected = _objects_by_job(run), _objects_by_job(clean)
    return [f"job {s} produced {found.get(s, [])}, the clean run {expected.get(s, [])}"
            for s in sorted(found.keys() | expected.keys(), key=str)
            if found.get(s) != expected.get(s)]


def compare_with_clean(report: CombinedReport, clean: CombinedReport) -> list[str]:
    """Every broken promise of a kill run measured against the clean run of the same input.

    The archive's promises (acknowledged means indexed and whole) are in
    ``report.problems``; this adds the jobs', the results' and the deliveries'.
    """
    if report.run is None or clean.run is None:
        return ["the run did not finish"]
    run = report.run
    return (job_problems(run, clean.run) + result_problems(run, clean.run)
            + object_problems(run, clean.run) + arrival_problems(run, report.kills))


def clean_run_problems(clean: CombinedReport) -> list[str]:
    """The clean run itself: per patient and cycle one cycle job and one course version, all
    done, every object delivered once in production order, nothing lost in the archive."""
    if clean.run is None:
        return ["the clean run did not finish"]
    problems = list(clean.problems)
    expected = {"cycle": clean.patients * clean.cycles, "course": clean.patients * clean.cycles}
    kinds = Counter(j.kind for j in clean.run.jobs if j.state is JobState.DONE)
    if kinds != expected or len(clean.run.jobs) != sum(expected.values()):
        problems.append(f"clean run: {dict(kinds)} done of {len(clean.run.jobs)} jobs, "
                        f"expected {expected}")
    if len(clean.run.outputs) != expected["cycle"] or not clean.run.course_totals_gy:
        problems.append(f"clean run: {len(clean.run.outputs)} cycle results and "
                        f"{len(clean.run.course_totals_gy)} course totals read back")
    return problems + arrival_problems(clean.run, 0)
