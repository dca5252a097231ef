"""EANM uncertainty budget: known answers, Monte-Carlo agreement, coverage, sums."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theranode.dosimetry.errors import DosimetryError, InsufficientDataError
from theranode.dosimetry.kinetics import fit_monoexponential
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.records_json import record_from_json, record_to_json
from theranode.dosimetry.recovery import SigmoidRecovery, SigmoidRecoveryFit
from theranode.dosimetry.results import DoseMethod, VoiKind
from theranode.dosimetry.uncertainty import (
    CORRELATED_BETWEEN_VOIS,
    DoseUncertainty,
    ReferenceCycle,
    TimePointSpread,
    UncertaintyComponent,
    UncertaintyInputs,
    kinetic_covariance,
    mean_of_doses,
    monte_carlo_budget,
    multi_time_point_budget,
    perturbation_relative,
    poisson_relative,
    recovery_log_slope,
    recovery_relative,
    relative_dose_variance,
    segmentation_relative,
    single_time_point_budget,
    sum_of_doses,
)

C = UncertaintyComponent
LAMBDA_PHYS = nuclear_data("Lu-177").decay_constant_per_h
LAMBDA_KIDNEY = math.log(2.0) / 60.0
PAPER_TIMES_H = (4.0, 24.0, 72.0, 192.0)
NO_CALIBRATION = UncertaintyInputs(calibration_relative=0.0)


def _curve(
    times: tuple[float, ...] = PAPER_TIMES_H,
    counts: float = 0.05,
    d0: float = 2.0,
    lam: float = LAMBDA_KIDNEY,
    **systematic: float,
) -> list[TimePointSpread]:
    return [
        TimePointSpread(t, d0 * math.exp(-lam * t), counts_relative=counts, **systematic)
        for t in times
    ]


# -- exact known answers ----------------------------------------------------------
def test_only_calibration_gives_its_relative_uncertainty():
    spread = TimePointSpread(24.0, 0.5)
    budget = single_time_point_budget(
        40.0, spread, UncertaintyInputs(calibration_relative=0.04, madsen_relative=0.0),
        DoseMethod.MADSEN,
    )
    assert budget.relative == pytest.approx(0.04, rel=1e-12)
    assert budget.standard_gy == pytest.approx(1.6, rel=1e-12)
    assert budget.dominant is C.CALIBRATION


def test_two_independent_systematics_add_in_quadrature():
    spread = TimePointSpread(24.0, 0.5, volume_relative=-0.04)
    inputs = UncertaintyInputs(calibration_relative=0.03, hanscheid_relative=0.0)
    budget = single_time_point_budget(10.0, spread, inputs, DoseMethod.HANSCHEID)
    assert budget.relative == pytest.approx(0.05, rel=1e-12)
    assert budget.components[C.VOLUME] == pytest.approx(0.04)
    assert budget.interval(k=2) == pytest.approx((9.0, 11.0))


def test_calibration_passes_through_the_fit_exactly():
    budget = multi_time_point_budget(_curve(), UncertaintyInputs(calibration_relative=0.035),
                                     LAMBDA_PHYS)
    assert budget.components[C.CALIBRATION] == pytest.approx(0.035, rel=1e-12)


@pytest.mark.parametrize("shift", [0.07, -0.03])
def test_a_systematic_shift_common_to_every_point_moves_the_dose_by_as_much(shift):
    # D is homogeneous of degree one in the values: Σ ∂D/∂y_i · y_i = D.
    budget = multi_time_point_budget(
        _curve(partial_volume_relative=shift, volume_relative=shift / 2), NO_CALIBRATION,
        LAMBDA_PHYS,
    )
    assert budget.components[C.PARTIAL_VOLUME] == pytest.approx(abs(shift), rel=1e-6)
    assert budget.components[C.VOLUME] == pytest.approx(abs(shift) / 2, rel=1e-6)


def test_two_time_points_match_the_hand_derived_sensitivities():
    # Two points fix the curve: λ = ln(y1/y2)/Δ, D = y1 e^(λ t1)/λ, so
    # ∂lnD/∂ln y1 = 1 + (t1 − 1/λ)/Δ and ∂lnD/∂ln y2 = −(t1 − 1/λ)/Δ.
    t1, t2, c1, c2 = 24.0, 96.0, 0.04, 0.06
    spreads = [
        TimePointSpread(t1, 1.0 * math.exp(-LAMBDA_KIDNEY * t1), counts_relative=c1),
        TimePointSpread(t2, 1.0 * math.exp(-LAMBDA_KIDNEY * t2), counts_relative=c2),
    ]
    a = (t1 - 1.0 / LAMBDA_KIDNEY) / (t2 - t1)
    expected = math.hypot((1 + a) * c1, a * c2)
    budget = multi_time_point_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS)
    assert budget.dose_gy == pytest.approx(1.0 / LAMBDA_KIDNEY, rel=1e-8)
    assert budget.components[C.COUNTS] == pytest.approx(expected, rel=1e-6)
    assert kinetic_covariance(spreads, LAMBDA_PHYS).reduced_chi_square is None
    assert budget.components[C.KINETIC_FIT] == 0.0


def test_random_components_add_up_to_the_fit_covariance_and_the_delta_method():
    spreads = [
        TimePointSpread(t, 2.0 * math.exp(-LAMBDA_KIDNEY * t), 0.05, 0.0 if t == 4.0 else 0.03)
        for t in PAPER_TIMES_H
    ]
    budget = multi_time_point_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS)
    fit = kinetic_covariance(spreads, LAMBDA_PHYS)
    random = math.hypot(budget.components[C.COUNTS], budget.components[C.REGISTRATION])
    formula = relative_dose_variance(fit.initial_value, fit.lambda_per_h, fit.covariance)
    assert random == pytest.approx(math.sqrt(formula), rel=1e-9)
    sd = [s.value * s.random_relative for s in spreads]
    reference = fit_monoexponential(PAPER_TIMES_H, [s.value for s in spreads], LAMBDA_PHYS, sd=sd)
    assert random == pytest.approx(reference.integral_sd / reference.integral, rel=1e-9)


def test_relative_dose_variance_is_the_eanm_formula():
    cov = ((0.04, 1e-5), (1e-5, 1e-7))
    d0, lam = 2.0, 0.01
    expected = 0.04 / 4 + 1e-7 / 1e-4 - 2 * 1e-5 / (2.0 * 0.01)
    assert relative_dose_variance(d0, lam, cov) == pytest.approx(expected, rel=1e-12)


def test_scatter_beyond_the_stated_noise_becomes_the_kinetic_fit_component():
    scatter = (1.10, 0.90, 1.08, 0.93)
    spreads = [
        TimePointSpread(t, 2.0 * math.exp(-LAMBDA_KIDNEY * t) * f, counts_relative=0.02)
        for t, f in zip(PAPER_TIMES_H, scatter, strict=True)
    ]
    fit = kinetic_covariance(spreads, LAMBDA_PHYS)
    t = np.array(PAPER_TIMES_H)
    y = np.array([s.value for s in spreads])
    model = fit.initial_value * np.exp(-fit.lambda_per_h * t)
    chi2 = float(np.sum(((model - y) / (0.02 * y)) ** 2)) / (4 - 2)
    assert fit.reduced_chi_square == pytest.approx(chi2, rel=1e-9)
    assert chi2 > 1
    budget = multi_time_point_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS)
    counts = budget.components[C.COUNTS]
    assert budget.components[C.KINETIC_FIT] == pytest.approx(math.sqrt(chi2 - 1) * counts)
    assert budget.relative == pytest.approx(math.sqrt(chi2) * counts)
    assert budget.dominant is C.KINETIC_FIT


def test_scatter_within_the_stated_noise_adds_nothing():
    scatter = (1.01, 0.99, 1.01, 0.99)
    spreads = [
        TimePointSpread(t, math.exp(-LAMBDA_KIDNEY * t) * f, counts_relative=0.05)
        for t, f in zip(PAPER_TIMES_H, scatter, strict=True)
    ]
    assert kinetic_covariance(spreads, LAMBDA_PHYS).reduced_chi_square < 1
    budget = multi_time_point_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS)
    assert budget.components[C.KINETIC_FIT] == 0.0


def test_lambda_clipped_at_physical_decay_propagates_through_the_amplitude_only():
    # Slower than physical decay: λ is clipped, Ḋ₀ = Σ w y e / Σ w e² with
    # e = e^(−λ_phys t), so ∂D/∂y_i = w_i e_i / (λ_phys Σ w e²).
    lam = LAMBDA_PHYS * 0.7
    spreads = _curve(counts=0.05, lam=lam)
    fit = kinetic_covariance(spreads, LAMBDA_PHYS)
    assert fit.clipped
    assert fit.lambda_per_h == LAMBDA_PHYS
    assert fit.lambda_sd_per_h == 0.0
    t = np.array(PAPER_TIMES_H)
    y = np.array([s.value for s in spreads])
    w, e = 1 / (0.05 * y) ** 2, np.exp(-LAMBDA_PHYS * t)
    sensitivity = w * e / (LAMBDA_PHYS * np.sum(w * e * e))
    assert fit.dose_sensitivity_h == pytest.approx(tuple(sensitivity), rel=1e-9)
    budget = multi_time_point_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS)
    expected = math.sqrt(float(np.sum((sensitivity * y * 0.05) ** 2))) / fit.dose_gy
    assert budget.components[C.COUNTS] == pytest.approx(expected, rel=1e-9)


def test_budget_is_relative_and_ignores_the_order_of_the_time_points():
    spreads = _curve(counts=0.05, volume_relative=0.02)
    budget = multi_time_point_budget(spreads, UncertaintyInputs(), LAMBDA_PHYS)
    scaled = [
        TimePointSpread(s.elapsed_h, 3.0 * s.value, s.counts_relative, volume_relative=0.02)
        for s in reversed(spreads)
    ]
    other = multi_time_point_budget(scaled, UncertaintyInputs(), LAMBDA_PHYS)
    assert other.dose_gy == pytest.approx(3.0 * budget.dose_gy, rel=1e-8)
    for component, value in budget.components.items():
        assert other.components[component] == pytest.approx(value, rel=1e-6, abs=1e-12)


# -- Monte-Carlo ----------------------------------------------------------------------
def test_monte_carlo_agrees_with_the_analytic_budget_on_a_well_sampled_curve():
    spreads = [
        TimePointSpread(t, 2.0 * math.exp(-LAMBDA_KIDNEY * t), 0.05, 0.0 if t == 4.0 else 0.03,
                        partial_volume_relative=0.03, volume_relative=-0.02)
        for t in PAPER_TIMES_H
    ]
    inputs = UncertaintyInputs(calibration_relative=0.05)
    analytic = multi_time_point_budget(spreads, inputs, LAMBDA_PHYS)
    sampled = monte_carlo_budget(spreads, inputs, LAMBDA_PHYS, n_trials=1000, seed=3)
    assert sampled.n_failed == 0
    assert sampled.standard_gy == pytest.approx(analytic.standard_gy, rel=0.10)
    assert sampled.mean_gy == pytest.approx(analytic.dose_gy, rel=0.02)
    low, high = analytic.interval(k=1.96)
    assert sampled.low_gy == pytest.approx(low, rel=0.03)
    assert sampled.high_gy == pytest.approx(high, rel=0.03)


def test_monte_carlo_is_wider_and_skewed_with_two_noisy_points():
    # Where linearisation fails: λ from two points 15 % noisy is far from
    # linear in the data, and D = Ḋ₀/λ has a long upper tail.
    spreads = _curve(times=(24.0, 72.0), counts=0.15)
    analytic = multi_time_point_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS)
    sampled = monte_carlo_budget(spreads, NO_CALIBRATION, LAMBDA_PHYS, n_trials=600, seed=1)
    assert sampled.standard_gy > 1.2 * analytic.standard_gy
    assert sampled.high_gy - sampled.dose_gy > 1.5 * (sampled.dose_gy - sampled.low_gy)


def test_monte_carlo_is_reproducible_with_its_seed():
    spreads = _curve()
    first = monte_carlo_budget(spreads, UncertaintyInputs(), LAMBDA_PHYS, n_trials=50, seed=7)
    again = monte_carlo_budget(spreads, UncertaintyInputs(), LAMBDA_PHYS, n_trials=50, seed=7)
    assert first == again


def test_k2_interval_covers_the_truth_about_95_percent_of_the_time():
    # The Birge scaling only ever widens the interval: over 4000 curves it
    # covered 96.2 % (95.0 % without it); 1000 curves keep the test's own
    # sampling sd at 0.6 %.
    rng = np.random.default_rng(2024)
    inputs = UncertaintyInputs(calibration_relative=0.03)
    truth_gy = 2.0 / LAMBDA_KIDNEY
    n_curves, covered = 1000, 0
    for _ in range(n_curves):
        calibration = 1 + 0.03 * rng.standard_normal()
        spreads = []
        for t in PAPER_TIMES_H:
            counts, registration = 0.06, 0.0 if t == 4.0 else 0.03
            noise = 1 + counts * rng.standard_normal() + registration * rng.standard_normal()
            value = 2.0 * math.exp(-LAMBDA_KIDNEY * t) * calibration * noise
            spreads.append(TimePointSpread(t, value, counts, registration))
        low, high = multi_time_point_budget(spreads, inputs, LAMBDA_PHYS).interval(k=2)
        covered += low <= truth_gy <= high
    assert 0.93 <= covered / n_curves <= 0.97


# -- single time point ----------------------------------------------------------------
def test_scaled_single_time_point_adds_the_reference_cycle():
    spread = TimePointSpread(26.0, 0.4, counts_relative=0.02, partial_volume_relative=0.03)
    reference = ReferenceCycle(
        lambda_eff_sd_per_h=0.001, delta_h=2.0, dose_random_relative=0.03,
        scan_counts_relative=0.02,
    )
    inputs = UncertaintyInputs(calibration_relative=0.05, scaled_method_relative=0.05)
    budget = single_time_point_budget(
        30.0, spread, inputs, DoseMethod.SINGLE_TIME_POINT_SCALED, reference
    )
    reference_relative = math.sqrt(0.002**2 + 0.03**2 + 0.02**2)
    assert budget.components[C.REFERENCE_CYCLE] == pytest.approx(reference_relative)
    expected = math.sqrt(0.05**2 + 0.03**2 + 0.02**2 + 0.05**2 + reference_relative**2)
    assert budget.relative == pytest.approx(expected, rel=1e-12)


def test_reference_lambda_uncertainty_grows_with_the_scan_time_difference():
    spreads = _curve(counts=0.05)
    lam_sd = kinetic_covariance(spreads, LAMBDA_PHYS).lambda_sd_per_h
    assert lam_sd > 0
    near = ReferenceCycle(lam_sd, delta_h=1.0).relative
    far = ReferenceCycle(lam_sd, delta_h=-10.0).relative
    assert far == pytest.approx(10 * near)


def test_reference_cycle_from_the_reference_fit_and_budget():
    spreads = _curve(counts=0.05)
    fit = kinetic_covariance(spreads, LAMBDA_PHYS)
    budget = multi_time_point_budget(spreads, UncertaintyInputs(), LAMBDA_PHYS)
    reference = ReferenceCycle.from_reference(fit, budget, delta_h=3.0, scan_counts_relative=0.02)
    # σ(λ) of a noise-free curve is that of the stated σ only: no Birge scaling.
    assert fit.scale == 1.0
    assert reference.lambda_eff_sd_per_h == pytest.approx(math.sqrt(fit.covariance[1][1]))
    assert reference.dose_random_relative == pytest.approx(budget.components[C.COUNTS])
    assert reference.scan_counts_relative == 0.02


def test_method_spread_is_the_one_of_the_method():
    inputs = UncertaintyInputs(hanscheid_relative=0.2, madsen_relative=0.15)
    spread = TimePointSpread(24.0, 1.0)
    for method, spread_of_method in ((DoseMethod.HANSCHEID, 0.2), (DoseMethod.MADSEN, 0.15)):
        budget = single_time_point_budget(5.0, spread, inputs, method)
        assert budget.components[C.SINGLE_TIME_POINT_METHOD] == spread_of_method


# -- sums -------------------------------------------------------------------------------
def test_course_total_adds_shared_components_linearly_and_the_others_in_quadrature():
    cycle1 = DoseUncertainty(10.0, {C.CALIBRATION: 0.05, C.COUNTS: 0.04, C.VOLUME: 0.06})
    cycle2 = DoseUncertainty(20.0, {C.CALIBRATION: 0.05, C.COUNTS: 0.03})
    total = sum_of_doses([(10.0, cycle1), (20.0, cycle2)])
    assert total.dose_gy == 30.0
    assert total.components[C.CALIBRATION] == pytest.approx((0.5 + 1.0) / 30)
    assert total.components[C.COUNTS] == pytest.approx(math.hypot(0.4, 0.6) / 30)
    assert total.components[C.VOLUME] == pytest.approx(0.6 / 30)
    assert total.standard_gy == pytest.approx(math.sqrt(1.5**2 + 0.4**2 + 0.6**2 + 0.6**2))


def test_sum_applies_relative_components_to_the_dose_given():
    # A budget made before recovery correction still applies to the corrected dose.
    budget = DoseUncertainty(4.0, {C.CALIBRATION: 0.05})
    total = sum_of_doses([(8.0, budget), (8.0, budget)])
    assert total.standard_gy == pytest.approx(0.05 * 16.0)


def test_scaled_cycles_share_their_reference_cycle():
    scaled = DoseUncertainty(10.0, {C.REFERENCE_CYCLE: 0.1, C.SINGLE_TIME_POINT_METHOD: 0.05})
    total = sum_of_doses([(10.0, scaled), (10.0, scaled)])
    assert total.components[C.REFERENCE_CYCLE] == pytest.approx(0.1)
    assert total.components[C.SINGLE_TIME_POINT_METHOD] == pytest.approx(0.05 / math.sqrt(2))


def test_mean_lesion_index_shares_calibration_but_not_reference_kinetics():
    lesion = DoseUncertainty(50.0, {C.CALIBRATION: 0.05, C.REFERENCE_CYCLE: 0.1})
    items = [(40.0, lesion), (60.0, lesion)]
    mean = mean_of_doses(items)
    assert mean.dose_gy == pytest.approx(50.0)
    assert mean.components[C.CALIBRATION] == pytest.approx(0.05)
    assert mean.components[C.REFERENCE_CYCLE] == pytest.approx(math.hypot(4.0, 6.0) / 100)
    assert C.REFERENCE_CYCLE not in CORRELATED_BETWEEN_VOIS


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0.1, 100.0),
            st.floats(0.0, 0.3),
            st.floats(0.0, 0.3),
            st.floats(0.0, 0.3),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_sum_lies_between_full_independence_and_full_correlation(rows):
    items = [
        (dose, DoseUncertainty(dose, {C.CALIBRATION: cal, C.COUNTS: counts, C.VOLUME: vol}))
        for dose, cal, counts, vol in rows
    ]
    total = sum_of_doses(items)
    standards = [u.standard_gy for _, u in items]
    assert total.dose_gy == pytest.approx(sum(dose for dose, _ in items))
    assert math.hypot(*standards) * (1 - 1e-9) <= total.standard_gy
    assert total.standard_gy <= sum(standards) * (1 + 1e-9)
    mean = mean_of_doses(items)
    assert mean.dose_gy == pytest.approx(total.dose_gy / len(items))


def test_sum_needs_a_dose():
    with pytest.raises(InsufficientDataError, match="at least one dose"):
        sum_of_doses([])


# -- the record -------------------------------------------------------------------------
def test_dose_uncertainty_round_trips_through_the_result_codec():
    budget = DoseUncertainty(23.5, {C.CALIBRATION: 0.05, C.VOLUME: 0.12, C.COUNTS: 0.02},
                             effective_decay_sd_per_h=0.0012)
    doc = json.loads(json.dumps(record_to_json(budget, DoseUncertainty, "u", _no_arrays)))
    assert dict(doc["components"])["volume"] == 0.12
    again = record_from_json(doc, DoseUncertainty, "u", _no_arrays)
    assert again == budget
    assert again.dominant is C.VOLUME
    assert sum(again.shares.values()) == pytest.approx(1.0)


def test_dose_uncertainty_refuses_unknown_components_and_bad_values():
    doc = record_to_json(DoseUncertainty(1.0, {C.COUNTS: 0.1}), DoseUncertainty, "u", _no_arrays)
    doc["components"][0][0] = "luck"
    with pytest.raises(DosimetryError, match="luck"):
        record_from_json(doc, DoseUncertainty, "u", _no_arrays)
    with pytest.raises(DosimetryError, match="≥ 0"):
        DoseUncertainty(1.0, {C.COUNTS: -0.1})
    with pytest.raises(DosimetryError, match="Unknown uncertainty component 'luck'"):
        DoseUncertainty(1.0, {"luck": 0.1})  # type: ignore[dict-item]


def _no_arrays(*args: object) -> Any:
    raise AssertionError("a dose uncertainty holds no arrays")


def test_reference_cycle_takes_the_random_part_of_the_reference_dose():
    budget = DoseUncertainty(
        10.0, {C.CALIBRATION: 0.05, C.COUNTS: 0.03, C.REGISTRATION: 0.04, C.KINETIC_FIT: 0.12}
    )
    assert budget.random_relative == pytest.approx(0.13)


def test_interval_low_end_stays_at_zero_and_no_component_has_no_dominant():
    assert DoseUncertainty(1.0, {C.COUNTS: 0.8}).interval(k=2) == pytest.approx((0.0, 2.6))
    assert DoseUncertainty(1.0).dominant is None
    assert DoseUncertainty(1.0).standard_gy == 0.0


# -- inputs and helpers -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("calibration_relative", 5.0, r"0.05 is 5 %"),
        ("lesion_volume_relative", -0.1, "lesion_volume_relative"),
        ("psf_fwhm_sd_mm", math.nan, "psf_fwhm_sd_mm"),
        ("registration_sd_mm", 80.0, "registration_sd_mm"),
    ],
)
def test_inputs_are_validated(field, value, message):
    with pytest.raises(DosimetryError, match=message):
        UncertaintyInputs(**{field: value})


def test_inputs_pick_volume_and_method_spreads():
    inputs = UncertaintyInputs(organ_volume_relative=0.04, lesion_volume_relative=0.2)
    assert inputs.volume_relative(VoiKind.LESION) == 0.2
    assert inputs.volume_relative(VoiKind.MARROW) == 0.04
    with pytest.raises(DosimetryError, match="not a single-time-point method"):
        inputs.method_relative(DoseMethod.MULTI_TIME_POINT)


def test_time_points_are_validated():
    with pytest.raises(DosimetryError, match="≥ 0 h"):
        TimePointSpread(-1.0, 1.0)
    with pytest.raises(DosimetryError, match="signed relative change"):
        TimePointSpread(4.0, 1.0, partial_volume_relative=1.5)
    with pytest.raises(InsufficientDataError, match="single_time_point_budget"):
        multi_time_point_budget(_curve(times=(24.0,)), UncertaintyInputs(), LAMBDA_PHYS)
    with pytest.raises(DosimetryError, match="positive count-noise"):
        multi_time_point_budget(_curve(counts=0.0), UncertaintyInputs(), LAMBDA_PHYS)


def test_scaled_budget_needs_its_reference():
    with pytest.raises(DosimetryError, match="reference=ReferenceCycle"):
        single_time_point_budget(
            1.0, TimePointSpread(24.0, 1.0), UncertaintyInputs(),
            DoseMethod.SINGLE_TIME_POINT_SCALED,
        )


def test_engine_helpers():
    assert poisson_relative(10_000) == pytest.approx(0.01)
    assert perturbation_relative(10.0, 9.0, 11.5) == pytest.approx(0.125)
    # RC = 1/(1 + b/V): d ln RC / d ln V = (b/V)/(1 + b/V) = 0.5 at V = b.
    assert recovery_log_slope(SigmoidRecovery(1.0, 2.0, 1.0), 2.0) == pytest.approx(0.5, rel=1e-4)
    # A larger VOI dilutes the blurred mean (−0.3) and raises RC (+0.5): the
    # corrected value falls by 0.8 × u(V)/V.
    assert segmentation_relative(0.1, mean_log_slope=-0.3, recovery_log_slope=0.5) == (
        pytest.approx(-0.08)
    )
    with pytest.raises(DosimetryError, match="positive number of counts"):
        poisson_relative(0)


def test_recovery_term_uses_the_fitted_curve_when_it_has_a_covariance():
    inputs = UncertaintyInputs(recovery_curve_relative=0.07)
    sigmoid = SigmoidRecovery(1.0, 2.0, 1.0)
    assert recovery_relative(sigmoid, 4.0, inputs) == 0.07
    # Only the plateau uncertain (u(a) = 0.02): u(RC)/RC = u(a)/a at any volume.
    fitted = SigmoidRecoveryFit(
        curve=sigmoid,
        covariance=((0.02**2, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
        residual_sd=0.01,
        n_points=6,
    )
    assert recovery_relative(fitted, 4.0, inputs) == pytest.approx(0.02)
