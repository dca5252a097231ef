"""Dosimetry jobs: one row per computation of a cycle or a course.

Tables
------
jobs          one row per job: what it computes (``target``), from which inputs
              (``fingerprint``), its state, result version, log and outcome.
generations   per target, a counter bumped by ``theranode reprocess``; it is
              part of the fingerprint, so a reprocess request makes the same
              inputs "new" once.

States: ``queued`` → ``running`` → ``done`` | ``failed``; ``incomplete`` (a
cycle that cannot be computed with what arrived, recorded once per input
set); ``superseded`` (a queued job overtaken by newer inputs).
The pair (target, fingerprint) is unique: the same cycle is never computed
twice for the same inputs.

A run that ends without an outcome sends the job back to ``queued`` with its
version: a shutdown or a crash of the node (not counted), or a worker process
killed from outside (counted in ``worker_deaths``; at ``[jobs] max_attempts``
such deaths the job is ``failed``). ``attempts`` counts every start and
``last_error`` keeps why the last run did not end with a result. A run the
runner killed at ``[jobs] max_job_minutes`` is ``failed`` at once, never
queued again (:mod:`theranode.service.jobs.runner`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from theranode.service.store import Store
from theranode.service.store.database import Database
from theranode.service.store.migrations import Migrations

MIGRATIONS = Migrations("theranode.jobs")

INTERRUPTED_BY_CRASH = ("interrupted: the node stopped while the job ran (crash or kill); "
                        "resumed at the next start")


@MIGRATIONS()
def m001_jobs(db: Database) -> None:
    db.create_table(
        "jobs",
        {
            "id": int,
            "kind": str,
            "target": str,
            "patient_key": str,
            "label": str,
            "fingerprint": str,
            "state": str,
            "version": int,
            "created_at": str,
            "started_at": str,
            "finished_at": str,
            "attempts": int,
            "payload": bytes,
            "message": str,
            "result_dir": str,
            "log_path": str,
        },
        pk="id",
        not_null={"kind", "target", "fingerprint", "state", "created_at"},
    )
    db.create_index("jobs", ["target", "fingerprint"], unique=True)
    db.create_index("jobs", ["state"])
    db.create_table(
        "generations",
        {"target": str, "generation": int}, pk="target"
    )


@MIGRATIONS()
def m002_job_retries(db: Database) -> None:
    """Why the last run ended without a result, and how many runs lost their worker."""
    db.add_column("jobs", "worker_deaths", int, not_null_default=0)
    db.add_column("jobs", "last_error", str)


@MIGRATIONS()
def m003_retry_jobs_a_shutdown_failed(db: Database) -> None:
    """Jobs failed before m002 because their worker died get the retry they would get now.

    Until then a SIGTERM or Ctrl-C took the worker with it and the job was
    failed ("worker process died (exit code 255)") for good. Such a job, when
    it is still the latest of its target, is queued again with its version
    (one worker death counted), so it resumes at the next start.
    """
    db.execute(
        "update jobs set state = 'queued', worker_deaths = 1, last_error = message, "
        "finished_at = null where state = 'failed' and message like 'worker process died%' "
        "and id = (select max(j.id) from jobs j where j.target = jobs.target)"
    )


@MIGRATIONS()
def m004_job_payloads_as_json(db: Database) -> None:
    """Job payloads of earlier versions become JSON (:mod:`theranode.service.jobs.payload`).

    The conversion, the one place that still reads the old format, is
    :func:`theranode.service.store.format_upgrade.payloads_to_json`.
    """
    from theranode.service.store.format_upgrade import payloads_to_json

    payloads_to_json(db)


@MIGRATIONS()
def m005_job_runner(db: Database) -> None:
    """Which node or worker started a job's last run (several may share the database)."""
    db.add_column("jobs", "runner", str)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INCOMPLETE = "incomplete"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class JobRecord:
    """One row of ``jobs``."""

    id: int
    kind: str
    target: str
    patient_key: str
    label: str
    fingerprint: str
    state: JobState
    version: int | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    payload: bytes | None
    message: str
    result_dir: str | None
    log_path: str | None
    worker_deaths: int = 0
    last_error: str = ""
    runner: str = ""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRecord:
        values = dict(row)
        values["state"] = JobState(values["state"])
        for text in ("message", "last_error", "runner"):
            values[text] = values.get(text) or ""
        for count in ("attempts", "worker_deaths"):
            values[count] = values.get(count) or 0
        return cls(**values)


