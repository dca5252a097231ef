"""``theranode database copy``: a node's SQLite database moved to PostgreSQL, on a real
PostgreSQL server (``tests/postgres.py``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.service.indexing import index_time_point
from tests.service.nodes import make_settings
from theranode.config.writing import settings_toml
from theranode.service.cli.main import main
from theranode.service.cohort.imports import import_outcome_files
from theranode.service.plan.regroup import regroup_patient, rules_from_settings
from theranode.service.store import open_database
from theranode.service.store import outcomes as outcome_store
from theranode.service.store.copy import CopyError, copy_database, schema_tables
from theranode.service.store.database import Database, quote, sqlite_url
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobState, JobStore
from theranode.service.store.migrations import TABLE as MIGRATIONS_TABLE
from theranode.service.store.outbox import DeliveryState, OutboxStore

LEGACY_DUMP = Path(__file__).parent / "data" / "database_before_postgresql.sql"
INJECTION = datetime(2024, 5, 6, 9, 15)
NOW = "2026-12-03T10:00:00"
#: Job inputs are bytes: every byte value must come through (PostgreSQL ``bytea``).
PAYLOAD = bytes(range(256)) + b'{"version": 1}'
OUTCOMES = {
    "patients": "patient_id,sex,age_at_start,first_injection_date,progression_date,"
                "death_date,last_followup_date,recist_m3\nP1,M,66,2020-01-10,,,2023-01-01,SD\n",
    "cycles": "patient_id,cycle,admin_date,activity_gbq\nP1,1,2020-01-10,7.4\n"
              "P1,2,2020-03-06,7.45\n",
    "lesions": "patient_id,lesion_id,site,vol_bl_cm3,ct_bl_date,vol_m3_cm3,ct_m3_date\n"
               "P1,liver_1,elsewhere,10.5,2019-12-20,8.2,2020-06-01\n",  # a warning
    "labs": "patient_id,date,analyte,value,unit,lln,uln\n"
            "P1,2020-01-05,hgb,13.5,g/dL,13,17\n",
    "doses": "patient_id,cycle,voi,kind,ad_gy\nP1,1,liver_1,lesion,30.5\n",
}


def _fill_node_database(url: str, folder: Path) -> None:
    """Rows in every theranode table, written through the stores as a node writes them."""
    db = open_database(url)
    index, jobs = IndexStore(db), JobStore(db)
    outbox = OutboxStore(db, jobs.lock)
    rules = rules_from_settings(make_settings(folder / "data").grouping)
    for patient_id, frame in (("PA", "1.2.3.1"), ("PB", "1.2.3.2")):
        regroup_patient(index, rules, index_time_point(index, patient_id, INJECTION, frame))
    received = INJECTION + timedelta(days=1)
    index.add_conflict("1.2.3.9", path="conflicts/1.dcm", sha256="ab" * 32, received=received,
                       calling_ae="SCANNER", peer="10.0.0.5")
    index.add_quarantine(path="quarantine/1.dcm", sha256="cd" * 32, status=0xC120,
                         reason="no PatientID", received=received, calling_ae="X", peer="")
    first = jobs.submit(kind="cycle", target="PA/1.1", patient_key="k", label="PA 1.1",
                        fingerprint="f1", payload=PAYLOAD, created_at=NOW)
    jobs.submit(kind="course", target="PB/1", patient_key="k2", label="PB 1",
                fingerprint="f2", payload=None, created_at=NOW)
    assert first is not None
    jobs.claim(first.id, NOW, str(folder / "jobs"), runner="node-a")
    objects = [SimpleNamespace(path=f"results/job-{first.id}/{n}.dcm", sop_class_uid="1.2",
                               sop_instance_uid=f"9.9.{n}", series_instance_uid="9.9",
                               modality=modality, description="dose")
               for n, modality in enumerate(("RTDOSE", "SR"))]
    with jobs.transaction() as conn:
        outbox.add_objects(conn, first.id, objects, ["pacs", "archive"], NOW)
        jobs.finish(first.id, JobState.DONE, NOW, "done", str(folder / "results"), conn=conn)
    outbox.record(1, "pacs", DeliveryState.SENT, NOW, status=0)
    outbox.destination_failed("archive", "2026-12-03T10:05:00")
    jobs.bump_generation("PA/1.1")
    for kind, text in OUTCOMES.items():
        (folder / f"{kind}.csv").write_text(text, encoding="utf-8")
    report = import_outcome_files(db, [folder / f"{kind}.csv" for kind in OUTCOMES])
    assert report.ok, report.summary()
    for table in schema_tables():
        assert _rows(db, table), f"the test fills every table, not {table}"
    db.close()


def _rows(db: Database, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` as plain values, sorted (the same order on either database)."""
    rows = db.execute(f"select * from {quote(table)}").fetchall()
    return sorted((tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                   for row in rows), key=repr)


