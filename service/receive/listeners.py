"""More listener processes on the node's port, so parallel associations use more cores.

pynetdicom runs each association on Python threads; whatever the number of
associations, one process decodes PDUs on one core at a time (the GIL). With
``[node] listener_processes = N`` (N > 1) the node starts N − 1 more
processes, each a complete receiver — the Storage SCP and :class:`Ingest`
with its own database connection — bound to the same address and port with
``SO_REUSEPORT`` (Linux ``socket(7)``: the kernel spreads incoming
connections over the sockets). The node's own listener is the N-th.

What they share, and why it stays safe:

- the archive folder: files are written to ``incoming/`` under unique names,
  fsynced and renamed into place (:mod:`~theranode.service.receive.archive`);
- the database: every write transaction begins ``IMMEDIATE`` (SQLite's write
  lock, across processes); the series-owner check and de-duplication run in
  those transactions (:mod:`~theranode.service.store.index`);
- the site secret: read from the data folder, made by the node before any
  listener process starts.

What they do not share: the ``[security]`` limits are counted per process.
``max_associations`` and ``max_connections`` apply to each process as
configured: the kernel spreads connections by a hash of their addresses, not
evenly, so a share of the limit per process would refuse an association while
another process has room (a benchmark of eight parallel senders hit it with
two processes of four each); N processes take up to N times as many, which is
what the extra cores are for. The quarantine, one folder on one disk, is
shared out: each process may fill ``quarantine_quota_mb`` / N (rounded up),
counting the whole folder against its share, so the folder may hold less
than the quota, never more.

The node learns of new series through a pipe per process (the patient key,
which the regrouper needs) and receives their log records through a queue
(one log, written by the node). Listener processes ignore SIGINT and SIGTERM:
the node stops them when it stops (:meth:`ListenerProcesses.stop`), and the
kernel kills them if the node dies (``PR_SET_PDEATHSIG``), as it does the job
workers. A listener process that dies is started again.
"""

from __future__ import annotations

import dataclasses
import logging
import logging.handlers
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from theranode.config.schema import SecuritySettings, Settings
from theranode.dicomio.headers import InstanceHeader

logger = logging.getLogger(__name__)

#: Seconds a listener process gets to close its associations when the node stops.
STOP_TIMEOUT_S = 15.0
#: Message a listener process sends when it is listening.
READY = "ready"


def security_share(security: SecuritySettings, processes: int) -> SecuritySettings:
    """The ``[security]`` limits of one of ``processes`` listener processes.

    The quarantine quota is shared out (rounded up); the association and
    connection limits apply per process (module docstring).
    """
    share = max(1, math.ceil(security.quarantine_quota_mb / processes))
    return dataclasses.replace(security, quarantine_quota_mb=share)


def listener_main(settings: Settings, number: int, conn: Any, log_queue: Any) -> None:
    """A listener process: receive, archive and index until the node says stop."""
    from theranode.service.jobs.runner import die_with_parent
    from theranode.service.logs import quiet_pynetdicom
    from theranode.service.receive.archive import Archive
    from theranode.service.receive.ingest import Ingest
    from theranode.service.receive.scp import StorageSCP
    from theranode.service.receive.site_secret import patient_keyer
    from theranode.service.store import open_database
    from theranode.service.store.index import IndexStore

    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.umask(0o077)
    root = logging.getLogger()
    root.handlers.clear()
    root.addHandler(logging.handlers.QueueHandler(log_queue))
    root.setLevel(settings.logging.level)
    quiet_pynetdicom(root.level)
    threading.current_thread().name = f"listener-{number}"

    send_lock = threading.Lock()

    def new_series(header: InstanceHeader) -> None:
        with send_lock:
            conn.send(header.patient_key)

    data_dir = settings.data_dir
    security = security_share(settings.security, settings.node.listener_processes)
    archive = Archive(data_dir, security.min_free_disk_mb, node_name=settings.incoming_name)
    index = IndexStore(open_database(settings.database_url))
    ingest = Ingest(archive, index, patient_keyer(data_dir), on_new_series=new_series,
                    calibration=settings.calibration, security=security)
    scp = StorageSCP(ingest, settings.node.ae_title, security)
    scp.start(settings.node.bind, settings.node.port, reuse_port=True)
    with send_lock:
        conn.send(READY)
    try:
        conn.recv()  # "stop", or EOF when the node is gone
    except EOFError:
        pass
    finally:
        scp.stop()
        ingest.close()


