"""Move a node's SQLite database to a PostgreSQL database (``theranode database copy``).

A node that outgrows one machine keeps its history: every row of every theranode table is
copied from its SQLite file to an empty PostgreSQL database, which several nodes and workers
then share (docs/scale-out.md). Both databases are first brought to this build's schema by
:func:`theranode.service.store.open_database`, so the tables and columns match, and the
target gets the job engine's own tables there (they are not copied: an SQLite node has
none, and a queue starts empty).

The copy is one transaction on the target, holding the database-wide write lock:

1. every theranode table of the target must be empty (``schema_migrations`` apart), or the
   copy is refused and nothing is written;
2. the tables are filled parents first (the target's foreign keys decide the order), each
   with ``COPY … FROM STDIN`` from one read snapshot of the SQLite file;
3. each identity column's sequence is set past the largest copied id
   (``setval(pg_get_serial_sequence(…), max(id) + 1, false)``): rows were copied with their
   ids, which does not advance the sequence, so the next insert would otherwise collide;
4. ``schema_migrations`` keeps the source's record of when each step was applied;
5. the row count of every table is compared with the source.

Any failure rolls the whole copy back. The SQLite file is only read, once it is on this
build's schema (an older one is migrated first, as a start of the node would).

References
----------
PostgreSQL documentation, "COPY"; "Sequence Manipulation Functions" (``setval``);
"System Information Functions" (``pg_get_serial_sequence``); "Advisory Locks" (13.3.5).
psycopg 3 documentation, "Using COPY TO and COPY FROM".
"""

from __future__ import annotations

import graphlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg

from theranode.service.store import migration_sets, open_database
from theranode.service.store.database import (
    DatabaseError,
    PostgresDatabase,
    SqliteDatabase,
    parse_url,
    quote,
)
from theranode.service.store.migrations import TABLE as MIGRATIONS_TABLE

logger = logging.getLogger(__name__)

#: Migration sets whose steps ran on the target itself: the job engine's schema, which
#: exists only on PostgreSQL. The target's own records of them are kept.
TARGET_ONLY_SETS = frozenset({"theranode.queue"})
#: Rows read from SQLite per batch.
BATCH_ROWS = 1000


