"""Crash safety of jobs: SIGKILL ``theranode serve`` while a course's cycles are computed.

:func:`run_job_kills` sends a course to a real node process whose DICOM
destination is up, and kills the node with SIGKILL repeatedly, restarting it
each time. The kills are spread over the phases of the course (a seeded
random delay after the phase begins): the first cycle job running, the later
cycle jobs, the course job, and the delivery of the results (just after the
course job is done). After the last kill the node finishes by itself; the
caller compares the outcome with a clean run (:mod:`tests.reliability.outage`).
Shared by the CI test and ``benchmarks/reliability.py``.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers import free_port
from tests.reliability.course_runs import (
    NodeDatabase,
    course_files,
    course_totals_gy,
    outputs_by_cycle,
    write_node_config,
)
from tests.reliability.destination import RecordingDestination
from tests.reliability.outage import SETTLE_S, CourseRun
from tests.reliability.processes import NodeProcess, start_node
from tests.service.nodes import send
from tests.waiting import wait_for
from theranode.dicomio.synthetic_course import CourseManifest
from theranode.service.store.jobs import JobState

DELIVERY_DELAY_S = 0.05  # results go out within milliseconds of their job's commit


@dataclass
class JobKillReport:
    """What the kills hit, and the run's outcome."""

    kills: int = 0
    moments: list[str] = field(default_factory=list)
    kills_during_a_job: int = 0
    run: CourseRun | None = None


def _phases(cycles: int) -> list[tuple[str, int]]:
    return [("cycle", 0), *(("cycle", i) for i in range(cycles)), ("course", 0), ("delivery", 0)]


def _phase_reached(db: NodeDatabase, phase: tuple[str, int]) -> Callable[[], bool]:
    kind, index = phase
    started = (JobState.RUNNING, JobState.DONE)

    def reached() -> bool:
        if kind == "delivery":
            return bool(db.of_kind("course", JobState.DONE))
        jobs = db.of_kind(kind)
        return len(jobs) > index and jobs[index].state in started

    return reached


def moment(db: NodeDatabase) -> tuple[str, bool]:
    """What the node is doing (running jobs, deliveries), and whether a job is running."""
    running = [f"{j.kind} {j.label} (attempt {j.attempts})"
               for j in db.all_jobs() if j.state is JobState.RUNNING]
    sent, pending = len(db.deliveries("sent")), len(db.deliveries("pending"))
    what = f"running: {', '.join(running) or 'no job'}; deliveries {sent} sent, {pending} pending"
    return what, bool(running)


