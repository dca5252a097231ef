"""Outcome data import: ``theranode outcomes import FILE…``.

CSV files in long format with ISO dates; the kind of a file (patients,
cycles, lesions, labs, doses) is recognised from its header. Each file is
validated as a whole: one error rejects the file and nothing of it is
imported; warnings are reported and kept in the database. A file whose
content (SHA-256) was imported before is skipped, so re-importing changes
nothing. Files of one call are imported in dependency order (patients
first), each one checked against what is already in the database.

:func:`import_outcome_files` returns an :class:`ImportReport` (``.ok`` is
``False`` when a file was rejected; ``.summary()`` is the text the CLI
prints). :func:`theranode.service.cohort.loading.load_cohort_data` reads the
imported tables for the analyses.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from theranode.dosimetry.cohort.data import CANONICAL_UNITS, Analyte, DoseKind
from theranode.dosimetry.plausibility import MAX_PLAUSIBLE_ACTIVITY_MBQ
from theranode.dosimetry.results import VoiKind
from theranode.dosimetry.voi_names import ORGAN_NAMES_HELP, classify_roi
from theranode.service.store import outcomes as store
from theranode.service.store.database import Database

logger = logging.getLogger(__name__)


class OutcomeKind(str, Enum):
    """Kinds of outcome CSV files, in import order."""

    PATIENTS = "patients"
    CYCLES = "cycles"
    LESIONS = "lesions"
    LABS = "labs"
    DOSES = "doses"


class Severity(str, Enum):
    """How serious an import finding is."""

    ERROR = "error"
    WARNING = "warning"


class FileStatus(str, Enum):
    """What happened to one file."""

    IMPORTED = "imported"
    UNCHANGED = "unchanged (already imported)"
    REJECTED = "rejected"


@dataclass(frozen=True)
class ImportIssue:
    """One finding about a file: where (line 1 = header) and what."""

    file: str
    line: int
    column: str
    message: str
    severity: Severity

    def __str__(self) -> str:
        where = f"{self.file}, line {self.line}" + (
            f", column {self.column}" if self.column else ""
        )
        return f"{self.severity.value}: {where}: {self.message}"


@dataclass(frozen=True)
class FileReport:
    """The outcome of importing one file."""

    path: str
    kind: OutcomeKind | None
    status: FileStatus
    rows: int
    errors: tuple[ImportIssue, ...] = ()
    warnings: tuple[ImportIssue, ...] = ()


@dataclass(frozen=True)
class ImportReport:
    """The outcome of one ``outcomes import`` call."""

    files: tuple[FileReport, ...]

    @property
    def ok(self) -> bool:
        """``True`` when no file was rejected."""
        return all(f.status is not FileStatus.REJECTED for f in self.files)

    @property
    def errors(self) -> tuple[ImportIssue, ...]:
        """Every error of every file."""
        return tuple(issue for f in self.files for issue in f.errors)

    @property
    def warnings(self) -> tuple[ImportIssue, ...]:
        """Every warning of every file."""
        return tuple(issue for f in self.files for issue in f.warnings)

    def summary(self) -> str:
        """Human-readable report: one line per file, then its errors and warnings."""
        lines = []
        for report in self.files:
            kind = report.kind.value if report.kind else "unrecognised"
            lines.append(f"{report.path}: {kind}, {report.status.value}, {report.rows} row(s)")
            lines.extend(f"  {issue}" for issue in (*report.errors, *report.warnings))
        verdict = (
            "all files accepted"
            if self.ok
            else "some files were rejected: nothing of them was imported"
        )
        lines.append(verdict)
        return "\n".join(lines)


# --- file layouts --------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Columns of one kind of file: required in the header, and optional ones."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    one_of: tuple[str, ...] = ()

    @property
    def allowed(self) -> frozenset[str]:
        """Every column the kind may have."""
        return frozenset((*self.required, *self.optional, *self.one_of))


LAYOUTS: dict[OutcomeKind, Layout] = {
    OutcomeKind.PATIENTS: Layout(
        required=("patient_id", "sex", "first_injection_date", "last_followup_date"),
        optional=("progression_date", "death_date", "recist_m3"),
        one_of=("birth_date", "age_at_start"),
    ),
    OutcomeKind.CYCLES: Layout(required=("patient_id", "cycle", "admin_date", "activity_gbq")),
    OutcomeKind.LESIONS: Layout(
        required=("patient_id", "lesion_id", "site", "vol_bl_cm3", "ct_bl_date"),
        optional=("vol_m3_cm3", "ct_m3_date"),
    ),
    OutcomeKind.LABS: Layout(
        required=("patient_id", "date", "analyte", "value", "unit"), optional=("lln", "uln")
    ),
    OutcomeKind.DOSES: Layout(required=("patient_id", "cycle", "voi", "kind", "ad_gy")),
}

SEX_VALUES = {"m": "M", "male": "M", "f": "F", "female": "F"}
RECIST_VALUES = ("CR", "PR", "SD", "PD", "NE")
KNOWN_SITES = ("liver", "lymph_node", "mesentery", "pancreas", "peritoneum", "bone", "other")
SMALL_LESION_CM3 = 2.0


def _unit_key(unit: str) -> str:
    text = unit.strip().lower().replace(" ", "").replace("µ", "u").replace("μ", "u")
    text = text.replace("²", "2").replace("×", "x").replace("*", "^").replace("10e", "10^")
    return text.removeprefix("x")


_COUNT_UNITS = {
    "10^9/l": 1.0,
    "g/l": 1.0,
    "giga/l": 1.0,
    "10^3/ul": 1.0,
    "k/ul": 1.0,
    "/nl": 1.0,
    "10^3/mm3": 1.0,
    "/ul": 1e-3,
    "cells/ul": 1e-3,
    "/mm3": 1e-3,
}
#: analyte → {normalised unit → factor to the canonical unit}.
UNIT_FACTORS: dict[Analyte, dict[str, float]] = {
    Analyte.HGB: {"g/dl": 1.0, "g/l": 0.1, "mmol/l": 1.611},
    Analyte.WBC: _COUNT_UNITS,
    Analyte.LYMPH: _COUNT_UNITS,
    Analyte.NEUT: _COUNT_UNITS,
    Analyte.PLT: _COUNT_UNITS,
    Analyte.CREAT: {"mg/dl": 1.0, "umol/l": 1.0 / 88.4, "mmol/l": 1000.0 / 88.4},
    Analyte.EGFR: {"ml/min/1.73m2": 1.0, "ml/min/1.73m^2": 1.0, "ml/min": 1.0},
}
#: Plausible range of each analyte in its canonical unit (outside: wrong unit).
PLAUSIBLE: dict[Analyte, tuple[float, float]] = {
    Analyte.HGB: (2.0, 25.0),
    Analyte.WBC: (0.0, 500.0),
    Analyte.LYMPH: (0.0, 300.0),
    Analyte.NEUT: (0.0, 300.0),
    Analyte.PLT: (0.0, 3000.0),
    Analyte.CREAT: (0.05, 30.0),
    Analyte.EGFR: (1.0, 250.0),
}
GRADED_WITH_LLN = (Analyte.HGB, Analyte.WBC, Analyte.LYMPH, Analyte.NEUT, Analyte.PLT)


# --- reading and recognising ------------------------------------------------------


class _Rejected(Exception):
    """Internal: the file cannot be read at all (issues already recorded)."""


@dataclass
class _Context:
    """Findings of one file while it is validated."""

    file: str
    issues: list[ImportIssue] = field(default_factory=list)

    def error(self, line: int, column: str, message: str) -> None:
        self.issues.append(ImportIssue(self.file, line, column, message, Severity.ERROR))

    def warn(self, line: int, column: str, message: str) -> None:
        self.issues.append(ImportIssue(self.file, line, column, message, Severity.WARNING))

    @property
    def failed(self) -> bool:
        return any(issue.severity is Severity.ERROR for issue in self.issues)


@dataclass(frozen=True)
class _Row:
    line: int
    values: dict[str, str]


def read_csv_rows(content: bytes, ctx: _Context) -> tuple[list[str], list[_Row]]:
    """Header and data rows (line numbers as in a text editor: header = 1)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        ctx.error(1, "", f"the file is not UTF-8 text ({error}); save it as UTF-8 CSV")
        raise _Rejected from error
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [name.strip() for name in next(reader, [])]
    if not header or header == [""]:
        ctx.error(1, "", "the file is empty; expected a header line with column names")
        raise _Rejected
    rows = []
    for values in reader:
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            ctx.error(
                reader.line_num,
                "",
                f"expected {len(header)} fields as in the header; found {len(values)}",
            )
            continue
        rows.append(
            _Row(reader.line_num, dict(zip(header, (v.strip() for v in values), strict=True)))
        )
    return header, rows


