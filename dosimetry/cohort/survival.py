"""Fig 6: overall and progression-free survival by median-split lesion indices.

Kaplan–Meier estimates (lifelines: Greenwood variance, log(−log)
confidence band), median survival with the confidence interval read where
the band crosses 0.5 ("not reached" = ``None``), the Mantel–Cox log-rank
test and a Cox model on the group indicator (Efron ties) for the hazard
ratio of the high-dose group.

OS runs from the first injection to death (event) or the last follow-up
(censored); PFS to progression or death, whichever comes first (event), or
the last follow-up (censored).

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Fig 6 and Results.
Kaplan EL, Meier P. J Am Stat Assoc 1958;53:457–481.
Brookmeyer R, Crowley J. A confidence interval for the median survival time.
Biometrics 1982;38:29–41.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import numpy.typing as npt
import pandas as pd
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test
from lifelines.utils import median_survival_times

from theranode.dosimetry.cohort.data import CohortData, median_split, patient_lesion_indices
from theranode.dosimetry.cohort.results import (
    AtRisk,
    Endpoint,
    GroupSurvival,
    Interval,
    LesionIndex,
    MedianSurvival,
    NotEstimable,
    SurvivalComparison,
    SurvivalCurve,
    SurvivalRow,
    SurvivalSummary,
    TestResult,
    finite_or_none,
)

logger = logging.getLogger(__name__)

MONTHS_PER_DAY = 12.0 / 365.25
AT_RISK_STEP_MONTHS = 12.0
MAX_CURVE_POINTS = 400
MIN_PER_GROUP = 2


def survival_table(data: CohortData) -> pd.DataFrame:
    """Per patient: ``os_months, os_event, pfs_months, pfs_event`` (NaN when unknown)."""
    patients = data.patients
    start = patients["first_injection_date"]
    death = patients["death_date"]
    follow = patients["last_followup_date"]
    os_end = death.fillna(follow)
    pfs_event_date = patients[["progression_date", "death_date"]].min(axis=1)
    pfs_end = pfs_event_date.fillna(follow)
    table = pd.DataFrame(
        {
            "patient_id": patients["patient_id"],
            "os_months": (os_end - start).dt.days * MONTHS_PER_DAY,
            "os_event": death.notna(),
            "pfs_months": (pfs_end - start).dt.days * MONTHS_PER_DAY,
            "pfs_event": pfs_event_date.notna(),
        }
    )
    return table


def _columns(endpoint: Endpoint) -> tuple[str, str]:
    prefix = "os" if endpoint is Endpoint.OS else "pfs"
    return f"{prefix}_months", f"{prefix}_event"


def _usable(table: pd.DataFrame, endpoint: Endpoint) -> pd.DataFrame:
    duration, event = _columns(endpoint)
    keep = np.isfinite(table[duration]) & (table[duration] >= 0)
    return table.loc[keep]


def kaplan_meier(
    durations: npt.ArrayLike, events: npt.ArrayLike, label: str
) -> tuple[KaplanMeierFitter, MedianSurvival, SurvivalCurve]:
    """Fit a KM curve; return the fitter, the median with CI and the plotted curve."""
    fitter = KaplanMeierFitter(alpha=0.05)
    fitter.fit(np.asarray(durations, dtype=float), np.asarray(events, dtype=bool), label=label)
    return fitter, median_with_ci(fitter), _curve(fitter, label, durations, events)


def median_with_ci(fitter: KaplanMeierFitter) -> MedianSurvival:
    """Median survival and its CI; ``None`` where not reached."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounds = median_survival_times(fitter.confidence_interval_)
    low, high = (float(v) for v in np.asarray(bounds, dtype=float).ravel()[:2])
    return MedianSurvival(
        median_months=finite_or_none(fitter.median_survival_time_),
        ci=Interval(finite_or_none(low), finite_or_none(high)),
    )


def _curve(
    fitter: KaplanMeierFitter, label: str, durations: npt.ArrayLike, events: npt.ArrayLike
) -> SurvivalCurve:
    times = fitter.survival_function_.index.to_numpy(dtype=float)
    survival = fitter.survival_function_.iloc[:, 0].to_numpy(dtype=float)
    band = fitter.confidence_interval_.to_numpy(dtype=float)
    if times.size > MAX_CURVE_POINTS:
        grid = np.linspace(0.0, times.max(), MAX_CURVE_POINTS)
        position = np.searchsorted(times, grid, side="right") - 1
        times, survival, band = grid, survival[position], band[position]
    censored = np.asarray(durations, dtype=float)[~np.asarray(events, dtype=bool)]
    censored = np.unique(np.round(censored, 2))
    if censored.size > MAX_CURVE_POINTS:
        censored = censored[np.linspace(0, censored.size - 1, MAX_CURVE_POINTS).astype(int)]
    return SurvivalCurve(
        label=label,
        times_months=tuple(float(t) for t in times),
        survival=tuple(float(s) for s in survival),
        low=tuple(float(v) for v in np.nan_to_num(band[:, 0], nan=0.0)),
        high=tuple(float(v) for v in np.nan_to_num(band[:, 1], nan=1.0)),
        censor_times_months=tuple(float(t) for t in censored),
    )


