"""Kaplan–Meier medians, log-rank and at-risk counts against hand-computed cases."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from theranode.dosimetry.cohort.results import (
    Endpoint,
    LesionIndex,
    NotEstimable,
    SurvivalComparison,
)
from theranode.dosimetry.cohort.survival import at_risk_counts, compare_groups, kaplan_meier


def test_km_median_of_five_uncensored_times() -> None:
    # S = 0.8, 0.6, 0.4, ... → the median is the first time with S ≤ 0.5: t = 3.
    _, median, curve = kaplan_meier([1, 2, 3, 4, 5], [1, 1, 1, 1, 1], "all")
    assert median.median_months == 3.0
    assert curve.survival[:4] == pytest.approx((1.0, 0.8, 0.6, 0.4))


def test_km_median_with_censoring() -> None:
    # times 1, 2+, 3, 4: S(1) = 3/4, S(3) = 3/4 · 1/2 = 3/8 → median 3.
    _, median, _ = kaplan_meier([1, 2, 3, 4], [1, 0, 1, 0], "all")
    assert median.median_months == 3.0


def test_median_not_reached_is_none() -> None:
    _, median, _ = kaplan_meier([1, 5, 6, 7, 8], [1, 0, 0, 0, 0], "all")
    assert median.median_months is None
    assert median.ci.high is None


def _table(high: list[tuple[float, bool]], low: list[tuple[float, bool]]) -> pd.DataFrame:
    rows = [(t, e, 100.0) for t, e in high] + [(t, e, 10.0) for t, e in low]
    return pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(len(rows))],
            "os_months": [r[0] for r in rows],
            "os_event": [r[1] for r in rows],
            "pfs_months": [r[0] for r in rows],
            "pfs_event": [r[1] for r in rows],
            "mean": [r[2] for r in rows],
        }
    )


def test_logrank_against_hand_computation() -> None:
    # High group dies at 1 and 3, low group at 2 and 4.
    # t=1: n=4 (2 high), d=1 (high): E=1/2, V=2·2·1·3/(16·3)=1/4
    # t=2: n=3 (1 high), d=1 (low):  E=1/3, V=1·2·1·2/(9·2)=2/9
    # t=3: n=2 (1 high), d=1 (high): E=1/2, V=1/4
    # t=4: n=1 (0 high):             E=0,   V=0
    # O−E = 2 − 4/3 = 2/3; V = 13/18; χ² = (4/9)/(13/18) = 8/13.
    table = _table([(1, True), (3, True)], [(2, True), (4, True)])
    result = compare_groups(table, Endpoint.OS, LesionIndex.MEAN)
    assert isinstance(result, SurvivalComparison)
    assert result.logrank.statistic == pytest.approx(8 / 13)
    assert result.logrank.p_value == pytest.approx(stats.chi2.sf(8 / 13, 1))
    assert result.cut_gy == 55.0
    assert result.high.median.median_months == 1.0
    assert result.low.median.median_months == 2.0
    assert result.at_risk.times_months == (0.0,)
    assert math.isfinite(result.hazard_ratio) and result.hazard_ratio > 1.0


def test_at_risk_counts_every_twelve_months() -> None:
    at_risk = at_risk_counts({"a": [5.0, 13.0, 30.0], "b": [12.0, 40.0]})
    assert at_risk.times_months == (0.0, 12.0, 24.0, 36.0)
    assert at_risk.counts == {"a": (3, 2, 1, 0), "b": (2, 2, 1, 1)}


def test_no_event_in_a_group_is_not_estimable() -> None:
    table = _table([(1, False), (3, False)], [(2, True), (4, True)])
    result = compare_groups(table, Endpoint.OS, LesionIndex.MEAN)
    assert isinstance(result, NotEstimable)
    assert "event" in result.reason


def test_identical_index_values_are_not_estimable() -> None:
    table = _table([(1, True), (3, True)], [(2, True), (4, True)]).assign(mean=50.0)
    assert isinstance(compare_groups(table, Endpoint.PFS, LesionIndex.MEAN), NotEstimable)
