"""Lesion absorbed dose across cycles ("The ADs by lesions decreased significantly").

Primary analysis: linear mixed model of ln(AD) on the cycle number with a
random intercept per patient and a variance component for lesions nested in
patients (REML). Sensitivity: Friedman's test and Page's L trend test on
lesions with a dose in every cycle.

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Results and Fig 1.
Page EB. Ordered hypotheses for multiple treatments: a significance test for
linear ranks. J Am Stat Assoc 1963;58:216–230.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

from theranode.dosimetry.cohort.data import CohortData, lesion_doses
from theranode.dosimetry.cohort.mixed_models import fit_mixed
from theranode.dosimetry.cohort.results import CycleTrend, Interval, NotEstimable, TestResult

logger = logging.getLogger(__name__)

MIN_LESIONS = 3
MIN_PATIENTS = 5


def cycle_trend(data: CohortData) -> CycleTrend | NotEstimable:
    """Fit ln(AD) ~ cycle with patient and lesion-within-patient random intercepts."""
    doses = lesion_doses(data)
    doses = doses.loc[doses["ad_gy"] > 0].copy()
    if doses["cycle"].nunique() < 2:
        return NotEstimable("Lesion doses exist for fewer than two cycles.")
    if doses.groupby(["patient_id", "lesion_id"]).ngroups < MIN_LESIONS:
        return NotEstimable(f"Fewer than {MIN_LESIONS} lesions with doses.")
    if doses["patient_id"].nunique() < MIN_PATIENTS:
        return NotEstimable(
            f"The mixed model needs lesion doses of ≥ {MIN_PATIENTS} patients (a patient random "
            f"effect); found {doses['patient_id'].nunique()}."
        )
    doses["log_ad"] = np.log(doses["ad_gy"].astype(float))
    doses["cycle_number"] = doses["cycle"].astype(float)
    fit = _fit_nested(doses)
    if isinstance(fit, NotEstimable):
        return fit
    slope, low, high, p_value, converged = fit
    medians = doses.groupby("cycle")["ad_gy"].median()
    friedman, page = rank_tests(doses)
    return CycleTrend(
        model="MixedLM ln(AD) ~ cycle + (1|patient) + (1|patient:lesion), REML",
        slope_log_per_cycle=slope,
        slope_ci=Interval(low, high),
        p_value=p_value,
        ratio_per_cycle=float(np.exp(slope)),
        ratio_ci=Interval(float(np.exp(low)), float(np.exp(high))),
        n_observations=int(len(doses)),
        n_lesions=int(doses.groupby(["patient_id", "lesion_id"]).ngroups),
        n_patients=int(doses["patient_id"].nunique()),
        converged=converged,
        median_by_cycle_gy={int(c): float(v) for c, v in medians.items()},
        friedman=friedman,
        page=page,
    )


def _fit_nested(doses: pd.DataFrame) -> tuple[float, float, float, float, bool] | NotEstimable:
    model = smf.mixedlm(
        "log_ad ~ cycle_number",
        doses,
        groups=doses["patient_id"],
        re_formula="1",
        vc_formula={"lesion": "0 + C(lesion_id)"},
    )
    result = fit_mixed(model, "ln(AD) ~ cycle")
    if isinstance(result, NotEstimable):
        return result
    slope = float(result.fe_params["cycle_number"])
    low, high = (float(v) for v in result.conf_int().loc["cycle_number"])
    p_value = float(result.pvalues["cycle_number"])
    if not all(np.isfinite([slope, low, high, p_value])):
        return NotEstimable("The mixed model gave a non-finite slope or standard error.")
    return slope, low, high, p_value, bool(result.converged)


def rank_tests(doses: pd.DataFrame) -> tuple[TestResult | NotEstimable, TestResult | NotEstimable]:
    """Friedman and Page (decreasing) tests on lesions with a dose in every cycle."""
    wide = doses.pivot_table(
        index=["patient_id", "lesion_id"], columns="cycle", values="ad_gy", aggfunc="first"
    )
    cycles = sorted(int(c) for c in wide.columns)
    complete = wide.dropna()
    if len(cycles) < 3 or len(complete) < MIN_LESIONS:
        reason = (
            f"Rank tests need ≥ 3 cycles and ≥ {MIN_LESIONS} lesions with a dose in every "
            f"cycle; found {len(cycles)} cycle(s) and {len(complete)} complete lesion(s)."
        )
        return NotEstimable(reason), NotEstimable(reason)
    table = complete.to_numpy(dtype=float)
    friedman = stats.friedmanchisquare(*table.T)
    # Page's L: predicted ranks decrease with cycle (cycle 1 has the largest dose).
    page = stats.page_trend_test(table, predicted_ranks=list(range(len(cycles), 0, -1)))
    n = int(len(complete))
    return (
        TestResult("Friedman chi-square", float(friedman.statistic), float(friedman.pvalue), n),
        TestResult(
            f"Page L trend (decreasing, {page.method})",
            float(page.statistic),
            float(page.pvalue),
            n,
        ),
    )
