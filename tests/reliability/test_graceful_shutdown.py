"""Graceful shutdown is as safe as a crash: ``theranode serve`` stopped by SIGTERM (to the
node, or to its whole process group as systemd does) and by Ctrl-C (SIGINT to the process
group) while cycle and course jobs compute, once while results are being delivered.

Each stop ends the node with exit code 0 within seconds and leaves the interrupted job
queued with its version (as `theranode status` says) and the unanswered deliveries
pending; after the restarts every
job is done once as version 1, the
results equal an uninterrupted run's (the outage run, shared with test_outage.py and
test_jobs_under_kills.py) and the destination holds every result object under the same
SOP Instance UIDs, in order.
"""

from __future__ import annotations

import pytest

from tests.reliability.course_runs import two_cycle_course
from tests.reliability.graceful_stops import run_graceful_stops
from tests.reliability.job_kills import compare_with_clean
from tests.reliability.outage import clean_two_cycle_run
from theranode.service.jobs.runner import INTERRUPTED_BY_SHUTDOWN
from theranode.service.store.jobs import JobState

STOP_WITHIN_S = 15.0


@pytest.mark.slow
def test_sigterm_and_ctrl_c_while_jobs_run_lose_nothing_and_change_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    manifest = two_cycle_course(tmp_path_factory)
    report = run_graceful_stops(tmp_path_factory.mktemp("stops"), manifest, cycles=2)
    clean = clean_two_cycle_run(tmp_path_factory)  # perhaps made meanwhile by another worker
    for record in report.stops:
        name = record.stop.name
        assert record.exit_code == 0, name
        assert record.seconds < STOP_WITHIN_S, (name, record.seconds)
        if record.stop.while_delivering:
            assert record.pending > 0, (name, "the stop came after the last delivery")
        job = record.job
        assert job.kind == record.stop.kind, name
        assert (job.state, job.version, job.worker_deaths) == (JobState.QUEUED, 1, 0), (
            name, job)
        assert job.last_error == INTERRUPTED_BY_SHUTDOWN, (name, job.last_error)
        what = f"course {job.label}:" if job.kind == "course" else f"/{job.label}:"
        line = next((x for x in record.status.splitlines() if what in x), "")
        assert f"job {job.id} queued (version 1), attempt 2 after: {INTERRUPTED_BY_SHUTDOWN}" \
            in line, (name, "theranode status shows the job and why it waits", record.status)

    assert report.run is not None
    assert compare_with_clean(report.as_kill_report(), clean, cycles=2) == []
    assert all(j.worker_deaths == 0 and j.state is JobState.DONE for j in report.run.jobs)
    interrupted = {(r.job.kind, r.job.label) for r in report.stops}
    assert len(interrupted) == 3, "both cycle jobs and the course job were interrupted"
    for job in report.run.jobs:
        assert job.attempts == 2, (job.kind, job.label, "started again once after its stop")
