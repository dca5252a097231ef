"""Jobs on procrastinate for nodes and workers sharing PostgreSQL (service/jobs/queue.py).

Each piece that makes "every job done exactly once" hold across machines, on a real server:
one request per queued job however many nodes dispatch, one start per job however many
requests arrive, a silent worker's run counted and queued again, one outbox at a time.
The processes together (two nodes, two workers, kills) are
``tests/reliability/test_scale_out.py``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.waiting import wait_for
from theranode.config.schema import DatabaseSettings, Settings
from theranode.service.errors import StartupError
from theranode.service.jobs import worker
from theranode.service.jobs.queue import (
    QUEUE,
    RUN_JOB,
    count_lost_run,
    deferring_app,
    dispatch_queued,
)
from theranode.service.store import open_database
from theranode.service.store.database import Leadership, connect
from theranode.service.store.jobs import JobRecord, JobState, JobStore

NOW = "2026-12-03T10:00:00"


def _submit(jobs: JobStore, target: str, fingerprint: str = "f") -> JobRecord:
    job = jobs.submit(kind="cycle", target=target, patient_key="k", label=target,
                      fingerprint=fingerprint, payload=b"{}", created_at=NOW)
    assert job is not None
    return job


def _settings(url: str, tmp_path: Path, max_attempts: int = 2) -> Settings:
    settings = Settings(database=DatabaseSettings(url=url))
    return dataclasses.replace(
        settings, node=dataclasses.replace(settings.node, data_dir=str(tmp_path / "data")),
        jobs=dataclasses.replace(settings.jobs, max_attempts=max_attempts))


def test_each_queued_job_is_requested_once_however_many_nodes_dispatch(
    postgres_url: str,
) -> None:
    jobs = JobStore(open_database(postgres_url))
    first, second = _submit(jobs, "cycle|k|1|1"), _submit(jobs, "cycle|k|1|2")
    node_a, node_b = deferring_app(postgres_url), deferring_app(postgres_url)
    try:
        assert dispatch_queued(jobs, node_a) == 2
        assert dispatch_queued(jobs, node_b) == 0
        assert dispatch_queued(jobs, node_a) == 0
    finally:
        node_a.close()
        node_b.close()
    requests = jobs.db.query(
        "select task_name, queue_name, lock, queueing_lock, args, status "
        "from procrastinate_jobs order by id")
    assert [(r["task_name"], r["queue_name"], r["lock"], r["queueing_lock"], r["args"],
             r["status"]) for r in requests] == [
        (RUN_JOB, QUEUE, first.target, f"job-{first.id}", {"job_id": first.id}, "todo"),
        (RUN_JOB, QUEUE, second.target, f"job-{second.id}", {"job_id": second.id}, "todo"),
    ]


def test_a_job_requested_by_two_workers_at_once_starts_once(postgres_url: str) -> None:
    open_database(postgres_url).close()
    stores = [JobStore(connect(postgres_url)) for _ in range(4)]
    job = _submit(stores[0], "cycle|k|1|1")
    start = threading.Barrier(len(stores))
    started: list[JobRecord | None] = [None] * len(stores)

    def claim(n: int) -> None:
        start.wait()
        started[n] = stores[n].claim(job.id, NOW, "/logs", runner=f"worker-{n}")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (winner,) = [s for s in started if s is not None]
    assert (winner.state, winner.attempts, winner.version) == (JobState.RUNNING, 1, 1)
    assert winner.runner.startswith("worker-")


def test_no_second_job_of_one_cycle_starts_while_one_runs(postgres_url: str) -> None:
    jobs = JobStore(open_database(postgres_url))
    running = _submit(jobs, "cycle|k|1|1", "old inputs")
    assert jobs.claim(running.id, NOW, "/logs") is not None
    waiting = _submit(jobs, "cycle|k|1|1", "new inputs")
    assert jobs.claim(waiting.id, NOW, "/logs") is None
    jobs.finish(running.id, JobState.DONE, NOW, "ok")
    after = jobs.claim(waiting.id, NOW, "/logs")
    assert after is not None and after.version == 2


def test_a_silent_workers_run_is_queued_again_then_failed_at_max_attempts(
    postgres_url: str, tmp_path: Path,
) -> None:
    settings = _settings(postgres_url, tmp_path, max_attempts=2)
    jobs = JobStore(open_database(postgres_url))
    job = _submit(jobs, "cycle|k|1|1")
    assert jobs.claim(job.id, NOW, "/logs", runner="worker-1") is not None
    count_lost_run(jobs, settings, job.id)
    again = jobs.get(job.id)
    assert again is not None
    assert (again.state, again.worker_deaths, again.version) == (JobState.QUEUED, 1, 1)
    assert "worker-1 stopped sending heartbeats" in again.last_error
    assert jobs.claim(job.id, NOW, "/logs", runner="worker-2") is not None
    count_lost_run(jobs, settings, job.id)
    failed = jobs.get(job.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert "max_attempts = 2" in failed.message
    count_lost_run(jobs, settings, job.id)  # a late second sweep changes nothing
    assert jobs.get(job.id) == failed


def test_one_process_at_a_time_holds_the_outbox(postgres_url: str, tmp_path: Path) -> None:
    first, second = Leadership(postgres_url, "outbox"), Leadership(postgres_url, "outbox")
    assert first.held() and first.held()
    assert not second.held()
    first.release()  # as a killed node's session ends
    assert second.held()
    assert not first.held()
    second.release()
    embedded = Leadership(f"sqlite:///{tmp_path / 'theranode.db'}", "outbox")
    assert embedded.held()


def test_a_worker_without_a_shared_database_says_what_to_run_instead(tmp_path: Path) -> None:
    settings = _settings("", tmp_path)
    with pytest.raises(StartupError, match="share a PostgreSQL database.*theranode serve"):
        worker.run(settings)


def test_theranode_jobs_says_which_worker_ran_a_job(postgres_url: str) -> None:
    from theranode.service.cli.jobs_view import render_job

    jobs = JobStore(open_database(postgres_url))
    job = _submit(jobs, "cycle|k|1|1")
    jobs.claim(job.id, NOW, "/logs", runner="worker-b")
    assert "  last run on worker-b" in list(render_job(jobs.db, job.id))


def test_a_run_taken_for_dead_records_nothing_when_it_ends_after_all(
    postgres_url: str, tmp_path: Path,
) -> None:
    """A worker frozen (SIGSTOP) past stalled_after_s wakes after its job was run again."""
    from theranode.service.jobs.runner import JobRunner
    from theranode.service.store.outbox import OutboxStore

    settings = _settings(postgres_url, tmp_path, max_attempts=3)
    jobs = JobStore(open_database(postgres_url))
    runner = JobRunner(jobs, OutboxStore(jobs.db, jobs.lock), settings)
    job = _submit(jobs, "cycle|k|1|1")
    frozen = jobs.claim(job.id, NOW, "/logs", runner="worker-1")
    assert frozen is not None
    count_lost_run(jobs, settings, job.id)
    rerun = jobs.claim(job.id, NOW, "/logs", runner="worker-2")
    assert rerun is not None and rerun.attempts == 2
    runner._record(frozen, ("error", "the frozen run's late answer"))
    after = jobs.get(job.id)
    assert after is not None and (after.state, after.attempts) == (JobState.RUNNING, 2)


#: A ``theranode worker`` whose job slots never free: its runner claims a job and holds it
#: until the process is killed. Arguments: database URL, worker name, data folder.
BUSY_WORKER = """
import dataclasses, sys, threading
from theranode.config.schema import DatabaseSettings, Settings
from theranode.service.jobs.queue import run_worker
from theranode.service.store import open_database
from theranode.service.store.jobs import JobStore

