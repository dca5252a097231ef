"""Jobs: persisted, deduplicated by input fingerprint, run in worker processes, resumed after a
restart or a shutdown, retried (boundedly) when their worker is killed from outside.

The tests of the job store, and of the runner where it writes the store (a job's end with its
deliveries, a lost worker, a shutdown), take ``database_url`` and run on SQLite and on
PostgreSQL; so do two nodes submitting and claiming at once on one database. The runner's own
behaviour (signals, time limit) and upgrades of SQLite databases of earlier versions are tested
on SQLite."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.dicomio.result_records import cycle_result, dose_map, source_for_cycle
from tests.service.nodes import make_settings
from theranode.service.cli.jobs_view import render_jobs
from theranode.service.jobs.payload import encode_payload
from theranode.service.jobs.results import write_result
from theranode.service.jobs.runner import (
    JobRunner,
    _context,
    die_with_node,
    worker_death,
    worker_main,
)
from theranode.service.jobs.spec import CourseJobInput, JobKind
from theranode.service.store import open_database
from theranode.service.store.database import connect, sqlite_url
from theranode.service.store.jobs import MIGRATIONS as JOB_MIGRATIONS
from theranode.service.store.jobs import JobState, JobStore
from theranode.service.store.outbox import OutboxStore

NOW = "2024-05-01T10:00:00"
T = TypeVar("T")


def submit(store: JobStore, fingerprint: str, target: str = "cycle|p|1", payload: bytes = b""):
    return store.submit(kind="cycle", target=target, patient_key="p", label="1.1",
                        fingerprint=fingerprint, payload=payload, created_at=NOW)


def test_same_inputs_are_never_queued_twice(database_url: str) -> None:
    store = JobStore(open_database(database_url))
    first = submit(store, "inputs-a")
    assert first is not None and first.state is JobState.QUEUED
    assert submit(store, "inputs-a") is None
    second = submit(store, "inputs-b")
    assert second is not None
    assert store.get(first.id).state is JobState.SUPERSEDED  # overtaken while queued
    assert submit(store, "inputs-a") is None  # even a superseded input set is not redone


def test_versions_are_fixed_at_first_start_and_kept_on_resume(
    tmp_path: Path, database_url: str
) -> None:
    store = JobStore(open_database(database_url))
    job = submit(store, "inputs-a")
    claimed = store.claim_next(NOW, str(tmp_path))
    assert claimed.id == job.id and claimed.version == 1 and claimed.state is JobState.RUNNING
    store.finish(job.id, JobState.DONE, NOW, "ok", "results/job-1")
    later = submit(store, "inputs-b")
    running = store.claim_next(NOW, str(tmp_path))
    assert running.id == later.id and running.version == 2
    # a crash leaves it running; the next start puts it back with its version
    reopened = JobStore(open_database(database_url))
    assert [j.id for j in reopened.requeue_interrupted()] == [later.id]
    again = reopened.claim_next(NOW, str(tmp_path))
    assert again.id == later.id and again.version == 2 and again.attempts == 2


def test_reprocess_generation_is_counted_per_target(database_url: str) -> None:
    store = JobStore(open_database(database_url))
    assert store.generation("cycle|p|1") == 0
    assert store.bump_generation("cycle|p|1") == 1
    assert store.bump_generation("cycle|p|1") == 2
    assert store.generation("cycle|p|2") == 0


# -- several nodes on one database --------------------------------------------------------
NODES = 2


def at_once(work: Callable[[int], T]) -> list[T]:
    """``work(node)`` for each of :data:`NODES` nodes in a thread of its own, started together;
    returns what each returned and raises what any raised."""
    start = threading.Barrier(NODES)
    results: list[T | None] = [None] * NODES
    errors: list[BaseException] = []

    def run(node: int) -> None:
        try:
            start.wait()
            results[node] = work(node)
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(node,)) for node in range(NODES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results  # type: ignore[return-value]


def node_stores(url: str) -> list[JobStore]:
    """The job store of each node: its own connection to the database at ``url``."""
    return [JobStore(open_database(url)) for _ in range(NODES)]


def test_nodes_submitting_the_same_inputs_at_once_queue_one_job(database_url: str) -> None:
    """Two nodes complete one cycle at the same moment: one job, the other node gets None."""
    stores = node_stores(database_url)
    for cycle in range(20):
        target = f"cycle|p|{cycle}"
        submitted = at_once(lambda node: submit(stores[node], "inputs", target=target))
        assert sum(job is not None for job in submitted) == 1, submitted
    assert len(stores[0].all()) == 20


def test_nodes_claiming_at_once_never_run_one_job_twice(
    tmp_path: Path, database_url: str
) -> None:
    stores = node_stores(database_url)
    queued = {submit(stores[0], "inputs", target=f"cycle|p|{n}").id for n in range(30)}

    def claim_all(node: int) -> list[int]:
        claimed = []
        while (job := stores[node].claim_next(NOW, str(tmp_path))) is not None:
            claimed.append(job.id)
        return claimed

    first, second = at_once(claim_all)
    assert sorted(first + second) == sorted(queued), "every job claimed, and once"
    assert {j.state for j in stores[1].all()} == {JobState.RUNNING}
    assert {(j.version, j.attempts) for j in stores[1].all()} == {(1, 1)}


def stored_cycle(data_dir: Path) -> str:
    """A computed cycle's result folder, as a cycle job leaves it."""
    folder = data_dir / "results" / "job-0"
    folder.mkdir(parents=True)
    source, _ = source_for_cycle()
    write_result(folder, cycle_result(1), source, dose_map())
    return "results/job-0"


