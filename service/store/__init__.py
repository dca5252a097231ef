"""All SQL of theranode lives in this package.

Each module holds one group of tables and their schema changes as a
sqlite-utils :class:`~sqlite_utils.migrations.Migrations` set named
``theranode.<module>``; :func:`open_database` applies every set at start-up.

- :mod:`service.store.index` — instances, series, grouping (patient → course →
  cycle → time point).
- :mod:`service.store.outcomes` — imported outcome data for cohort statistics.
"""

from __future__ import annotations

import importlib
import logging
import sqlite3
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

logger = logging.getLogger(__name__)

#: Modules of this package that declare a ``MIGRATIONS`` set, in apply order.
SCHEMA_MODULES = ("index",)


def migration_sets() -> list[Migrations]:
    """The migration sets of every schema module."""
    sets = []
    for name in SCHEMA_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        sets.append(module.MIGRATIONS)
    return sets


def open_database(path: Path | str | None = None) -> sqlite_utils.Database:
    """Open (and migrate) the SQLite database at ``path``; ``None`` = in memory.

    The connection uses WAL journaling and ``synchronous=FULL`` so that a
    committed row survives a power cut, and may be shared between threads
    (callers serialise writes).
    """
    if path is None:
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    db = sqlite_utils.Database(conn)
    for migrations in migration_sets():
        migrations.apply(db)
    logger.debug("Database %s opened and migrated", path or ":memory:")
    return db