def _through_the_stores(db: Database) -> dict[str, Any]:
    """What the node's views read from a database."""
    index, jobs = IndexStore(db), JobStore(db)
    outbox = OutboxStore(db, jobs.lock)
    keys = index.patient_keys()
    job_ids = [job.id for job in jobs.all()]
    return {
        "counts": index.counts(),
        "patients": [(index.patient_id(k), index.series_of_patient(k),
                      index.grouping_of_patient(k)) for k in keys],
        "inputs": index.input_instances([s["series_uid"] for k in keys
                                         for s in index.series_of_patient(k)]),
        "conflicts": index.recent_conflicts(), "quarantine": index.recent_quarantine(),
        "jobs": jobs.all(), "generation": jobs.generation("PA/1.1"),
        "objects": [outbox.objects_of_job(i) for i in job_ids],
        "deliveries": [outbox.deliveries_of_job(i) for i in job_ids],
        "summary": outbox.summary(), "due": outbox.destination_due("archive"),
        "outcomes": outcome_store.content_hash(db),
        "warnings": outcome_store.stored_warnings(db),
    }


@pytest.fixture
def node_url(tmp_path: Path) -> Iterator[str]:
    """An SQLite node database with rows in every table."""
    url = sqlite_url(tmp_path / "data" / "theranode.db")
    _fill_node_database(url, tmp_path)
    yield url


def test_every_row_reads_back_identically_through_the_stores(
        node_url: str, postgres_url: str) -> None:
    report = copy_database(node_url, postgres_url)
    source, target = open_database(node_url), open_database(postgres_url)
    try:
        for table in schema_tables():
            assert _rows(target, table) == _rows(source, table), table
        # when each step was applied to this node's data; the job engine's schema is the
        # target's own (installed when the copy opened it)
        assert [r for r in _rows(target, MIGRATIONS_TABLE) if r[0] != "theranode.queue"] == [
            r for r in _rows(source, MIGRATIONS_TABLE) if r[0] != "theranode.queue"]
        assert report.migrations == len(_rows(source, MIGRATIONS_TABLE)) - 1
        assert _through_the_stores(target) == _through_the_stores(source)
        (job,) = [j for j in JobStore(target).all() if j.payload is not None]
        assert job.payload == PAYLOAD
        assert set(report.rows) == set(schema_tables())
        assert report.rows["instances"] == 4 and report.rows["jobs"] == 2
    finally:
        source.close()
        target.close()


def test_new_rows_after_the_copy_get_fresh_ids(node_url: str, postgres_url: str) -> None:
    report = copy_database(node_url, postgres_url)
    target = open_database(postgres_url)
    try:
        jobs, index = JobStore(target), IndexStore(target)
        job = jobs.submit(kind="cycle", target="PC/1.1", patient_key="k3", label="PC 1.1",
                          fingerprint="f3", payload=b"{}", created_at=NOW)
        assert job is not None and job.id == 3 == report.next_ids["jobs"]
        with jobs.transaction() as conn:
            (object_id,) = OutboxStore(target, jobs.lock).add_objects(
                conn, job.id, [SimpleNamespace(path="r.dcm", sop_class_uid="1.2",
                                               sop_instance_uid="9.9.7", series_instance_uid="9",
                                               modality="SR", description="")], ["pacs"], NOW)
        assert object_id == 3
        index.add_quarantine(path="quarantine/2.dcm", sha256="ef" * 32, status=0xC120,
                             reason="again", received=INJECTION, calling_ae="X", peer="")
        assert [q["id"] for q in index.recent_quarantine()] == [2, 1]
    finally:
        target.close()


