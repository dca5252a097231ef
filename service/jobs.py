"""The job runner: dosimetry off the association threads, in worker processes.

Jobs live in SQLite (:mod:`service.store.jobs`); the runner claims the next
queued job, runs :func:`service.pipeline.run_job` in a child process and
records the outcome. A child process per job keeps the node responsive
(dosimetry is CPU bound and would hold the GIL), returns a clinical-size
cycle's ~2 GB to the system when it ends, and isolates a crash in native code.
Children are forked from a ``forkserver`` that has imported the pipeline once,
so a job starts in milliseconds, and die with the node (``PR_SET_PDEATHSIG``).

Each job writes its own log file ``<data_dir>/jobs/job-<id>.log``.

Restart: a job still ``running`` in the database when the node starts was
interrupted (crash, kill); it goes back to the queue with the result version
and creation time it already had, so the re-run writes the same objects.
A job's outcome (its objects and their pending deliveries) is committed in
one transaction with its ``done`` state.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import pickle
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from config.schema import Settings
from service.ingest import utc_now
from service.pipeline import JobKind, JobOutcome, JobSpec, run_job
from service.store.jobs import JobRecord, JobState, JobStore
from service.store.outbox import OutboxStore

logger = logging.getLogger(__name__)

JOB_LOG_DIR = "jobs"
_PR_SET_PDEATHSIG = 1
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _context() -> Any:
    """A forkserver context that preloads the pipeline (spawn where unavailable)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["service.pipeline"])
        return ctx
    return multiprocessing.get_context("spawn")


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            logger.debug("prctl unavailable; the worker may outlive a killed node")


def _job_logging(log_path: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def worker_main(spec: JobSpec, log_path: str, conn: Connection) -> None:
    """Entry point of a job's child process: run, send back the outcome or the error."""
    _die_with_parent()
    _job_logging(log_path)
    log = logging.getLogger("service.jobs.worker")
    log.info("Job %d (%s, version %d) started", spec.job_id, spec.kind.value, spec.version)
    try:
        outcome = run_job(spec)
    except Exception as exc:  # reported to the parent, which marks the job failed
        log.error("Job %d failed: %s\n%s", spec.job_id, exc, traceback.format_exc())
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    else:
        log.info("Job %d done: %d object(s)", spec.job_id, len(outcome.objects))
        conn.send(("ok", outcome))
    finally:
        conn.close()


def job_spec(job: JobRecord, settings: Settings) -> JobSpec:
    """The worker's view of a job record."""
    payload = pickle.loads(job.payload) if job.payload else None
    kind = JobKind(job.kind)
    assert job.version is not None
    return JobSpec(
        job_id=job.id, kind=kind, version=job.version, created_at=job.created_at,
        data_dir=str(settings.data_dir.resolve()), settings=settings,
        cycle=payload if kind is JobKind.CYCLE else None,
        course=payload if kind is JobKind.COURSE else None,
    )


class JobRunner:
    """``settings.jobs.workers`` dispatcher threads, each running one child at a time."""

    def __init__(
        self,
        jobs: JobStore,
        outbox: OutboxStore,
        settings: Settings,
        on_finished: Callable[[JobRecord], None] = lambda job: None,
    ) -> None:
        self.jobs = jobs
        self.outbox = outbox
        self.settings = settings
        self.on_finished = on_finished
        self.log_dir = settings.data_dir.resolve() / JOB_LOG_DIR
        self._ctx = _context()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._children: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"job-runner-{i}", daemon=True)
            for i in range(settings.jobs.workers)
        ]

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for job in self.jobs.requeue_interrupted():
            logger.warning("Job %d (%s %s) was interrupted; it resumes as version %s",
                           job.id, job.kind, job.label, job.version)
        for thread in self._threads:
            thread.start()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop dispatching; running children are killed and their jobs re-queued."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            children = list(self._children.values())
        for child in children:
            child.kill()
        for thread in self._threads:
            thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.claim_next(utc_now().isoformat(), str(self.log_dir))
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._execute(job)
            except Exception:
                logger.exception("Job %d could not be run", job.id)
                self.jobs.finish(job.id, JobState.FAILED, utc_now().isoformat(),
                                 "internal error; see the node log")
            self.on_finished(job)

    def _execute(self, job: JobRecord) -> None:
        logger.info("Job %d started: %s %s of patient %s, version %s (log %s)",
                    job.id, job.kind, job.label, job.patient_key, job.version, job.log_path)
        spec = job_spec(job, self.settings)
        receiver, sender = self._ctx.Pipe(duplex=False)
        child = self._ctx.Process(
            target=worker_main, args=(spec, job.log_path, sender), name=f"job-{job.id}"
        )
        child.start()
        sender.close()
        with self._lock:
            self._children[job.id] = child
        try:
            answer = self._receive(receiver)
        finally:
            child.join(timeout=30)
            with self._lock:
                self._children.pop(job.id, None)
        if self._stop.is_set() and answer is None:
            self.jobs.finish(job.id, JobState.QUEUED, utc_now().isoformat(),
                             "interrupted by shutdown; resumes at the next start")
            return
        self._record(job, answer, child.exitcode)

    @staticmethod
    def _receive(receiver: Connection) -> tuple[str, Any] | None:
        try:
            answer: tuple[str, Any] = receiver.recv()
            return answer
        except (EOFError, OSError):
            return None
        finally:
            receiver.close()

    def _record(self, job: JobRecord, answer: tuple[str, Any] | None, exitcode: int | None) -> None:
        now = utc_now().isoformat()
        if answer is None:
            message = f"worker process died (exit code {exitcode}); see {job.log_path}"
            self.jobs.finish(job.id, JobState.FAILED, now, message)
            logger.error("Job %d failed: %s", job.id, message)
            return
        status, value = answer
        if status == "error":
            self.jobs.finish(job.id, JobState.FAILED, now, str(value))
            logger.error("Job %d failed: %s (log %s)", job.id, value, job.log_path)
            return
        outcome: JobOutcome = value
        destinations = [d.name for d in self.settings.destinations]
        with self.jobs.transaction() as conn:
            self.outbox.add_objects(conn, job.id, outcome.objects, destinations, now)
            self.jobs.finish(job.id, JobState.DONE, now, "; ".join(outcome.summary),
                             outcome.result_dir, conn=conn)
        logger.info("Job %d done: %d object(s) queued for %d destination(s)",
                    job.id, len(outcome.objects), len(destinations))


def read_job_log(job: JobRecord, tail_lines: int = 40) -> list[str]:
    """The last lines of a job's log file (empty when it has none yet)."""
    if not job.log_path or not Path(job.log_path).exists():
        return []
    return Path(job.log_path).read_text(errors="replace").splitlines()[-tail_lines:]
