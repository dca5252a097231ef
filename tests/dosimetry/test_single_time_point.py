"""Single-time-point methods: the paper's scaled formula, Hänscheid, Madsen."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theranode.dosimetry.errors import DosimetryError, InsufficientDataError
from theranode.dosimetry.kinetics import fit_monoexponential
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.results import DoseMethod, Organ, VoiDose, VoiKind
from theranode.dosimetry.single_time_point import (
    VoiScan,
    hanscheid,
    hanscheid_dose_gy,
    madsen,
    madsen_dose_gy,
    reference_lambda_per_h,
    scale_from_reference_cycle,
    scaling_factor,
)

LAMBDA_PHYS = nuclear_data("Lu-177").decay_constant_per_h
LAMBDA_EFF = math.log(2.0) / 50.0
K_LED = nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml


def _reference(mean_gy: float = 3.0, sd: float = 0.3) -> VoiDose:
    return VoiDose(
        name="kidney_left",
        kind=VoiKind.ORGAN,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=150.0,
        mean_gy=mean_gy,
        mean_gy_sd=sd,
        organ=Organ.KIDNEY_LEFT,
        effective_half_life_h=50.0,
        time_integrated_activity_mbq_h=1000.0,
    )


def test_equal_inputs_reproduce_the_reference() -> None:
    scan = VoiScan(total_counts=5e5, volume_ml=150.0, elapsed_h=24.0)
    result = scale_from_reference_cycle(_reference(), scan, scan)
    assert result.mean_gy == pytest.approx(3.0)
    assert result.mean_gy_sd == pytest.approx(0.3)
    assert result.method is DoseMethod.SINGLE_TIME_POINT_SCALED
    assert result.organ is Organ.KIDNEY_LEFT and result.name == "kidney_left"
    assert result.recovery_coefficient == 1.0


def test_paper_formula_counts_and_volumes() -> None:
    reference_scan = VoiScan(total_counts=1e5, volume_ml=10.0, elapsed_h=24.0)
    scan = VoiScan(total_counts=6e4, volume_ml=8.0, elapsed_h=24.0)
    assert scaling_factor(reference_scan, scan) == pytest.approx(0.6 * 10.0 / 8.0)
    result = scale_from_reference_cycle(_reference(), reference_scan, scan)
    assert result.mean_gy == pytest.approx(3.0 * 0.75)
    assert result.volume_ml == 8.0
    assert result.time_integrated_activity_mbq_h == pytest.approx(1000.0 * 0.6)


def test_scan_time_correction_is_exact_for_exponential_kinetics() -> None:
    """Cycle 3 built from cycle 2's kinetics, scanned at another time: exact."""
    times_h = [4.0, 24.0, 72.0, 192.0]
    c0_c2, volume_c2, rho = 0.2, 120.0, 1.05  # MBq/mL at injection, mL, g/mL
    scale, volume_c3 = 0.8, 100.0  # cycle 3: 80 % of the uptake per mL, lesion shrank

    def concentration(c0: float, t: float) -> float:
        return c0 * math.exp(-LAMBDA_EFF * t)

    rates = [K_LED * concentration(c0_c2, t) / rho for t in times_h]
    fit = fit_monoexponential(times_h, rates, LAMBDA_PHYS)
    reference = replace(_reference(fit.integral, 0.0), effective_half_life_h=None, fit=fit)
    t_c2, t_c3 = 23.0, 27.5
    reference_scan = VoiScan(concentration(c0_c2, t_c2) * volume_c2, volume_c2, t_c2)
    scan = VoiScan(concentration(scale * c0_c2, t_c3) * volume_c3, volume_c3, t_c3)
    result = scale_from_reference_cycle(reference, reference_scan, scan)
    truth = K_LED * scale * c0_c2 / rho / LAMBDA_EFF
    assert result.mean_gy == pytest.approx(truth, rel=1e-6)
    wrong_direction = reference.mean_gy * scan.concentration / reference_scan.concentration
    wrong_direction *= math.exp(-LAMBDA_EFF * (t_c3 - t_c2))
    assert abs(wrong_direction - truth) > 0.01 * truth


def test_recovery_corrected_reference_is_uncorrected_first() -> None:
    scan = VoiScan(total_counts=5e5, volume_ml=3.0, elapsed_h=24.0)
    corrected = replace(_reference(6.0, 0.6), recovery_coefficient=0.5)
    result = scale_from_reference_cycle(corrected, scan, scan)
    assert result.mean_gy == pytest.approx(3.0)
    assert result.recovery_coefficient == 1.0


