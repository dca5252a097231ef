"""Recovery coefficients and lesion eligibility."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.recovery import (
    DEFAULT_RECOVERY,
    RecoveryTable,
    SigmoidRecovery,
    apply_lesion_eligibility,
    apply_recovery,
    correct,
    lesion_eligibility,
)
from theranode.dosimetry.results import DoseMethod, VoiDose, VoiKind


def _voi(volume_ml: float, kind: VoiKind = VoiKind.LESION) -> VoiDose:
    return VoiDose(
        name="L1",
        kind=kind,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=volume_ml,
        mean_gy=10.0,
        mean_gy_sd=1.0,
        min_gy=5.0,
        max_gy=20.0,
        time_integrated_activity_mbq_h=100.0,
    )


def test_default_curve_matches_the_paper_at_2_ml() -> None:
    assert DEFAULT_RECOVERY.coefficient(2.0) == pytest.approx(0.5)


def test_default_curve_tends_to_one_for_large_volumes() -> None:
    assert DEFAULT_RECOVERY.coefficient(20.0) > 0.9
    assert DEFAULT_RECOVERY.coefficient(1500.0) > 0.99


@given(st.floats(0.01, 1e4), st.floats(0.01, 1e4))
def test_sigmoid_is_monotonic_and_bounded(v1: float, v2: float) -> None:
    lo, hi = sorted((v1, v2))
    rc_lo, rc_hi = DEFAULT_RECOVERY.coefficient(lo), DEFAULT_RECOVERY.coefficient(hi)
    assert 0 < rc_lo <= rc_hi <= 1


def test_sigmoid_formula() -> None:
    curve = SigmoidRecovery(plateau=0.9, half_volume_ml=3.0, slope=1.5)
    assert curve.coefficient(6.0) == pytest.approx(0.9 / (1 + 0.5**1.5))


def test_table_interpolates_in_log_volume_and_clamps() -> None:
    table = RecoveryTable(volumes_ml=(1.0, 4.0, 16.0), coefficients=(0.3, 0.6, 0.8))
    assert table.coefficient(2.0) == pytest.approx(0.45)
    assert table.coefficient(8.0) == pytest.approx(0.7)
    assert table.coefficient(0.1) == pytest.approx(0.3)
    assert table.coefficient(1000.0) == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("volumes", "rcs"),
    [
        ((1.0, 1.0), (0.3, 0.5)),
        ((0.0, 1.0), (0.3, 0.5)),
        ((1.0, 2.0), (0.3, 1.2)),
        ((1.0,), (0.3,)),
    ],
)
def test_invalid_tables_are_refused(volumes: tuple[float, ...], rcs: tuple[float, ...]) -> None:
    with pytest.raises(DosimetryError):
        RecoveryTable(volumes, rcs)


def test_invalid_sigmoids_are_refused() -> None:
    with pytest.raises(DosimetryError):
        SigmoidRecovery(plateau=1.2)
    with pytest.raises(DosimetryError):
        SigmoidRecovery(half_volume_ml=0.0)
    with pytest.raises(DosimetryError, match="positive"):
        DEFAULT_RECOVERY.coefficient(-1.0)


def test_correct_divides_by_rc() -> None:
    assert correct(10.0, 2.0) == pytest.approx(20.0)


def test_apply_recovery_corrects_the_mean_only() -> None:
    corrected = apply_recovery(_voi(2.0))
    assert corrected.recovery_coefficient == pytest.approx(0.5)
    assert corrected.mean_gy == pytest.approx(20.0)
    assert corrected.mean_gy_sd == pytest.approx(2.0)
    assert corrected.time_integrated_activity_mbq_h == pytest.approx(200.0)
    assert corrected.min_gy == 5.0 and corrected.max_gy == 20.0
    assert any("RC" in note for note in corrected.notes)
    with pytest.raises(DosimetryError, match="already"):
        apply_recovery(corrected)


def test_lesion_eligibility() -> None:
    assert lesion_eligibility(2.0).eligible
    small = lesion_eligibility(1.5)
    assert not small.eligible
    assert small.reason is not None and "2 mL" in small.reason
    assert lesion_eligibility(1.5, min_ml=1.0).eligible
    assert not math.isnan(DEFAULT_RECOVERY.coefficient(1.5))


def test_apply_lesion_eligibility_only_touches_small_lesions() -> None:
    assert apply_lesion_eligibility(_voi(1.0)).excluded
    assert not apply_lesion_eligibility(_voi(3.0)).excluded
    assert not apply_lesion_eligibility(_voi(1.0, VoiKind.ORGAN)).excluded
