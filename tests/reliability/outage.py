"""A destination down for a whole course: the node computes everything, then delivers.

:func:`run_outage` starts ``theranode serve`` with one DICOM destination on a
port where nothing listens, sends it a course, waits until every cycle and
the course result are computed (the outbox meanwhile retries with backoff
and records the failures), then starts the destination and waits until every
delivery is ``sent``. The run is also the clean reference (no kill, no fault
in the computation) the job-kill test compares with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers import free_port
from tests.reliability.course_runs import (
    COURSE_SEED,
    CycleOutput,
    NodeDatabase,
    course_files,
    course_totals_gy,
    outputs_by_cycle,
    two_cycle_course,
    write_node_config,
)
from tests.reliability.destination import Arrival, RecordingDestination
from tests.reliability.processes import start_node
from tests.reliability.shared_runs import shared
from tests.service.nodes import send
from tests.waiting import wait_for
from theranode.dicomio.synthetic_course import CourseManifest
from theranode.service.store.jobs import JobRecord, JobState

SETTLE_S = 2.0  # after the last delivery: long enough for any (wrong) second send to show


@dataclass(frozen=True)
class CourseRun:
    """What a node run produced and what the destination received."""

    jobs: list[JobRecord]
    objects: list[dict[str, Any]]
    arrivals: list[Arrival]
    outputs: dict[Any, CycleOutput]  # by cycle number; by "PATIENTID/cycle" for several patients
    course_totals_gy: dict[str, float]
    failed_attempts_while_down: int
    pending_while_down: int
    seconds: float


def _failures(db: NodeDatabase) -> int:
    rows = db.query("select failures from destinations where name = 'pacs'")
    return int(rows[0]["failures"]) if rows else 0


def run_outage(work: Path, manifest: CourseManifest, cycles: int,
               timeout_s: float = 300) -> CourseRun:
    """Compute ``manifest`` (``cycles`` cycles and a course) with the destination down."""
    started = time.monotonic()
    destination = RecordingDestination(free_port())
    config, port, data_dir = write_node_config(work, destination.port)
    node = start_node(config, port)
    db = NodeDatabase(data_dir)
    try:
        assert set(send(port, course_files(manifest))) == {0}
        wait_for(lambda: len(db.of_kind("cycle", JobState.DONE)) == cycles
                 and db.of_kind("course", JobState.DONE), timeout_s, "the whole course computed")
        wait_for(lambda: _failures(db) >= 2, 30, "two failed delivery attempts")
        pending = len(db.deliveries("pending"))
        failures = _failures(db)
        sent_while_down = db.deliveries("sent", "refused")
        assert not sent_while_down, f"delivered while the destination was down: {sent_while_down}"
        destination.start()
        wait_for(db.all_delivered, 60, "every object delivered once the destination is up")
        time.sleep(SETTLE_S)
        assert node.stop() == 0, "the node did not stop cleanly"
        return CourseRun(db.all_jobs(), db.result_objects(), list(destination.arrivals),
                         outputs_by_cycle(db), course_totals_gy(db), failures, pending,
                         time.monotonic() - started)
    finally:
        node.stop()
        destination.stop()
        db.close()


def clean_two_cycle_run(factory: Any) -> CourseRun:
    """The two-cycle course through a node whose destination is down, then up.

    Run once per test session (``factory``: pytest's ``tmp_path_factory``),
    whichever worker asks first (:func:`tests.reliability.shared_runs.shared`).
    The run has no fault in the computation, so it is the clean reference of
    the job-kill and graceful-shutdown tests too.
    """
    manifest = two_cycle_course(factory)
    return shared(factory, f"outage-seed{COURSE_SEED}-cycles1-2",
                  lambda folder: run_outage(folder, manifest, cycles=2))
