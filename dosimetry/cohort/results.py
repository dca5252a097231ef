"""Result records of the cohort analyses.

Every analysis returns one of these frozen dataclasses, or
:class:`NotEstimable` with the reason when the data do not allow it. No
field ever holds NaN or infinity: a quantity that cannot be computed is
``None`` (for example a median survival that is not reached) and
:func:`finite_or_none` is the one place where that conversion happens.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum


class LesionIndex(str, Enum):
    """Per-patient summaries of the lesions' total absorbed doses (Table 6)."""

    MEAN = "mean"
    MIN = "min"
    MAX = "max"


class Endpoint(str, Enum):
    """Survival endpoints of Fig 6."""

    OS = "overall survival"
    PFS = "progression-free survival"


@dataclass(frozen=True)
class NotEstimable:
    """An analysis that the data do not allow, and why.

    Used instead of raising or of returning NaN whenever there are too few
    patients, lesions, events or distinct values for a method.
    """

    reason: str


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or ``None`` when it is missing, NaN or infinite."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Interval:
    """A confidence interval; a bound is ``None`` when it is not reached or unbounded."""

    low: float | None
    high: float | None
    level: float = 0.95


@dataclass(frozen=True)
class TestResult:
    """A hypothesis test: its name, statistic and two-sided p-value."""

    __test__ = False  # not a pytest test class

    test: str
    statistic: float
    p_value: float
    n: int


# --- Table 3 -----------------------------------------------------------------


@dataclass(frozen=True)
class ToxicityRow:
    """Worst CTCAE v4.03 grade during therapy of one laboratory term (Table 3).

    ``at_least[k - 1]`` is the number of patients with at least one value of
    grade ≥ k, k = 1..4. ``grade1_undetermined`` counts patients whose worst
    value lies above the grade-2 threshold but whose LLN was missing, so that
    grade 1 could not be decided (they are not counted in ``at_least[0]``).
    """

    term: str
    analyte: str
    n_patients: int
    at_least: tuple[int, int, int, int]
    grade1_undetermined: int


@dataclass(frozen=True)
class ToxicityTable:
    """Table 3: worst laboratory grades during therapy."""

    rows: tuple[ToxicityRow, ...]
    window: str


# --- Table 4 -----------------------------------------------------------------


@dataclass(frozen=True)
class LabChange:
    """Mean (SD) of a laboratory value before the first injection and at follow-up.

    ``paired`` (Student's paired t-test) is the primary test;
    ``unpaired`` (Student's two-sample t-test with pooled variance on the
    same patients) reproduces the paper's Table 4 p-values.
    """

    analyte: str
    unit: str
    timepoint: str
    n: int
    baseline_mean: float
    baseline_sd: float
    followup_mean: float
    followup_sd: float
    mean_difference: float
    difference_ci: Interval
    paired: TestResult
    unpaired: TestResult


@dataclass(frozen=True)
class LabChangeRow:
    """One analyte at one follow-up time: the change or why it is not estimable."""

    analyte: str
    timepoint: str
    result: LabChange | NotEstimable


# --- Tables 5 and 6 ----------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Median (range), mean and SD of a sample."""

    n: int
    median: float
    minimum: float
    maximum: float
    mean: float
    sd: float | None


@dataclass(frozen=True)
class DistributionRow:
    """Absorbed dose of one VOI type in one cycle (``"total"`` = cumulative)."""

    voi: str
    cycle: str
    summary: Summary | NotEstimable


@dataclass(frozen=True)
class LesionIndexRow:
    """Table 6: distribution over patients of one lesion index."""

    index: LesionIndex
    summary: Summary | NotEstimable


# --- absorbed dose across cycles --------------------------------------------