def test_a_target_with_rows_is_refused_and_left_as_it_was(
        node_url: str, postgres_url: str) -> None:
    copy_database(node_url, postgres_url)
    target = open_database(postgres_url)
    before = {table: _rows(target, table) for table in schema_tables()}
    with pytest.raises(CopyError, match=r"is not empty \(rows in .*jobs.*\): copy into a new"):
        copy_database(node_url, postgres_url)
    assert {table: _rows(target, table) for table in schema_tables()} == before
    target.close()


def test_the_job_engines_tables_are_the_targets_own(node_url: str, postgres_url: str) -> None:
    """procrastinate's schema is installed on the target by its migrations, not copied."""
    report = copy_database(node_url, postgres_url)
    assert not [table for table in report.rows if table.startswith("procrastinate")]
    target = open_database(postgres_url)
    try:
        assert "procrastinate_jobs" in target.table_names()
        assert target.execute("select count(*) from procrastinate_jobs").fetchone()[0] == 0
        queue_steps = target.query(
            f"select name from {MIGRATIONS_TABLE} where migration_set = 'theranode.queue'")
        assert [r["name"] for r in queue_steps] == ["m001_procrastinate_schema"]
    finally:
        target.close()


def test_a_row_the_target_refuses_rolls_the_whole_copy_back(
        node_url: str, postgres_url: str) -> None:
    """SQLite keeps text in an INTEGER column; PostgreSQL refuses it, and nothing stays."""
    path = Path(node_url.removeprefix("sqlite:///"))
    with sqlite3.connect(path) as raw:
        raw.execute("update quarantine set status = 'not a number'")
    raw.close()
    with pytest.raises(CopyError, match="quarantine.*nothing was copied"):
        copy_database(node_url, postgres_url)
    target = open_database(postgres_url)
    try:
        assert all(not _rows(target, table) for table in schema_tables())
    finally:
        target.close()


def test_a_database_of_an_earlier_build_is_copied_with_its_ids(
        tmp_path: Path, postgres_url: str) -> None:
    """A database sqlite-utils migrated (before the PostgreSQL port) copies as well."""
    path = tmp_path / "theranode.db"
    legacy = sqlite3.connect(path)
    legacy.executescript(LEGACY_DUMP.read_text(encoding="utf-8"))
    legacy.close()
    report = copy_database(sqlite_url(path), postgres_url)
    assert report.rows["instances"] == 1
    target = open_database(postgres_url)
    try:
        (old_job,) = JobStore(target).all()
        new_job = JobStore(target).submit(kind="cycle", target="t", patient_key="k",
                                          label="c", fingerprint="x", payload=None,
                                          created_at=NOW)
        assert new_job is not None and new_job.id == old_job.id + 1
        assert IndexStore(target).patient_id("00112233aabbccdd") == "P-LEGACY"
    finally:
        target.close()


def test_the_command_copies_the_configured_node_and_prints_a_summary(
        node_url: str, postgres_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text(settings_toml(make_settings(tmp_path / "data"), "test node"),
                      encoding="utf-8")
    assert main(["database", "copy", "--config", str(config), "--to", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "instances" in out and "4 row(s)" in out and "Next generated ids: " in out
    assert main(["database", "copy", "--config", str(config), "--to", postgres_url]) == 1
    assert "is not empty" in capsys.readouterr().err


def test_the_command_refuses_a_node_with_no_database_and_an_sqlite_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "node.toml"
    config.write_text(settings_toml(make_settings(tmp_path / "empty"), "test node"),
                      encoding="utf-8")
    assert main(["database", "copy", "--config", str(config),
                 "--to", "postgresql://db.invalid/theranode"]) == 1
    assert "no SQLite database at" in capsys.readouterr().err
    assert main(["database", "copy", "--config", str(config),
                 "--to", sqlite_url(tmp_path / "other.db")]) == 1
    assert "the target must be a postgresql:// URL" in capsys.readouterr().err
