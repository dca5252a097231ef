"""The job runner: dosimetry off the association threads, in worker processes.

Jobs live in SQLite (:mod:`theranode.service.store.jobs`); the runner claims the next
queued job, runs :func:`theranode.service.jobs.pipeline.run_job` in a child process and
records the outcome. A child process per job keeps the node responsive
(dosimetry is CPU bound and would hold the GIL), returns a clinical-size
cycle's ~2 GB to the system when it ends, and isolates a crash in native code.
Children are forked from a ``forkserver`` that has imported the pipeline once,
so a job starts in milliseconds. A child dies with the node: its parent is the
forkserver, which outlives a killed node while any child runs, so the child
watches the pipe it answers on and kills itself when the node's end closes
(Linux reports POLLERR on a pipe's write end once its read end is closed), and
dies with the forkserver too (``PR_SET_PDEATHSIG``). Without this, a worker of
a killed node went on computing, writing into the result folder its job's
resumed run was writing.

Each job writes its own log file ``<data_dir>/jobs/job-<id>.log``.

Restart: a job still ``running`` in the database when the node starts was
interrupted (crash, kill); it goes back to the queue with the result version
and creation time it already had, so the re-run writes the same objects.
A job's outcome (its objects and their pending deliveries) is committed in
one transaction with its ``done`` state.

Shutdown (SIGTERM, SIGINT): :meth:`JobRunner.stop` starts no new job, kills
the running children and puts their jobs back in the queue with their
version, exactly as a crash would leave them, so they resume at the next
start. Only the node decides that a job is interrupted: the forkserver is
started with SIGINT and SIGTERM ignored, which it keeps across ``exec`` and
passes to every worker it forks (POSIX: an ignored signal stays ignored
across fork and exec), and workers ignore both signals themselves. A Ctrl-C,
which the terminal sends to the whole process group, or a ``systemctl stop``,
which signals every process of the service's control group, therefore
reaches only the node's own handler; without this the forkserver died of the
SIGTERM, took its worker with it (exit code 255) and the job was failed.

Retries: a worker that dies without sending a result while the node is not
stopping was killed from outside (a signal, the kernel's out-of-memory
killer); its job is queued again with its version, up to ``[jobs]
max_attempts`` such runs, then failed with the reason. A job whose
computation raises an error (:class:`~theranode.service.errors.PipelineError` and
any other exception) fails at once: the same inputs would fail again.

Time limit: a worker still computing after ``[jobs] max_job_minutes`` is
killed and its job failed with that reason, not retried: the same inputs
would run as long again (a hostile structure set, a broken input). With one
worker, a runaway job would otherwise hold up every other patient's job.

Storage and hand-off: a job's inputs are stored as versioned JSON
(:mod:`theranode.service.jobs.payload`); :func:`job_spec` decodes them, and a payload it
cannot read fails the job with the reason, before anything is read or
computed. The :class:`~theranode.service.jobs.spec.JobSpec` then reaches the worker
through multiprocessing, which serialises it (Python's object serialisation)
in memory through a pipe between the node and its own forkserver and worker
(trusted processes of one installation, never through a file): a hand-off,
not storage; nothing a job stores is read back that way.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from theranode.config.schema import Settings
from theranode.service.clock import utc_now
from theranode.service.jobs.payload import JobPayloadError, decode_payload
from theranode.service.jobs.pipeline import run_job
from theranode.service.jobs.spec import CourseJobInput, CycleJobInput, JobKind, JobOutcome, JobSpec
from theranode.service.store.jobs import JobRecord, JobState, JobStore
from theranode.service.store.outbox import OutboxStore

logger = logging.getLogger(__name__)

JOB_LOG_DIR = "jobs"
#: Signals that stop the node (``systemctl stop``, ``docker stop``, Ctrl-C).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED_BY_SHUTDOWN = ("interrupted by a shutdown of the node; resumes at the next start "
                           "with the same version")
_FORKSERVER_GONE = 255
_PR_SET_PDEATHSIG = 1
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _context() -> Any:
    """A forkserver context that preloads the pipeline (spawn where unavailable)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["theranode.service.jobs.pipeline"])
        return ctx
    return multiprocessing.get_context("spawn")


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux PR_SET_PDEATHSIG)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            logger.debug("prctl unavailable; the worker may outlive a killed node")


def die_with_node(conn: Connection) -> None:
    """Kill this worker when the node's end of ``conn`` (a pipe to the node) closes."""
    watched = os.dup(conn.fileno())  # unaffected by the worker closing ``conn`` itself

    def watch() -> None:
        poller = select.poll()
        poller.register(watched, select.POLLERR)
        poller.poll()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="node-watch", daemon=True).start()


