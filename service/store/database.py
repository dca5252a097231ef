"""One connection to the node's database, SQLite or PostgreSQL, chosen by URL.

``[database] url`` names it: ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``
(the default is ``theranode.db`` in the data folder) or
``postgresql://user:password@host:5432/name`` (several nodes and workers on one database,
docs/scale-out.md). Every store writes the same SQL to either: ``?`` placeholders, ANSI
``insert … on conflict … do nothing | do update``, ``returning id``, ``coalesce``; the
few differences (placeholders, column types, identity keys) are translated here and nowhere
else.

Writers are serialised by the database, not by the process: :meth:`Database.transaction`
takes SQLite's write lock at ``BEGIN IMMEDIATE``, and on PostgreSQL one transaction-level
advisory lock (``pg_advisory_xact_lock``) that every theranode process on the database takes
before its first statement. Either way, a write transaction sees every commit before it and
no other writer runs until it ends, on one machine or several (PostgreSQL documentation,
"Advisory Locks", section 13.3.5). Reads outside a transaction see committed rows only.

One :class:`Database` holds one connection and serves one caller at a time; the stores on it
share a ``threading.RLock`` (:class:`theranode.service.store.Store`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from theranode.service.errors import ServiceError

logger = logging.getLogger(__name__)

#: Key of the advisory lock every theranode writer holds for its transaction on PostgreSQL
#: (a constant of our own: the bytes "thrnode" read as a big-endian integer).
WRITE_LOCK_KEY = int.from_bytes(b"thrnode", "big")

#: Column types of the schema, as Python types, and their SQL on each database.
_COLUMN_TYPES: dict[str, dict[type, str]] = {
    "sqlite": {str: "TEXT", int: "INTEGER", float: "REAL", bytes: "BLOB"},
    "postgresql": {str: "TEXT", int: "BIGINT", float: "DOUBLE PRECISION", bytes: "BYTEA"},
}


class DatabaseError(ServiceError):
    """The database named by ``[database] url`` cannot be opened or used."""


class Cursor(Protocol):
    """What :meth:`Database.execute` returns: the DB-API cursor subset the stores use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed ``[database] url``."""

    dialect: str  # "sqlite" | "postgresql"
    url: str
    path: Path | None = None  # SQLite's file; None = in memory

    @property
    def redacted(self) -> str:
        """The URL with its password replaced, for logs and status output."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()