def recognise_kind(header: Sequence[str], ctx: _Context) -> OutcomeKind:
    """The kind whose columns the header holds; errors name unknown or missing columns."""
    duplicated = sorted({name for name in header if header.count(name) > 1})
    for name in duplicated:
        ctx.error(1, name, "the column appears more than once; keep one")
    present = set(header)
    scores = {kind: len(present & layout.allowed) for kind, layout in LAYOUTS.items()}
    kind = max(scores, key=lambda k: (scores[k], -len(LAYOUTS[k].allowed)))
    if scores[kind] == 0:
        expected = "; ".join(f"{k.value}: {', '.join(LAYOUTS[k].required)}" for k in LAYOUTS)
        ctx.error(1, "", f"not an outcome file: no known column. Expected one of — {expected}")
        raise _Rejected
    layout = LAYOUTS[kind]
    for name in header:
        if name not in layout.allowed:
            ctx.error(
                1,
                name,
                f"unknown column for a {kind.value} file; "
                f"allowed: {', '.join(sorted(layout.allowed))}",
            )
    for name in layout.required:
        if name not in present:
            ctx.error(1, name, f"required column of a {kind.value} file is missing; add it")
    if layout.one_of and not present & set(layout.one_of):
        ctx.error(
            1,
            layout.one_of[0],
            f"a {kind.value} file needs one of the columns {' or '.join(layout.one_of)}",
        )
    return kind