url, name, data_dir = sys.argv[1:]
base = Settings(database=DatabaseSettings(url=url))
settings = dataclasses.replace(
    base, node=dataclasses.replace(base.node, name=name, data_dir=data_dir),
    jobs=dataclasses.replace(base.jobs, workers=1, stalled_after_s=2.0),
    cohort=dataclasses.replace(base.cohort, schedule=""))

class BusyRunner:
    stopping = False
    log_dir = data_dir
    jobs = JobStore(open_database(url))

    def run_claimed(self, job):
        print(f"claimed {job.id}", flush=True)
        threading.Event().wait()  # computes for ever

    def stop(self):
        pass

run_worker(settings, BusyRunner(), 1)
"""


def test_a_dead_workers_job_is_queued_again_while_every_live_slot_computes(
    postgres_url: str, tmp_path: Path,
) -> None:
    """The sweep has a slot of its own: it does not wait for a job to end."""
    jobs = JobStore(open_database(postgres_url))
    first, second = _submit(jobs, "cycle|k|1|1"), _submit(jobs, "cycle|k|2|1")
    node = deferring_app(postgres_url)
    try:
        assert dispatch_queued(jobs, node) == 2
    finally:
        node.close()
    workers = {
        name: subprocess.Popen([sys.executable, "-c", BUSY_WORKER, postgres_url, name,
                                str(tmp_path)], stdout=subprocess.DEVNULL)
        for name in ("worker-1", "worker-2")}
    try:
        def runners() -> dict[int, str]:
            return {j.id: j.runner for j in jobs.in_states(JobState.RUNNING)}

        claimed = wait_for(lambda: len(runners()) == 2 and runners(), 60, "both jobs to start")
        (lost,) = [job_id for job_id, runner in claimed.items() if runner == "worker-2"]
        workers["worker-2"].kill()  # worker-1's only job slot stays busy
        again = wait_for(lambda: (j := jobs.get(lost)) is not None
                         and j.state is JobState.QUEUED and j, 60,
                         "the sweep on worker-1 to count worker-2's run as lost")
        assert again.worker_deaths == 1
        assert "worker-2 stopped sending heartbeats" in again.last_error
        still = jobs.get(first.id if lost == second.id else second.id)
        assert still is not None and (still.state, still.runner) == (JobState.RUNNING,
                                                                     "worker-1")
    finally:
        for process in workers.values():
            process.kill()
            process.wait()
