"""Versioned schema migrations, the same on SQLite and PostgreSQL.

Each schema module of :mod:`theranode.service.store` declares one :class:`Migrations` set
and decorates its steps, in order, with ``@MIGRATIONS()``; a step is a function of a
:class:`~theranode.service.store.database.Database` that uses its portable DDL
(``create_table``, ``create_index``, ``add_column``) and SQL. ``schema_migrations`` records
each step applied; :func:`apply` runs the missing ones, each in its own write transaction
together with its record, so a node killed during a migration starts again from the last
whole step, and two nodes starting at once on one PostgreSQL database apply each step once
(the second waits for the write lock, then finds it recorded).

SQLite databases written by earlier theranode builds recorded their steps in sqlite-utils'
``_sqlite_migrations`` table, under the same set and step names; those records are carried
over the first time, so no step runs twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from theranode.service.store.database import Database

logger = logging.getLogger(__name__)

Step = Callable[[Database], None]

#: The table of applied steps.
TABLE = "schema_migrations"
#: Where sqlite-utils recorded the steps of earlier versions.
LEGACY_TABLE = "_sqlite_migrations"


@dataclass(frozen=True)
class Migration:
    """One named step of a set."""

    name: str
    step: Step


class Migrations:
    """An ordered set of steps named ``theranode.<module>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Migration] = []

    def __call__(self) -> Callable[[Step], Step]:
        def register(step: Step) -> Step:
            if any(m.name == step.__name__ for m in self.steps):
                raise ValueError(f"migration {self.name}.{step.__name__} is declared twice")
            self.steps.append(Migration(step.__name__, step))
            return step

        return register

    def pending(self, db: Database) -> list[Migration]:
        done = applied(db, self.name)
        return [m for m in self.steps if m.name not in done]

    def apply(self, db: Database, *, stop_before: str | None = None) -> list[str]:
        """Apply this set's pending steps, up to (not including) ``stop_before``.

        ``stop_before`` builds a database as an earlier build left it (tests of upgrades).
        """
        steps = self.steps
        if stop_before is not None:
            names = [m.name for m in steps]
            if stop_before not in names:
                raise ValueError(f"{self.name} has no step {stop_before!r}")
            steps = steps[:names.index(stop_before)]
        _ensure_table(db)
        return _apply_steps(db, self.name, steps)


def applied(db: Database, migration_set: str) -> set[str]:
    return {r["name"] for r in db.query(
        f"select name from {TABLE} where migration_set = ?", [migration_set])}


def apply(db: Database, sets: Iterable[Migrations]) -> list[str]:
    """Apply every pending step of ``sets`` in order; returns ``set.step`` names applied."""
    _ensure_table(db)
    return [name for migrations in sets
            for name in _apply_steps(db, migrations.name, migrations.steps)]


def _apply_steps(db: Database, set_name: str, steps: list[Migration]) -> list[str]:
    done: list[str] = []
    for migration in steps:
        with db.transaction():
            if migration.name in applied(db, set_name):
                continue
            migration.step(db)
            db.execute(
                f"insert into {TABLE} (migration_set, name, applied_at) values (?, ?, ?)",
                [set_name, migration.name, datetime.now(timezone.utc).isoformat()])
        done.append(f"{set_name}.{migration.name}")
        logger.info("Database migrated: %s.%s", set_name, migration.name)
    return done


def _ensure_table(db: Database) -> None:
    with db.transaction():
        if db.table_exists(TABLE):
            return
        db.create_table(TABLE, {"migration_set": str, "name": str, "applied_at": str},
                        pk=("migration_set", "name"), not_null=("applied_at",))
        if db.dialect == "sqlite" and db.table_exists(LEGACY_TABLE):
            db.execute(f"insert into {TABLE} (migration_set, name, applied_at) "
                       f"select migration_set, name, applied_at from {LEGACY_TABLE}")
            logger.info("Migration records carried over from %s", LEGACY_TABLE)
