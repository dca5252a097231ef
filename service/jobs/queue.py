"""Dosimetry jobs on procrastinate, for nodes and workers sharing one PostgreSQL database.

An SQLite node computes its own jobs (:class:`~theranode.service.jobs.runner.JobRunner`'s
dispatcher threads). With ``[database] url`` naming PostgreSQL the jobs go to
``theranode worker`` processes on any machine that reaches the database and the archive,
through procrastinate: its queue, per-key locks, worker heartbeats and periodic tasks are
tables and functions in that same database (installed by
:mod:`theranode.service.store.queue`), so there is no broker to run and nothing more to
back up. Celery would need a broker (Redis, RabbitMQ) whose queue is not in the database
that holds the jobs; Dask distributed a scheduler process, itself a single point of
failure, with no durable queue.

The ``jobs`` table stays the record of every job (inputs, state, version, outcome); a
procrastinate job is only the request "run job N":

- **Dispatch** (:func:`dispatch_queued`, on every node after planning and in the periodic
  sweep): one request per ``queued`` row, deferred with ``queueing_lock = job-N`` (a second
  request while one waits is refused by procrastinate) and ``lock = target`` (two jobs of
  one cycle never run at once).
- **Run** (task ``theranode.dosimetry_job``): the worker claims the row
  (:meth:`~theranode.service.store.jobs.JobStore.claim`, queued → running under the
  database's write lock: the one start of a job, however often it was requested) and runs
  it in a child process as the embedded runner does (time limit, lost runs, outcome and
  deliveries committed with ``done``). A request for a job that is no longer queued (done,
  superseded, running elsewhere) does nothing.
- **Dead workers** (periodic task ``theranode.sweep``, every :data:`SWEEP_SECONDS` s, once
  across the cluster, on a queue of its own that every worker serves beside its job slots,
  so a sweep never waits for a job to end; ``lock`` = the task's name, so two sweeps never
  overlap): a request left ``doing`` by a worker whose heartbeat stopped for
  ``[jobs] stalled_after_s`` has its row counted as a lost run
  (:meth:`~theranode.service.store.jobs.JobStore.worker_lost`: queued again, or failed at
  ``[jobs] max_attempts``) and the request is ended as failed (which frees its lock on the
  target); then every queued row is dispatched, so the job gets a new request unless one
  already waits. Retrying the dead request instead would clash with such a waiting request
  (deferred while the dead one was starting: both carry the queueing lock ``job-N``), and
  that request would wait forever for the dead one's lock on the target.
- **Cohort statistics** (periodic task ``theranode.cohort_statistics`` on ``[cohort]
  schedule``): deferred once per tick across every worker, by procrastinate's unique
  periodic defers.

References: procrastinate documentation (procrastinate.readthedocs.io), "Locks",
"Queueing locks", "Retry stalled jobs", "Launch a task periodically".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import procrastinate
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Status

from theranode.config.schema import Settings
from theranode.service.clock import utc_now
from theranode.service.store.jobs import JobRecord, JobState, JobStore

logger = logging.getLogger(__name__)

QUEUE = "theranode"
#: The sweep's queue, served by a one-slot procrastinate worker of its own in each process.
SWEEP_QUEUE = "theranode-sweep"
RUN_JOB = "theranode.dosimetry_job"
SWEEP = "theranode.sweep"
COHORT = "theranode.cohort_statistics"
#: Period of the sweep for dead workers' jobs and undispatched queued jobs (s).
SWEEP_SECONDS = 10


def request_lock(job: JobRecord) -> str:
    """procrastinate's queueing lock of the request for ``job``."""
    return f"job-{job.id}"


def deferring_app(url: str) -> procrastinate.App:
    """An opened procrastinate app that only defers (``theranode serve`` on PostgreSQL)."""
    app = procrastinate.App(connector=procrastinate.SyncPsycopgConnector(
        conninfo=url, min_size=1, max_size=2,
        kwargs={"application_name": "theranode serve (queue)"}))
    app.open()
    return app


def _request(app: procrastinate.App, job: JobRecord) -> Any:
    return app.configure_task(RUN_JOB, queue=QUEUE, lock=job.target,
                              queueing_lock=request_lock(job))


def dispatch_queued(jobs: JobStore, app: procrastinate.App) -> int:
    """Request a run of every queued job that has no request waiting; returns how many.

    Safe from any number of processes at once: procrastinate refuses a second waiting
    request with the same queueing lock, and a surplus request that slips in while the
    first one starts finds its job no longer queued.
    """
    deferred = 0
    for job in jobs.in_states(JobState.QUEUED):
        try:
            _request(app, job).defer(job_id=job.id)
        except AlreadyEnqueued:
            continue
        deferred += 1
        logger.debug("Job %d (%s %s) requested from the workers", job.id, job.kind, job.label)
    return deferred


async def dispatch_queued_async(jobs: JobStore, app: procrastinate.App) -> int:
    """:func:`dispatch_queued` from the worker's event loop (the periodic sweep)."""
    deferred = 0
    for job in await asyncio.to_thread(jobs.in_states, JobState.QUEUED):
        try:
            await _request(app, job).defer_async(job_id=job.id)
        except AlreadyEnqueued:
            continue
        deferred += 1
    return deferred