class CopyError(DatabaseError):
    """The database cannot be copied (the message says why; nothing was written)."""


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy_database` copied."""

    source: str  # redacted URLs
    target: str
    rows: dict[str, int] = field(default_factory=dict)  # table → rows, in copy order
    next_ids: dict[str, int] = field(default_factory=dict)  # identity table → next id
    migrations: int = 0  # schema_migrations records carried over

    def lines(self) -> Iterator[str]:
        """The summary ``theranode database copy`` prints."""
        yield f"Copied {self.source} to {self.target} (one transaction; row counts checked):"
        width = max(map(len, self.rows), default=0)
        for table, count in self.rows.items():
            yield f"  {table:<{width}}  {count:>9} row(s)"
        yield f"  {MIGRATIONS_TABLE:<{width}}  {self.migrations:>9} record(s) of applied steps"
        if self.next_ids:
            yield "Next generated ids: " + ", ".join(
                f"{table} {next_id}" for table, next_id in self.next_ids.items())


def schema_tables() -> list[str]:
    """The tables of theranode's schema, as this build creates them (the job engine's,
    PostgreSQL only, are not among them)."""
    db = open_database(None)
    try:
        return [t for t in db.table_names() if t != MIGRATIONS_TABLE]
    finally:
        db.close()


def copy_database(source_url: str, target_url: str) -> CopyReport:
    """Copy the SQLite database at ``source_url`` into the empty PostgreSQL database at
    ``target_url``; see the module docstring.

    Raises
    ------
    CopyError
        The source is not an existing SQLite file, the target is not PostgreSQL or not
        empty, the source was written by a newer theranode, or a table's rows did not all
        arrive. Nothing is written to the target then.
    """
    source_at, target_at = parse_url(source_url), parse_url(target_url)
    if source_at.dialect != "sqlite" or source_at.path is None:
        raise CopyError(f"the source must be an SQLite file, not {source_at.redacted}: "
                        "give the --config of the node as it runs on SQLite")
    if target_at.dialect != "postgresql":
        raise CopyError(f"the target must be a postgresql:// URL, not {target_at.redacted}")
    if not source_at.path.is_file():
        raise CopyError(f"no SQLite database at {source_at.path}: check --config (its data "
                        "folder or [database] url names the node's database)")
    tables = schema_tables()
    source = open_database(source_url)
    target = open_database(target_url, application_name="theranode database copy")
    try:
        assert isinstance(source, SqliteDatabase) and isinstance(target, PostgresDatabase)
        return _copy(source, target, tables)
    finally:
        target.close()
        source.close()


def _copy(source: SqliteDatabase, target: PostgresDatabase, tables: list[str]) -> CopyReport:
    source.execute("begin")  # one read snapshot of the whole file (WAL)
    try:
        _check_versions(source)
        with target.transaction():
            _check_empty(target, tables)
            order = _parents_first(target, tables)
            rows = {table: _copy_table(source, target, table) for table in order}
            next_ids = _reset_identities(target, tables)
            migrations = _copy_migration_records(source, target)
            _check_counts(source, target, order)
    finally:
        source.execute("rollback")
    report = CopyReport(source.url.redacted, target.url.redacted, rows, next_ids, migrations)
    logger.info("Database copied from %s to %s: %d rows", report.source, report.target,
                sum(rows.values()))
    return report


def _check_versions(source: SqliteDatabase) -> None:
    known = {(m.name, step.name) for m in migration_sets() for step in m.steps}
    recorded = {(r["migration_set"], r["name"]) for r in source.query(
        f"select migration_set, name from {MIGRATIONS_TABLE}")}
    unknown = sorted(f"{s}.{n}" for s, n in recorded - known)
    if unknown:
        raise CopyError(
            f"the SQLite database has schema steps this theranode does not know "
            f"({', '.join(unknown)}): it was written by a newer version; copy it with that one")


def _check_empty(target: PostgresDatabase, tables: list[str]) -> None:
    missing = sorted(set(tables) - set(target.table_names()))
    if missing:
        raise CopyError(f"the target lacks theranode's tables {', '.join(missing)}")
    filled = [t for t in tables
              if target.execute(f"select exists (select 1 from {quote(t)})").fetchone()[0]]
    if filled:
        raise CopyError(
            f"the target database {target.url.redacted} is not empty (rows in "
            f"{', '.join(filled)}): copy into a new, empty database (createdb), so that no "
            "row of another node is mixed with this one's")


def _parents_first(target: PostgresDatabase, tables: list[str]) -> list[str]:
    """``tables`` ordered so that every table comes after those its foreign keys name."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter(
        {t: set() for t in sorted(tables)})
    for child, parent in target.execute(
            "select conrelid::regclass::text, confrelid::regclass::text from pg_constraint "
            "where contype = 'f' and connamespace = current_schema()::regnamespace").fetchall():
        if child in tables and parent in tables and child != parent:
            sorter.add(child, parent)
    return list(sorter.static_order())


def _copy_table(source: SqliteDatabase, target: PostgresDatabase, table: str) -> int:
    columns = source.columns(table)
    if set(columns) != set(target.columns(table)):
        raise CopyError(
            f"table {table}: the SQLite columns {columns} differ from the target's "
            f"{target.columns(table)}")
    names = ", ".join(map(quote, columns))
    cursor: Any = source.conn.execute(f"select {names} from {quote(table)} order by rowid")
    count = 0
    try:
        with (target.conn.cursor() as pg,
              pg.copy(f"copy {quote(table)} ({names}) from stdin") as out):
            while batch := cursor.fetchmany(BATCH_ROWS):
                for row in batch:
                    out.write_row(row)
                count += len(batch)
    except psycopg.Error as error:
        raise CopyError(f"table {table}: PostgreSQL refused its rows ({error}); nothing was "
                        "copied. Correct the row in the SQLite file, or report it") from error
    logger.debug("Copied %d rows of %s", count, table)
    return count


def _reset_identities(target: PostgresDatabase, tables: list[str]) -> dict[str, int]:
    """Set each identity column's sequence so that its next value follows the copied ids."""
    next_ids = {}
    for table, column in target.execute(
            "select table_name, column_name from information_schema.columns "
            "where table_schema = current_schema() and is_identity = 'YES' "
            "order by table_name").fetchall():
        if table not in tables:
            continue
        (next_id,) = target.execute(
            f"select setval(pg_get_serial_sequence(?, ?), coalesce(max({quote(column)}), 0) + 1,"
            f" false) from {quote(table)}", [quote(table), column]).fetchone()
        next_ids[table] = int(next_id)
    return next_ids


def _copy_migration_records(source: SqliteDatabase, target: PostgresDatabase) -> int:
    records = [r for r in source.query(f"select * from {MIGRATIONS_TABLE}")
               if r["migration_set"] not in TARGET_ONLY_SETS]
    for record in records:
        target.upsert(MIGRATIONS_TABLE, record, ("migration_set", "name"))
    return len(records)


def _check_counts(source: SqliteDatabase, target: PostgresDatabase, tables: list[str]) -> None:
    for table in tables:
        (want,) = source.execute(f"select count(*) from {quote(table)}").fetchone()
        (got,) = target.execute(f"select count(*) from {quote(table)}").fetchone()
        if want != got:
            raise CopyError(f"table {table}: {got} rows arrived of {want}; nothing was copied")