def parse_url(url: str) -> DatabaseUrl:
    """Parse ``sqlite:///path``, ``sqlite://`` (in memory) or ``postgresql://…``.

    Raises
    ------
    DatabaseError
        Any other scheme, or an SQLite URL with a host.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc:
            raise DatabaseError(
                f"[database] url {url!r}: an SQLite URL has no host; write sqlite:///relative.db "
                "or sqlite:////absolute/path.db")
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        return DatabaseUrl("sqlite", url, Path(path) if path and path != ":memory:" else None)
    if scheme in ("postgresql", "postgres"):
        if not parts.hostname and "host=" not in parts.query:
            raise DatabaseError(f"[database] url {url!r}: a PostgreSQL URL names its host")
        return DatabaseUrl("postgresql", url)
    raise DatabaseError(
        f"[database] url {url!r}: the scheme must be sqlite:// or postgresql://, "
        f"not {parts.scheme or 'none'}")


def sqlite_url(path: Path | str | None) -> str:
    """The URL of an SQLite file (``None`` = in memory)."""
    if path is None:
        return "sqlite://"
    return "sqlite:///" + str(path)


class Database(ABC):
    """A connection to theranode's database; see the module docstring."""

    dialect: str

    def __init__(self, url: DatabaseUrl) -> None:
        self.url = url

    # -- statements --------------------------------------------------------------
    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders; rows come back as tuples."""

    @abstractmethod
    def execute_script(self, sql: str) -> None:
        """Run several statements given as one text, as written (no placeholders)."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run one query; rows come back as dicts keyed by column name."""

    @abstractmethod
    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """A write transaction holding the database-wide write lock; rolled back on error."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def insert(self, table: str, row: Mapping[str, Any]) -> None:
        """Insert one row given as a dict of column values."""
        columns = list(row)
        self.execute(
            f"insert into {quote(table)} ({', '.join(map(quote, columns))}) "
            f"values ({', '.join('?' for _ in columns)})",
            [row[c] for c in columns],
        )

    def insert_returning_id(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an ``insert`` into a table with a generated ``id``; returns the new id.

        ``returning`` is read to its end (``fetchall``): an SQLite statement left
        half-read would keep the transaction from committing.
        """
        rows = self.execute(f"{sql} returning id", params).fetchall()
        return int(rows[0][0])

    def upsert(self, table: str, row: Mapping[str, Any], pk: Sequence[str]) -> None:
        """Insert ``row``, or update the row with the same primary key ``pk``."""
        columns = list(row)
        others = [c for c in columns if c not in pk]
        action = ("do update set " + ", ".join(f"{quote(c)} = excluded.{quote(c)}"
                                               for c in others)
                  if others else "do nothing")
        self.execute(
            f"insert into {quote(table)} ({', '.join(map(quote, columns))}) "
            f"values ({', '.join('?' for _ in columns)}) "
            f"on conflict ({', '.join(map(quote, pk))}) {action}",
            [row[c] for c in columns],
        )

    # -- schema ------------------------------------------------------------------
    @abstractmethod
    def table_names(self) -> list[str]:
        """Names of the tables of theranode's schema that exist."""

    @abstractmethod
    def columns(self, table: str) -> list[str]:
        """Column names of ``table``, in order."""

    def table_exists(self, table: str) -> bool:
        return table in self.table_names()

    def create_table(
        self,
        table: str,
        columns: Mapping[str, type],
        *,
        pk: str | Sequence[str],
        not_null: Iterable[str] = (),
        defaults: Mapping[str, Any] | None = None,
        foreign_keys: Iterable[tuple[str, str, str]] = (),
    ) -> None:
        """``create table`` from Python column types (str, int, float, bytes).

        An ``int`` primary key named alone is the table's generated row id (SQLite's
        ``INTEGER PRIMARY KEY``, PostgreSQL's identity column).
        """
        required, defaults = set(not_null), dict(defaults or {})
        keys = [pk] if isinstance(pk, str) else list(pk)
        lines = []
        for name, kind in columns.items():
            if keys == [name] and kind is int:
                lines.append(f"{quote(name)} {self._identity_column()}")
                continue
            line = f"{quote(name)} {self.column_type(kind)}"
            if name in required:
                line += " NOT NULL"
            if name in defaults:
                line += f" DEFAULT {_sql_literal(defaults[name])}"
            lines.append(line)
        if not (len(keys) == 1 and columns.get(keys[0]) is int):
            lines.append(f"PRIMARY KEY ({', '.join(map(quote, keys))})")
        for column, other, other_column in foreign_keys:
            lines.append(f"FOREIGN KEY ({quote(column)}) "
                         f"REFERENCES {quote(other)} ({quote(other_column)})")
        self.execute(f"create table {quote(table)} (\n  " + ",\n  ".join(lines) + "\n)")

    def create_index(self, table: str, columns: Sequence[str], *, unique: bool = False) -> None:
        name = f"idx_{table}_{'_'.join(columns)}"
        self.execute(f"create {'unique ' if unique else ''}index {quote(name)} "
                     f"on {quote(table)} ({', '.join(map(quote, columns))})")

    def add_column(self, table: str, column: str, kind: type,
                   not_null_default: Any | None = None) -> None:
        sql = f"alter table {quote(table)} add column {quote(column)} {self.column_type(kind)}"
        if not_null_default is not None:
            sql += f" NOT NULL DEFAULT {_sql_literal(not_null_default)}"
        self.execute(sql)

    def column_type(self, kind: type) -> str:
        try:
            return _COLUMN_TYPES[self.dialect][kind]
        except KeyError:
            raise TypeError(f"no column type for {kind!r}") from None

    @abstractmethod
    def _identity_column(self) -> str: ...


def quote(name: str) -> str:
    """``name`` as a quoted SQL identifier (``column`` and ``date`` are keywords)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a theranode table or column name")
    return f'"{name}"'


def _sql_literal(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"no SQL literal for default {value!r}")
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


# -- SQLite -----------------------------------------------------------------------------
class SqliteDatabase(Database):
    """theranode's embedded database: one SQLite file in WAL mode.

    ``synchronous=NORMAL``: a committed row survives a crash of the process (it is in the
    WAL, in the operating system's cache) but the last commits may roll back on a power cut
    or kernel crash. That is safe because the archive, not the index, is the durable record:
    every file is fsynced and renamed before its row is written, and
    :meth:`theranode.service.app.Node.reconcile` re-indexes archived files without a row at
    start-up. One fsync fewer per instance is worth it on a node that must keep up with a
    scanner.
    """

    dialect = "sqlite"

    def __init__(self, url: DatabaseUrl) -> None:
        super().__init__(url)
        if url.path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            url.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(url.path), check_same_thread=False,
                                   isolation_level=None, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql, list(params))

    def execute_script(self, sql: str) -> None:
        self.conn.executescript(sql)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, list(params))
        names = [d[0] for d in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: the write lock is taken first.

        A deferred transaction that reads before it writes cannot upgrade to a write lock
        once another connection committed in between: SQLite in WAL mode then answers
        "database is locked" at once, without waiting for the busy timeout. A hostile-input
        run caught it: a refused object answered 0xA700 and was quarantined without its
        index row. Taking the lock first makes the 30 s busy timeout apply.
        """
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def table_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "select name from sqlite_master where type = 'table' order by name")]

    def columns(self, table: str) -> list[str]:
        return [r[1] for r in self.conn.execute(f"pragma table_info({table})")]

    def _identity_column(self) -> str:
        return "INTEGER PRIMARY KEY"


