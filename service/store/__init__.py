"""All SQL of theranode lives in this package.

Each module holds one group of tables and their schema changes as a
sqlite-utils :class:`~sqlite_utils.migrations.Migrations` set named
``theranode.<module>``; :func:`open_database` applies every set at start-up.

- :mod:`theranode.service.store.index` — instances, series, grouping (patient → course →
  cycle → time point).
- :mod:`theranode.service.store.outcomes` — imported outcome data for cohort statistics.
- :mod:`theranode.service.store.jobs` — dosimetry jobs and reprocess requests.
- :mod:`theranode.service.store.outbox` — result objects and their delivery per destination.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

logger = logging.getLogger(__name__)

#: Modules of this package that declare a ``MIGRATIONS`` set, in apply order.
SCHEMA_MODULES = ("index", "jobs", "outbox", "outcomes")


def migration_sets() -> list[Migrations]:
    """The migration sets of every schema module."""
    sets = []
    for name in SCHEMA_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        sets.append(module.MIGRATIONS)
    return sets


def open_database(path: Path | str | None = None) -> sqlite_utils.Database:
    """Open (and migrate) the SQLite database at ``path``; ``None`` = in memory.

    The connection uses WAL journaling with ``synchronous=NORMAL``: a
    committed row survives a crash of the process (it is in the WAL, in the
    operating system's cache) but the last commits may roll back on a power
    cut or kernel crash. That is safe because the archive, not the index, is
    the durable record: every file is fsynced and renamed before its row is
    written, and :meth:`theranode.service.app.Node.reconcile` re-indexes archived files
    without a row at start-up. One fsync fewer per instance is worth it on a
    node that must keep up with a scanner.

    The connection may be shared between threads (callers serialise writes).
    """
    if path is None:
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    db = sqlite_utils.Database(conn)
    for migrations in migration_sets():
        migrations.apply(db)
    logger.debug("Database %s opened and migrated", path or ":memory:")
    return db


@contextmanager
def immediate_transaction(db: sqlite_utils.Database) -> Iterator[sqlite3.Connection]:
    """A transaction that takes the write lock first: ``BEGIN IMMEDIATE`` … ``COMMIT``.

    A deferred transaction (``BEGIN``, as sqlite-utils' ``atomic()`` opens)
    that reads before it writes — sqlite-utils' ``insert`` reads the schema
    first — cannot upgrade to a write lock once another connection committed
    in between: SQLite in WAL mode then answers "database is locked" at once,
    without waiting for the busy timeout. A hostile-input run caught it: a
    refused object answered 0xA700 and was quarantined without its index row.
    Taking the lock first makes the 30 s busy timeout apply. Rolled back on
    any exception. Callers serialise their own connection's users.
    """
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Store:
    """A group of tables on one connection, and the lock its users share.

    A sqlite3 connection serves one caller at a time: stores built on the
    same connection must be given the same ``lock`` (the job store and the
    outbox, whose rows a job's end writes in one transaction).
    """

    def __init__(self, db: sqlite_utils.Database, lock: threading.RLock | None = None) -> None:
        self.db = db
        self.lock = lock or threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locking) transaction on this store's connection."""
        with self.lock, immediate_transaction(self.db) as conn:
            yield conn
