"""Outcome CSV import (every validation rule, idempotence, unit conversion) and loading, on
SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.postgres import PostgresServer
from tests.service.cohort_files import export_outcome_csv
from tests.synthetic_cohort import synthetic_cohort
from theranode.dicomio.headers import injection
from theranode.dosimetry.cohort.analysis import analyse_cohort
from theranode.dosimetry.cohort.data import DoseKind, DoseRow, organ_doses
from theranode.dosimetry.plausibility import MAX_PLAUSIBLE_ACTIVITY_MBQ
from theranode.dosimetry.results import VoiKind
from theranode.dosimetry.voi_names import classify_roi
from theranode.service.cohort.imports import FileStatus, OutcomeKind, import_outcome_files
from theranode.service.cohort.loading import load_cohort_data
from theranode.service.store import open_database
from theranode.service.store import outcomes as store
from theranode.service.store.database import Database

PATIENTS = (
    "patient_id,sex,age_at_start,first_injection_date,progression_date,death_date,"
    "last_followup_date,recist_m3\n"
    "P1,M,66,2020-01-10,2021-06-01,,2023-01-01,SD\n"
    "P2,F,70,2020-02-10,,2022-03-01,2022-03-01,PR\n"
)
CYCLES = """patient_id,cycle,admin_date,activity_gbq
P1,1,2020-01-10,7.4
P1,2,2020-03-06,7.4
P2,1,2020-02-10,7.4
"""
LESIONS = """patient_id,lesion_id,site,vol_bl_cm3,ct_bl_date,vol_m3_cm3,ct_m3_date
P1,liver_1,liver,10.5,2019-12-20,8.2,2020-06-01
P2,node_1,lymph node,4.0,2020-01-20,4.5,2020-05-15
"""
LABS = """patient_id,date,analyte,value,unit,lln,uln
P1,2020-01-05,hgb,13.5,g/dL,13,17
P1,2020-01-05,creat,80,µmol/L,60,110
P1,2020-01-25,plt,120,10^9/L,150,400
P2,2020-01-30,hgb,125,g/L,120,160
"""
DOSES = """patient_id,cycle,voi,kind,ad_gy
P1,1,liver_1,lesion,30.5
P1,2,liver_1,lesion,25.1
P1,1,Kidneys,organ,2.7
P2,1,node_1,lesion,40.2
"""
GOOD = {"patients": PATIENTS, "cycles": CYCLES, "lesions": LESIONS, "labs": LABS, "doses": DOSES}
ORDER = list(GOOD)


#: The outcome tables, children before their parent ``outcome_patients``.
OUTCOME_TABLES = ("outcome_doses", "outcome_labs", "outcome_lesions", "outcome_cycles",
                  "outcome_patients", "outcome_warnings", "outcome_files")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def migrated_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per dialect for this module, as ``database_url`` gives them: an
    SQLite file, and a database on the test PostgreSQL server. A new PostgreSQL database
    migrated for each of these tests would take longer than the tests themselves."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('outcomes') / 'theranode.db'}"
        open_database(url).close()
        yield url
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    open_database(url).close()
    yield url
    server.drop_database(url)


@pytest.fixture
def db(migrated_url: str) -> Iterator[Database]:
    """The node's database with no outcome data, on SQLite and on PostgreSQL."""
    database = open_database(migrated_url)
    with database.transaction():
        for table in OUTCOME_TABLES:
            database.execute(f"delete from {table}")
    yield database
    database.close()


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.csv"
    path.write_text(text, encoding="utf-8")
    return path


def _import_before(db: Database, folder: Path, kind: str) -> None:
    """Import the good files that ``kind`` depends on."""
    needed = ORDER[: ORDER.index(kind)]
    report = import_outcome_files(db, [_write(folder, f"good_{k}", GOOD[k]) for k in needed])
    assert report.ok, report.summary()


def _replace(kind: str, old: str, new: str) -> str:
    assert old in GOOD[kind], old
    return GOOD[kind].replace(old, new, 1)


