"""The input record of the cohort analyses and the tables derived from it.

:class:`CohortData` holds five long-format data frames whose columns are
fixed here (``*_COLUMNS``). Dates are ``datetime64`` (``NaT`` when
missing), laboratory values are in the canonical units of
:data:`CANONICAL_UNITS`, absorbed doses in Gy.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd

from theranode.dosimetry.cohort.results import LesionIndex
from theranode.dosimetry.errors import InsufficientDataError
from theranode.dosimetry.results import Organ
from theranode.dosimetry.voi_names import organ_of

logger = logging.getLogger(__name__)

PATIENT_COLUMNS = (
    "patient_id",
    "sex",
    "age_at_start_y",
    "first_injection_date",
    "progression_date",
    "death_date",
    "last_followup_date",
    "recist_m3",
)
CYCLE_COLUMNS = ("patient_id", "cycle", "admin_date", "activity_gbq")
LESION_COLUMNS = (
    "patient_id",
    "lesion_id",
    "site",
    "vol_bl_cm3",
    "ct_bl_date",
    "vol_m3_cm3",
    "ct_m3_date",
)
LAB_COLUMNS = ("patient_id", "date", "analyte", "value", "lln", "uln")
DOSE_COLUMNS = ("patient_id", "cycle", "voi", "kind", "ad_gy")

_DATE_COLUMNS = {
    "patients": ("first_injection_date", "progression_date", "death_date", "last_followup_date"),
    "cycles": ("admin_date",),
    "lesions": ("ct_bl_date", "ct_m3_date"),
    "labs": ("date",),
    "doses": (),
}


class Analyte(str, Enum):
    """Laboratory analytes of the outcome data."""

    HGB = "hgb"
    WBC = "wbc"
    LYMPH = "lymph"
    NEUT = "neut"
    PLT = "plt"
    CREAT = "creat"
    EGFR = "egfr"


#: Unit every value of an analyte is stored and analysed in.
CANONICAL_UNITS: dict[Analyte, str] = {
    Analyte.HGB: "g/dL",
    Analyte.WBC: "10^9/L",
    Analyte.LYMPH: "10^9/L",
    Analyte.NEUT: "10^9/L",
    Analyte.PLT: "10^9/L",
    Analyte.CREAT: "mg/dL",
    Analyte.EGFR: "mL/min/1.73m2",
}


class DoseKind(str, Enum):
    """What a dose row is about."""

    ORGAN = "organ"
    LESION = "lesion"


@dataclass(frozen=True)
class DoseRow:
    """Absorbed dose of one VOI in one cycle of one patient.

    ``voi`` is the RTSTRUCT ROI name (lesions) or an organ name accepted by
    :func:`theranode.dosimetry.voi_names.organ_of` (organs and marrow).
    """

    patient_id: str
    cycle: int
    voi: str
    kind: DoseKind
    ad_gy: float


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in columns})


@dataclass(frozen=True)
class CohortData:
    """Outcome data and absorbed doses of a cohort (long format).

    Build it with :meth:`from_frames`, which checks the columns and
    normalises the dtypes; the frames must not be modified afterwards.
    """

    patients: pd.DataFrame
    cycles: pd.DataFrame
    lesions: pd.DataFrame
    labs: pd.DataFrame
    doses: pd.DataFrame

    @classmethod
    def from_frames(
        cls,
        patients: pd.DataFrame | None = None,
        cycles: pd.DataFrame | None = None,
        lesions: pd.DataFrame | None = None,
        labs: pd.DataFrame | None = None,
        doses: pd.DataFrame | None = None,
    ) -> CohortData:
        """Check columns and convert dates, ids and numbers to canonical dtypes.

        Raises
        ------
        InsufficientDataError
            When a frame lacks one of its columns.
        """
        frames = {
            "patients": (patients, PATIENT_COLUMNS),
            "cycles": (cycles, CYCLE_COLUMNS),
            "lesions": (lesions, LESION_COLUMNS),
            "labs": (labs, LAB_COLUMNS),
            "doses": (doses, DOSE_COLUMNS),
        }
        built = {
            name: _normalise(name, frame, columns) for name, (frame, columns) in frames.items()
        }
        return cls(**built)

    def content_hash(self) -> str:
        """SHA-256 of the data in a canonical CSV form (order-independent)."""
        digest = hashlib.sha256()
        for name in ("patients", "cycles", "lesions", "labs", "doses"):
            frame: pd.DataFrame = getattr(self, name)
            ordered = frame.sort_values(list(frame.columns)).reset_index(drop=True)
            digest.update(name.encode())
            digest.update(ordered.to_csv(index=False, float_format="%.10g").encode())
        return digest.hexdigest()


def _normalise(name: str, frame: pd.DataFrame | None, columns: tuple[str, ...]) -> pd.DataFrame:
    if frame is None:
        frame = _empty(columns)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise InsufficientDataError(
            f"The {name} table needs the columns {', '.join(columns)}; "
            f"{', '.join(missing)} are missing. Build it with these column names."
        )
    out = frame.loc[:, list(columns)].copy()
    out["patient_id"] = out["patient_id"].astype(str)
    for column in _DATE_COLUMNS[name]:
        out[column] = pd.to_datetime(out[column])
    numeric = {
        "patients": ("age_at_start_y",),
        "cycles": ("cycle", "activity_gbq"),
        "lesions": ("vol_bl_cm3", "vol_m3_cm3"),
        "labs": ("value", "lln", "uln"),
        "doses": ("cycle", "ad_gy"),
    }[name]
    for column in numeric:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    if "cycle" in out.columns:
        out["cycle"] = out["cycle"].astype("Int64")
    return out.reset_index(drop=True)


# --- derived tables ----------------------------------------------------------


def lesion_doses(data: CohortData) -> pd.DataFrame:
    """Lesion dose rows: ``patient_id, lesion_id, cycle, ad_gy``."""
    doses = data.doses
    rows = doses.loc[
        doses["kind"] == DoseKind.LESION.value, ["patient_id", "voi", "cycle", "ad_gy"]
    ]
    return rows.rename(columns={"voi": "lesion_id"}).reset_index(drop=True)


def lesion_totals(data: CohortData) -> pd.DataFrame:
    """Per lesion: total AD over the cycles, number of cycles, ΔV% (NaN when unknown).

    Columns ``patient_id, lesion_id, total_ad_gy, n_cycles, vol_bl_cm3,
    delta_v_pct``. ΔV% = 100 (V_M3 − V_BL) / V_BL (Hebert 2024, eq. 2).
    """
    per_cycle = lesion_doses(data)
    totals = per_cycle.groupby(["patient_id", "lesion_id"], as_index=False).agg(
        total_ad_gy=("ad_gy", "sum"), n_cycles=("cycle", "nunique")
    )
    lesions = data.lesions[["patient_id", "lesion_id", "vol_bl_cm3", "vol_m3_cm3"]]
    merged = totals.merge(lesions, on=["patient_id", "lesion_id"], how="left")
    merged["delta_v_pct"] = (
        100.0 * (merged["vol_m3_cm3"] - merged["vol_bl_cm3"]) / merged["vol_bl_cm3"]
    )
    return merged.drop(columns=["vol_m3_cm3"])


def patient_lesion_indices(data: CohortData) -> pd.DataFrame:
    """Per patient: mean, min and max of the lesions' total AD (Table 6)."""
    totals = lesion_totals(data)
    grouped = totals.groupby("patient_id")["total_ad_gy"]
    frame = pd.DataFrame(
        {
            LesionIndex.MEAN.value: grouped.mean(),
            LesionIndex.MIN.value: grouped.min(),
            LesionIndex.MAX.value: grouped.max(),
            "n_lesions": grouped.size(),
        }
    )
    return frame.reset_index()


