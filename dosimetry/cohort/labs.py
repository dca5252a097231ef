"""Laboratory analyses: Table 3 (worst CTCAE grades) and Table 4 (changes).

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Tables 3 and 4 and "Collected Data
and Studied Parameters". CTCAE v4.03 (NCI 2010).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from theranode.dosimetry.cohort.ctcae import (
    BANDS,
    UNDETERMINED,
    EgfrEquation,
    Sex,
    ctcae_grades,
    egfr_ckd_epi,
)
from theranode.dosimetry.cohort.data import CANONICAL_UNITS, Analyte, CohortData
from theranode.dosimetry.cohort.results import (
    Interval,
    LabChange,
    LabChangeRow,
    NotEstimable,
    TestResult,
    ToxicityRow,
    ToxicityTable,
)

logger = logging.getLogger(__name__)

DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class LabWindows:
    """Time windows (days) that select laboratory values.

    Baseline: the last value in [first injection − ``baseline_days``, first
    injection]. Follow-up: the value nearest to last injection + target
    within ± half-width. During therapy: after the first injection up to the
    last injection + ``therapy_tail_days``.
    """

    baseline_days: int = 60
    month3_target_days: int = 91
    month3_halfwidth_days: int = 30
    month12_target_days: int = 365
    month12_halfwidth_days: int = 60
    therapy_tail_days: int = 56


def add_computed_egfr(
    data: CohortData, equation: EgfrEquation = EgfrEquation.CKD_EPI_2009
) -> pd.DataFrame:
    """Lab rows plus eGFR computed from creatinine where no eGFR was given that day.

    Age at the sample = age at first injection + elapsed years. Computed
    rows have ``lln`` NaN (use the cohort default LLN when grading).
    """
    labs = data.labs
    creat = labs.loc[labs["analyte"] == Analyte.CREAT.value]
    given = labs.loc[labs["analyte"] == Analyte.EGFR.value, ["patient_id", "date"]]
    if creat.empty:
        return labs
    merged = creat.merge(given, on=["patient_id", "date"], how="left", indicator=True)
    merged = merged.loc[merged["_merge"] == "left_only"].drop(columns="_merge")
    patients = data.patients[["patient_id", "sex", "age_at_start_y", "first_injection_date"]]
    merged = merged.merge(patients, on="patient_id", how="inner")
    elapsed_y = (merged["date"] - merged["first_injection_date"]).dt.days / DAYS_PER_YEAR
    ages = merged["age_at_start_y"] + elapsed_y
    values = [
        egfr_ckd_epi(float(scr), float(age), Sex(str(sex)), equation)
        for scr, age, sex in zip(merged["value"], ages, merged["sex"], strict=True)
    ]
    computed = pd.DataFrame(
        {
            "patient_id": merged["patient_id"],
            "date": merged["date"],
            "analyte": Analyte.EGFR.value,
            "value": values,
            "lln": np.nan,
            "uln": np.nan,
        }
    )
    return pd.concat([labs, computed], ignore_index=True)


def _treatment_span(data: CohortData) -> pd.DataFrame:
    """Per patient: first and last injection dates."""
    first = data.patients.set_index("patient_id")["first_injection_date"]
    last = data.cycles.groupby("patient_id")["admin_date"].max()
    span = pd.DataFrame({"first_injection": first})
    span["last_injection"] = last.reindex(span.index)
    span["last_injection"] = span["last_injection"].fillna(span["first_injection"])
    return span.reset_index()


def toxicity_table(
    data: CohortData,
    labs: pd.DataFrame,
    windows: LabWindows = LabWindows(),
    egfr_lln: float = 90.0,
) -> ToxicityTable | NotEstimable:
    """Table 3: per term, patients with at least one value of grade ≥ k during therapy.

    Parameters
    ----------
    data
        The cohort (for injection dates).
    labs
        Laboratory rows, e.g. from :func:`add_computed_egfr`.
    windows
        Which values count as "during therapy".
    egfr_lln
        LLN used for eGFR rows without one (mL/min/1.73 m²).
    """
    in_window = _during_therapy(data, labs, windows)
    if in_window.empty:
        return NotEstimable("No laboratory value lies between the first and last injection.")
    rows = tuple(
        _toxicity_row(analyte, in_window, egfr_lln) for analyte in BANDS if _has(in_window, analyte)
    )
    if not rows:
        return NotEstimable(
            "No gradable analyte (hgb, wbc, lymph, neut, plt, eGFR) during therapy."
        )
    window = f"after the first injection up to the last injection + {windows.therapy_tail_days} d"
    return ToxicityTable(rows=rows, window=window)


def _has(labs: pd.DataFrame, analyte: Analyte) -> bool:
    return bool((labs["analyte"] == analyte.value).any())


def _during_therapy(data: CohortData, labs: pd.DataFrame, windows: LabWindows) -> pd.DataFrame:
    merged = labs.merge(_treatment_span(data), on="patient_id", how="inner")
    end = merged["last_injection"] + pd.Timedelta(days=windows.therapy_tail_days)
    keep = (merged["date"] > merged["first_injection"]) & (merged["date"] <= end)
    return merged.loc[keep]


def _toxicity_row(analyte: Analyte, labs: pd.DataFrame, egfr_lln: float) -> ToxicityRow:
    rows = labs.loc[labs["analyte"] == analyte.value].copy()
    llns = rows["lln"].to_numpy(dtype=float)
    if analyte is Analyte.EGFR:
        llns = np.where(np.isnan(llns), egfr_lln, llns)
    rows["grade"] = ctcae_grades(analyte, rows["value"].to_numpy(dtype=float), llns)
    worst = rows.groupby("patient_id")["grade"].max()
    any_undetermined = rows.assign(u=rows["grade"] == UNDETERMINED).groupby("patient_id")["u"].any()
    undetermined = (worst <= 0) & any_undetermined
    at_least = tuple(int((worst >= k).sum()) for k in range(1, 5))
    return ToxicityRow(
        term=BANDS[analyte].term,
        analyte=analyte.value,
        n_patients=int(worst.size),
        at_least=(at_least[0], at_least[1], at_least[2], at_least[3]),
        grade1_undetermined=int(undetermined.sum()),
    )


# --- Table 4 -----------------------------------------------------------------

TABLE4_ANALYTES = (
    Analyte.EGFR,
    Analyte.HGB,
    Analyte.WBC,
    Analyte.LYMPH,
    Analyte.NEUT,
    Analyte.PLT,
)


def baseline_values(data: CohortData, labs: pd.DataFrame, windows: LabWindows) -> pd.DataFrame:
    """Per patient and analyte: the last value within the baseline window."""
    merged = labs.merge(_treatment_span(data), on="patient_id", how="inner")
    start = merged["first_injection"] - pd.Timedelta(days=windows.baseline_days)
    keep = (merged["date"] >= start) & (merged["date"] <= merged["first_injection"])
    chosen = merged.loc[keep].sort_values("date").groupby(["patient_id", "analyte"]).tail(1)
    return chosen[["patient_id", "analyte", "value"]].reset_index(drop=True)


def followup_values(
    data: CohortData, labs: pd.DataFrame, target_days: int, halfwidth_days: int
) -> pd.DataFrame:
    """Per patient and analyte: the value nearest to last injection + ``target_days``."""
    merged = labs.merge(_treatment_span(data), on="patient_id", how="inner")
    offset = (merged["date"] - merged["last_injection"]).dt.days - target_days
    merged = merged.assign(distance=offset.abs())
    chosen = merged.loc[merged["distance"] <= halfwidth_days]
    chosen = chosen.sort_values(["distance", "date"]).groupby(["patient_id", "analyte"]).head(1)
    return chosen[["patient_id", "analyte", "value"]].reset_index(drop=True)


def lab_changes(
    data: CohortData, labs: pd.DataFrame, windows: LabWindows = LabWindows()
) -> tuple[LabChangeRow, ...]:
    """Table 4: baseline vs month 3 and month 12 after the last injection."""
    baseline = baseline_values(data, labs, windows)
    followups = {
        "month 3": followup_values(
            data, labs, windows.month3_target_days, windows.month3_halfwidth_days
        ),
        "month 12": followup_values(
            data, labs, windows.month12_target_days, windows.month12_halfwidth_days
        ),
    }
    rows = []
    for timepoint, followup in followups.items():
        paired = baseline.merge(followup, on=["patient_id", "analyte"], suffixes=("_bl", "_fu"))
        for analyte in TABLE4_ANALYTES:
            pair = paired.loc[paired["analyte"] == analyte.value]
            result = _lab_change(analyte, timepoint, pair["value_bl"], pair["value_fu"])
            rows.append(LabChangeRow(analyte=analyte.value, timepoint=timepoint, result=result))
    return tuple(rows)


def _lab_change(
    analyte: Analyte, timepoint: str, before: pd.Series, after: pd.Series
) -> LabChange | NotEstimable:
    n = len(before)
    if n < 3:
        return NotEstimable(
            f"{analyte.value} at {timepoint}: {n} patient(s) with both a baseline and a "
            "follow-up value; a t-test needs at least 3."
        )
    difference = after.to_numpy(dtype=float) - before.to_numpy(dtype=float)
    if np.std(difference) == 0 or np.std(before) == 0 and np.std(after) == 0:
        return NotEstimable(f"{analyte.value} at {timepoint}: the values do not vary.")
    paired = stats.ttest_rel(after, before)
    unpaired = stats.ttest_ind(after, before, equal_var=True)
    half = stats.t.ppf(0.975, n - 1) * np.std(difference, ddof=1) / np.sqrt(n)
    mean_difference = float(np.mean(difference))
    return LabChange(
        analyte=analyte.value,
        unit=CANONICAL_UNITS[analyte],
        timepoint=timepoint,
        n=n,
        baseline_mean=float(np.mean(before)),
        baseline_sd=float(np.std(before, ddof=1)),
        followup_mean=float(np.mean(after)),
        followup_sd=float(np.std(after, ddof=1)),
        mean_difference=mean_difference,
        difference_ci=Interval(mean_difference - half, mean_difference + half),
        paired=TestResult(
            "Student paired t-test", float(paired.statistic), float(paired.pvalue), n
        ),
        unpaired=TestResult(
            "Student two-sample t-test, pooled variance (paper-compatible)",
            float(unpaired.statistic),
            float(unpaired.pvalue),
            n,
        ),
    )