# --- value parsers -----------------------------------------------------------------


def _text(row: _Row, column: str, ctx: _Context, required: bool = True) -> str | None:
    value = row.values.get(column, "")
    if value == "":
        if required:
            ctx.error(row.line, column, "value is empty; this column is required")
        return None
    return value


def _date(row: _Row, column: str, ctx: _Context, required: bool = True) -> dt.date | None:
    value = _text(row, column, ctx, required)
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        ctx.error(row.line, column, f"expected an ISO date YYYY-MM-DD; found '{value}'")
        return None


def _number(row: _Row, column: str, ctx: _Context, required: bool = True) -> float | None:
    value = _text(row, column, ctx, required)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        hint = " (use '.' as decimal separator)" if "," in value else ""
        ctx.error(row.line, column, f"expected a number; found '{value}'{hint}")
        return None
    if not math.isfinite(number):
        ctx.error(row.line, column, f"expected a finite number; found '{value}'")
        return None
    return number


def _positive(row: _Row, column: str, ctx: _Context, required: bool = True) -> float | None:
    number = _number(row, column, ctx, required)
    if number is not None and number <= 0:
        ctx.error(row.line, column, f"expected a positive value; found {number:g}")
        return None
    return number


def _integer(row: _Row, column: str, ctx: _Context) -> int | None:
    value = _text(row, column, ctx)
    if value is None:
        return None
    if not value.isdigit() or int(value) < 1:
        ctx.error(row.line, column, f"expected a whole number ≥ 1; found '{value}'")
        return None
    return int(value)


def _before(
    ctx: _Context,
    row: _Row,
    early: tuple[str, dt.date | None],
    late: tuple[str, dt.date | None],
    message: str,
) -> None:
    """Error on ``late``'s column when ``late`` is before ``early``."""
    if early[1] is not None and late[1] is not None and late[1] < early[1]:
        ctx.error(
            row.line, late[0], f"{message}: {late[0]} {late[1]} is before {early[0]} {early[1]}"
        )


def _duplicates(rows: Iterable[tuple[_Row, tuple[Any, ...]]], columns: str, ctx: _Context) -> None:
    seen: dict[tuple[Any, ...], int] = {}
    for row, key in rows:
        if key in seen:
            ctx.error(
                row.line, columns, f"duplicate of line {seen[key]} (same {columns}); keep one row"
            )
        else:
            seen[key] = row.line