@dataclass(frozen=True)
class CycleTrend:
    """Lesion absorbed dose across cycles.

    Primary: linear mixed model of ln(AD) on cycle number with random
    intercepts for patients and for lesions nested in patients;
    ``ratio_per_cycle`` = exp(slope). Sensitivity: Friedman test and Page's
    trend test (decreasing order) on lesions with a dose in every cycle.
    """

    model: str
    slope_log_per_cycle: float
    slope_ci: Interval
    p_value: float
    ratio_per_cycle: float
    ratio_ci: Interval
    n_observations: int
    n_lesions: int
    n_patients: int
    converged: bool
    median_by_cycle_gy: dict[int, float]
    friedman: TestResult | NotEstimable
    page: TestResult | NotEstimable


# --- Fig 3 and 4 -------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    """One point of a fitted curve with its pointwise confidence band."""

    x: float
    y: float
    low: float | None
    high: float | None


@dataclass(frozen=True)
class DoseResponse:
    """Fig 3: lesion ΔV% against total absorbed dose.

    ``slope_pct_per_gy`` comes from the linear mixed model
    ΔV% = β₀ + β₁·AD + u_patient + ε; ``curve`` from the same model with a
    B-spline of AD (``spline_df`` degrees of freedom) that allows a plateau.
    ``stable_above_gy`` is the smallest observed dose above which no lesion
    grew by more than 20 % (``None`` when the highest-dose lesion grew).
    """

    model: str
    slope_pct_per_gy: float
    slope_ci: Interval
    slope_p: float
    intercept_pct: float
    n_lesions: int
    n_patients: int
    spline_df: int
    curve: tuple[CurvePoint, ...]
    stable_above_gy: float | None
    growth_threshold_pct: float = 20.0


@dataclass(frozen=True)
class TumourControl:
    """Fig 4: probability that a lesion is controlled (ΔV% ≤ 0) against total AD.

    ``intercept``/``slope`` are the GEE logistic coefficients (exchangeable
    working correlation within patients, robust covariance); ``d50_gy`` =
    −intercept/slope with Fieller's confidence interval (a bound is ``None``
    when the interval is unbounded). The naive logistic regression that
    ignores clustering is kept for comparison.
    """

    model: str
    intercept: float
    slope_per_gy: float
    slope_ci: Interval
    slope_p: float
    d50_gy: float | None
    d50_ci: Interval
    n_lesions: int
    n_controlled: int
    curve: tuple[CurvePoint, ...]
    naive_slope_per_gy: float
    naive_d50_gy: float | None


# --- Fig 5 -------------------------------------------------------------------


@dataclass(frozen=True)
class DoseToxicityCorrelation:
    """Fig 5: Spearman ρ and LOESS of an organ's cumulative AD vs a blood count change.

    One observation per patient and cycle: cumulative AD through cycle k
    against the % change from baseline of the value measured after cycle k.
    """

    organ: str
    analyte: str
    n_observations: int
    n_patients: int
    rho: float
    p_value: float
    loess: tuple[CurvePoint, ...]


@dataclass(frozen=True)
class CorrelationRow:
    """One organ–analyte pair, or why it is not estimable."""

    organ: str
    analyte: str
    result: DoseToxicityCorrelation | NotEstimable


# --- Fig 6 -------------------------------------------------------------------


@dataclass(frozen=True)
class MedianSurvival:
    """Median survival (months) with CI; ``None`` = not reached."""

    median_months: float | None
    ci: Interval


@dataclass(frozen=True)
class SurvivalCurve:
    """A Kaplan–Meier curve: step function with its pointwise confidence band."""

    label: str
    times_months: tuple[float, ...]
    survival: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    censor_times_months: tuple[float, ...]


@dataclass(frozen=True)
class AtRisk:
    """Numbers at risk of each group at fixed times (the table under a KM plot)."""

    times_months: tuple[float, ...]
    counts: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class SurvivalSummary:
    """Overall Kaplan–Meier estimate of one endpoint."""

    endpoint: Endpoint
    n: int
    events: int
    median: MedianSurvival
    curve: SurvivalCurve


@dataclass(frozen=True)
class GroupSurvival:
    """One arm of a median split."""

    label: str
    n: int
    events: int
    median: MedianSurvival