def test_scan_time_difference_needs_lambda() -> None:
    reference = replace(_reference(), effective_half_life_h=None)
    assert reference_lambda_per_h(reference) is None
    a = VoiScan(1e5, 10.0, 24.0)
    b = VoiScan(1e5, 10.0, 26.0)
    with pytest.raises(InsufficientDataError, match="λ_eff"):
        scale_from_reference_cycle(reference, a, b)
    explicit = scale_from_reference_cycle(reference, a, b, lambda_eff_per_h=0.01)
    assert explicit.mean_gy == pytest.approx(3.0 * math.exp(0.02))


def test_reference_without_counts_is_refused() -> None:
    with pytest.raises(DosimetryError, match="no counts"):
        scaling_factor(VoiScan(0.0, 10.0, 24.0), VoiScan(1.0, 10.0, 24.0))


def test_invalid_scans_are_refused() -> None:
    with pytest.raises(DosimetryError):
        VoiScan(-1.0, 10.0, 24.0)
    with pytest.raises(DosimetryError):
        VoiScan(1.0, 0.0, 24.0)


def test_hanscheid_known_value() -> None:
    assert hanscheid_dose_gy(0.01, 96.0) == pytest.approx(0.01 * 192.0 / math.log(2.0))
    assert hanscheid_dose_gy(0.01, 96.0) == pytest.approx(2.76997, rel=1e-5)
    voi = hanscheid("spleen", VoiKind.ORGAN, 0.01, 96.0, 200.0, dose_rate_sd_gy_per_h=0.001)
    assert voi.method is DoseMethod.HANSCHEID
    assert voi.mean_gy_sd == pytest.approx(0.276997, rel=1e-5)


def test_hanscheid_is_close_when_scanning_near_the_effective_half_life() -> None:
    t_eff = 96.0
    lam = math.log(2.0) / t_eff
    truth = 1.0 / lam
    assert hanscheid_dose_gy(math.exp(-lam * t_eff), t_eff) == pytest.approx(truth, rel=0.1)


def test_madsen_is_exact_for_exponential_kinetics() -> None:
    lam, d0, t = math.log(2.0) / 70.0, 0.04, 24.0
    assert madsen_dose_gy(d0 * math.exp(-lam * t), t, lam) == pytest.approx(d0 / lam, rel=1e-12)
    voi = madsen(
        "liver", VoiKind.ORGAN, d0 * math.exp(-lam * t), t, 1500.0, population_lambda_per_h=lam
    )
    assert voi.method is DoseMethod.MADSEN
    assert voi.mean_gy == pytest.approx(d0 / lam)
    assert voi.effective_half_life_h == pytest.approx(70.0)


def test_madsen_sd_combines_rate_and_lambda() -> None:
    lam, rate, t = 0.01, 0.02, 96.0
    sd_rate, sd_lam = 0.002, 0.001
    voi = madsen("L1", VoiKind.LESION, rate, t, 5.0, lam, sd_rate, sd_lam)
    step = 1e-7
    d_lam = (madsen_dose_gy(rate, t, lam + step) - madsen_dose_gy(rate, t, lam - step)) / (2 * step)
    d_rate = madsen_dose_gy(1.0, t, lam)
    assert voi.mean_gy_sd == pytest.approx(math.hypot(d_rate * sd_rate, d_lam * sd_lam), rel=1e-6)


def test_madsen_and_hanscheid_refuse_bad_inputs() -> None:
    with pytest.raises(DosimetryError):
        madsen_dose_gy(0.01, 24.0, 0.0)
    with pytest.raises(DosimetryError):
        hanscheid_dose_gy(0.01, 0.0)


@settings(max_examples=40, deadline=None)
@given(st.floats(1.0, 1e7), st.floats(1.0, 1e7), st.floats(0.5, 2000.0), st.floats(12.0, 48.0))
def test_scaled_dose_is_linear_in_counts(
    counts: float, factor: float, volume_ml: float, elapsed_h: float
) -> None:
    reference_scan = VoiScan(1e5, 150.0, 24.0)
    one = scale_from_reference_cycle(
        _reference(), reference_scan, VoiScan(counts, volume_ml, elapsed_h)
    )
    scaled = VoiScan(counts * factor, volume_ml, elapsed_h)
    two = scale_from_reference_cycle(_reference(), reference_scan, scaled)
    assert two.mean_gy == pytest.approx(factor * one.mean_gy, rel=1e-9)
