"""All SQL of theranode lives in this package.

The database is SQLite (the embedded default, one file in the data folder) or PostgreSQL
(several nodes and workers, docs/scale-out.md), named by ``[database] url`` and reached
through :mod:`theranode.service.store.database`. Each module holds one group of tables and
their schema steps as a :class:`~theranode.service.store.migrations.Migrations` set named
``theranode.<module>``; :func:`open_database` applies every set at start-up.

- :mod:`theranode.service.store.index` — instances, series, grouping (patient → course →
  cycle → time point).
- :mod:`theranode.service.store.outcomes` — imported outcome data for cohort statistics.
- :mod:`theranode.service.store.jobs` — dosimetry jobs and reprocess requests.
- :mod:`theranode.service.store.outbox` — result objects and their delivery per destination.
- :mod:`theranode.service.store.queue` — the job engine's tables (PostgreSQL only).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from theranode.service.store import migrations
from theranode.service.store.database import Database, DatabaseUrl, connect, sqlite_url

logger = logging.getLogger(__name__)

#: Modules of this package that declare a ``MIGRATIONS`` set, in apply order.
SCHEMA_MODULES = ("index", "jobs", "outbox", "outcomes", "queue")


def migration_sets() -> list[migrations.Migrations]:
    """The migration sets of every schema module."""
    sets = []
    for name in SCHEMA_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        sets.append(module.MIGRATIONS)
    return sets


def open_database(
    url: str | DatabaseUrl | Path | None = None, *, application_name: str = "theranode"
) -> Database:
    """Open (and migrate) the database at ``url``.

    ``url`` is a ``sqlite://`` or ``postgresql://`` URL; a path means that SQLite file, and
    ``None`` an SQLite database in memory.
    """
    if url is None or isinstance(url, Path):
        url = sqlite_url(url)
    db = connect(url, application_name=application_name)
    migrations.apply(db, migration_sets())
    logger.debug("Database %s opened and migrated", db.url.redacted)
    return db


class Store:
    """A group of tables on one connection, and the lock its users share.

    A connection serves one caller at a time: stores built on the same connection must be
    given the same ``lock`` (the job store and the outbox, whose rows a job's end writes in
    one transaction).
    """

    def __init__(self, db: Database, lock: threading.RLock | None = None) -> None:
        self.db = db
        self.lock = lock or threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction on this store's connection, holding the database's write lock."""
        with self.lock, self.db.transaction() as db:
            yield db
