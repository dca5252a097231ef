"""The database by URL: SQLite or PostgreSQL, one schema, one write lock across processes.

Every test that takes ``database_url`` runs on both: an SQLite file and a fresh database on
a real PostgreSQL server (``tests/postgres.py``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from theranode.service.store import migration_sets, open_database
from theranode.service.store.database import (
    DatabaseError,
    connect,
    parse_url,
    sqlite_url,
    to_pyformat,
)
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobStore
from theranode.service.store.migrations import LEGACY_TABLE, TABLE, Migrations
from theranode.service.store.outbox import OutboxStore

LEGACY_DUMP = Path(__file__).parent / "data" / "database_before_postgresql.sql"
EVERY_TABLE = {
    "patients", "series", "instances", "conflicts", "quarantine", "grouping", "jobs",
    "generations", "result_objects", "deliveries", "destinations", "outcome_files",
    "outcome_patients", "outcome_cycles", "outcome_lesions", "outcome_labs", "outcome_doses",
    "outcome_warnings", TABLE,
}
NOW = "2026-12-03T10:00:00"


# -- URLs ------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "dialect", "path"), [
    ("sqlite:///theranode-data/theranode.db", "sqlite", Path("theranode-data/theranode.db")),
    ("sqlite:////var/lib/theranode.db", "sqlite", Path("/var/lib/theranode.db")),
    ("sqlite://", "sqlite", None),
    ("postgresql://theranode:secret@db.example.org:5432/theranode", "postgresql", None),
    ("postgres://db.example.org/theranode", "postgresql", None),
])
def test_urls_name_the_database_and_its_file(url: str, dialect: str, path: Path | None) -> None:
    parsed = parse_url(url)
    assert (parsed.dialect, parsed.path) == (dialect, path)


@pytest.mark.parametrize(("url", "reason"), [
    ("mysql://db/theranode", "scheme must be sqlite:// or postgresql://"),
    ("sqlite://host/file.db", "has no host"),
    ("postgresql:///theranode", "names its host"),
])
def test_urls_of_no_supported_database_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(DatabaseError, match=reason):
        parse_url(url)


def test_the_password_never_reaches_a_log_line() -> None:
    url = parse_url("postgresql://theranode:s3cret@db.example.org:5432/theranode")
    assert "s3cret" not in url.redacted
    assert url.redacted == "postgresql://theranode:***@db.example.org:5432/theranode"


def test_placeholders_become_psycopgs_and_a_literal_percent_stays_literal() -> None:
    assert to_pyformat("select ? where message like 'died%' and x = ?") == (
        "select %s where message like 'died%%' and x = %s")


# -- schema ----------------------------------------------------------------------------
def test_a_new_database_gets_every_table_and_reopening_applies_nothing(database_url: str) -> None:
    db = open_database(database_url)
    assert EVERY_TABLE <= set(db.table_names())
    steps = {(m.name, step.name) for m in migration_sets() for step in m.steps}
    recorded = {(r["migration_set"], r["name"])
                for r in db.query(f"select migration_set, name from {TABLE}")}
    assert recorded == steps
    db.close()
    again = connect(database_url)
    from theranode.service.store import migrations

    assert migrations.apply(again, migration_sets()) == []


def test_nodes_starting_together_apply_each_step_once(database_url: str) -> None:
    """Four connections migrate one empty database at the same moment."""
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_one() -> None:
        try:
            start.wait()
            open_database(database_url).close()
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    db = connect(database_url)
    counts = db.query(f"select migration_set, name, count(*) as n from {TABLE} "
                      "group by migration_set, name")
    assert counts and all(row["n"] == 1 for row in counts)


def test_a_failing_step_leaves_no_trace_and_is_tried_again(database_url: str) -> None:
    steps = Migrations("theranode.test")
    calls: list[str] = []

    @steps()
    def m001_half_done(db):  # type: ignore[no-untyped-def]
        calls.append("m001")
        db.create_table("half", {"id": int, "note": str}, pk="id")
        raise RuntimeError("power cut")

    db = connect(database_url)
    with pytest.raises(RuntimeError, match="power cut"):
        steps.apply(db)
    assert "half" not in db.table_names()
    assert steps.pending(db)[0].name == "m001_half_done"


# -- the write lock --------------------------------------------------------------------
def test_a_writer_waits_for_another_connections_transaction(database_url: str) -> None:
    """What BEGIN IMMEDIATE gives on SQLite, the advisory lock gives on PostgreSQL."""
    first, second = open_database(database_url), connect(database_url)
    order: list[str] = []
    holding = threading.Event()

    def other_writer() -> None:
        holding.wait()
        with second.transaction():
            order.append("second")

    thread = threading.Thread(target=other_writer)
    thread.start()
    with first.transaction():
        holding.set()
        time.sleep(0.5)
        order.append("first")
    thread.join()
    assert order == ["first", "second"]


def test_a_write_transaction_sees_what_was_committed_while_it_waited(database_url: str) -> None:
    """The check-then-insert of the series owner needs the latest commit, not a snapshot."""
    a, b = IndexStore(open_database(database_url)), IndexStore(connect(database_url))
    a.db.execute("insert into patients (patient_key, patient_id, issuer, first_seen) "
                 "values ('k1', 'P1', '', ?)", [NOW])
    seen: list[int] = []
    holding, inserted = threading.Event(), threading.Event()

    def waiting_writer() -> None:
        holding.wait()
        with b.transaction() as db:
            seen.append(db.execute("select count(*) from series").fetchone()[0])

    thread = threading.Thread(target=waiting_writer)
    thread.start()
    with a.transaction() as db:
        holding.set()
        time.sleep(0.3)
        db.execute("insert into series (series_uid, patient_key, instance_count) "
                   "values ('s1', 'k1', 1)")
        inserted.set()
    thread.join()
    assert seen == [1]


# -- stores on either database -----------------------------------------------------------
def test_ids_come_from_the_database_and_deliveries_are_recorded_once(database_url: str) -> None:
    db = open_database(database_url)
    jobs = JobStore(db)
    first = jobs.submit(kind="cycle", target="t", patient_key="k", label="c1", fingerprint="a",
                        payload=b"{}", created_at=NOW)
    second = jobs.submit(kind="cycle", target="t", patient_key="k", label="c1",
                         fingerprint="b", payload=b"{}", created_at=NOW)
    assert first is not None and second is not None and second.id > first.id
    assert jobs.submit(kind="cycle", target="t", patient_key="k", label="c1", fingerprint="b",
                       payload=b"{}", created_at=NOW) is None
    outbox = OutboxStore(jobs.db, jobs.lock)
    assert outbox.add_destination_backlog(["pacs"], NOW) == 0
    assert jobs.get(second.id) == second
    assert bytes(second.payload or b"") == b"{}"


# -- SQLite databases of earlier builds ------------------------------------------------
def test_a_database_written_before_the_postgresql_port_opens_with_its_rows(tmp_path: Path) -> None:
    """Its steps were recorded by sqlite-utils: none runs again and every row reads back."""
    path = tmp_path / "theranode.db"
    legacy = sqlite3.connect(path)
    legacy.executescript(LEGACY_DUMP.read_text(encoding="utf-8"))
    legacy.close()
    db = open_database(sqlite_url(path))
    carried = {(r["migration_set"], r["name"], r["applied_at"])
               for r in db.query(f"select * from {TABLE}")}
    before = {(r["migration_set"], r["name"], r["applied_at"])
              for r in db.query(f"select * from {LEGACY_TABLE}")}
    assert before <= carried  # each carried over with its time; newer steps applied after
    assert {(s, n) for s, n, _ in carried} == {
        (m.name, step.name) for m in migration_sets() for step in m.steps}
    index, jobs = IndexStore(db), JobStore(db)
    assert index.patient_id("00112233aabbccdd") == "P-LEGACY"
    assert [i["path"] for i in index.input_instances(["1.2.3.4"])] == [
        "archive/00112233aabbccdd/1.2.3/1.2.3.4/1.2.3.4.1.dcm"]
    (old_job,) = jobs.all()
    new_job = jobs.submit(kind="cycle", target="t", patient_key="k", label="c", fingerprint="x",
                          payload=None, created_at=NOW)
    assert new_job is not None and new_job.id == old_job.id + 1
