"""Trend across cycles, dose–response and tumour control: models and their edge cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.synthetic_cohort import synthetic_cohort
from theranode.dosimetry.cohort.data import CohortData
from theranode.dosimetry.cohort.response import (
    dose_response,
    fieller_interval,
    stable_above,
    tumour_control,
)
from theranode.dosimetry.cohort.results import CycleTrend, DoseResponse, NotEstimable, TumourControl
from theranode.dosimetry.cohort.trend import cycle_trend


@pytest.fixture(scope="module")
def cohort_300():  # type: ignore[no-untyped-def]
    return synthetic_cohort(300, seed=11)


def test_trend_recovers_the_generating_decrease(cohort_300) -> None:  # type: ignore[no-untyped-def]
    trend = cycle_trend(cohort_300.data)
    assert isinstance(trend, CycleTrend)
    truth = cohort_300.truth.lesion_log_slope_per_cycle
    assert trend.slope_ci.low <= truth <= trend.slope_ci.high
    assert trend.p_value < 1e-10
    assert isinstance(trend.friedman, type(trend.page)) and trend.page.p_value < 1e-10
    assert trend.median_by_cycle_gy[1] > trend.median_by_cycle_gy[4]


def test_dose_response_slope_and_curve(cohort_300) -> None:  # type: ignore[no-untyped-def]
    result = dose_response(cohort_300.data)
    assert isinstance(result, DoseResponse)
    truth = cohort_300.truth.dose_response_slope_pct_per_gy
    assert result.slope_ci.low <= truth <= result.slope_ci.high
    assert len(result.curve) > 10
    assert all(p.low is not None and p.low <= p.y <= p.high for p in result.curve)


def test_tumour_control_d50_near_truth(cohort_300) -> None:  # type: ignore[no-untyped-def]
    result = tumour_control(cohort_300.data)
    assert isinstance(result, TumourControl)
    assert result.slope_per_gy > 0
    assert result.d50_ci.low is not None and result.d50_ci.high is not None
    assert result.d50_ci.low - 5 <= cohort_300.truth.tcp_d50_gy <= result.d50_ci.high + 5
    probabilities = [p.y for p in result.curve]
    assert probabilities == sorted(probabilities)


def test_fieller_matches_delta_method_for_a_precise_slope() -> None:
    b0, b1 = -2.0, 0.05
    covariance = np.array([[1e-4, -1e-6], [-1e-6, 1e-8]])
    interval = fieller_interval(b0, b1, covariance)
    gradient = np.array([-1 / b1, b0 / b1**2])
    se = float(np.sqrt(gradient @ covariance @ gradient))
    assert interval.low == pytest.approx(40 - 1.96 * se, rel=1e-3)
    assert interval.high == pytest.approx(40 + 1.96 * se, rel=1e-3)


def test_fieller_is_unbounded_for_a_non_significant_slope() -> None:
    interval = fieller_interval(-1.0, 0.01, np.array([[0.1, 0.0], [0.0, 0.01]]))
    assert interval.low is None and interval.high is None


def test_stable_above_rule() -> None:
    table = pd.DataFrame(
        {"total_ad_gy": [10, 50, 80, 95, 120], "delta_v_pct": [40, 25, 10, -30, -50]}
    )
    assert stable_above(table) == 80.0
    assert stable_above(table.assign(delta_v_pct=-1.0)) == 10.0
    assert stable_above(table.assign(delta_v_pct=[0, 0, 0, 0, 30])) is None


def _tiny(n_lesions: int) -> CohortData:
    lesions = pd.DataFrame(
        {
            "patient_id": [f"P{i % 6}" for i in range(n_lesions)],
            "lesion_id": [f"l{i}" for i in range(n_lesions)],
            "site": "liver",
            "vol_bl_cm3": 5.0,
            "ct_bl_date": "2020-01-01",
            "vol_m3_cm3": np.linspace(2.0, 8.0, n_lesions),
            "ct_m3_date": "2020-12-01",
        }
    )
    doses = pd.DataFrame(
        {
            "patient_id": lesions["patient_id"],
            "cycle": 1,
            "voi": lesions["lesion_id"],
            "kind": "lesion",
            "ad_gy": np.linspace(100, 20, n_lesions),
        }
    )
    return CohortData.from_frames(lesions=lesions, doses=doses)


def test_too_few_lesions_are_not_estimable() -> None:
    data = _tiny(4)
    for result in (dose_response(data), tumour_control(data), cycle_trend(data)):
        assert isinstance(result, NotEstimable)
        assert result.reason


def test_perfect_separation_is_not_estimable() -> None:
    result = tumour_control(_tiny(12))
    assert isinstance(result, NotEstimable)
    assert "separation" in result.reason