# --- per-kind validation -----------------------------------------------------------


@dataclass
class _Known:
    """What the database (plus files accepted earlier in this call) holds."""

    patients: dict[str, dict[str, Any]]
    cycles: set[tuple[str, int]]
    admin_dates: dict[tuple[str, int], str]
    lesions: set[tuple[str, str]]

    @classmethod
    def load(cls, db: Database) -> _Known:
        cycle_rows = store.rows(db, OutcomeKind.CYCLES.value)
        return cls(
            patients={row["patient_id"]: row for row in store.rows(db, OutcomeKind.PATIENTS.value)},
            cycles={(row["patient_id"], int(row["cycle"])) for row in cycle_rows},
            admin_dates={
                (row["patient_id"], int(row["cycle"])): row["admin_date"] for row in cycle_rows
            },
            lesions={(k[0], k[1]) for k in store.keys(db, OutcomeKind.LESIONS.value)},
        )


def _patient_known(row: _Row, known: _Known, ctx: _Context) -> str | None:
    patient_id = _text(row, "patient_id", ctx)
    if patient_id is not None and patient_id not in known.patients:
        ctx.error(
            row.line,
            "patient_id",
            f"orphan: patient '{patient_id}' is not in the patients data; "
            "import its patients file first",
        )
        return None
    return patient_id


def _first_injection(known: _Known, patient_id: str | None) -> dt.date | None:
    if patient_id is None or patient_id not in known.patients:
        return None
    return dt.date.fromisoformat(known.patients[patient_id]["first_injection_date"])


def _death(known: _Known, patient_id: str | None) -> dt.date | None:
    if patient_id is None or patient_id not in known.patients:
        return None
    value = known.patients[patient_id].get("death_date")
    return dt.date.fromisoformat(value) if value else None


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def validate_patients(rows: list[_Row], known: _Known, ctx: _Context) -> list[dict[str, Any]]:
    """Records of a patients file (see :data:`LAYOUTS`)."""
    records = []
    for row in rows:
        record = _patient_record(row, ctx)
        if record is not None:
            records.append(record)
    _duplicates(((row, (row.values.get("patient_id"),)) for row in rows), "patient_id", ctx)
    return records


def _patient_record(row: _Row, ctx: _Context) -> dict[str, Any] | None:
    patient_id = _text(row, "patient_id", ctx)
    sex_text = _text(row, "sex", ctx)
    sex = SEX_VALUES.get(sex_text.lower()) if sex_text else None
    if sex_text and sex is None:
        ctx.error(row.line, "sex", f"expected M or F; found '{sex_text}'")
    first = _date(row, "first_injection_date", ctx)
    birth = _date(row, "birth_date", ctx, required=False)
    age = _number(row, "age_at_start", ctx, required=False)
    dates = {
        name: _date(row, name, ctx, required=name == "last_followup_date")
        for name in ("progression_date", "death_date", "last_followup_date")
    }
    age_y = _age(row, ctx, birth, age, first)
    _check_patient_dates(row, ctx, first, birth, dates)
    recist = row.values.get("recist_m3", "").upper() or None
    if recist is not None and recist not in RECIST_VALUES:
        ctx.error(
            row.line,
            "recist_m3",
            f"expected one of {', '.join(RECIST_VALUES)} or empty; found '{recist}'",
        )
    if patient_id is None or sex is None or first is None:
        return None
    return {
        "patient_id": patient_id,
        "sex": sex,
        "birth_date": _iso(birth),
        "age_at_start_y": age_y,
        "first_injection_date": first.isoformat(),
        **{name: _iso(value) for name, value in dates.items()},
        "recist_m3": recist,
    }


def _age(
    row: _Row, ctx: _Context, birth: dt.date | None, age: float | None, first: dt.date | None
) -> float | None:
    if birth is None and age is None:
        ctx.error(
            row.line,
            "birth_date",
            "give birth_date or age_at_start (the eGFR equations need the age)",
        )
        return None
    if age is not None and not 0 < age <= 120:
        ctx.error(
            row.line, "age_at_start", f"expected an age in years between 0 and 120; found {age:g}"
        )
        return None
    if birth is None or first is None:
        return age
    if birth >= first:
        ctx.error(
            row.line,
            "birth_date",
            f"dates out of order: birth_date {birth} is not before first_injection_date {first}",
        )
        return None
    from_birth = (first - birth).days / 365.25
    if age is not None and abs(age - from_birth) > 1.0:
        ctx.warn(
            row.line,
            "age_at_start",
            f"age_at_start {age:g} disagrees with birth_date ({from_birth:.1f} y); "
            "using birth_date",
        )
    return round(from_birth, 2)