def _job_logging(log_path: str) -> None:
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def start_shielded_forkserver(ctx: Any) -> bool:
    """Start the forkserver with SIGINT and SIGTERM ignored (main thread only).

    Signal dispositions are process-wide and only the main thread may
    change them, so the node ignores both signals for the few milliseconds
    the forkserver takes to fork and exec; a stop signal in that window at
    start-up is lost. A forkserver already running is left as it is. Returns
    False (nothing done) for another start method or from another thread.
    """
    if ctx.get_start_method() != "forkserver":
        return False
    if threading.current_thread() is not threading.main_thread():
        return False
    from multiprocessing import forkserver

    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        forkserver.ensure_running()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return True


def _ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def worker_main(spec: JobSpec, log_path: str, conn: Connection) -> None:
    """Entry point of a job's child process: run, send back the outcome or the error."""
    _ignore_stop_signals()  # the node decides when a job is interrupted
    die_with_parent()
    die_with_node(conn)
    _job_logging(log_path)
    log = logging.getLogger("theranode.service.jobs.runner.worker")
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


def worker_death(exitcode: int | None) -> str:
    """Why a worker ended without sending a result, from its exit code, in words.

    A negative code is the signal that killed it (SIGKILL is what the Linux
    out-of-memory killer sends); 255 is what :mod:`multiprocessing` reports
    when the forkserver that started the worker died first.
    """
    if exitcode is None:
        return "the worker process did not end"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        text = f"the worker process was killed by signal {-exitcode} ({name})"
        if -exitcode == signal.SIGKILL:
            text += ": out of memory (the kernel's OOM killer) or killed by an administrator"
        return text
    if exitcode == _FORKSERVER_GONE:
        return "the worker process ended without a result (exit code 255: its forkserver died)"
    return f"the worker process ended without a result (exit code {exitcode})"


def job_spec(job: JobRecord, settings: Settings) -> JobSpec:
    """The worker's view of a job record (a payload that cannot be read: ``payload_error``)."""
    kind = JobKind(job.kind)
    payload, error = None, None
    try:
        payload = decode_payload(job.payload or b"", kind)
    except JobPayloadError as exc:
        error = str(exc)
    assert job.version is not None
    return JobSpec(
        job_id=job.id, kind=kind, version=job.version, created_at=job.created_at,
        data_dir=str(settings.data_dir.resolve()), settings=settings,
        cycle=payload if isinstance(payload, CycleJobInput) else None,
        course=payload if isinstance(payload, CourseJobInput) else None,
        payload_error=error,
    )


