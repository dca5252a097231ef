"""`theranode status` names every cycle's and course's latest job, and a failed job's reason."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from tests.service import factory
from tests.service.keys import TEST_KEYER
from tests.service.nodes import make_settings
from theranode.dicomio.headers import instance_header
from theranode.service.cli.jobs_view import render_dosimetry_status, render_jobs
from theranode.service.plan.planner import Planner, course_target
from theranode.service.plan.regroup import regroup_patient, rules_from_settings
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobState, JobStore

INJECTION = datetime(2024, 5, 6, 9, 15)
NOW = "2024-05-20T10:00:00"
CYCLE_ERROR = "PipelineError: the RTSTRUCT holds no contour on the reference CT"


def _indexed_cycle(index: IndexStore) -> str:
    """A patient with one 24 h SPECT/CT time point; returns its patient key."""
    frame = "1.2.3.24"
    acquired = INJECTION + timedelta(hours=24)
    datasets = [factory.nm("P1", INJECTION, acquired, frame=frame),
                factory.ct("P1", acquired, frame=frame)]
    key = ""
    for n, ds in enumerate(datasets):
        header = instance_header(ds, TEST_KEYER)
        key = header.patient_key
        index.add_instance(header, path=f"archive/{n}.dcm", sha256=f"{n:064x}", size=1,
                           transfer_syntax="1.2.840.10008.1.2.1", received=acquired,
                           calling_ae="TEST", peer="")
    return key


def test_status_lists_course_jobs_and_failed_jobs_with_their_reason(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    db = open_database(None)
    index, jobs = IndexStore(db), JobStore(db)
    key = _indexed_cycle(index)
    regroup_patient(index, rules_from_settings(settings.grouping), key)
    (plan,) = Planner(index, jobs, settings).plan_patient(key, submit=False)
    cycle = jobs.submit(kind="cycle", target=plan.target, patient_key=key, label="1.1",
                        fingerprint="cycle-inputs", payload=None, created_at=NOW)
    jobs.claim_next(NOW, str(tmp_path))
    jobs.finish(cycle.id, JobState.FAILED, NOW, CYCLE_ERROR)
    course = jobs.submit(kind="course", target=course_target(key, 1), patient_key=key,
                         label="1", fingerprint="course-inputs", payload=None, created_at=NOW,
                         message="course over cycles 1.1")
    jobs.claim_next(NOW, str(tmp_path))
    killed = "the worker process was killed by signal 9 (SIGKILL)"
    jobs.worker_lost(course.id, NOW, killed, max_attempts=3)

    status = list(render_dosimetry_status(db, settings))
    assert f"  ALERT P1/1.1: job {cycle.id} failed (version 1) — {CYCLE_ERROR}" in status
    assert (f"  P1/course 1: job {course.id} queued (version 1), attempt 2 after: {killed} — "
            "course over cycles 1.1") in status

    jobs.claim_next(NOW, str(tmp_path))
    jobs.worker_lost(course.id, NOW, killed, max_attempts=2)
    status = "\n".join(render_dosimetry_status(db, settings))
    assert (f"ALERT P1/course 1: job {course.id} failed (version 1) — {killed}; failed after 2 "
            "attempt(s) whose worker died ([jobs] max_attempts = 2)") in status
    listing = "\n".join(render_jobs(db))
    assert CYCLE_ERROR in listing
    assert f"attempts 2 (2 lost their worker); last: {killed}" in listing


def test_status_says_when_a_course_has_no_job_yet(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    db = open_database(None)
    index = IndexStore(db)
    key = _indexed_cycle(index)
    regroup_patient(index, rules_from_settings(settings.grouping), key)
    status = list(render_dosimetry_status(db, settings))
    assert "  P1/course 1: no course job yet (it follows the cycles' results)" in status