# -- PostgreSQL ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``; a literal ``%`` doubled.

    The stores pass every value as a parameter, so no ``?`` stands inside a string literal.
    """
    return re.sub(r"\?", "%s", sql.replace("%", "%%"))


class PostgresDatabase(Database):
    """theranode's shared database on a PostgreSQL server (psycopg 3).

    The connection is in autocommit mode: a statement outside :meth:`transaction` commits
    at once, as SQLite's does. A connection lost (server restart, network) is opened again
    at the next statement outside a transaction; the statement that met the loss fails, and
    its caller answers as for any database error (an ingest refuses the instance with
    0xA700 and the sender retries it).
    """

    dialect = "postgresql"

    def __init__(self, url: DatabaseUrl, *, application_name: str = "theranode") -> None:
        super().__init__(url)
        self._application_name = application_name
        self._in_transaction = False
        self.conn = self._connect()

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url.url, autocommit=True,
                                   application_name=self._application_name)
        except psycopg.Error as error:
            raise DatabaseError(
                f"cannot connect to the PostgreSQL database {self.url.redacted}: {error}. "
                "Check [database] url, that the server runs and that this machine may connect."
            ) from error

    def _connection(self) -> Any:
        if self.conn.closed and not self._in_transaction:
            logger.warning("Connection to %s was lost; connecting again", self.url.redacted)
            self.conn = self._connect()
        return self.conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self._connection().execute(to_pyformat(sql), tuple(params))
        return cursor

    def execute_script(self, sql: str) -> None:
        self._connection().execute(sql)  # no parameters: the simple protocol, many statements

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        from psycopg.rows import dict_row

        with self._connection().cursor(row_factory=dict_row) as cursor:
            cursor.execute(to_pyformat(sql), tuple(params))
            return list(cursor.fetchall()) if cursor.description else []

    @contextmanager
    def transaction(self) -> Iterator[Database]:
        """``BEGIN`` and the database-wide advisory write lock, released at commit/rollback."""
        conn = self._connection()
        with conn.transaction():
            self._in_transaction = True
            try:
                conn.execute("select pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                yield self
            finally:
                self._in_transaction = False

    def close(self) -> None:
        self.conn.close()

    def table_names(self) -> list[str]:
        return [r[0] for r in self.execute(
            "select table_name from information_schema.tables "
            "where table_schema = current_schema() order by table_name").fetchall()]

    def columns(self, table: str) -> list[str]:
        return [r[0] for r in self.execute(
            "select column_name from information_schema.columns where table_name = ? "
            "and table_schema = current_schema() order by ordinal_position", [table]).fetchall()]

    def _identity_column(self) -> str:
        return "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"


def clock_offset_s(db: Database) -> float:
    """How far this machine's clock is ahead of the database server's (s; negative: behind).

    Zero on SQLite (the database is a file on this machine). On PostgreSQL the server's
    ``clock_timestamp()`` is compared with the midpoint of the local clock read before and
    after the query, so the round trip does not count as skew.
    """
    if db.dialect == "sqlite":
        return 0.0
    before = time.time()
    server = float(db.execute("select extract(epoch from clock_timestamp())").fetchone()[0])
    after = time.time()
    return (before + after) / 2 - server


def connect(url: str | DatabaseUrl, *, application_name: str = "theranode") -> Database:
    """A connection to the database at ``url`` (not migrated: see :func:`open_database`)."""
    parsed = parse_url(url) if isinstance(url, str) else url
    if parsed.dialect == "sqlite":
        return SqliteDatabase(parsed)
    return PostgresDatabase(parsed, application_name=application_name)


class Leadership:
    """Which one process, among all on the database, holds a named role (the outbox's).

    On PostgreSQL the role is a session-level advisory lock (``pg_try_advisory_lock``) on a
    connection of its own: held while that connection lives, so a killed or cut-off holder
    hands the role over as soon as the server closes its session. On SQLite there is one
    node, and it always holds the role.
    """

    def __init__(self, url: str, role: str) -> None:
        self.url = parse_url(url)
        self.role = role
        self._key = int.from_bytes(hashlib.sha256(f"theranode:{role}".encode()).digest()[:7],
                                   "big")
        self._db: PostgresDatabase | None = None
        self._held = False

    def held(self) -> bool:
        """True when this process holds the role now (taking it if it is free)."""
        if self.url.dialect == "sqlite":
            return True
        try:
            if self._db is None or self._db.conn.closed:
                self._held = False
                self._db = PostgresDatabase(self.url, application_name=f"theranode {self.role}")
            if self._held:
                self._db.execute("select 1").fetchone()  # still connected: still held
            else:
                self._held = bool(self._db.execute(
                    "select pg_try_advisory_lock(?)", [self._key]).fetchone()[0])
                if self._held:
                    logger.info("This process now holds the %s role", self.role)
        except Exception as error:  # lost connection: not held; tried again next time
            if self._held:
                logger.warning("Lost the %s role (%s)", self.role, error)
            self._held = False
            if self._db is not None:
                self._db.close()
                self._db = None
        return self._held

    def release(self) -> None:
        """Give the role up now (a stopping node): unlocked before the session closes,
        which the server ends only some time after the client leaves."""
        if self._db is not None:
            if self._held:
                with contextlib.suppress(Exception):
                    self._db.execute("select pg_advisory_unlock(?)", [self._key]).fetchone()
            self._db.close()
            self._db = None
        self._held = False