def _check_patient_dates(
    row: _Row,
    ctx: _Context,
    first: dt.date | None,
    birth: dt.date | None,
    dates: dict[str, dt.date | None],
) -> None:
    death, progression, followup = (
        dates["death_date"],
        dates["progression_date"],
        dates["last_followup_date"],
    )
    _before(
        ctx, row, ("first_injection_date", first), ("death_date", death), "death before injection"
    )
    _before(
        ctx,
        row,
        ("first_injection_date", first),
        ("progression_date", progression),
        "dates out of order",
    )
    _before(
        ctx,
        row,
        ("first_injection_date", first),
        ("last_followup_date", followup),
        "dates out of order",
    )
    _before(
        ctx,
        row,
        ("progression_date", progression),
        ("death_date", death),
        "dates out of order (progression after death)",
    )
    _before(
        ctx,
        row,
        ("progression_date", progression),
        ("last_followup_date", followup),
        "dates out of order (progression after the last follow-up)",
    )
    _before(
        ctx,
        row,
        ("last_followup_date", followup),
        ("death_date", death),
        "dates out of order (death before the last follow-up)",
    )


def validate_cycles(rows: list[_Row], known: _Known, ctx: _Context) -> list[dict[str, Any]]:
    """Records of a cycles file."""
    records = []
    for row in rows:
        patient_id = _patient_known(row, known, ctx)
        cycle = _integer(row, "cycle", ctx)
        admin = _date(row, "admin_date", ctx)
        activity = _positive(row, "activity_gbq", ctx)
        if activity is not None and activity * 1000.0 > MAX_PLAUSIBLE_ACTIVITY_MBQ:
            ctx.error(
                row.line,
                "activity_gbq",
                f"expected GBq (7.4 per cycle); found {activity:g} — MBq? divide by 1000",
            )
        first, death = _first_injection(known, patient_id), _death(known, patient_id)
        _before(
            ctx,
            row,
            ("first_injection_date", first),
            ("admin_date", admin),
            "dates out of order (cycle before the first injection)",
        )
        if admin is not None and death is not None and death < admin:
            ctx.error(
                row.line,
                "admin_date",
                f"death before injection: the patient died on {death}, "
                f"before this injection on {admin}",
            )
        if cycle == 1 and admin is not None and first is not None and admin != first:
            ctx.warn(
                row.line, "admin_date", f"cycle 1 on {admin} but first_injection_date is {first}"
            )
        if None not in (patient_id, cycle, admin, activity):
            records.append(
                {
                    "patient_id": patient_id,
                    "cycle": cycle,
                    "admin_date": _iso(admin),
                    "activity_gbq": activity,
                }
            )
    _duplicates(
        ((r, (r.values.get("patient_id"), r.values.get("cycle"))) for r in rows),
        "patient_id, cycle",
        ctx,
    )
    _check_cycle_order(records, rows, ctx)
    return records


def _check_cycle_order(records: list[dict[str, Any]], rows: list[_Row], ctx: _Context) -> None:
    lines = {(r.values.get("patient_id"), r.values.get("cycle")): r.line for r in rows}
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_patient.setdefault(record["patient_id"], []).append(record)
    for patient_id, cycles in by_patient.items():
        cycles.sort(key=lambda r: r["cycle"])
        numbers = [r["cycle"] for r in cycles]
        if numbers != list(range(1, len(numbers) + 1)):
            line = lines[(patient_id, str(cycles[-1]["cycle"]))]
            ctx.warn(line, "cycle", f"patient {patient_id}: cycles {numbers} are not numbered 1..n")
        for earlier, later in zip(cycles, cycles[1:]):
            if later["admin_date"] <= earlier["admin_date"]:
                line = lines[(patient_id, str(later["cycle"]))]
                ctx.error(
                    line,
                    "admin_date",
                    f"dates out of order: cycle {later['cycle']} on {later['admin_date']} "
                    f"is not after cycle {earlier['cycle']} on {earlier['admin_date']}",
                )