def overall_survival(data: CohortData, endpoint: Endpoint) -> SurvivalSummary | NotEstimable:
    """KM estimate of one endpoint over the whole cohort."""
    table = _usable(survival_table(data), endpoint)
    duration, event = _columns(endpoint)
    if len(table) < 2 or not table[event].any():
        return NotEstimable(
            f"{endpoint.value}: {len(table)} patient(s) with follow-up and "
            f"{int(table[event].sum())} event(s); a KM estimate needs ≥ 2 patients and ≥ 1 event."
        )
    _, median, curve = kaplan_meier(table[duration], table[event], "all patients")
    return SurvivalSummary(endpoint, int(len(table)), int(table[event].sum()), median, curve)


def survival_by_index(data: CohortData) -> tuple[SurvivalRow, ...]:
    """Every endpoint × lesion index median-split comparison."""
    table = survival_table(data)
    indices = patient_lesion_indices(data)
    merged = table.merge(indices, on="patient_id", how="inner")
    return tuple(
        SurvivalRow(endpoint, index, compare_groups(merged, endpoint, index))
        for endpoint in Endpoint
        for index in LesionIndex
    )


def compare_groups(
    table: pd.DataFrame, endpoint: Endpoint, index: LesionIndex
) -> SurvivalComparison | NotEstimable:
    """KM, log-rank and Cox HR for ``index`` > cohort median vs ≤ median."""
    usable = _usable(table, endpoint).dropna(subset=[index.value])
    duration, event = _columns(endpoint)
    if usable[index.value].nunique() < 2:
        return NotEstimable(f"{index.value} lesion total AD: fewer than two distinct values.")
    cut, high = median_split(usable[index.value])
    usable = usable.assign(high=high.astype(float))
    problem = _group_problem(usable, event, endpoint)
    if problem is not None:
        return problem
    arms = {
        name: usable.loc[usable["high"] == flag] for name, flag in (("high", 1.0), ("low", 0.0))
    }
    labels = {"high": f"> {cut:.2f} Gy", "low": f"≤ {cut:.2f} Gy"}
    groups, curves = {}, []
    for name, arm in arms.items():
        _, median, curve = kaplan_meier(arm[duration], arm[event], labels[name])
        groups[name] = GroupSurvival(labels[name], int(len(arm)), int(arm[event].sum()), median)
        curves.append(curve)
    cox = _cox(usable, duration, event)
    if isinstance(cox, NotEstimable):
        return cox
    hazard_ratio, low, high_bound, p_value = cox
    return SurvivalComparison(
        endpoint=endpoint,
        index=index,
        cut_gy=cut,
        high=groups["high"],
        low=groups["low"],
        logrank=_logrank(arms["high"], arms["low"], duration, event),
        hazard_ratio=hazard_ratio,
        hazard_ratio_ci=Interval(low, high_bound),
        hazard_ratio_p=p_value,
        curves=tuple(curves),
        at_risk=at_risk_counts({labels[k]: v[duration].to_numpy() for k, v in arms.items()}),
    )


def _group_problem(table: pd.DataFrame, event: str, endpoint: Endpoint) -> NotEstimable | None:
    sizes = table.groupby("high").size()
    events = table.groupby("high")[event].sum()
    if sizes.size < 2 or sizes.min() < MIN_PER_GROUP:
        return NotEstimable(
            f"{endpoint.value}: a median split needs ≥ {MIN_PER_GROUP} patients per group; "
            f"found {sizes.to_dict()}."
        )
    if events.size < 2 or events.min() < 1:
        return NotEstimable(
            f"{endpoint.value}: a hazard ratio needs ≥ 1 event in each group; found "
            f"{ {('high' if k else 'low'): int(v) for k, v in events.items()} }."
        )
    return None


def _logrank(high: pd.DataFrame, low: pd.DataFrame, duration: str, event: str) -> TestResult:
    result = logrank_test(high[duration], low[duration], high[event], low[event])
    return TestResult(
        "Mantel–Cox log-rank (1 df)",
        float(result.test_statistic),
        float(result.p_value),
        int(len(high) + len(low)),
    )


def _cox(
    table: pd.DataFrame, duration: str, event: str
) -> tuple[float, float, float, float] | NotEstimable:
    frame = table[[duration, event, "high"]].astype(float)
    fitter = CoxPHFitter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fitter.fit(frame, duration_col=duration, event_col=event)
        except Exception as error:  # lifelines raises ConvergenceError and others
            return NotEstimable(f"The Cox model could not be fitted: {error}.")
    summary = fitter.summary.loc["high"]
    values = (
        float(np.exp(summary["coef"])),
        float(np.exp(summary["coef lower 95%"])),
        float(np.exp(summary["coef upper 95%"])),
        float(summary["p"]),
    )
    if not all(np.isfinite(values)):
        return NotEstimable("The Cox model gave a non-finite hazard ratio.")
    return values


def at_risk_counts(
    durations_by_group: dict[str, npt.NDArray[np.float64]], step_months: float = AT_RISK_STEP_MONTHS
) -> AtRisk:
    """Numbers at risk (duration ≥ t) of each group every ``step_months``."""
    longest = max(float(np.max(d)) for d in durations_by_group.values() if len(d))
    times = np.arange(0.0, longest + step_months, step_months)
    times = times[times <= longest] if times.size > 1 else times
    counts = {
        label: tuple(int(np.sum(np.asarray(d) >= t)) for t in times)
        for label, d in durations_by_group.items()
    }
    return AtRisk(times_months=tuple(float(t) for t in times), counts=counts)