# (kind, bad content, line, column, words in the message)
BAD_FILES = [
    (
        "patients",
        _replace("patients", "recist_m3\n", "recist_m3,weight_kg\n")
        .replace("SD\n", "SD,80\n")
        .replace("PR\n", "PR,70\n"),
        1,
        "weight_kg",
        "unknown column",
    ),
    (
        "patients",
        PATIENTS.replace(",last_followup_date", "")
        .replace(",2023-01-01", "")
        .replace(",2022-03-01,PR", ",PR"),
        1,
        "last_followup_date",
        "missing",
    ),
    (
        "patients",
        PATIENTS + "P1,M,66,2020-01-10,,,2023-01-01,SD\n",
        4,
        "patient_id",
        "duplicate of line 2",
    ),
    (
        "patients",
        _replace("patients", ",2022-03-01,2022-03-01,PR", ",2020-01-01,2022-03-01,PR"),
        3,
        "death_date",
        "death before injection",
    ),
    (
        "patients",
        _replace("patients", "2021-06-01,,2023-01-01", "2021-06-01,2021-01-01,2021-01-01"),
        2,
        "death_date",
        "progression after death",
    ),
    (
        "patients",
        _replace("patients", "2021-06-01,,2023-01-01", "2021-06-01,,2021-01-01"),
        2,
        "last_followup_date",
        "out of order",
    ),
    (
        "patients",
        _replace("patients", "P1,M,66,2020-01-10", "P1,M,66,10/01/2020"),
        2,
        "first_injection_date",
        "ISO date",
    ),
    ("patients", _replace("patients", "P2,F,", "P2,X,"), 3, "sex", "M or F"),
    ("patients", _replace("patients", "P2,F,70,", "P2,F,,"), 3, "birth_date", "age_at_start"),
    ("patients", _replace("patients", ",PR\n", ",VGPR\n"), 3, "recist_m3", "expected one of"),
    ("cycles", CYCLES + "P9,1,2020-01-10,7.4\n", 5, "patient_id", "orphan"),
    (
        "cycles",
        _replace("cycles", "P1,2,2020-03-06", "P1,2,2020-01-05"),
        3,
        "admin_date",
        "out of order",
    ),
    (
        "cycles",
        _replace("cycles", "P2,1,2020-02-10,7.4", "P2,1,2020-02-10,7400"),
        4,
        "activity_gbq",
        "MBq",
    ),
    (
        "cycles",
        _replace("cycles", "P2,1,2020-02-10,7.4", "P2,1,2020-02-10,0"),
        4,
        "activity_gbq",
        "positive",
    ),
    ("cycles", CYCLES + "P2,2,2022-04-01,7.4\n", 5, "admin_date", "death before injection"),
    ("cycles", _replace("cycles", "P2,1,", "P2,one,"), 4, "cycle", "whole number"),
    (
        "lesions",
        _replace("lesions", "P1,liver_1,liver,10.5", "P1,liver_1,liver,0"),
        2,
        "vol_bl_cm3",
        "positive",
    ),
    (
        "lesions",
        _replace("lesions", "4.5,2020-05-15", "-1,2020-05-15"),
        3,
        "vol_m3_cm3",
        "positive",
    ),
    (
        "lesions",
        _replace("lesions", "8.2,2020-06-01", "8.2,2019-11-01"),
        2,
        "ct_m3_date",
        "out of order",
    ),
    ("lesions", _replace("lesions", "8.2,2020-06-01", "8.2,"), 2, "ct_m3_date", "give both"),
    (
        "lesions",
        LESIONS + "P1,liver_1,liver,3,2019-12-20,2,2020-06-01\n",
        4,
        "patient_id, lesion_id",
        "duplicate",
    ),
    ("labs", _replace("labs", "13.5,g/dL", "13.5,mg"), 2, "unit", "unknown unit"),
    (
        "labs",
        LABS + "P2,2020-02-25,lymph,22,%,20,40\n",
        6,
        "unit",
        "in % instead of an absolute count",
    ),
    ("labs", LABS + "P2,2020-02-25,crp,5,mg/L,,\n", 6, "analyte", "unknown analyte"),
    ("labs", _replace("labs", "plt,120,10^9/L", "plt,120000,10^9/L"), 4, "value", "plausible"),
    (
        "labs",
        LABS + "P1,2020-01-05,hgb,13.1,g/dL,13,17\n",
        6,
        "patient_id, date, analyte",
        "duplicate of line 2",
    ),
    ("labs", _replace("labs", "13.5,g/dL,13,17", "13.5,g/dL,18,17"), 2, "lln", "above uln"),
    ("labs", _replace("labs", "13.5,g/dL", "13,5,g/dL"), 2, "", "expected 7 fields"),
    ("doses", DOSES + "P1,1,liver_9,lesion,10\n", 6, "voi", "orphan"),
    ("doses", DOSES + "P2,3,node_1,lesion,10\n", 6, "cycle", "orphan"),
    ("doses", DOSES + "P1,1,Pancreas,organ,1\n", 6, "voi", "unknown organ"),
    ("doses", _replace("doses", "Kidneys,organ", "Kidneys,tissue"), 4, "kind", "organ or lesion"),
    ("doses", _replace("doses", "node_1,lesion,40.2", "node_1,lesion,-4"), 5, "ad_gy", "≥ 0"),
    (
        "doses",
        _replace("doses", "node_1,lesion,40.2", "node_1,lesion,4o"),
        5,
        "ad_gy",
        "expected a number",
    ),
]