@dataclass
class Dispatcher:
    """Requests runs of queued jobs from the workers; ``serve``'s planner calls it."""

    jobs: JobStore
    app: procrastinate.App

    def __call__(self) -> None:
        try:
            dispatch_queued(self.jobs, self.app)
        except Exception:  # the periodic sweep on the workers dispatches them later
            logger.exception("Queued jobs could not be handed to the workers now")


def worker_app(settings: Settings, jobs: JobStore, run_job: Callable[[int], None],
               run_cohort: Callable[[], None]) -> procrastinate.App:
    """The procrastinate app of ``theranode worker``: the tasks and the periodic tasks."""
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(
        conninfo=settings.database_url, min_size=1, max_size=settings.jobs.workers + 3,
        kwargs={"application_name": f"theranode worker {settings.node_name}"}))

    @app.task(name=RUN_JOB, queue=QUEUE)
    def dosimetry_job(job_id: int) -> None:
        run_job(job_id)

    @app.periodic(cron=f"* * * * * */{SWEEP_SECONDS}", periodic_id="sweep")
    @app.task(name=SWEEP, queue=SWEEP_QUEUE, queueing_lock=SWEEP, lock=SWEEP)
    async def sweep(timestamp: int) -> None:
        stalled = await app.job_manager.get_stalled_jobs(
            task_name=RUN_JOB, seconds_since_heartbeat=settings.jobs.stalled_after_s)
        for request in stalled:
            job_id = int(request.task_kwargs["job_id"])  # type: ignore[arg-type]
            await asyncio.to_thread(count_lost_run, jobs, settings, job_id)
            await app.job_manager.finish_job(request, Status.FAILED, delete_job=False)
        await dispatch_queued_async(jobs, app)

    if settings.cohort.schedule:
        @app.periodic(cron=settings.cohort.schedule, periodic_id="cohort")
        @app.task(name=COHORT, queue=QUEUE, queueing_lock=COHORT)
        def cohort_statistics(timestamp: int) -> None:
            run_cohort()

    return app


def count_lost_run(jobs: JobStore, settings: Settings, job_id: int) -> None:
    """A run whose worker stopped sending heartbeats: queued again, or failed at the bound."""
    job = jobs.get(job_id)
    if job is None or job.state is not JobState.RUNNING:
        return
    reason = (f"worker {job.runner or '?'} stopped sending heartbeats for "
              f"{settings.jobs.stalled_after_s:g} s (killed, or its machine is down)")
    after = jobs.worker_lost(job_id, utc_now().isoformat(), reason, settings.jobs.max_attempts)
    logger.warning("Job %d: %s; %s", job_id, reason,
                   "failed" if after.state is JobState.FAILED else "queued again")


def run_worker(settings: Settings, runner: Any, concurrency: int) -> None:
    """Run procrastinate's worker until SIGTERM or SIGINT; ``runner`` runs claimed jobs.

    A stop kills the running children and puts their jobs back in the queue with their
    version (:meth:`~theranode.service.jobs.runner.JobRunner.stop`), as a node's shutdown
    does; the requests end, and the next worker to start picks the jobs up.
    """
    from theranode.service.cohort.scheduler import REPORTS_DIR, run_cohort_job

    log_dir = str(runner.log_dir)

    def run_job(job_id: int) -> None:
        if runner.stopping:  # the job stays queued; the sweep requests it again
            return
        job = runner.jobs.claim(job_id, utc_now().isoformat(), log_dir, settings.node_name)
        if job is None:
            logger.info("Job %d is not queued (done, superseded or running elsewhere); "
                        "nothing to do", job_id)
            return
        runner.run_claimed(job)

    def run_cohort() -> None:
        run_cohort_job(settings.database_url, str(settings.data_dir.resolve() / REPORTS_DIR))

    app = worker_app(settings, runner.jobs, run_job, run_cohort)

    def procrastinate_worker(queue: str, slots: int, name: str) -> Any:
        return app.run_worker_async(
            queues=[queue], concurrency=slots, name=name, install_signal_handlers=False,
            update_heartbeat_interval=max(1.0, settings.jobs.stalled_after_s / 3),
            stalled_worker_timeout=settings.jobs.stalled_after_s,
            shutdown_graceful_timeout=30.0)

    async def main() -> None:
        async with app.open_async():
            # The job slots, and one slot for the sweep: while every job slot computes,
            # a dead worker's job is still found and requested again.
            workers = [
                asyncio.create_task(procrastinate_worker(QUEUE, concurrency,
                                                         settings.node_name)),
                asyncio.create_task(procrastinate_worker(SWEEP_QUEUE, 1,
                                                         f"{settings.node_name} (sweep)")),
            ]
            loop = asyncio.get_running_loop()

            def stop(signum: int) -> None:
                logger.info("Signal %d received, stopping the worker", signum)
                runner.stop()
                for task in workers:
                    task.cancel()

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop, signum)
            # One of them ending on its own (an error) ends the other: a worker
            # process that no longer sweeps or no longer computes should exit and
            # be restarted, not limp on.
            done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())