def validate_lesions(rows: list[_Row], known: _Known, ctx: _Context) -> list[dict[str, Any]]:
    """Records of a lesions file."""
    records = []
    for row in rows:
        record = _lesion_record(row, known, ctx)
        if record is not None:
            records.append(record)
    _duplicates(
        ((r, (r.values.get("patient_id"), r.values.get("lesion_id"))) for r in rows),
        "patient_id, lesion_id",
        ctx,
    )
    return records


def _lesion_record(row: _Row, known: _Known, ctx: _Context) -> dict[str, Any] | None:
    patient_id = _patient_known(row, known, ctx)
    lesion_id = _text(row, "lesion_id", ctx)
    site = (_text(row, "site", ctx) or "").lower().replace(" ", "_")
    if site and site not in KNOWN_SITES:
        ctx.warn(row.line, "site", f"unknown site '{site}'; known: {', '.join(KNOWN_SITES)}")
    if site == "bone":
        ctx.warn(
            row.line,
            "site",
            "bone lesion: the paper excluded bone lesions (response hard to assess)",
        )
    volume = _positive(row, "vol_bl_cm3", ctx)
    if volume is not None and volume < SMALL_LESION_CM3:
        ctx.warn(
            row.line,
            "vol_bl_cm3",
            f"lesion < {SMALL_LESION_CM3:g} cm³ ({volume:g}): recovery coefficient below 0.5, "
            "the paper excluded such lesions",
        )
    baseline = _date(row, "ct_bl_date", ctx)
    volume_m3 = _positive(row, "vol_m3_cm3", ctx, required=False)
    ct_m3 = _date(row, "ct_m3_date", ctx, required=False)
    given = {name: row.values.get(name, "") != "" for name in ("vol_m3_cm3", "ct_m3_date")}
    if given["vol_m3_cm3"] != given["ct_m3_date"]:
        missing = "ct_m3_date" if given["vol_m3_cm3"] else "vol_m3_cm3"
        ctx.error(row.line, missing, "vol_m3_cm3 and ct_m3_date go together; give both or neither")
    _before(ctx, row, ("ct_bl_date", baseline), ("ct_m3_date", ct_m3), "dates out of order")
    first = _first_injection(known, patient_id)
    if baseline is not None and first is not None and baseline > first:
        ctx.warn(
            row.line, "ct_bl_date", f"baseline CT {baseline} is after the first injection {first}"
        )
    if None in (patient_id, lesion_id, volume, baseline):
        return None
    return {
        "patient_id": patient_id,
        "lesion_id": lesion_id,
        "site": site,
        "vol_bl_cm3": volume,
        "ct_bl_date": _iso(baseline),
        "vol_m3_cm3": volume_m3,
        "ct_m3_date": _iso(ct_m3),
    }


def validate_labs(rows: list[_Row], known: _Known, ctx: _Context) -> list[dict[str, Any]]:
    """Records of a labs file (values converted to canonical units)."""
    records = []
    for row in rows:
        record = _lab_record(row, known, ctx)
        if record is not None:
            records.append(record)
    _duplicates(
        (
            (
                r,
                (
                    r.values.get("patient_id"),
                    r.values.get("date"),
                    r.values.get("analyte", "").lower(),
                ),
            )
            for r in rows
        ),
        "patient_id, date, analyte",
        ctx,
    )
    return records


def _analyte(row: _Row, ctx: _Context) -> Analyte | None:
    text = (_text(row, "analyte", ctx) or "").lower()
    try:
        return Analyte(text) if text else None
    except ValueError:
        ctx.error(
            row.line,
            "analyte",
            f"unknown analyte '{text}'; expected one of {', '.join(a.value for a in Analyte)}",
        )
        return None


