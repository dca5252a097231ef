"""The planner's loop: a request plans that patient only; every patient at start and on the
timer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from tests.service.indexing import index_time_point
from tests.service.nodes import make_settings
from theranode.config.schema import Settings
from theranode.service.app import Node
from theranode.service.plan.planner import Planner, cycle_target
from theranode.service.plan.regroup import regroup_patient, rules_from_settings
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobState, JobStore

INJECTION = datetime(2024, 5, 6, 9, 15)
#: Long after the forced timeout: a cycle with one of its four time points is incomplete.
LATER = INJECTION + timedelta(days=30)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the planner did not plan in time"
        time.sleep(0.05)


def _two_patients(tmp_path: Path, poll_interval_s: float) -> tuple[Settings, IndexStore, JobStore,
                                                                   list[str]]:
    settings = make_settings(tmp_path / "data", jobs={"poll_interval_s": poll_interval_s})
    index = IndexStore(open_database(tmp_path / "t.db"))
    jobs = JobStore(open_database(tmp_path / "t.db"))
    keys = [index_time_point(index, "PA", INJECTION, "1.2.3.1"),
            index_time_point(index, "PB", INJECTION, "1.2.3.2")]
    for key in keys:
        regroup_patient(index, rules_from_settings(settings.grouping), key)
    return settings, index, jobs, keys


def _jobs_of(jobs: JobStore, key: str) -> list[JobRecord]:
    return jobs.of_target(cycle_target(key, INJECTION))


def test_a_request_plans_that_patient_only(tmp_path: Path) -> None:
    settings, index, jobs, (a, b) = _two_patients(tmp_path, poll_interval_s=3600)
    planner = Planner(index, jobs, settings, clock=lambda: LATER)
    planner.start()
    try:
        # start-up: every patient is planned (an incomplete cycle is recorded as a job)
        _wait_for(lambda: len(_jobs_of(jobs, a)) == 1 and len(_jobs_of(jobs, b)) == 1)
        assert _jobs_of(jobs, a)[0].state is JobState.INCOMPLETE
        # both would now get a new version when planned ...
        for key in (a, b):
            jobs.bump_generation(cycle_target(key, INJECTION))
        # ... but a request for A plans A only
        planner.request(a)
        _wait_for(lambda: len(_jobs_of(jobs, a)) == 2)
    finally:
        planner.stop()  # returns once the pass in progress has ended
    assert len(_jobs_of(jobs, b)) == 1


def test_every_patient_is_planned_again_on_the_timer_without_a_request(tmp_path: Path) -> None:
    settings, index, jobs, (a, b) = _two_patients(tmp_path, poll_interval_s=0.2)
    planner = Planner(index, jobs, settings, clock=lambda: LATER)
    planner.start()
    try:
        _wait_for(lambda: len(_jobs_of(jobs, a)) == 1 and len(_jobs_of(jobs, b)) == 1)
        for key in (a, b):
            jobs.bump_generation(cycle_target(key, INJECTION))
        _wait_for(lambda: len(_jobs_of(jobs, a)) == 2 and len(_jobs_of(jobs, b)) == 2)
    finally:
        planner.stop()


def test_the_node_plans_the_patient_of_a_regroup_and_of_a_finished_job(
    tmp_path: Path,
) -> None:
    node = Node(make_settings(tmp_path / "data"))
    assert node.regrouper.on_grouped == node.planner.request  # called with the patient key
    asked: list[str] = []
    node.planner.request = asked.append  # type: ignore[method-assign]
    job = node.jobs.submit(kind="cycle", target="cycle|key-a|2024-05-06T09:15:00",
                           patient_key="key-a", label="1.1", fingerprint="inputs",
                           payload=None, created_at=LATER.isoformat())
    assert job is not None
    node._job_finished(job)
    assert asked == ["key-a"]