class ListenerProcesses:
    """The node's extra listener processes (``[node] listener_processes`` − 1 of them)."""

    def __init__(self, settings: Settings, on_new_series: Callable[[str], None]) -> None:
        self.settings = settings
        self.on_new_series = on_new_series
        self.count = settings.node.listener_processes - 1
        self._context = multiprocessing.get_context("spawn")
        # Made by start(), only when there are processes to start (the default is none).
        self._log_queue: Any = None
        self._log_listener: logging.handlers.QueueListener | None = None
        self._processes: dict[int, tuple[BaseProcess, Any]] = {}
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="listener-watch", daemon=True)

    def start(self, port: int) -> None:
        """Start the processes on ``port`` (the node's own, already bound with SO_REUSEPORT).

        Returns when each listens; raises RuntimeError if one cannot.
        """
        if self.count <= 0:
            return
        self.settings = dataclasses.replace(
            self.settings, node=dataclasses.replace(self.settings.node, port=port))
        self._log_queue = self._context.Queue()
        self._log_listener = logging.handlers.QueueListener(
            self._log_queue, _ToLoggers(), respect_handler_level=False)
        self._log_listener.start()
        for number in range(1, self.count + 1):
            self._start(number)
        self._watcher.start()
        logger.info("%d more listener process(es) on port %d", self.count,
                    self.settings.node.port)

    def _start(self, number: int) -> None:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=listener_main, args=(self.settings, number, theirs, self._log_queue),
            name=f"theranode-listener-{number}", daemon=True)
        process.start()
        theirs.close()
        if not ours.poll(60) or ours.recv() != READY:
            process.kill()
            raise RuntimeError(f"listener process {number} did not start listening")
        self._processes[number] = (process, ours)

    def _watch(self) -> None:
        """Pass new-series notices to the node; start again a process that died."""
        while not self._stopping.is_set():
            conns: dict[Any, int] = {c: n for n, (_, c) in self._processes.items()}
            sentinels: dict[Any, int] = {p.sentinel: n for n, (p, _) in self._processes.items()}
            ready = multiprocessing.connection.wait([*conns, *sentinels], timeout=1.0)
            for item in ready:
                if item in conns:
                    pipe: Any = item
                    try:
                        patient_key = str(pipe.recv())
                    except (EOFError, OSError):
                        continue
                    self.on_new_series(patient_key)
                elif not self._stopping.is_set():
                    self._restart(sentinels[item])

    def _restart(self, number: int) -> None:
        process, conn = self._processes.pop(number)
        conn.close()
        logger.error("Listener process %d ended (exit code %s); starting it again", number,
                     process.exitcode)
        try:
            self._start(number)
        except Exception:
            logger.exception("Listener process %d could not be started again", number)

    def stop(self) -> None:
        """Stop every listener process (their associations are aborted)."""
        if self.count <= 0:
            return
        self._stopping.set()
        for _, conn in self._processes.values():
            try:
                conn.send("stop")
            except OSError:
                pass
        for number, (process, conn) in self._processes.items():
            process.join(STOP_TIMEOUT_S)
            if process.is_alive():
                logger.warning("Listener process %d did not stop; killed", number)
                process.kill()
                process.join()
            conn.close()
        if self._watcher.is_alive():
            self._watcher.join(5)
        if self._log_listener is not None:
            self._log_listener.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p, _ in self._processes.values() if p.pid is not None]


class _ToLoggers(logging.Handler):
    """Hands a listener process's log record to the node's logger of the same name."""

    def emit(self, record: logging.LogRecord) -> None:
        logger_ = logging.getLogger(record.name)
        if logger_.isEnabledFor(record.levelno):
            logger_.handle(record)
