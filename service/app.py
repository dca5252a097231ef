"""Builds the running node from one :class:`~config.schema.Settings` object."""

from __future__ import annotations

import logging
import threading

from pydicom import dcmread

from config.schema import Settings
from dicomio.headers import InstanceHeader, instance_header
from service.archive import Archive, sha256_hex
from service.errors import StartupError
from service.ingest import Ingest, utc_now
from service.jobs import JobRunner
from service.outbox import Outbox
from service.planner import Planner
from service.regroup import Regrouper, rules_from_settings
from service.scheduler import start_scheduler
from service.scp import StorageSCP
from service.store import open_database
from service.store.index import IndexStore
from service.store.jobs import JobRecord, JobStore
from service.store.outbox import OutboxStore

logger = logging.getLogger(__name__)

DATABASE_NAME = "theranode.db"


class Node:
    """The theranode DICOM node: archive, index, grouping, listener, jobs and outbox.

    Data flow: the listener archives and indexes → the regrouper groups the
    patient → the planner applies the completion rules and queues jobs → the
    job runner computes in worker processes → the outbox sends the results.
    Jobs and deliveries use their own database connection (SQLite in WAL
    mode serialises the writers).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            self.archive = Archive(data_dir, settings.security.min_free_disk_mb)
        except OSError as exc:
            raise StartupError(f"Cannot use data folder {data_dir}: {exc}") from exc
        self.db = open_database(data_dir / DATABASE_NAME)
        self.index = IndexStore(self.db)
        self.rules = rules_from_settings(settings.grouping)
        self.jobs = JobStore(open_database(data_dir / DATABASE_NAME))
        self.outbox_store = OutboxStore(self.jobs)
        self.outbox = Outbox(self.outbox_store, settings)
        self.runner = JobRunner(self.jobs, self.outbox_store, settings,
                                on_finished=self._job_finished)
        self.planner = Planner(self.index, self.jobs, settings, on_submitted=self.runner.wake)
        self.regrouper = Regrouper(self.index, self.rules, on_grouped=self.planner.request)
        self.ingest = Ingest(
            self.archive, self.index, on_new_series=self._new_series,
            calibration=settings.calibration,
        )
        self.scp = StorageSCP(self.ingest, settings.node.ae_title, settings.security)
        self.scheduler: object | None = None
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    def _job_finished(self, job: JobRecord) -> None:
        self.outbox.wake()
        self.planner.request()

    def _new_series(self, header: InstanceHeader) -> None:
        self.regrouper.request(header.patient_key)

    def start(self) -> None:
        """Recover from any crash, then open the listener."""
        self.archive.clean_incoming()
        self.reconcile()
        self.regrouper.start()
        for key in self.index.patient_keys():
            self.regrouper.request(key)
        self.runner.start()
        self.outbox.start()
        self.planner.start()
        self.planner.request()
        self.scheduler = start_scheduler(self.settings, self.settings.data_dir / DATABASE_NAME)
        try:
            self.scp.start(self.settings.node.bind, self.settings.node.port)
        except OSError as exc:
            raise StartupError(
                f"Cannot listen on {self.settings.node.bind}:{self.settings.node.port}: {exc}"
            ) from exc

    def reconcile(self) -> int:
        """Index archived files a crash left unindexed (written, renamed, not committed)."""
        indexed = self.index.archived_paths()
        recovered = 0
        for path in self.archive.archive.rglob("*.dcm"):
            relative = self.archive.relative(path)
            if relative in indexed:
                continue
            data = path.read_bytes()
            try:
                ds = dcmread(path, stop_before_pixels=True)
                header = instance_header(ds)
            except Exception as exc:
                logger.error("Archived file %s cannot be re-indexed: %s", relative, exc)
                continue
            self.index.add_instance(
                header, path=relative, sha256=sha256_hex(data), size=len(data),
                transfer_syntax=str(ds.file_meta.get("TransferSyntaxUID", "")),
                received=utc_now(), calling_ae="(recovered)", peer="",
            )
            recovered += 1
        if recovered:
            logger.warning("Re-indexed %d archived file(s) whose index rows were lost", recovered)
        return recovered

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
        self.runner.begin_stop()
        self.outbox.begin_stop()
        self.scp.stop()
        self.ingest.close()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)  # type: ignore[attr-defined]
        self.planner.stop()
        self.regrouper.stop()
        self.runner.stop()
        self.outbox.stop()
        logger.info("Stopped")
        self._stopped.set()

    def wait(self) -> None:
        """Block until :meth:`stop`; wakes every second so the main thread can
        run signal handlers (a signal delivered to another thread would not
        interrupt an untimed wait)."""
        while not self._stopped.wait(1.0):
            pass

