"""The job engine's own tables, on a shared PostgreSQL database only.

With ``[database] url`` naming PostgreSQL, dosimetry jobs reach ``theranode worker``
processes through procrastinate (:mod:`theranode.service.jobs.queue`), whose queue, locks,
worker heartbeats and periodic defers are tables and functions in the same database. Its
schema is installed here, as one step of theranode's migrations, so that the first node or
worker to start installs it once under the write lock. An SQLite node runs its jobs in its
own process and needs none of it.

Upgrading procrastinate to a release with a new schema needs that release's migration
scripts (procrastinate documentation, "Migrations"); the lock files pin the release.
"""

from __future__ import annotations

from theranode.service.store.database import Database
from theranode.service.store.migrations import Migrations

MIGRATIONS = Migrations("theranode.queue")


@MIGRATIONS()
def m001_procrastinate_schema(db: Database) -> None:
    """procrastinate's tables and functions (its ``schema.sql``), on PostgreSQL."""
    if db.dialect != "postgresql":
        return
    from procrastinate.schema import SchemaManager

    db.execute_script(SchemaManager.get_schema())