def _unit_factor(row: _Row, analyte: Analyte, ctx: _Context) -> float | None:
    unit = _text(row, "unit", ctx)
    if unit is None:
        return None
    key = _unit_key(unit)
    if key in ("%", "percent") and analyte in (
        Analyte.WBC,
        Analyte.LYMPH,
        Analyte.NEUT,
        Analyte.PLT,
    ):
        ctx.error(
            row.line,
            "unit",
            f"{analyte.value} given in % instead of an absolute count; give the count in 10^9/L "
            "(e.g. lymphocytes % × leukocytes / 100)",
        )
        return None
    factor = UNIT_FACTORS[analyte].get(key)
    if factor is None:
        ctx.error(
            row.line,
            "unit",
            f"unknown unit '{unit}' for {analyte.value}; "
            f"expected one of {', '.join(sorted(UNIT_FACTORS[analyte]))}",
        )
    return factor


def _lab_record(row: _Row, known: _Known, ctx: _Context) -> dict[str, Any] | None:
    patient_id = _patient_known(row, known, ctx)
    date = _date(row, "date", ctx)
    analyte = _analyte(row, ctx)
    value = _number(row, "value", ctx)
    lln = _number(row, "lln", ctx, required=False)
    uln = _number(row, "uln", ctx, required=False)
    factor = _unit_factor(row, analyte, ctx) if analyte is not None else None
    if analyte is None or factor is None or value is None:
        return None
    canonical = value * factor
    low, high = PLAUSIBLE[analyte]
    if not low <= canonical <= high:
        ctx.error(
            row.line,
            "value",
            f"{analyte.value} {value:g} {row.values['unit']} = "
            f"{canonical:g} {CANONICAL_UNITS[analyte]} is outside the plausible "
            f"{low:g}–{high:g}; check the unit",
        )
        return None
    if lln is not None and uln is not None and lln > uln:
        ctx.error(row.line, "lln", f"lln {lln:g} is above uln {uln:g}")
    if lln is None and analyte in GRADED_WITH_LLN:
        ctx.warn(
            row.line,
            "lln",
            f"LLN missing: CTCAE grade 1 of {analyte.value} cannot be decided for this value",
        )
    if patient_id is None or date is None:
        return None
    return {
        "patient_id": patient_id,
        "date": date.isoformat(),
        "analyte": analyte.value,
        "value": canonical,
        "unit": CANONICAL_UNITS[analyte],
        "lln": lln * factor if lln is not None else None,
        "uln": uln * factor if uln is not None else None,
        "given_value": value,
        "given_unit": row.values["unit"],
    }


def validate_doses(rows: list[_Row], known: _Known, ctx: _Context) -> list[dict[str, Any]]:
    """Records of a doses file."""
    records = []
    for row in rows:
        record = _dose_record(row, known, ctx)
        if record is not None:
            records.append(record)
    _duplicates(
        (
            (r, (r.values.get("patient_id"), r.values.get("cycle"), r.values.get("voi")))
            for r in rows
        ),
        "patient_id, cycle, voi",
        ctx,
    )
    return records


def _dose_record(row: _Row, known: _Known, ctx: _Context) -> dict[str, Any] | None:
    patient_id = _patient_known(row, known, ctx)
    cycle = _integer(row, "cycle", ctx)
    voi = _text(row, "voi", ctx)
    kind_text = (_text(row, "kind", ctx) or "").lower()
    dose = _number(row, "ad_gy", ctx)
    if dose is not None and dose < 0:
        ctx.error(row.line, "ad_gy", f"expected an absorbed dose ≥ 0 Gy; found {dose:g}")
    kind = {k.value: k for k in DoseKind}.get(kind_text)
    if kind_text and kind is None:
        ctx.error(row.line, "kind", f"expected organ or lesion; found '{kind_text}'")
    if kind is DoseKind.ORGAN and voi is not None:
        _check_organ_name(row, voi, ctx)
    if (
        kind is DoseKind.LESION
        and patient_id is not None
        and voi is not None
        and (patient_id, voi) not in known.lesions
    ):
        ctx.error(
            row.line,
            "voi",
            f"orphan: lesion '{voi}' of patient {patient_id} is not in the lesions data; "
            "import the lesions file first",
        )
    if patient_id is not None and cycle is not None and (patient_id, cycle) not in known.cycles:
        ctx.error(
            row.line,
            "cycle",
            f"orphan: cycle {cycle} of patient {patient_id} is not in the cycles data; "
            "import the cycles file first",
        )
    if None in (patient_id, cycle, voi, kind, dose):
        return None
    return {
        "patient_id": patient_id,
        "cycle": cycle,
        "voi": voi,
        "kind": kind.value if kind else None,
        "ad_gy": dose,
    }


