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

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dicomio.phantom import CourseManifest
from service.store.jobs import JobState
from tests.peers import free_port
from tests.reliability.course_runs import (
    NodeDatabase,
    course_files,
    course_totals_gy,
    outputs_by_cycle,
    wait_for,
    write_node_config,
)
from tests.reliability.destination import RecordingDestination
from tests.reliability.outage import SETTLE_S, CourseRun
from tests.reliability.processes import start_node
from tests.service.nodes import send

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


def _moment(db: NodeDatabase) -> tuple[str, bool]:
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
            what, in_job = _moment(db)
            node.kill()
            report.kills += 1
            report.kills_during_a_job += int(in_job)
            report.moments.append(f"kill {k + 1} ({phase[0]} {phase[1] + 1}): {what}")
            node = start_node(config, port)
        wait_for(lambda: len(db.of_kind("cycle", JobState.DONE)) == cycles
                 and db.of_kind("course", JobState.DONE) and db.all_delivered(),
                 timeout_s, "the course computed and delivered after the last kill")
        time.sleep(SETTLE_S)
        assert node.stop() == 0, "the node did not stop cleanly after the last kill"
        report.run = CourseRun(db.all_jobs(), db.result_objects(), list(destination.arrivals),
                               outputs_by_cycle(db), course_totals_gy(db), 0, 0, 0.0)
        return report
    finally:
        node.stop()
        destination.stop()
        db.close()