@dataclass(frozen=True)
class SurvivalComparison:
    """Fig 6: one endpoint split at the median of one lesion index.

    ``high`` = index > cut (the paper's "more than 91.36 Gy"); the hazard
    ratio is high vs low from a Cox model on the group indicator.
    """

    endpoint: Endpoint
    index: LesionIndex
    cut_gy: float
    high: GroupSurvival
    low: GroupSurvival
    logrank: TestResult
    hazard_ratio: float
    hazard_ratio_ci: Interval
    hazard_ratio_p: float
    curves: tuple[SurvivalCurve, ...]
    at_risk: AtRisk


@dataclass(frozen=True)
class SurvivalRow:
    """One endpoint × index, or why it is not estimable."""

    endpoint: Endpoint
    index: LesionIndex
    result: SurvivalComparison | NotEstimable


# --- whole report ------------------------------------------------------------


@dataclass(frozen=True)
class MethodChoices:
    """Method choices that change results between software packages."""

    km_ci_transform: str = "log(-log) (exponential Greenwood), lifelines default"
    median_ci: str = "Brookmeyer–Crowley style: times where the pointwise CI crosses 0.5"
    cox_ties: str = "Efron"
    logrank: str = "Mantel–Cox log-rank, chi-square 1 df"
    split: str = "group = index > cohort median (the paper's 'more than')"
    lab_test_primary: str = "Student's paired t-test"
    lab_test_paper: str = "Student's two-sample t-test, pooled variance (paper-compatible)"
    egfr_equation: str = "CKD-EPI 2009"
    egfr_lln: float = 90.0
    ctcae_version: str = "CTCAE v4.03"
    baseline_window_days: int = 60
    month3_window: str = "last injection + 91 d ± 30 d, nearest value"
    month12_window: str = "last injection + 365 d ± 60 d, nearest value"
    toxicity_window: str = "after the first injection up to the last injection + 56 d"
    trend_model: str = "MixedLM ln(AD) ~ cycle, random intercept patient + lesion-in-patient (REML)"
    dose_response_model: str = (
        "MixedLM ΔV% ~ AD (+ B-spline curve), random intercept patient (REML)"
    )
    tcp_model: str = "GEE logistic, exchangeable within patient, robust SE; D50 by Fieller"
    correlation: str = (
        "Spearman rank correlation; LOESS span 0.75 degree 2, pointwise 95 % band (R loess)"
    )
    months_per_day: float = 12.0 / 365.25


@dataclass(frozen=True)
class CohortCounts:
    """Sizes of the data that entered the analyses."""

    patients: int
    cycles: int
    lesions: int
    lab_values: int
    dose_rows: int


@dataclass(frozen=True)
class CohortReport:
    """Every analysis of the cohort, with the method choices used."""

    counts: CohortCounts
    methods: MethodChoices
    toxicity: ToxicityTable | NotEstimable
    lab_changes: tuple[LabChangeRow, ...]
    distributions: tuple[DistributionRow, ...]
    lesion_indices: tuple[LesionIndexRow, ...]
    trend: CycleTrend | NotEstimable
    dose_response: DoseResponse | NotEstimable
    tumour_control: TumourControl | NotEstimable
    correlations: tuple[CorrelationRow, ...]
    survival_overall: tuple[SurvivalSummary | NotEstimable, ...]
    survival: tuple[SurvivalRow, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)


def as_plain(value: object) -> object:
    """``value`` as JSON-ready built-ins (dataclasses → dicts with a ``type`` key).

    Raises
    ------
    ValueError
        When a float is NaN or infinite: results must say ``None`` or
        :class:`NotEstimable` instead.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: as_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {"type": type(value).__name__, **fields}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(as_plain(k)): as_plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [as_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"A result holds the non-finite number {value}; expected None.")
        return value
    raise TypeError(f"Cannot convert {type(value).__name__} to JSON; expected result records.")