def _check_organ_name(row: _Row, voi: str, ctx: _Context) -> None:
    """An organ row must name an organ or marrow VOI as the engine classifies ROI names."""
    voi_class = classify_roi(voi)
    if voi_class is None:
        ctx.error(row.line, "voi", f"unknown organ '{voi}'; expected {ORGAN_NAMES_HELP}")
    elif voi_class.kind is VoiKind.LESION:
        ctx.error(
            row.line,
            "voi",
            f"'{voi}' is a lesion name (as the engine reads ROI names); give kind lesion and "
            "list it in the lesions file",
        )


VALIDATORS: dict[OutcomeKind, Callable[[list[_Row], _Known, _Context], list[dict[str, Any]]]] = {
    OutcomeKind.PATIENTS: validate_patients,
    OutcomeKind.CYCLES: validate_cycles,
    OutcomeKind.LESIONS: validate_lesions,
    OutcomeKind.LABS: validate_labs,
    OutcomeKind.DOSES: validate_doses,
}


# --- import ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parsed:
    path: Path
    content: bytes
    kind: OutcomeKind | None
    header: list[str]
    rows: list[_Row]
    ctx: _Context


def _parse(path: Path) -> _Parsed:
    ctx = _Context(path.name)
    try:
        content = path.read_bytes()
    except OSError as error:
        ctx.error(0, "", f"cannot read the file: {error}")
        return _Parsed(path, b"", None, [], [], ctx)
    try:
        header, rows = read_csv_rows(content, ctx)
        kind = recognise_kind(header, ctx)
    except _Rejected:
        return _Parsed(path, content, None, [], [], ctx)
    return _Parsed(path, content, kind, header, rows, ctx)


def import_outcome_files(
    db: Database, paths: Iterable[Path | str], now: dt.datetime | None = None
) -> ImportReport:
    """Validate and import outcome CSV files; see the module docstring.

    Parameters
    ----------
    db
        Database with the :mod:`theranode.service.store.outcomes` tables.
    paths
        CSV files of any kinds, in any order.
    now
        Import time to record (default: the current UTC time).

    Returns
    -------
    ImportReport
        Per file: kind, status, row count, errors and warnings.
    """
    parsed = [_parse(Path(p)) for p in paths]
    order = list(OutcomeKind)
    parsed.sort(key=lambda p: order.index(p.kind) if p.kind else -1)
    stamp = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    return ImportReport(files=tuple(_import_one(db, item, stamp) for item in parsed))


def _import_one(db: Database, item: _Parsed, stamp: str) -> FileReport:
    ctx = item.ctx
    sha256 = hashlib.sha256(item.content).hexdigest()
    if item.kind is not None and not ctx.failed and store.file_imported(db, sha256):
        logger.info("%s already imported (%s); nothing to do", item.path.name, sha256[:12])
        return FileReport(str(item.path), item.kind, FileStatus.UNCHANGED, len(item.rows))
    records: list[dict[str, Any]] = []
    if item.kind is not None and not ctx.failed:
        records = VALIDATORS[item.kind](item.rows, _Known.load(db), ctx)
        if not item.rows:
            ctx.warn(1, "", "the file has a header but no data rows")
    errors = tuple(i for i in ctx.issues if i.severity is Severity.ERROR)
    warnings = tuple(i for i in ctx.issues if i.severity is Severity.WARNING)
    if errors or item.kind is None:
        logger.warning("%s rejected: %d error(s)", item.path.name, len(errors))
        return FileReport(
            str(item.path), item.kind, FileStatus.REJECTED, len(item.rows), errors, warnings
        )
    store.store_file(
        db,
        sha256=sha256,
        file_name=item.path.name,
        kind=item.kind.value,
        imported_at=stamp,
        records=records,
        warnings=((w.line, w.column, str(w)) for w in warnings),
    )
    return FileReport(str(item.path), item.kind, FileStatus.IMPORTED, len(records), (), warnings)