@pytest.mark.parametrize(("kind", "content", "line", "column", "words"), BAD_FILES)
def test_bad_file_is_rejected_with_row_and_column(
    db: Database,
    tmp_path: Path,
    kind: str,
    content: str,
    line: int,
    column: str,
    words: str,
) -> None:
    _import_before(db, tmp_path, kind)
    before = store.rows(db, kind)
    path = _write(tmp_path, f"bad_{kind}", content)
    report = import_outcome_files(db, [path])
    assert not report.ok
    (file_report,) = report.files
    assert file_report.status is FileStatus.REJECTED
    matching = [
        e for e in report.errors if e.line == line and e.column == column and words in e.message
    ]
    assert matching, report.summary()
    assert f"{path.name}, line {line}" in str(matching[0])
    assert store.rows(db, kind) == before  # a rejected file imports nothing


def test_unrecognised_file(db: Database, tmp_path: Path) -> None:
    report = import_outcome_files(db, [_write(tmp_path, "x", "name,weight\nA,3\n")])
    assert not report.ok
    assert report.errors[0].line == 1 and "not an outcome file" in report.errors[0].message


@pytest.mark.parametrize(
    ("kind", "content", "line", "column", "words"),
    [
        (
            "lesions",
            LESIONS + "P1,liver_2,liver,1.5,2019-12-20,1.2,2020-06-01\n",
            4,
            "vol_bl_cm3",
            "< 2 cm³",
        ),
        ("labs", LABS + "P2,2020-02-25,wbc,3.1,10^9/L,,\n", 6, "lln", "LLN missing"),
        ("lesions", LESIONS + "P1,bone_1,bone,5,2019-12-20,5,2020-06-01\n", 4, "site", "bone"),
    ],
)
def test_warnings_are_reported_and_kept(
    db: Database,
    tmp_path: Path,
    kind: str,
    content: str,
    line: int,
    column: str,
    words: str,
) -> None:
    _import_before(db, tmp_path, kind)
    report = import_outcome_files(db, [_write(tmp_path, kind, content)])
    assert report.ok, report.summary()
    assert any(
        w.line == line and w.column == column and words in w.message for w in report.warnings
    )
    kept = store.stored_warnings(db)
    assert any(w["line"] == line and w["column"] == column and words in w["message"] for w in kept)


def test_all_files_in_any_order_and_reimport_changes_nothing(
    db: Database, tmp_path: Path
) -> None:
    paths = [_write(tmp_path, k, GOOD[k]) for k in reversed(ORDER)]
    first = import_outcome_files(db, paths)
    assert first.ok, first.summary()
    assert [f.kind for f in first.files] == list(OutcomeKind)
    snapshot = {k: store.rows(db, k) for k in ORDER}
    files_before = db.query("select * from outcome_files")
    second = import_outcome_files(db, paths)
    assert second.ok
    assert all(f.status is FileStatus.UNCHANGED for f in second.files)
    assert {k: store.rows(db, k) for k in ORDER} == snapshot
    assert db.query("select * from outcome_files") == files_before
    assert "unchanged" in second.summary()


def test_units_are_converted_to_canonical(db: Database, tmp_path: Path) -> None:
    _import_before(db, tmp_path, "doses")
    labs = {(r["patient_id"], r["analyte"]): r for r in store.rows(db, "labs")}
    assert labs[("P1", "creat")]["value"] == pytest.approx(80 / 88.4)
    assert labs[("P1", "creat")]["unit"] == "mg/dL"
    assert labs[("P1", "creat")]["given_unit"] == "µmol/L"
    assert labs[("P2", "hgb")]["value"] == pytest.approx(12.5)
    assert labs[("P2", "hgb")]["lln"] == pytest.approx(12.0)


def test_load_with_own_doses_taking_precedence(db: Database, tmp_path: Path) -> None:
    import_outcome_files(db, [_write(tmp_path, k, GOOD[k]) for k in ORDER])
    own = [
        DoseRow("P1", 1, "liver_1", DoseKind.LESION, 33.0),
        DoseRow("P2", 1, "spleen", DoseKind.ORGAN, 3.9),
    ]
    data = load_cohort_data(db, own_doses=own)
    doses = data.doses.set_index(["patient_id", "cycle", "voi"])["ad_gy"]
    assert doses.loc[("P1", 1, "liver_1")] == 33.0
    assert doses.loc[("P1", 2, "liver_1")] == 25.1
    assert doses.loc[("P2", 1, "spleen")] == 3.9
    assert len(data.doses) == 5
    assert data.patients.set_index("patient_id").loc["P2", "death_date"] == pd.Timestamp(
        "2022-03-01"
    )


