"""Jobs: persisted, deduplicated by input fingerprint, run in worker processes, resumed after a restart."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest

from service.jobs import JobRunner
from service.pipeline import RESULT_FILE, CourseJobInput, JobKind
from service.store import open_database
from service.store.jobs import JobState, JobStore
from service.store.outbox import OutboxStore
from tests.dicomio.result_records import cycle_result, dose_map, source_for_cycle
from tests.service.nodes import make_settings

NOW = "2024-05-01T10:00:00"


def submit(store: JobStore, fingerprint: str, target: str = "cycle|p|1", payload: bytes = b""):
    return store.submit(kind="cycle", target=target, patient_key="p", label="1.1",
                        fingerprint=fingerprint, payload=payload, created_at=NOW)


def test_same_inputs_are_never_queued_twice(tmp_path: Path) -> None:
    store = JobStore(open_database(tmp_path / "db.sqlite"))
    first = submit(store, "inputs-a")
    assert first is not None and first.state is JobState.QUEUED
    assert submit(store, "inputs-a") is None
    second = submit(store, "inputs-b")
    assert second is not None
    assert store.get(first.id).state is JobState.SUPERSEDED  # overtaken while queued
    assert submit(store, "inputs-a") is None  # even a superseded input set is not redone


def test_versions_are_fixed_at_first_start_and_kept_on_resume(tmp_path: Path) -> None:
    store = JobStore(open_database(tmp_path / "db.sqlite"))
    job = submit(store, "inputs-a")
    claimed = store.claim_next(NOW, str(tmp_path))
    assert claimed.id == job.id and claimed.version == 1 and claimed.state is JobState.RUNNING
    store.finish(job.id, JobState.DONE, NOW, "ok", "results/job-1")
    later = submit(store, "inputs-b")
    running = store.claim_next(NOW, str(tmp_path))
    assert running.id == later.id and running.version == 2
    # a crash leaves it running; the next start puts it back with its version
    reopened = JobStore(open_database(tmp_path / "db.sqlite"))
    assert [j.id for j in reopened.requeue_interrupted()] == [later.id]
    again = reopened.claim_next(NOW, str(tmp_path))
    assert again.id == later.id and again.version == 2 and again.attempts == 2


def test_reprocess_generation_is_counted_per_target(tmp_path: Path) -> None:
    store = JobStore(open_database(tmp_path / "db.sqlite"))
    assert store.generation("cycle|p|1") == 0
    assert store.bump_generation("cycle|p|1") == 1
    assert store.bump_generation("cycle|p|1") == 2
    assert store.generation("cycle|p|2") == 0


def stored_cycle(data_dir: Path) -> str:
    """A computed cycle's result folder, as a cycle job leaves it."""
    folder = data_dir / "results" / "job-0"
    folder.mkdir(parents=True)
    source, _ = source_for_cycle()
    payload = {"result": cycle_result(1), "source": source, "reference_ct": dose_map()}
    (folder / RESULT_FILE).write_bytes(pickle.dumps(payload))
    return "results/job-0"


def course_job(store: JobStore, cycle_results: tuple[str, ...], fingerprint: str):
    return store.submit(
        kind=JobKind.COURSE.value, target="course|p|1", patient_key="p", label="1",
        fingerprint=fingerprint, payload=pickle.dumps(CourseJobInput(cycle_results)),
        created_at=NOW)


def wait_for(store: JobStore, job_id: int, states: set[JobState], timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} still {store.get(job_id).state} after {timeout_s} s")


def test_interrupted_job_resumes_after_restart_and_queues_its_deliveries(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", destinations=[
        {"name": "archive", "folder": str(tmp_path / "out")},
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}])
    db_path = tmp_path / "data" / "theranode.db"
    store = JobStore(open_database(db_path))
    folder = stored_cycle(settings.data_dir)
    job = course_job(store, (folder,), "course-inputs")
    claimed = store.claim_next(NOW, str(tmp_path))  # the node died while running it
    assert claimed.state is JobState.RUNNING and claimed.version == 1

    restarted = JobStore(open_database(db_path))
    outbox = OutboxStore(restarted)
    runner = JobRunner(restarted, outbox, settings)
    runner.start()
    try:
        done = wait_for(restarted, job.id, {JobState.DONE, JobState.FAILED})
    finally:
        runner.stop()
    assert done.state is JobState.DONE, done.message
    assert (done.version, done.attempts, done.created_at) == (1, 2, NOW)
    objects = outbox.objects_of_job(job.id)
    assert [o["modality"] for o in objects] == ["RTDOSE", "SR", "DOC"]
    for o in objects:
        assert (settings.data_dir / o["path"]).is_file()
    deliveries = outbox.deliveries_of_job(job.id)
    assert {(d["destination"], d["state"]) for d in deliveries} == {
        ("archive", "pending"), ("pacs", "pending")}
    assert len(deliveries) == 6
    assert "Job %d done" % job.id in Path(done.log_path).read_text()


def test_failing_job_is_failed_with_its_reason_and_the_queue_goes_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    store = JobStore(open_database(tmp_path / "data" / "theranode.db"))
    broken = course_job(store, ("results/job-404",), "missing")
    runner = JobRunner(store, OutboxStore(store), settings)
    runner.start()
    try:
        failed = wait_for(store, broken.id, {JobState.DONE, JobState.FAILED})
        good = course_job(store, (stored_cycle(settings.data_dir),), "present")
        runner.wake()
        done = wait_for(store, good.id, {JobState.DONE, JobState.FAILED})
    finally:
        runner.stop()
    assert failed.state is JobState.FAILED
    assert "FileNotFoundError" in failed.message and "job-404" in failed.message
    assert "Traceback" in Path(failed.log_path).read_text()
    assert done.state is JobState.DONE