class JobStore(Store):
    """All SQL on jobs; one connection, writers serialised by ``lock``."""

    def _rows(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[JobRecord]:
        with self.lock:
            return [JobRecord.from_row(r) for r in self.db.query(sql, params)]

    # -- queries --------------------------------------------------------------
    def get(self, job_id: int) -> JobRecord | None:
        rows = self._rows("select * from jobs where id = ?", [job_id])
        return rows[0] if rows else None

    def of_target(self, target: str) -> list[JobRecord]:
        return self._rows("select * from jobs where target = ? order by id", [target])

    def latest_done(self, target: str) -> JobRecord | None:
        rows = self._rows(
            "select * from jobs where target = ? and state = 'done' order by version desc, id desc"
            " limit 1",
            [target],
        )
        return rows[0] if rows else None

    def all(self, limit: int = 200) -> list[JobRecord]:
        return self._rows("select * from jobs order by id desc limit ?", [limit])

    def in_states(self, *states: JobState) -> list[JobRecord]:
        marks = ", ".join("?" for _ in states)
        return self._rows(
            f"select * from jobs where state in ({marks}) order by id", [s.value for s in states]
        )

    def targets_matching(self, patient_keys: list[str], label_prefix: str = "") -> list[str]:
        """Targets of these patients whose label starts with ``label_prefix``."""
        if not patient_keys:
            return []
        marks = ", ".join("?" for _ in patient_keys)
        with self.lock:
            rows = self.db.query(
                f"select distinct target, label from jobs where patient_key in ({marks})",
                patient_keys,
            )
            return sorted(r["target"] for r in rows if r["label"].startswith(label_prefix))

    def generation(self, target: str) -> int:
        with self.lock:
            rows = list(
                self.db.query("select generation from generations where target = ?", [target])
            )
        return int(rows[0]["generation"]) if rows else 0

    def bump_generation(self, target: str) -> int:
        """Ask for ``target`` to be recomputed (``theranode reprocess``)."""
        with self.transaction() as conn:
            conn.execute(
                "insert into generations (target, generation) values (?, 1) "
                "on conflict(target) do update set generation = generations.generation + 1",
                [target],
            )
            row = conn.execute(
                "select generation from generations where target = ?", [target]
            ).fetchone()
        return int(row[0])

    def active_of_patient(self, patient_key: str, kind: str) -> list[JobRecord]:
        return self._rows(
            "select * from jobs where patient_key = ? and kind = ? and state in "
            "('queued', 'running') order by id",
            [patient_key, kind],
        )

    # -- changes --------------------------------------------------------------
    def submit(
        self,
        *,
        kind: str,
        target: str,
        patient_key: str,
        label: str,
        fingerprint: str,
        payload: bytes | None,
        created_at: str,
        state: JobState = JobState.QUEUED,
        message: str = "",
    ) -> JobRecord | None:
        """Record a job unless one exists for these inputs; returns the new job or None.

        Queued jobs of the same target are superseded by the new one.
        """
        with self.transaction() as conn:
            exists = conn.execute(
                "select 1 from jobs where target = ? and fingerprint = ?", [target, fingerprint]
            ).fetchone()
            if exists:
                return None
            conn.execute(
                "update jobs set state = 'superseded', finished_at = ?, "
                "message = 'superseded by newer inputs' "
                "where target = ? and state in ('queued', 'incomplete')",
                [created_at, target],
            )
            job_id = conn.insert_returning_id(
                "insert into jobs (kind, target, patient_key, label, fingerprint, state, "
                "created_at, attempts, payload, message) values (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                [kind, target, patient_key, label, fingerprint, state.value, created_at,
                 payload, message],
            )
        return self.get(job_id)

    def claim_next(self, now: str, log_dir: str, runner: str = "") -> JobRecord | None:
        """Mark the oldest runnable queued job running and return it.

        A job is runnable when no job of the same target is running. Its
        result version is fixed at its first start (kept when it resumes
        after a crash), so a re-run writes the same objects.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "select id, target, version from jobs j where state = 'queued' and not exists "
                "(select 1 from jobs r where r.target = j.target and r.state = 'running') "
                "order by id limit 1"
            ).fetchone()
            if row is None:
                return None
            self._start(conn, *row, now=now, log_dir=log_dir, runner=runner)
        return self.get(row[0])

    def claim(self, job_id: int, now: str, log_dir: str, runner: str = "") -> JobRecord | None:
        """Mark job ``job_id`` running if it is queued and runnable; None when it is not.

        The one start of a job across every process on the database: the check and the
        update run under the database's write lock, so a job handed out twice (by the job
        engine, after a worker was presumed dead) starts once.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "select id, target, version from jobs j where id = ? and state = 'queued' "
                "and not exists (select 1 from jobs r where r.target = j.target "
                "and r.state = 'running')", [job_id]).fetchone()
            if row is None:
                return None
            self._start(conn, *row, now=now, log_dir=log_dir, runner=runner)
        return self.get(job_id)

    @staticmethod
    def _start(conn: Database, job_id: int, target: str, version: int | None, *, now: str,
               log_dir: str, runner: str) -> None:
        if version is None:
            version = 1 + conn.execute(
                "select coalesce(max(version), 0) from jobs where target = ?", [target]
            ).fetchone()[0]
        conn.execute(
            "update jobs set state = 'running', started_at = ?, attempts = attempts + 1, "
            "version = ?, log_path = ?, runner = ? where id = ?",
            [now, version, f"{log_dir}/job-{job_id}.log", runner, job_id],
        )

    def finish(
        self, job_id: int, state: JobState, now: str, message: str,
        result_dir: str | None = None, conn: Database | None = None,
    ) -> None:
        sql = ("update jobs set state = ?, finished_at = ?, message = ?, result_dir = ? "
               "where id = ?")
        params = [state.value, now, message, result_dir, job_id]
        if conn is not None:
            conn.execute(sql, params)
            return
        with self.transaction() as own:
            own.execute(sql, params)

    def is_current_run(self, job: JobRecord, conn: Database) -> bool:
        """Whether ``job`` (as claimed) is still running as that run: not taken for dead
        (a worker silent past ``[jobs] stalled_after_s``) and run again or ended since."""
        return conn.execute("select 1 from jobs where id = ? and state = 'running' "
                            "and attempts = ?", [job.id, job.attempts]).fetchone() is not None

    def requeue_interrupted(self, reason: str = INTERRUPTED_BY_CRASH) -> list[JobRecord]:
        """Jobs left ``running`` by a crash go back to the queue (same version)."""
        interrupted = self.in_states(JobState.RUNNING)
        with self.transaction() as conn:
            conn.execute("update jobs set state = 'queued', last_error = ? "
                         "where state = 'running'", [reason])
        return interrupted

    def requeue(self, job_id: int, reason: str) -> None:
        """A run interrupted by the node (shutdown): back to the queue, same version."""
        with self.transaction() as conn:
            conn.execute("update jobs set state = 'queued', last_error = ? "
                         "where id = ? and state = 'running'", [reason, job_id])

    def worker_lost(self, job_id: int, now: str, reason: str, max_attempts: int) -> JobRecord:
        """A run whose worker died from outside: queued again, or failed at ``max_attempts``.

        Only such deaths count toward the bound; the job keeps its version.
        """
        with self.transaction() as conn:
            (deaths,) = conn.execute(
                "select worker_deaths + 1 from jobs where id = ?", [job_id]).fetchone()
            if deaths < max_attempts:
                conn.execute(
                    "update jobs set state = 'queued', worker_deaths = ?, last_error = ? "
                    "where id = ?", [deaths, reason, job_id])
            else:
                message = (f"{reason}; failed after {deaths} attempt(s) whose worker died "
                           f"([jobs] max_attempts = {max_attempts})")
                conn.execute(
                    "update jobs set state = 'failed', worker_deaths = ?, last_error = ?, "
                    "message = ?, finished_at = ? where id = ?",
                    [deaths, reason, message, now, job_id])
        job = self.get(job_id)
        assert job is not None
        return job