def organ_doses(data: CohortData) -> pd.DataFrame:
    """Organ dose rows with canonical organ names: ``patient_id, organ, cycle, ad_gy``.

    When a patient's cycle has left and right kidney doses but no
    ``kidneys`` row, the kidneys dose is their unweighted mean (volumes are
    not part of the dose rows).
    """
    doses = data.doses.loc[data.doses["kind"] == DoseKind.ORGAN.value].copy()
    doses["organ"] = [_organ_value(name) for name in doses["voi"]]
    doses = doses.dropna(subset=["organ"])
    frame = doses[["patient_id", "organ", "cycle", "ad_gy"]]
    return _add_kidneys_from_sides(frame)


def _organ_value(name: str) -> str | None:
    organ = organ_of(str(name))
    return organ.value if organ is not None else None


def _add_kidneys_from_sides(frame: pd.DataFrame) -> pd.DataFrame:
    sides = frame[frame["organ"].isin([Organ.KIDNEY_LEFT.value, Organ.KIDNEY_RIGHT.value])]
    if sides.empty:
        return frame.reset_index(drop=True)
    have = frame.loc[frame["organ"] == Organ.KIDNEYS.value, ["patient_id", "cycle"]]
    mean = sides.groupby(["patient_id", "cycle"], as_index=False)["ad_gy"].mean()
    mean = mean.merge(have, on=["patient_id", "cycle"], how="left", indicator=True)
    mean = mean.loc[mean["_merge"] == "left_only"].drop(columns="_merge")
    mean["organ"] = Organ.KIDNEYS.value
    return pd.concat([frame, mean[frame.columns]], ignore_index=True)


def cumulative_organ_doses(data: CohortData) -> pd.DataFrame:
    """Per patient, organ and cycle: the cumulative AD through that cycle."""
    frame = organ_doses(data).sort_values(["patient_id", "organ", "cycle"]).copy()
    frame["cum_ad_gy"] = frame.groupby(["patient_id", "organ"])["ad_gy"].cumsum()
    return frame.reset_index(drop=True)


def median_split(values: pd.Series) -> tuple[float, np.ndarray]:
    """The cohort median of ``values`` and the indicator ``value > median``.

    Raises
    ------
    InsufficientDataError
        When fewer than two distinct values exist (no split possible).
    """
    clean = values.dropna()
    if clean.nunique() < 2:
        raise InsufficientDataError(
            f"A median split needs at least two distinct values; found {clean.nunique()}."
        )
    cut = float(np.median(clean.to_numpy()))
    return cut, (clean.to_numpy() > cut)
