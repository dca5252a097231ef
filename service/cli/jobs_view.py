"""What `theranode status`, `theranode jobs` and `theranode reprocess` show and do.

Everything here reads the database a node writes (another process may be
serving at the same time; SQLite's WAL mode lets readers in). PatientIDs,
failure reasons and job log lines come from what peers sent: every line a
view yields is escaped for the terminal (:mod:`theranode.service.cli.terminal_text`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from theranode.config.schema import Settings
from theranode.service.cli.terminal_text import terminal_lines
from theranode.service.jobs.runner import read_job_log
from theranode.service.jobs.spec import JobKind
from theranode.service.plan.completion import Action
from theranode.service.plan.planner import Planner, course_target
from theranode.service.store.database import Database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobState, JobStore
from theranode.service.store.outbox import OutboxStore


def _patient_ids(db: Database) -> dict[str, str]:
    return {r["patient_key"]: r["patient_id"] for r in db.query(
        "select patient_key, patient_id from patients")}


def job_name(job: JobRecord, patient_ids: dict[str, str]) -> str:
    """``PATIENTID/1.2`` for a cycle (course 1, cycle 2), ``PATIENTID/course 1`` for a course."""
    patient = patient_ids.get(job.patient_key, job.patient_key)
    if job.kind == JobKind.CYCLE.value:
        return f"{patient}/{job.label}"
    return f"{patient}/course {job.label}"


def _deliveries(outbox: OutboxStore, job: JobRecord) -> str:
    rows = outbox.deliveries_of_job(job.id)
    if not rows:
        return ""
    per: dict[str, Counter[str]] = {}
    for row in rows:
        per.setdefault(row["destination"], Counter())[row["state"]] += 1
    parts = []
    for name, counts in sorted(per.items()):
        total = sum(counts.values())
        text = f"{name} {counts['sent']}/{total} sent"
        if counts["refused"]:
            text += f", {counts['refused']} refused"
        parts.append(text)
    return "; ".join(parts)


def render_jobs(db: Database, limit: int = 50) -> Iterator[str]:
    """One line per job, newest first, with its deliveries."""
    return terminal_lines(_jobs_lines(db, limit))


def _jobs_lines(db: Database, limit: int) -> Iterator[str]:
    jobs = JobStore(db)
    outbox = OutboxStore(jobs.db, jobs.lock)
    ids = _patient_ids(db)
    rows = jobs.all(limit)
    if not rows:
        yield "No jobs yet."
        return
    yield f"{'job':>5}  {'what':<28} {'ver':>3}  {'state':<10} {'created (UTC)':<19}  deliveries"
    for job in rows:
        version = "" if job.version is None else str(job.version)
        yield (f"{job.id:>5}  {job_name(job, ids):<28} {version:>3}  {job.state.value:<10} "
               f"{job.created_at[:19]:<19}  {_deliveries(outbox, job)}")
        if job.state in (JobState.FAILED, JobState.INCOMPLETE) and job.message:
            yield f"       {job.message}"
        if job.attempts > 1 or job.last_error:
            yield f"       {_attempts(job)}"
    for line in _outbox_lines(outbox):
        yield line


def _attempts(job: JobRecord) -> str:
    """``attempts 3 (2 lost their worker); last: <why the last run gave no result>``."""
    text = f"attempts {job.attempts}"
    if job.worker_deaths:
        text += f" ({job.worker_deaths} lost their worker)"
    return text + (f"; last: {job.last_error}" if job.last_error else "")


def render_job(db: Database, job_id: int) -> Iterator[str]:
    """One job in detail: state, message, objects and deliveries, log tail."""
    return terminal_lines(_job_lines(db, job_id))


def _job_lines(db: Database, job_id: int) -> Iterator[str]:
    jobs = JobStore(db)
    job = jobs.get(job_id)
    if job is None:
        yield f"No job {job_id}."
        return
    yield f"Job {job.id}: {job.kind} {job_name(job, _patient_ids(db))}, state {job.state.value}"
    yield f"  version {job.version}, created {job.created_at}, started {job.started_at}, " \
          f"finished {job.finished_at}, {_attempts(job)}"
    yield f"  fingerprint {job.fingerprint[:16]}…, results in {job.result_dir or '-'}"
    if job.runner:
        yield f"  last run on {job.runner}"
    for part in (job.message or "").split("; "):
        if part:
            yield f"  {part}"
    for row in OutboxStore(jobs.db, jobs.lock).deliveries_of_job(job.id):
        status = "" if row["last_status"] is None else f" status 0x{row['last_status']:04X}"
        yield (f"  {row['modality']:<6} {row['sop_instance_uid']} → {row['destination']}: "
               f"{row['state']} after {row['attempts']} attempt(s){status} "
               f"{row['last_error'] or ''}".rstrip())
    log = read_job_log(job)
    if log:
        yield f"  log {job.log_path} (last {len(log)} lines):"
        for line in log:
            yield f"    {line}"


def _outbox_lines(outbox: OutboxStore) -> Iterator[str]:
    summary = outbox.summary()
    if summary:
        text = ", ".join(f"{r['destination']}: {r['n']} {r['state']}" for r in summary)
        yield f"Deliveries: {text}"
    for row in outbox.problems(10):
        status = "" if row["last_status"] is None else f" (status 0x{row['last_status']:04X})"
        yield (f"  job {row['job_id']} {row['modality']} → {row['destination']}: {row['state']}"
               f" after {row['attempts']} attempt(s){status} {row['last_error'] or ''}".rstrip())


def render_dosimetry_status(db: Database, settings: Settings) -> Iterator[str]:
    """Per cycle: what the completion rules decide now and the latest job (ALERT when it
    failed, with the reason); per course its latest job; then deliveries."""
    return terminal_lines(_dosimetry_lines(db, settings))


def _dosimetry_lines(db: Database, settings: Settings) -> Iterator[str]:
    index = IndexStore(db)
    jobs = JobStore(db)
    planner = Planner(index, jobs, settings)
    ids = _patient_ids(db)
    yield ""
    yield "Dosimetry"
    for key in index.patient_keys():
        plans = planner.plan_patient(key, submit=False)
        for plan in plans:
            view, decision = plan.view, plan.decision
            name = f"{ids.get(key, key)}/{view.course}.{view.cycle}"
            job = plan.job
            state = _job_state(job)
            if job is not None and job.state is JobState.INCOMPLETE:
                yield f"  ALERT {name}: incomplete — {job.message}"
            elif job is not None and job.state is JobState.FAILED:
                yield f"  ALERT {name}: {state} — {job.message}"
            elif decision.action is Action.WAIT:
                yield f"  {name}: waiting — {decision.reason}; {state}"
            else:
                yield f"  {name}: {decision.reason}; {state}"
        for course in sorted({plan.view.course for plan in plans}):
            yield _course_line(jobs, key, course, ids)
    for line in _outbox_lines(OutboxStore(jobs.db, jobs.lock)):
        yield line


def _job_state(job: JobRecord | None) -> str:
    """``job 4 queued (version 1), resumes after: <why its last run gave no result>``."""
    if job is None:
        return "no job"
    text = f"job {job.id} {job.state.value}" + (
        f" (version {job.version})" if job.version else "")
    if job.state in (JobState.QUEUED, JobState.RUNNING) and job.last_error:
        text += f", attempt {job.attempts + int(job.state is JobState.QUEUED)} after: " \
                f"{job.last_error}"
    return text


def _course_line(jobs: JobStore, patient_key: str, course: int, ids: dict[str, str]) -> str:
    """The course result's latest job: its state, and the reason when it failed."""
    name = f"{ids.get(patient_key, patient_key)}/course {course}"
    course_jobs = jobs.of_target(course_target(patient_key, course))
    if not course_jobs:
        return f"  {name}: no course job yet (it follows the cycles' results)"
    job = course_jobs[-1]
    if job.state is JobState.FAILED:
        return f"  ALERT {name}: {_job_state(job)} — {job.message}"
    detail = f" — {job.message}" if job.state in (JobState.QUEUED, JobState.RUNNING) else ""
    return f"  {name}: {_job_state(job)}{detail}"


def request_reprocess(db: Database, selector: str) -> list[str]:
    """Bump the generation of every cycle (and course) the selector names."""
    patient, _, label = selector.partition("/")
    jobs = JobStore(db)
    keys = [k for k, pid in _patient_ids(db).items() if patient in (pid, k)]
    targets = [t for t in jobs.targets_matching(keys) if t.startswith("cycle|")]
    if label:
        targets = [t for t in targets
                   if any(j.label == label for j in jobs.of_target(t))]
    for target in targets:
        jobs.bump_generation(target)
    return targets
