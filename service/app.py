"""The running node, wired from one :class:`~theranode.config.schema.Settings` object.

Data flow (each arrow is a callback or a queue; each box runs on its own thread)::

    peer ──C-STORE──▶ receive.scp.StorageSCP          one thread per association
                        │ receive.ingest.Ingest       decode, check, archive (fsync,
                        │                             rename), index row, DICOM status
                        ▼ on_new_series(patient)
                      plan.regroup.Regrouper          patient → course → cycle → time
                        │                             point (plan.grouping), persisted
                        ▼ on_grouped(patient)
                      plan.planner.Planner            completion rules (plan.completion);
                        │                             queues cycle and course jobs
                        ▼ on_submitted()              (store.jobs, payload: jobs.payload)
                      jobs.runner.JobRunner           one worker process per job:
                        │                             jobs.pipeline read → compute → write
                        ▼ on_finished(job)            objects queued in the same transaction
                      deliver.outbox.Outbox ──C-STORE──▶ destinations (deliver.sender)
                        and Planner.request(patient)  (a course job may follow a cycle)

    cohort.scheduler   the cohort statistics job on its cron schedule (apscheduler's
                       background thread, its own database connection)

Start-up order matters and is in :meth:`Node.start`: crash recovery (incoming
files, re-keying, reconciliation of unindexed archive files, result-format
upgrade) completes before any thread that reads the archive or the database
starts, and the listener opens last. :meth:`Node.stop` reverses it.

The index and the job/outbox stores use separate database connections (every write
transaction holds the database's write lock: :mod:`theranode.service.store.database`);
the job store and the outbox share one, since a job's objects are queued in the
transaction that marks it done.

On a shared PostgreSQL database (``[database] url``, docs/scale-out.md) several nodes
receive, group and plan side by side; the jobs are not run here but requested from
``theranode worker`` processes (:mod:`theranode.service.jobs.queue`); the outbox
delivers from one node at a time (:class:`~theranode.service.store.database.Leadership`);
and the cohort statistics run on the workers' schedule, once across the cluster.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from theranode.config.schema import DATABASE_NAME, Settings
from theranode.dicomio.headers import InstanceHeader
from theranode.service.clock import check_clock_offset
from theranode.service.cohort.scheduler import start_scheduler
from theranode.service.deliver.outbox import Outbox
from theranode.service.errors import StartupError
from theranode.service.jobs.queue import Dispatcher, deferring_app
from theranode.service.jobs.runner import JobRunner
from theranode.service.plan.planner import Planner
from theranode.service.plan.regroup import Regrouper, rules_from_settings
from theranode.service.receive.archive import Archive, make_private_file, make_private_folder
from theranode.service.receive.ingest import Ingest
from theranode.service.receive.listeners import ListenerProcesses, security_share
from theranode.service.receive.reconcile import reconcile_archive
from theranode.service.receive.rekey import rekey_stale_patients
from theranode.service.receive.scp import StorageSCP
from theranode.service.receive.site_secret import patient_keyer
from theranode.service.store import open_database
from theranode.service.store.database import Leadership, clock_offset_s
from theranode.service.store.format_upgrade import migrate_results
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobRecord, JobStore
from theranode.service.store.outbox import OutboxStore

logger = logging.getLogger(__name__)

#: The node's umask: files 0600 and folders 0700 unless created with another mode.
#: Archive, database, logs, job logs, results and reports carry patient data.
PRIVATE_UMASK = 0o077


class Node:
    """The theranode DICOM node: archive, index, grouping, listener, jobs and outbox.

    See the module docstring for how the parts feed each other.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        os.umask(PRIVATE_UMASK)  # whatever this process creates (job logs, results, reports)
        try:
            make_private_folder(data_dir)
            self.archive = Archive(data_dir, settings.security.min_free_disk_mb,
                                   node_name=settings.incoming_name)
            if not settings.shared_database:
                _make_database_private(data_dir)
        except OSError as exc:
            raise StartupError(f"Cannot use data folder {data_dir}: {exc}") from exc
        self.keyer = patient_keyer(data_dir)
        self.db = open_database(settings.database_url)
        self.index = IndexStore(self.db)
        self.rules = rules_from_settings(settings.grouping)
        self.jobs = JobStore(open_database(settings.database_url))
        self.outbox_store = OutboxStore(self.jobs.db, self.jobs.lock)
        self.leadership = Leadership(settings.database_url, "outbox")
        self.outbox = Outbox(self.outbox_store, settings, leadership=self.leadership.held)
        #: This node's own job runner (SQLite), or None: the workers run the jobs.
        self.runner: JobRunner | None = None
        self.dispatcher: Dispatcher | None = None
        on_submitted: Callable[[], None]
        if settings.shared_database:
            self.dispatcher = Dispatcher(self.jobs, deferring_app(settings.database_url))
            on_submitted = self.dispatcher
        else:
            self.runner = JobRunner(self.jobs, self.outbox_store, settings,
                                    on_finished=self._job_finished)
            on_submitted = self.runner.wake
        self.planner = Planner(self.index, self.jobs, settings, on_submitted=on_submitted)
        self.regrouper = Regrouper(self.index, self.rules, on_grouped=self.planner.request,
                                   check_every_s=settings.jobs.poll_interval_s)
        #: This process's share of the [security] limits (all of them with one listener).
        self.listener_security = security_share(settings.security,
                                                settings.node.listener_processes)
        self.ingest = Ingest(
            self.archive, self.index, self.keyer, on_new_series=self._new_series,
            calibration=settings.calibration, security=self.listener_security,
        )
        self.scp = StorageSCP(self.ingest, settings.node.ae_title, self.listener_security)
        self.listeners = ListenerProcesses(settings, on_new_series=self.regrouper.request)
        self.scheduler: BackgroundScheduler | None = None
        self._stopping = threading.Event()

    def _job_finished(self, job: JobRecord) -> None:
        self.outbox.wake()
        self.planner.request(job.patient_key)  # a course job may follow, or a scaled cycle

    def _new_series(self, header: InstanceHeader) -> None:
        self.regrouper.request(header.patient_key)

    def start(self) -> None:
        """Recover from any crash, then open the listener."""
        warning = check_clock_offset(clock_offset_s(self.db),
                                     self.settings.protocol.quiet_period_s)
        if warning:
            logger.warning("%s", warning)
        self.archive.clean_incoming()
        rekey_stale_patients(self.index, self.archive, self.keyer)
        self.reconcile()
        migrate_results(self.settings.data_dir)  # results of earlier versions → JSON, before jobs
        self.regrouper.start()
        for key in self.index.patient_keys():
            self.regrouper.request(key)
        if self.runner is not None:
            self.runner.start()
        self.outbox.start()
        self.planner.start()  # plans every patient now, then every jobs.poll_interval_s
        if self.dispatcher is not None:
            self.dispatcher()  # jobs a node stopped before requesting them
        else:  # on a shared database the workers run the schedule, once for all
            self.scheduler = start_scheduler(self.settings, self.settings.database_url)
        node = self.settings.node
        try:
            self.scp.start(node.bind, node.port, reuse_port=node.listener_processes > 1)
            self.listeners.start(self.scp.port)
        except (OSError, RuntimeError) as exc:
            raise StartupError(f"Cannot listen on {node.bind}:{node.port}: {exc}") from exc

    def reconcile(self) -> Counter[str]:
        """File archive files a crash left unindexed (:func:`reconcile_archive`)."""
        return reconcile_archive(self.archive, self.index, self.ingest)

    @property
    def port(self) -> int:
        return self.scp.port

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM, SIGINT): as safe as a crash, and quicker to recover.

        No new job starts from the first moment; the listener closes (no new
        association); running jobs are interrupted and queued again with
        their version, so they resume at the next start and write the same
        objects; the outbox stops after the object in flight, and what is
        still pending is sent after the restart. A second call (a second
        Ctrl-C while stopping) returns at once.
        """
        if self._stopping.is_set():
            logger.info("Already stopping")
            return
        self._stopping.set()
        if self.runner is not None:
            self.runner.begin_stop()
        self.outbox.begin_stop()
        self.scp.stop()
        self.listeners.stop()
        self.ingest.close()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        self.planner.stop()
        self.regrouper.stop()
        if self.runner is not None:
            self.runner.stop()
        self.outbox.stop()
        self.leadership.release()
        if self.dispatcher is not None:
            self.dispatcher.app.close()
        logger.info("Stopped")


def _make_database_private(data_dir: Path) -> None:
    """The database and its WAL files readable by the node's user only (SQLite makes them 0644)."""
    for name in (DATABASE_NAME, f"{DATABASE_NAME}-wal", f"{DATABASE_NAME}-shm"):
        path = data_dir / name
        if name == DATABASE_NAME or path.exists():
            make_private_file(path)
