"""Large-n recovery: fitted hazard ratios and dose–response slope vs the generating ones."""

from __future__ import annotations

import time

import pytest

from tests.synthetic_cohort import synthetic_cohort
from theranode.dosimetry.cohort.response import dose_response, tumour_control
from theranode.dosimetry.cohort.results import (
    DoseResponse,
    Endpoint,
    LesionIndex,
    SurvivalComparison,
    TumourControl,
)
from theranode.dosimetry.cohort.survival import survival_by_index

N_PATIENTS = 4000


@pytest.mark.parametrize("split_index", [LesionIndex.MIN, LesionIndex.MEAN])
def test_hazard_ratios_within_0_05_of_generating(split_index: LesionIndex) -> None:
    start = time.perf_counter()
    cohort = synthetic_cohort(N_PATIENTS, seed=2024, split_index=split_index)
    rows = {(r.endpoint, r.index): r.result for r in survival_by_index(cohort.data)}
    truth = cohort.truth.survival
    for endpoint, expected in (
        (Endpoint.OS, truth.hazard_ratio_os),
        (Endpoint.PFS, truth.hazard_ratio_pfs),
    ):
        result = rows[(endpoint, split_index)]
        assert isinstance(result, SurvivalComparison)
        assert abs(result.hazard_ratio - expected) <= 0.05, (
            endpoint,
            result.hazard_ratio,
            expected,
        )
        assert result.hazard_ratio_ci.low < result.hazard_ratio < result.hazard_ratio_ci.high
    assert time.perf_counter() - start < 15


def test_dose_response_slope_within_its_ci() -> None:
    cohort = synthetic_cohort(N_PATIENTS, seed=7)
    result = dose_response(cohort.data)
    assert isinstance(result, DoseResponse)
    truth = cohort.truth.dose_response_slope_pct_per_gy
    assert result.slope_ci.low <= truth <= result.slope_ci.high
    assert result.intercept_pct == pytest.approx(cohort.truth.dose_response_intercept_pct, abs=1.0)
    control = tumour_control(cohort.data)
    assert isinstance(control, TumourControl)
    assert control.d50_gy == pytest.approx(cohort.truth.tcp_d50_gy, rel=0.1)