def test_synthetic_cohort_round_trips_through_import(
    db: Database, tmp_path: Path
) -> None:
    cohort = synthetic_cohort(12, seed=3)
    report = import_outcome_files(db, export_outcome_csv(cohort.data, tmp_path))
    assert report.ok, report.summary()
    loaded = load_cohort_data(db)
    assert len(loaded.patients) == 12
    assert len(loaded.lesions) == len(cohort.data.lesions)
    assert len(loaded.labs) == len(cohort.data.labs)
    assert loaded.doses["ad_gy"].sum() == pytest.approx(cohort.data.doses["ad_gy"].sum())
    original = analyse_cohort(cohort.data)
    again = analyse_cohort(loaded)
    for a, b in zip(again.distributions, original.distributions, strict=True):
        assert (a.voi, a.cycle, type(a.summary)) == (b.voi, b.cycle, type(b.summary))
        if hasattr(a.summary, "median"):
            assert (a.summary.n, a.summary.median) == (b.summary.n, b.summary.median)
            assert a.summary.mean == pytest.approx(b.summary.mean)


#: ROI names as sites draw them; the engine computes a dose for every one.
ENGINE_ROI_NAMES = [
    "Liver", "liver_healthy", "Healthy Liver", "Kidney_L", "Left Kidney", "kidney sin",
    "Kidney_R", "Right kidney", "Kidneys", "both kidneys", "Spleen", "BoneMarrow",
    "BoneMarrow_L2L4", "Marrow L2-L4", "red marrow", "L2-L4",
    "Lesion_03", "liver met 2", "Tumour 1", "GTV_pancreas",
]


@pytest.mark.parametrize("name", ENGINE_ROI_NAMES)
def test_import_accepts_every_roi_name_the_engine_classifies(
    db: Database, tmp_path: Path, name: str
) -> None:
    """issue #11: one vocabulary; the importer's organ is the engine's organ."""
    voi = classify_roi(name, None)  # the engine's classification (theranode.service.jobs.pipeline)
    assert voi is not None, f"the engine ignores ROI {name!r}"
    _import_before(db, tmp_path, "doses")
    is_lesion = voi.kind is VoiKind.LESION
    if is_lesion:
        lesions = LESIONS + f"P1,{name},liver,6.0,2019-12-20,5.0,2020-06-01\n"
        assert import_outcome_files(db, [_write(tmp_path, "more_lesions", lesions)]).ok
    kind = "lesion" if is_lesion else "organ"
    doses = DOSES + f"P1,2,{name},{kind},1.5\n"
    report = import_outcome_files(db, [_write(tmp_path, "doses", doses)])
    assert report.ok, report.summary()
    if not is_lesion:
        assert voi.organ is not None
        organs = organ_doses(load_cohort_data(db))
        row = organs.loc[(organs["patient_id"] == "P1") & (organs["cycle"] == 2)]
        assert row["organ"].iloc[0] == voi.organ.value  # then kidneys from a side, if any


def test_a_lesion_name_given_as_organ_is_refused_with_the_fix(
    db: Database, tmp_path: Path
) -> None:
    _import_before(db, tmp_path, "doses")
    report = import_outcome_files(
        db, [_write(tmp_path, "doses", DOSES + "P1,2,Lesion_03,organ,1.5\n")]
    )
    assert not report.ok
    assert any("give kind lesion" in e.message for e in report.errors), report.summary()


def _nm_injection_activity_mbq(total_dose_mbq: float) -> float | None:
    item = Dataset()
    item.RadiopharmaceuticalStartDateTime = "20200110093000"
    item.RadionuclideTotalDose = f"{total_dose_mbq:g}"
    ds = Dataset()
    ds.Modality = "NM"
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    found = injection(ds)
    assert found is not None
    return found.activity_mbq


@pytest.mark.parametrize(
    ("activity_mbq", "plausible"),
    [(MAX_PLAUSIBLE_ACTIVITY_MBQ, True), (MAX_PLAUSIBLE_ACTIVITY_MBQ + 100.0, False)],
)
def test_csv_and_dicom_headers_refuse_the_same_activities(
    db: Database, tmp_path: Path, activity_mbq: float, plausible: bool
) -> None:
    _import_before(db, tmp_path, "cycles")
    cycles = _replace("cycles", "P2,1,2020-02-10,7.4", f"P2,1,2020-02-10,{activity_mbq / 1000:g}")
    report = import_outcome_files(db, [_write(tmp_path, "cycles", cycles)])
    assert report.ok is plausible, report.summary()
    header_mbq = _nm_injection_activity_mbq(activity_mbq)
    assert header_mbq == (pytest.approx(activity_mbq) if plausible else None)
