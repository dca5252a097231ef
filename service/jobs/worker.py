"""``theranode worker``: computes the dosimetry jobs of nodes sharing a PostgreSQL database.

A worker needs what a node's own job runner needs: the database (``[database] url``) and
the data folder (``[node] data_dir``, the archive the jobs read, and ``results/`` and
``jobs/`` they write), shared with the nodes (docs/scale-out.md). It runs ``[jobs]
workers`` jobs at a time, each in a child process exactly as ``theranode serve`` runs them
on one machine (:class:`~theranode.service.jobs.runner.JobRunner`), and takes its jobs
from procrastinate (:mod:`theranode.service.jobs.queue`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket

from theranode import __version__
from theranode.config.schema import Settings
from theranode.service.app import PRIVATE_UMASK
from theranode.service.errors import StartupError
from theranode.service.jobs.queue import SWEEP, run_worker
from theranode.service.jobs.runner import JobRunner
from theranode.service.receive.archive import make_private_folder
from theranode.service.store import open_database
from theranode.service.store.jobs import JobStore
from theranode.service.store.outbox import OutboxStore

logger = logging.getLogger(__name__)


class _QuietSweep(logging.Filter):
    """procrastinate logs every start and end of every task at INFO; the sweep runs every
    few seconds and would bury the jobs' lines, so its routine lines are left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or SWEEP not in record.getMessage()


def _quiet_sweep(worker_name: str) -> None:
    quiet = _QuietSweep()
    for name in ("procrastinate.periodic", "procrastinate.worker",
                 f"procrastinate.worker.{worker_name}"):
        logging.getLogger(name).addFilter(quiet)


def worker_settings(settings: Settings) -> Settings:
    """``settings`` with the worker's name: ``[node] name``, else ``<host>-worker-<pid>``."""
    name = settings.node.name or f"{socket.gethostname()}-worker-{os.getpid()}"
    return dataclasses.replace(settings, node=dataclasses.replace(settings.node, name=name))


def run(settings: Settings) -> None:
    """Compute jobs until SIGTERM or SIGINT."""
    if not settings.shared_database:
        raise StartupError(
            "theranode worker computes jobs for nodes that share a PostgreSQL database; "
            "[database] url is not set, so `theranode serve` computes its own jobs. "
            "See docs/scale-out.md.")
    settings = worker_settings(settings)
    os.umask(PRIVATE_UMASK)  # job logs and results carry patient data
    try:
        make_private_folder(settings.data_dir)
    except OSError as exc:
        raise StartupError(f"Cannot use data folder {settings.data_dir}: {exc}") from exc
    jobs = JobStore(open_database(settings.database_url,
                                  application_name=f"theranode worker {settings.node_name}"))
    runner = JobRunner(jobs, OutboxStore(jobs.db, jobs.lock), settings)
    runner.start_executor()
    _quiet_sweep(settings.node_name)
    logger.info("theranode %s worker %s computing up to %d job(s) at a time, data in %s "
                "(config: %s)", __version__, settings.node_name, settings.jobs.workers,
                settings.data_dir.resolve(), settings.source)
    run_worker(settings, runner, settings.jobs.workers)
    logger.info("Worker %s stopped", settings.node_name)