def course_job(store: JobStore, cycle_results: tuple[str, ...], fingerprint: str,
               target: str = "course|p|1"):
    return store.submit(
        kind=JobKind.COURSE.value, target=target, patient_key="p", label="1",
        fingerprint=fingerprint, payload=encode_payload(CourseJobInput(cycle_results)),
        created_at=NOW)


def wait_for(store: JobStore, job_id: int, states: set[JobState], timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    pytest.fail(f"job {job_id} still {store.get(job_id).state} after {timeout_s} s")


def test_interrupted_job_resumes_after_restart_and_queues_its_deliveries(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "data", destinations=[
        {"name": "archive", "folder": str(tmp_path / "out")},
        {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 1}])
    store = JobStore(open_database(database_url))
    folder = stored_cycle(settings.data_dir)
    job = course_job(store, (folder,), "course-inputs")
    claimed = store.claim_next(NOW, str(tmp_path))  # the node died while running it
    assert claimed.state is JobState.RUNNING and claimed.version == 1

    restarted = JobStore(open_database(database_url))
    outbox = OutboxStore(restarted.db, restarted.lock)
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


def test_failing_job_is_failed_with_its_reason_and_the_queue_goes_on(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "data")
    store = JobStore(open_database(database_url))
    broken = course_job(store, ("results/job-404",), "missing")
    runner = JobRunner(store, OutboxStore(store.db, store.lock), settings)
    runner.start()
    try:
        failed = wait_for(store, broken.id, {JobState.DONE, JobState.FAILED})
        good = course_job(store, (stored_cycle(settings.data_dir),), "present")
        runner.wake()
        done = wait_for(store, good.id, {JobState.DONE, JobState.FAILED})
    finally:
        runner.stop()
    assert failed.state is JobState.FAILED
    assert "StoredResultError" in failed.message and "job-404" in failed.message
    assert "Traceback" in Path(failed.log_path).read_text()
    assert done.state is JobState.DONE


# -- retries and shutdown -----------------------------------------------------------------
def _runs(log_path: str) -> int:
    """Count this run of a job in a file beside its log; returns the run number."""
    counter = Path(log_path).with_suffix(".runs")
    with counter.open("a") as handle:
        handle.write("run\n")
    return len(counter.read_text().splitlines())


def killed_twice(spec, log_path: str, conn) -> None:
    """A worker killed by SIGKILL (as the OOM killer does) on its first two runs."""
    if _runs(log_path) <= 2:
        os.kill(os.getpid(), signal.SIGKILL)
    worker_main(spec, log_path, conn)


def always_killed(spec, log_path: str, conn) -> None:
    _runs(log_path)
    os.kill(os.getpid(), signal.SIGKILL)


def stuck(spec, log_path: str, conn) -> None:
    """A worker that computes for longer than any test waits (until the runner kills it)."""
    _runs(log_path)
    time.sleep(120)


def signalled_by_the_terminal(spec, log_path: str, conn) -> None:
    """Ctrl-C and a service manager's SIGTERM reach every process of the group or cgroup."""
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    worker_main(spec, log_path, conn)


def run_jobs(tmp_path: Path, worker, fingerprints: tuple[str, ...] = ("present",),
             url: str | None = None, **jobs_settings) -> list:
    """Run a course job per fingerprint to its end with ``worker`` as the worker process, on
    the database at ``url`` (default: an SQLite file in the data folder)."""
    settings = make_settings(tmp_path / "data", jobs=jobs_settings)
    store = JobStore(open_database(url or settings.database_url))
    folder = stored_cycle(settings.data_dir)
    submitted = [course_job(store, (folder,), fp, target=f"course|{fp}|1")
                 for fp in fingerprints]
    runner = JobRunner(store, OutboxStore(store.db, store.lock), settings, worker=worker)
    runner.start()
    try:
        return [wait_for(store, job.id, {JobState.DONE, JobState.FAILED}) for job in submitted]
    finally:
        runner.stop()


def test_worker_killed_from_outside_is_retried_with_its_version(tmp_path: Path) -> None:
    (done,) = run_jobs(tmp_path, killed_twice)
    assert done.state is JobState.DONE, done.message
    assert (done.version, done.attempts, done.worker_deaths) == (1, 3, 2)
    assert "killed by signal 9 (SIGKILL)" in done.last_error
    assert "out of memory" in done.last_error


def test_worker_killed_on_every_run_fails_after_max_attempts_with_the_reason(
    tmp_path: Path, database_url: str
) -> None:
    failed, after = run_jobs(tmp_path, always_killed, ("first", "second"), database_url,
                             max_attempts=2)
    assert failed.state is JobState.FAILED
    assert (failed.attempts, failed.worker_deaths) == (2, 2)
    assert "killed by signal 9 (SIGKILL)" in failed.message
    assert "failed after 2 attempt(s)" in failed.message and "max_attempts = 2" in failed.message
    assert after.state is JobState.FAILED, "the queue went on to the next job"
    listing = "\n".join(render_jobs(open_database(database_url)))
    assert failed.message in listing
    assert "attempts 2 (2 lost their worker); last: the worker process was killed by signal 9" \
        in listing


def test_a_job_that_fails_with_an_error_is_not_retried(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    store = JobStore(open_database(tmp_path / "data" / "theranode.db"))
    broken = course_job(store, ("results/job-404",), "missing")
    runner = JobRunner(store, OutboxStore(store.db, store.lock), settings)
    runner.start()
    try:
        failed = wait_for(store, broken.id, {JobState.DONE, JobState.FAILED})
        time.sleep(1.5)  # a retry would have claimed it again by now
    finally:
        runner.stop()
    failed = store.get(broken.id)
    assert failed.state is JobState.FAILED and "job-404" in failed.message
    assert (failed.attempts, failed.worker_deaths, failed.last_error) == (1, 0, "")


def test_stop_signals_sent_to_the_worker_do_not_end_its_job(tmp_path: Path) -> None:
    (done,) = run_jobs(tmp_path, signalled_by_the_terminal)
    assert done.state is JobState.DONE, done.message
    assert (done.attempts, done.worker_deaths) == (1, 0)


def test_shutdown_interrupts_a_running_job_which_resumes_with_its_version(
    tmp_path: Path, database_url: str
) -> None:
    settings = make_settings(tmp_path / "data")
    store = JobStore(open_database(database_url))
    job = course_job(store, (stored_cycle(settings.data_dir),), "inputs")
    runner = JobRunner(store, OutboxStore(store.db, store.lock), settings, worker=stuck)
    runner.start()
    try:
        wait_for(store, job.id, {JobState.RUNNING})
        log = Path(store.get(job.id).log_path)
        deadline = time.monotonic() + 30
        while not log.with_suffix(".runs").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        runner.stop()
    interrupted = store.get(job.id)
    assert interrupted.state is JobState.QUEUED
    assert (interrupted.version, interrupted.worker_deaths) == (1, 0)
    assert "interrupted by a shutdown" in interrupted.last_error

    restarted = JobStore(open_database(database_url))
    runner = JobRunner(restarted, OutboxStore(restarted.db, restarted.lock), settings)
    runner.start()
    try:
        done = wait_for(restarted, job.id, {JobState.DONE, JobState.FAILED})
    finally:
        runner.stop()
    assert done.state is JobState.DONE, done.message
    assert (done.version, done.created_at, done.attempts, done.worker_deaths) == (1, NOW, 2, 0)


def test_worker_deaths_are_told_apart_by_exit_code() -> None:
    assert "signal 9 (SIGKILL)" in worker_death(-9)
    assert "signal 15 (SIGTERM)" in worker_death(-15)
    assert "forkserver died" in worker_death(255)
    assert "exit code 1" in worker_death(1)


def test_old_databases_get_the_retry_columns(tmp_path: Path) -> None:
    """A database written before the retry columns existed opens, and its jobs read back."""
    db = connect(sqlite_url(tmp_path / "old.db"))
    JOB_MIGRATIONS.apply(db, stop_before="m002_job_retries")
    assert "last_error" not in db.columns("jobs")
    db.execute("insert into jobs (kind, target, fingerprint, state, created_at, attempts) "
               "values ('cycle', 't', 'f', 'failed', ?, 1)", [NOW])
    db.close()
    store = JobStore(open_database(tmp_path / "old.db"))
    (job,) = store.all()
    assert (job.state, job.attempts, job.worker_deaths, job.last_error) == (
        JobState.FAILED, 1, 0, "")


def test_jobs_an_old_node_failed_at_shutdown_resume_with_their_version(tmp_path: Path) -> None:
    """Before the retry columns, a SIGTERM failed the running job for good."""
    db = connect(sqlite_url(tmp_path / "old.db"))
    JOB_MIGRATIONS.apply(db, stop_before="m002_job_retries")
    died = "worker process died (exit code 255); see job-2.log"
    rows = [("t1", "a", "done", 1, "ok"), ("t1", "b", "failed", 2, died),
            ("t2", "c", "failed", 1, died), ("t2", "d", "done", 2, "ok"),
            ("t3", "e", "failed", 1, "PipelineError: no RTSTRUCT")]
    for target, fingerprint, state, version, message in rows:
        db.execute("insert into jobs (kind, target, fingerprint, state, version, created_at, "
                   "finished_at, attempts, message) values ('cycle', ?, ?, ?, ?, ?, ?, 1, ?)",
                   [target, fingerprint, state, version, NOW, NOW, message])
    db.close()
    store = JobStore(open_database(tmp_path / "old.db"))
    states = {j.fingerprint: (j.state, j.version, j.worker_deaths) for j in store.all()}
    assert states == {
        "a": (JobState.DONE, 1, 0),
        "b": (JobState.QUEUED, 2, 1),  # the latest of its target: resumes as version 2
        "c": (JobState.FAILED, 1, 0),  # a newer version exists: left alone
        "d": (JobState.DONE, 2, 0),
        "e": (JobState.FAILED, 1, 0),  # a real error is not retried
    }
    (after,) = [j for j in store.of_target("t1") if j.fingerprint == "b"]
    assert after.last_error == died


def watches_the_node(conn) -> None:
    die_with_node(conn)
    time.sleep(60)


def test_a_worker_dies_with_the_node(tmp_path: Path) -> None:
    """A killed node closes its end of the worker's pipe; the worker must not compute on."""
    ctx = _context()
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=watches_the_node, args=(sender,))
    child.start()
    sender.close()
    time.sleep(0.5)
    assert child.is_alive()
    receiver.close()  # as the kernel does when the node is killed
    child.join(timeout=10)
    assert child.exitcode == -signal.SIGKILL


# -- time limit ---------------------------------------------------------------------------
def runaway_first_job(spec, log_path: str, conn) -> None:
    """The first job computes on and on (a hostile input); every other job ends at once."""
    from theranode.service.jobs.spec import JobOutcome

    if spec.job_id == 1:
        Path(log_path).with_suffix(".pid").write_text(str(os.getpid()))
        time.sleep(120)
    conn.send(("ok", JobOutcome(objects=(), result_dir="results/quick", summary=("quick",))))
    conn.close()


def _gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_job_past_max_job_minutes_is_killed_and_failed_and_the_queue_goes_on(
    tmp_path: Path,
) -> None:
    # 6 s: long enough for the job's process to start and write its pid on a loaded
    # machine (with 1.2 s it was sometimes killed before it got that far).
    runaway, after = run_jobs(tmp_path, runaway_first_job, ("runaway", "next"),
                              max_job_minutes=0.1)
    assert runaway.state is JobState.FAILED
    assert runaway.message.startswith("exceeded max_job_minutes = 0.1: the worker was killed")
    assert "not retried" in runaway.message and runaway.log_path in runaway.message
    assert (runaway.attempts, runaway.worker_deaths) == (1, 0), "a runaway job is not retried"
    assert "max_job_minutes" in Path(runaway.log_path).read_text()
    assert _gone(int(Path(runaway.log_path).with_suffix(".pid").read_text()))
    assert (after.state, after.message) == (JobState.DONE, "quick")