class JobRunner:
    """``settings.jobs.workers`` dispatcher threads, each running one child at a time."""

    def __init__(
        self,
        jobs: JobStore,
        outbox: OutboxStore,
        settings: Settings,
        on_finished: Callable[[JobRecord], None] = lambda job: None,
        worker: Callable[[JobSpec, str, Connection], None] = worker_main,
    ) -> None:
        self.jobs = jobs
        self.worker = worker  # a child's entry point (tests give one that dies)
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

    def start_executor(self) -> None:
        """Be ready to run jobs others claim (:meth:`run_claimed`): the log folder and the
        forkserver, without dispatcher threads (``theranode worker``,
        :mod:`theranode.service.jobs.queue`)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        start_shielded_forkserver(self._ctx)

    def start(self) -> None:
        """The embedded runner of one node: interrupted jobs back to the queue, then
        ``[jobs] workers`` dispatcher threads claiming queued jobs."""
        self.start_executor()
        for job in self.jobs.requeue_interrupted():
            logger.warning("Job %d (%s %s) was interrupted; it resumes as version %s",
                           job.id, job.kind, job.label, job.version)
        for thread in self._threads:
            thread.start()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def begin_stop(self) -> None:
        """Start no new job; a worker that ends without a result from now on was interrupted."""
        with self._lock:
            self._stop.set()
        self._wake.set()

    def stop(self) -> None:
        """Stop dispatching; running children are killed and their jobs re-queued."""
        self.begin_stop()
        with self._lock:
            children = list(self._children.values())
        for child in children:
            child.kill()
        for thread in self._threads:
            if thread.ident is not None:  # started (not in a worker, which has none)
                thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.jobs.claim_next(utc_now().isoformat(), str(self.log_dir),
                                       self.settings.node_name)
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.run_claimed(job)

    def run_claimed(self, job: JobRecord) -> None:
        """Run a job this process claimed (state ``running``) to its recorded end."""
        try:
            self._execute(job)
        except Exception:
            logger.exception("Job %d could not be run", job.id)
            if self._stop.is_set():
                self._interrupted(job)
            else:
                self.jobs.finish(job.id, JobState.FAILED, utc_now().isoformat(),
                                 "internal error; see the node log")
        self.on_finished(job)

    def _execute(self, job: JobRecord) -> None:
        logger.info("Job %d started: %s %s of patient %s, version %s (log %s)",
                    job.id, job.kind, job.label, job.patient_key, job.version, job.log_path)
        spec = job_spec(job, self.settings)
        receiver, sender = self._ctx.Pipe(duplex=False)
        child = self._ctx.Process(
            target=self.worker, args=(spec, job.log_path, sender), name=f"job-{job.id}"
        )
        with self._lock:  # stop() kills every child started before it took the lock
            if self._stop.is_set():
                sender.close()
                receiver.close()
                self._interrupted(job)
                return
            child.start()
            self._children[job.id] = child
        sender.close()
        limit_s = self.settings.jobs.max_job_minutes * 60
        try:
            answer, timed_out = self._receive(receiver, child, limit_s)
        finally:
            child.join(timeout=30)
            with self._lock:
                self._children.pop(job.id, None)
        if timed_out:
            self._timed_out(job)
        elif answer is not None:
            self._record(job, answer)
        elif self._stop.is_set():
            self._interrupted(job)
        else:
            self._worker_lost(job, child.exitcode)

    @staticmethod
    def _receive(
        receiver: Connection, child: Any, limit_s: float
    ) -> tuple[tuple[str, Any] | None, bool]:
        """The worker's answer (None if it ended without one), and whether it ran out of time.

        A worker still computing after ``limit_s`` is killed.
        """
        try:
            if not receiver.poll(limit_s):  # True as soon as there is data or the pipe closed
                child.kill()
                return None, True
            answer: tuple[str, Any] = receiver.recv()
            return answer, False
        except (EOFError, OSError):
            return None, False
        finally:
            receiver.close()

    def _timed_out(self, job: JobRecord) -> None:
        """Fail a job whose worker was killed at ``[jobs] max_job_minutes``; never retried."""
        minutes = self.settings.jobs.max_job_minutes
        reason = (f"exceeded max_job_minutes = {minutes:g}: the worker was killed; not retried "
                  f"(the same inputs would run as long again); see {job.log_path}")
        self.jobs.finish(job.id, JobState.FAILED, utc_now().isoformat(), reason)
        logger.error("Job %d failed: %s", job.id, reason)
        if job.log_path:
            with open(job.log_path, "a", encoding="utf-8") as log:
                log.write(f"{utc_now().isoformat()} ERROR theranode.service.jobs.runner: "
                          f"Job {job.id} killed: "
                          f"it computed longer than [jobs] max_job_minutes = {minutes:g}\n")

    def _interrupted(self, job: JobRecord) -> None:
        self.jobs.requeue(job.id, INTERRUPTED_BY_SHUTDOWN)
        logger.warning("Job %d (%s %s, version %s) interrupted by the shutdown; it resumes at "
                       "the next start", job.id, job.kind, job.label, job.version)

    def _worker_lost(self, job: JobRecord, exitcode: int | None) -> None:
        reason = f"{worker_death(exitcode)}; see {job.log_path}"
        limit = self.settings.jobs.max_attempts
        after = self.jobs.worker_lost(job.id, utc_now().isoformat(), reason, limit)
        if after.state is JobState.FAILED:
            logger.error("Job %d failed: %s", job.id, after.message)
            return
        logger.warning("Job %d: %s; queued again (%d of at most %d run(s) lost so far)",
                       job.id, reason, after.worker_deaths, limit)

    def _record(self, job: JobRecord, answer: tuple[str, Any]) -> None:
        now = utc_now().isoformat()
        status, value = answer
        destinations = [d.name for d in self.settings.destinations]
        with self.jobs.transaction() as conn:
            if not self.jobs.is_current_run(job, conn):
                # A worker frozen past [jobs] stalled_after_s was taken for dead and the
                # job run again: that run's outcome is the record, not this one's.
                logger.warning("Job %d: this run (attempt %d) was taken for dead and the job "
                               "run again or ended meanwhile; its outcome is not recorded",
                               job.id, job.attempts)
                return
            if status == "error":
                self.jobs.finish(job.id, JobState.FAILED, now, str(value), conn=conn)
                logger.error("Job %d failed: %s (log %s)", job.id, value, job.log_path)
                return
            outcome: JobOutcome = value
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
