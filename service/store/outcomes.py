"""Tables of imported outcome data (patients, cycles, lesions, labs, doses).

One table per CSV kind, keyed like the CSV's natural key, plus
``outcome_files`` (one row per imported file, by content hash, which makes
re-imports no-ops) and ``outcome_warnings`` (warnings kept with the file).
Dates are ISO ``YYYY-MM-DD`` text; laboratory values are stored in their
canonical unit next to the value and unit as given.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from theranode.service.store.database import Database, quote
from theranode.service.store.migrations import Migrations

logger = logging.getLogger(__name__)

MIGRATIONS = Migrations("theranode.outcomes")

#: Outcome kind → (table, primary key columns).
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "patients": ("outcome_patients", ("patient_id",)),
    "cycles": ("outcome_cycles", ("patient_id", "cycle")),
    "lesions": ("outcome_lesions", ("patient_id", "lesion_id")),
    "labs": ("outcome_labs", ("patient_id", "date", "analyte")),
    "doses": ("outcome_doses", ("patient_id", "cycle", "voi")),
}


@MIGRATIONS()
def m001_outcome_tables(db: Database) -> None:
    """Create the outcome tables."""
    db.create_table(
        "outcome_files",
        {
            "sha256": str,
            "file_name": str,
            "kind": str,
            "imported_at": str,
            "n_rows": int,
            "warnings": str,
        },
        pk="sha256",
    )
    db.create_table(
        "outcome_patients",
        {
            "patient_id": str,
            "sex": str,
            "birth_date": str,
            "age_at_start_y": float,
            "first_injection_date": str,
            "progression_date": str,
            "death_date": str,
            "last_followup_date": str,
            "recist_m3": str,
            "source_sha256": str,
        },
        pk="patient_id",
        not_null={"sex", "first_injection_date"},
    )
    db.create_table(
        "outcome_cycles",
        {
            "patient_id": str,
            "cycle": int,
            "admin_date": str,
            "activity_gbq": float,
            "source_sha256": str,
        },
        pk=("patient_id", "cycle"),
        foreign_keys=[("patient_id", "outcome_patients", "patient_id")],
    )
    db.create_table(
        "outcome_lesions",
        {
            "patient_id": str,
            "lesion_id": str,
            "site": str,
            "vol_bl_cm3": float,
            "ct_bl_date": str,
            "vol_m3_cm3": float,
            "ct_m3_date": str,
            "source_sha256": str,
        },
        pk=("patient_id", "lesion_id"),
        foreign_keys=[("patient_id", "outcome_patients", "patient_id")],
    )
    db.create_table(
        "outcome_labs",
        {
            "patient_id": str,
            "date": str,
            "analyte": str,
            "value": float,
            "unit": str,
            "lln": float,
            "uln": float,
            "given_value": float,
            "given_unit": str,
            "source_sha256": str,
        },
        pk=("patient_id", "date", "analyte"),
        foreign_keys=[("patient_id", "outcome_patients", "patient_id")],
    )
    db.create_table(
        "outcome_doses",
        {
            "patient_id": str,
            "cycle": int,
            "voi": str,
            "kind": str,
            "ad_gy": float,
            "source_sha256": str,
        },
        pk=("patient_id", "cycle", "voi"),
        foreign_keys=[("patient_id", "outcome_patients", "patient_id")],
    )
    db.create_table(
        "outcome_warnings",
        {"id": int, "sha256": str, "file_name": str, "line": int, "column": str, "message": str},
        pk="id",
    )
    db.create_index("outcome_warnings", ["sha256"])


def file_imported(db: Database, sha256: str) -> bool:
    """Whether a file with this content hash was imported before."""
    return bool(db.execute("select count(*) from outcome_files where sha256 = ?",
                           [sha256]).fetchone()[0])


def keys(db: Database, kind: str) -> set[tuple[Any, ...]]:
    """Primary keys present in the table of ``kind``."""
    table, pk = TABLES[kind]
    sql = f"select {', '.join(map(quote, pk))} from {quote(table)}"
    return {tuple(row) for row in db.execute(sql).fetchall()}


def rows(db: Database, kind: str) -> list[dict[str, Any]]:
    """Every row of the table of ``kind``, in primary-key order."""
    table, pk = TABLES[kind]
    return db.query(f"select * from {quote(table)} order by {', '.join(map(quote, pk))}")


def store_file(
    db: Database,
    *,
    sha256: str,
    file_name: str,
    kind: str,
    imported_at: str,
    records: Sequence[Mapping[str, Any]],
    warnings: Iterable[tuple[int, str, str]],
) -> None:
    """Upsert the records of one accepted file and its warnings, atomically.

    Parameters
    ----------
    warnings
        ``(line, column, message)`` triples.
    """
    table, pk = TABLES[kind]
    warning_list = list(warnings)
    with db.transaction():
        for record in records:
            db.upsert(table, {**record, "source_sha256": sha256}, pk)
        db.insert(
            "outcome_files",
            {
                "sha256": sha256,
                "file_name": file_name,
                "kind": kind,
                "imported_at": imported_at,
                "n_rows": len(records),
                "warnings": json.dumps([message for _, _, message in warning_list]),
            }
        )
        for line, column, text in warning_list:
            db.insert("outcome_warnings", {"sha256": sha256, "file_name": file_name,
                                           "line": line, "column": column, "message": text})
    logger.info("Imported %d %s row(s) from %s (%s)", len(records), kind, file_name, sha256[:12])


def stored_warnings(db: Database) -> list[dict[str, Any]]:
    """Every kept import warning, oldest first."""
    return db.query("select * from outcome_warnings order by id")


def content_hash(db: Database) -> str:
    """A hash of every outcome table's contents (changes whenever data change)."""
    digest = hashlib.sha256()
    for kind in TABLES:
        for row in rows(db, kind):
            row.pop("source_sha256", None)
            digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()