def run_job_kills(work: Path, manifest: CourseManifest, cycles: int, kills: int = 5,
                  seed: int = 7, max_delay_s: float = 5.0, timeout_s: float = 400) -> JobKillReport:
    """Kill the node ``kills`` times during the course's jobs and deliveries; then let it finish."""
    rng = random.Random(seed)
    report = JobKillReport()
    destination = RecordingDestination(free_port())
    destination.start()
    config, port, data_dir = write_node_config(work, destination.port)
    node = start_node(config, port)
    db = NodeDatabase(data_dir)
    phases = _phases(cycles)
    try:
        assert set(send(port, course_files(manifest))) == {0}
        for k in range(kills):
            phase = phases[k * len(phases) // kills]
            delivery = phase[0] == "delivery"
            wait_for(_phase_reached(db, phase), timeout_s, f"phase {phase}",
                     poll_s=0.005 if delivery else 0.1)
            limit = DELIVERY_DELAY_S if delivery else max_delay_s
            time.sleep(rng.uniform(0.0, limit))
            what, in_job = moment(db)
            node.kill()
            report.kills += 1
            report.kills_during_a_job += int(in_job)
            report.moments.append(f"kill {k + 1} ({phase[0]} {phase[1] + 1}): {what}")
            node = start_node(config, port)
        report.run = finish_course_run(node, db, destination, cycles, timeout_s,
                                       "after the last kill")
        return report
    finally:
        node.stop()
        destination.stop()
        db.close()


def finish_course_run(node: NodeProcess, db: NodeDatabase, destination: RecordingDestination,
                      cycles: int, timeout_s: float, after: str) -> CourseRun:
    """Wait until every cycle and the course are done and delivered, stop the node, record."""
    wait_for(lambda: len(db.of_kind("cycle", JobState.DONE)) == cycles
             and db.of_kind("course", JobState.DONE) and db.all_delivered(),
             timeout_s, f"the course computed and delivered {after}")
    time.sleep(SETTLE_S)
    assert node.stop() == 0, f"the node did not stop cleanly {after}"
    return CourseRun(db.all_jobs(), db.result_objects(), list(destination.arrivals),
                     outputs_by_cycle(db), course_totals_gy(db), 0, 0, 0.0)


def _job_problems(run: CourseRun, cycles: int) -> list[str]:
    problems = []
    per_target = Counter(j.target for j in run.jobs)
    if set(per_target.values()) != {1}:
        problems.append(f"more than one job for a target: {dict(per_target)}")
    kinds = Counter(j.kind for j in run.jobs)
    if kinds != {"cycle": cycles, "course": 1}:
        problems.append(f"expected {cycles} cycle jobs and 1 course job, found {dict(kinds)}")
    for job in run.jobs:
        if (job.state, job.version) != (JobState.DONE, 1):
            problems.append(f"job {job.id} ({job.kind} {job.label}) ended {job.state.value} "
                            f"version {job.version}: {job.message[:200]}")
    return problems


def result_problems(run: CourseRun, clean: CourseRun) -> list[str]:
    """Per cycle (the outputs' keys) VOI mean doses and RT Dose pixels, and the course totals,
    as the clean run's."""
    problems = []
    if run.outputs.keys() != clean.outputs.keys():
        problems.append(f"cycles {sorted(run.outputs)} computed, clean run {sorted(clean.outputs)}")
    for number in sorted(run.outputs.keys() & clean.outputs.keys()):
        found, expected = run.outputs[number], clean.outputs[number]
        if found.mean_gy.keys() != expected.mean_gy.keys():
            problems.append(f"cycle {number}: VOIs differ from the clean run")
        for name in found.mean_gy.keys() & expected.mean_gy.keys():
            if not math.isclose(found.mean_gy[name], expected.mean_gy[name], rel_tol=1e-9):
                problems.append(f"cycle {number} {name}: {found.mean_gy[name]!r} Gy, clean "
                                f"run {expected.mean_gy[name]!r} Gy")
        if found.rtdose_pixels is None or found.rtdose_pixels != expected.rtdose_pixels:
            problems.append(f"cycle {number}: RT Dose pixels differ from the clean run")
    for name, total_gy in clean.course_totals_gy.items():
        if not math.isclose(run.course_totals_gy.get(name, math.nan), total_gy, rel_tol=1e-9):
            problems.append(f"course total {name} differs from the clean run")
    return problems


def _delivery_problems(run: CourseRun, clean: CourseRun, kills: int) -> list[str]:
    problems = []
    produced = [o["sop_instance_uid"] for o in run.objects]
    if produced != [o["sop_instance_uid"] for o in clean.objects]:
        problems.append("the result objects are not the clean run's (UIDs or order differ)")
    return problems + arrival_problems(run, kills)


def arrival_problems(run: CourseRun, kills: int) -> list[str]:
    """The destination got every object the run produced, first arrivals in production
    order, a resend only as the same bytes, and at most one resend per kill."""
    problems = []
    produced = [o["sop_instance_uid"] for o in run.objects]
    received = [a.sop_instance_uid for a in run.arrivals]
    if list(dict.fromkeys(received)) != produced:
        problems.append("the destination's first arrivals are not every object in order")
    hashes: dict[str, set[str]] = {}
    for arrival in run.arrivals:
        hashes.setdefault(arrival.sop_instance_uid, set()).add(arrival.sha256)
    problems += [f"{uid} arrived as different objects" for uid, h in hashes.items() if len(h) > 1]
    problems += [f"{uid} arrived {n} times after {kills} kills"
                 for uid, n in Counter(received).items() if n > kills + 1]
    return problems


def compare_with_clean(report: JobKillReport, clean: CourseRun, cycles: int) -> list[str]:
    """Every broken promise of a kill run: jobs once, clean results, the same objects delivered.

    A resend of an object the destination acknowledged before a kill (same
    UID, same bytes) is allowed (docs/conformance.md); it is counted in
    :func:`resent`.
    """
    if report.run is None:
        return ["the run did not finish"]
    run = report.run
    return (_job_problems(run, cycles) + result_problems(run, clean)
            + _delivery_problems(run, clean, report.kills))


def resent(run: CourseRun) -> int:
    """How many extra arrivals (resends of an already delivered object) the destination saw."""
    return len(run.arrivals) - len({a.sop_instance_uid for a in run.arrivals})
