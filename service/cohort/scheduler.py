"""The scheduling frame of periodic work: the cohort statistics job.

``theranode serve`` starts an apscheduler :class:`BackgroundScheduler` that
runs :func:`run_cohort_job` on the cron schedule ``[cohort] schedule`` (local
time; empty = never, run it with ``theranode cohort run``). The job opens its
own database connection and writes its report into ``<data_dir>/reports``;
a failing run is logged and the next one still happens.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from theranode.config.schema import Settings
from theranode.service.store import open_database

logger = logging.getLogger(__name__)

REPORTS_DIR = "reports"
COHORT_JOB_ID = "cohort-statistics"


def run_cohort_job(db_url: str, reports_dir: str) -> Path | None:
    """One run of the cohort statistics (``theranode.service.cohort.report.run_cohort``)."""
    try:
        cohort_report = importlib.import_module("theranode.service.cohort.report")
        db = open_database(db_url)
        report: Path = cohort_report.run_cohort(db, Path(reports_dir))
    except Exception:
        logger.exception("Cohort statistics job failed; the next scheduled run will retry")
        return None
    logger.info("Cohort statistics written to %s", report)
    return report


def start_scheduler(settings: Settings, db_url: str) -> BackgroundScheduler | None:
    """Start the background scheduler (``None`` when no schedule is configured)."""
    schedule = settings.cohort.schedule
    if not schedule:
        logger.info("Cohort statistics: no schedule configured (run `theranode cohort run`)")
        return None
    reports_dir = settings.data_dir.resolve() / REPORTS_DIR
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        run_cohort_job,
        CronTrigger.from_crontab(schedule),
        args=[db_url, str(reports_dir)],
        id=COHORT_JOB_ID,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=3600,
    )
    scheduler.start()
    job = scheduler.get_job(COHORT_JOB_ID)
    logger.info("Cohort statistics scheduled (%s), next run %s", schedule,
                job.next_run_time if job else "?")
    return scheduler
