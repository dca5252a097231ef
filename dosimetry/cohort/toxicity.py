"""Fig 5: organ cumulative absorbed dose against blood count change.

One observation per patient and cycle k: the organ's cumulative AD through
cycle k and the % change from baseline of the laboratory value measured
after cycle k (the value nearest to day 15 after the injection, before the
next injection). Spearman's ρ (observations treated as independent, as in
the paper) and a LOESS curve with its pointwise 95 % band (R ``loess``
defaults, as ggplot's ``geom_smooth`` draws them).

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Fig 5, Supplemental Figs 2–4.
Cleveland WS, Grosse E, Shyu WM. Local regression models. Statistical Models
in S, 1992, chapter 8.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy import stats

from theranode.dosimetry.cohort.data import Analyte, CohortData, cumulative_organ_doses
from theranode.dosimetry.cohort.labs import LabWindows, baseline_values
from theranode.dosimetry.cohort.results import (
    CorrelationRow,
    CurvePoint,
    DoseToxicityCorrelation,
    NotEstimable,
)
from theranode.dosimetry.cohort.smoothing import loess
from theranode.dosimetry.results import Organ

logger = logging.getLogger(__name__)

#: Organ–analyte pairs of Fig 5, Supplemental Fig 4 (spleen) and 3 (kidneys–GFR).
PAIRS: tuple[tuple[Organ, Analyte], ...] = (
    *((Organ.BONE_MARROW, a) for a in (Analyte.NEUT, Analyte.WBC, Analyte.LYMPH, Analyte.PLT)),
    *((Organ.SPLEEN, a) for a in (Analyte.NEUT, Analyte.WBC, Analyte.LYMPH, Analyte.PLT)),
    (Organ.KIDNEYS, Analyte.EGFR),
)
MIN_OBSERVATIONS = 5
LOESS_SPAN = 0.75
LOESS_DEGREE = 2
GRID_POINTS = 40
Z_95 = float(stats.norm.ppf(0.975))
NADIR_TARGET_DAYS = 15
CYCLE_WINDOW_DAYS = 56


def post_cycle_values(data: CohortData, labs: pd.DataFrame) -> pd.DataFrame:
    """Per patient, cycle and analyte: the value nearest to injection + 15 d.

    Only values after the injection and before the next one (or within 56 d
    after the last) qualify.
    """
    cycles = data.cycles.sort_values(["patient_id", "cycle"]).copy()
    cycles["next_admin"] = cycles.groupby("patient_id")["admin_date"].shift(-1)
    cap = cycles["admin_date"] + pd.Timedelta(days=CYCLE_WINDOW_DAYS)
    cycles["end"] = cycles["next_admin"].fillna(cap).clip(upper=cap)
    merged = labs.merge(cycles[["patient_id", "cycle", "admin_date", "end"]], on="patient_id")
    keep = (merged["date"] > merged["admin_date"]) & (merged["date"] < merged["end"])
    merged = merged.loc[keep]
    distance = ((merged["date"] - merged["admin_date"]).dt.days - NADIR_TARGET_DAYS).abs()
    merged = merged.assign(distance=distance).sort_values(["distance", "date"])
    chosen = merged.groupby(["patient_id", "cycle", "analyte"]).head(1)
    return chosen[["patient_id", "cycle", "analyte", "value"]].reset_index(drop=True)


def correlation_table(
    data: CohortData, labs: pd.DataFrame, windows: LabWindows = LabWindows()
) -> pd.DataFrame:
    """Observations for Fig 5: ``patient_id, cycle, organ, cum_ad_gy, analyte, change_pct``."""
    baseline = baseline_values(data, labs, windows).rename(columns={"value": "baseline"})
    after = post_cycle_values(data, labs).merge(baseline, on=["patient_id", "analyte"])
    after = after.loc[after["baseline"] > 0]
    after["change_pct"] = 100.0 * (after["value"] - after["baseline"]) / after["baseline"]
    doses = cumulative_organ_doses(data)[["patient_id", "organ", "cycle", "cum_ad_gy"]]
    return doses.merge(
        after[["patient_id", "cycle", "analyte", "change_pct"]], on=["patient_id", "cycle"]
    )


def dose_toxicity_correlations(
    data: CohortData, labs: pd.DataFrame, windows: LabWindows = LabWindows(), seed: int = 0
) -> tuple[CorrelationRow, ...]:
    """Spearman ρ and LOESS for every pair of :data:`PAIRS`."""
    table = correlation_table(data, labs, windows)
    rows = []
    for organ, analyte in PAIRS:
        pair = table.loc[(table["organ"] == organ.value) & (table["analyte"] == analyte.value)]
        result = _correlation(organ, analyte, pair, seed)
        rows.append(CorrelationRow(organ=organ.value, analyte=analyte.value, result=result))
    return tuple(rows)


def _correlation(
    organ: Organ, analyte: Analyte, pair: pd.DataFrame, seed: int
) -> DoseToxicityCorrelation | NotEstimable:
    x = pair["cum_ad_gy"].to_numpy(dtype=float)
    y = pair["change_pct"].to_numpy(dtype=float)
    if x.size < MIN_OBSERVATIONS:
        return NotEstimable(
            f"{organ.value} vs {analyte.value}: {x.size} observation(s) with a cumulative dose "
            f"and a post-cycle value; need ≥ {MIN_OBSERVATIONS}."
        )
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return NotEstimable(f"{organ.value} vs {analyte.value}: constant dose or change.")
    rho, p_value = stats.spearmanr(x, y)
    return DoseToxicityCorrelation(
        organ=organ.value,
        analyte=analyte.value,
        n_observations=int(x.size),
        n_patients=int(pair["patient_id"].nunique()),
        rho=float(rho),
        p_value=float(p_value),
        loess=loess_band(x, y, seed),
    )


def loess_band(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.float64], seed: int = 0
) -> tuple[CurvePoint, ...]:
    """LOESS curve (span 0.75, degree 2) on a grid with its 95 % pointwise band."""
    grid = np.linspace(x.min(), x.max(), GRID_POINTS)
    fit = loess(x, y, grid, span=LOESS_SPAN, degree=LOESS_DEGREE, seed=seed)
    half = Z_95 * fit.se
    return tuple(
        CurvePoint(float(g), float(f), _finite(f - h), _finite(f + h))
        for g, f, h in zip(grid, fit.fitted, half, strict=True)
        if np.isfinite(f)
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
