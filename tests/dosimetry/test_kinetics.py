"""Kinetic models: fits, integrals, uncertainty, model choice, voxel-wise fits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.integrate import quad

from theranode.dosimetry.errors import FitError, InsufficientDataError
from theranode.dosimetry.kinetics import (
    HeadSegment,
    aicc,
    fit_best,
    fit_biexponential_uptake,
    fit_curve,
    fit_monoexponential,
    fit_voxels_monoexponential,
    integrate_trapezoid_tail,
    trapezoid_weights,
)
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.results import KineticModel

LAMBDA_PHYS = nuclear_data("Lu-177").decay_constant_per_h
PAPER_TIMES_H = np.array([4.0, 24.0, 72.0, 192.0])
DENSE_TIMES_H = np.array([1.0, 4.0, 12.0, 24.0, 48.0, 72.0, 120.0, 192.0])
LAMBDA_KIDNEY = math.log(2.0) / 55.0


def _mono(t: np.ndarray, d0: float, lam: float) -> np.ndarray:
    return np.asarray(d0 * np.exp(-lam * t))


def _biexp(t: np.ndarray, a: float, lam1: float, lam2: float) -> np.ndarray:
    return np.asarray(a * (np.exp(-lam1 * t) - np.exp(-lam2 * t)))


# -- monoexponential ----------------------------------------------------------
def test_monoexponential_recovers_lambda_and_integral() -> None:
    d0 = 0.05
    fit = fit_monoexponential(PAPER_TIMES_H, _mono(PAPER_TIMES_H, d0, LAMBDA_KIDNEY), LAMBDA_PHYS)
    assert fit.model is KineticModel.MONOEXPONENTIAL
    assert fit.parameters["lambda_per_h"] == pytest.approx(LAMBDA_KIDNEY, rel=1e-6)
    assert fit.effective_half_life_h == pytest.approx(55.0, rel=1e-6)
    assert fit.integral == pytest.approx(d0 / LAMBDA_KIDNEY, rel=1e-6)
    assert fit.uptake_model == "instantaneous uptake at injection"
    assert fit.integral_sd < 1e-6 * fit.integral


def test_single_exponential_integrates_to_a0_over_lambda() -> None:
    d0, lam = 3.0, math.log(2.0) / 80.0
    fit = fit_monoexponential(PAPER_TIMES_H, _mono(PAPER_TIMES_H, d0, lam), LAMBDA_PHYS)
    numeric, _ = quad(
        lambda t: fit.parameters["initial_value"] * math.exp(-fit.parameters["lambda_per_h"] * t),
        0,
        math.inf,
    )
    assert fit.integral == pytest.approx(numeric, rel=1e-9)
    assert fit.integral == pytest.approx(d0 / lam, rel=1e-9)


def test_slower_than_physical_decay_is_clipped() -> None:
    values = _mono(PAPER_TIMES_H, 1.0, 0.5 * LAMBDA_PHYS)
    fit = fit_monoexponential(PAPER_TIMES_H, values, LAMBDA_PHYS)
    assert fit.parameters["lambda_per_h"] == LAMBDA_PHYS
    e = np.exp(-LAMBDA_PHYS * PAPER_TIMES_H)
    assert fit.parameters["initial_value"] == pytest.approx(values @ e / (e @ e), rel=1e-12)
    assert fit.integral == pytest.approx(fit.parameters["initial_value"] / LAMBDA_PHYS)
    assert any("clipped" in note for note in fit.notes)
    assert fit.integral_sd > 0


def test_integral_sd_shrinks_with_less_noise() -> None:
    rng = np.random.default_rng(11)
    clean = _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY)
    relative_noise = rng.standard_normal(PAPER_TIMES_H.size)
    sds = [
        fit_monoexponential(
            PAPER_TIMES_H, clean * (1 + level * relative_noise), LAMBDA_PHYS
        ).integral_sd
        for level in (0.1, 0.01, 0.001)
    ]
    assert sds[0] > sds[1] > sds[2] > 0


def test_integral_sd_matches_the_monte_carlo_spread() -> None:
    rng = np.random.default_rng(5)
    clean = _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY)
    sd = 0.03 * clean
    fits = [
        fit_monoexponential(
            PAPER_TIMES_H, clean + sd * rng.standard_normal(clean.size), LAMBDA_PHYS, sd=sd
        )
        for _ in range(300)
    ]
    spread = np.std([f.integral for f in fits])
    predicted = np.median([f.integral_sd for f in fits])
    assert predicted == pytest.approx(spread, rel=0.2)


def test_given_sd_is_absolute() -> None:
    values = _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY) * np.array([1.01, 0.99, 1.02, 0.98])
    one = fit_monoexponential(PAPER_TIMES_H, values, LAMBDA_PHYS, sd=0.01)
    two = fit_monoexponential(PAPER_TIMES_H, values, LAMBDA_PHYS, sd=0.02)
    assert two.integral == pytest.approx(one.integral, rel=1e-9)
    assert two.integral_sd == pytest.approx(2 * one.integral_sd, rel=1e-6)


def test_two_points_without_sd_have_unknown_uncertainty() -> None:
    fit = fit_monoexponential([24.0, 72.0], [2.0, 1.0], LAMBDA_PHYS)
    assert fit.parameters["lambda_per_h"] == pytest.approx(math.log(2.0) / 48.0, rel=1e-9)
    assert math.isnan(fit.integral_sd)
    assert fit.aicc is None


def test_single_point_is_a_fit_error() -> None:
    with pytest.raises(FitError, match="single_time_point"):
        fit_monoexponential([24.0], [1.0], LAMBDA_PHYS)


@pytest.mark.parametrize(
    ("times", "values", "match"),
    [
        ([4.0, 4.0, 24.0], [1.0, 1.0, 0.5], "distinct"),
        ([4.0, 24.0], [1.0, 0.5, 0.2], "equal length"),
        ([4.0, 24.0], [-1.0, 0.0], "positive"),
        ([4.0, float("nan")], [1.0, 0.5], "finite"),
    ],
)
def test_bad_curves_are_refused(times: list[float], values: list[float], match: str) -> None:
    with pytest.raises(FitError, match=match):
        fit_monoexponential(times, values, LAMBDA_PHYS)


def test_unsorted_times_are_sorted() -> None:
    order = [2, 0, 3, 1]
    values = _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY)
    fit = fit_monoexponential(PAPER_TIMES_H[order], values[order], LAMBDA_PHYS)
    assert fit.integral == pytest.approx(1.0 / LAMBDA_KIDNEY, rel=1e-6)


def test_non_positive_lambda_phys_is_refused() -> None:
    with pytest.raises(FitError, match="physical decay constant"):
        fit_monoexponential(PAPER_TIMES_H, _mono(PAPER_TIMES_H, 1.0, 0.01), 0.0)


# -- bi-exponential -----------------------------------------------------------
def test_biexponential_recovers_noise_free_parameters() -> None:
    a, lam1, lam2 = 2.0, math.log(2.0) / 70.0, 0.3
    fit = fit_biexponential_uptake(DENSE_TIMES_H, _biexp(DENSE_TIMES_H, a, lam1, lam2), LAMBDA_PHYS)
    assert fit.parameters["lambda_washout_per_h"] == pytest.approx(lam1, rel=1e-6)
    assert fit.parameters["lambda_uptake_per_h"] == pytest.approx(lam2, rel=1e-5)
    assert fit.integral == pytest.approx(a * (1 / lam1 - 1 / lam2), rel=1e-6)
    assert fit.effective_half_life_h == pytest.approx(70.0, rel=1e-6)


def test_biexponential_needs_three_points() -> None:
    with pytest.raises(FitError, match="at least 3"):
        fit_biexponential_uptake([4.0, 24.0], [1.0, 2.0], LAMBDA_PHYS)


# -- AICc and model choice ----------------------------------------------------
def test_aicc_formula() -> None:
    assert aicc(2.0, 6, 2) == pytest.approx(6 * math.log(2.0 / 6) + 4 + 12 / 3)
    with pytest.raises(InsufficientDataError):
        aicc(1.0, 4, 3)


def test_aicc_picks_biexponential_for_uptake_data() -> None:
    rng = np.random.default_rng(2)
    clean = _biexp(DENSE_TIMES_H, 5.0, math.log(2.0) / 60.0, 0.15)
    fit = fit_best(DENSE_TIMES_H, clean * (1 + 0.02 * rng.standard_normal(clean.size)), LAMBDA_PHYS)
    assert fit.model is KineticModel.BIEXPONENTIAL_UPTAKE
    assert any("chosen by AICc" in note for note in fit.notes)


def test_aicc_picks_monoexponential_for_mono_data() -> None:
    rng = np.random.default_rng(2)
    clean = _mono(DENSE_TIMES_H, 3.0, math.log(2.0) / 60.0)
    fit = fit_best(DENSE_TIMES_H, clean * (1 + 0.02 * rng.standard_normal(clean.size)), LAMBDA_PHYS)
    assert fit.model is KineticModel.MONOEXPONENTIAL


def test_paper_schedule_ranks_only_the_monoexponential() -> None:
    fit = fit_best(PAPER_TIMES_H, _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY), LAMBDA_PHYS)
    assert fit.model is KineticModel.MONOEXPONENTIAL
    assert fit.aicc is not None
    assert any("biexponential-uptake not ranked" in note for note in fit.notes)


def test_three_points_fall_back_to_an_unranked_monoexponential() -> None:
    fit = fit_best(PAPER_TIMES_H[:3], _mono(PAPER_TIMES_H[:3], 1.0, LAMBDA_KIDNEY), LAMBDA_PHYS)
    assert fit.model is KineticModel.MONOEXPONENTIAL
    assert fit.aicc is None
    assert any("without AICc" in note for note in fit.notes)


def test_one_point_falls_back_to_the_trapezoid() -> None:
    fit = fit_best([24.0], [1.0], LAMBDA_PHYS)
    assert fit.model is KineticModel.TRAPEZOID_TAIL
    assert fit.integral == pytest.approx(24.0 + 1.0 / LAMBDA_PHYS)


def test_trapezoid_cannot_be_ranked() -> None:
    with pytest.raises(FitError, match="fallback"):
        fit_best(
            DENSE_TIMES_H,
            np.ones(DENSE_TIMES_H.size),
            LAMBDA_PHYS,
            models=(KineticModel.TRAPEZOID_TAIL,),
        )


def test_fit_curve_dispatches() -> None:
    values = _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY)
    for model in KineticModel:
        assert fit_curve(model, PAPER_TIMES_H, values, LAMBDA_PHYS).model is model


# -- trapezoid ------------------------------------------------------------------
def test_trapezoid_known_values() -> None:
    t, y = [4.0, 24.0, 72.0], [2.0, 1.0, 0.5]
    body = (2.0 + 1.0) / 2 * 20 + (1.0 + 0.5) / 2 * 48
    tail = 0.5 / LAMBDA_PHYS
    constant = integrate_trapezoid_tail(t, y, LAMBDA_PHYS)
    linear = integrate_trapezoid_tail(t, y, LAMBDA_PHYS, head=HeadSegment.LINEAR_FROM_ZERO)
    assert constant.integral == pytest.approx(8.0 + body + tail)
    assert linear.integral == pytest.approx(4.0 + body + tail)
    assert math.isnan(constant.integral_sd)
    weights = trapezoid_weights(t, LAMBDA_PHYS)
    assert weights @ np.asarray(y) == pytest.approx(constant.integral)


def test_trapezoid_sd_propagates_linearly() -> None:
    t, y, sd = [4.0, 24.0, 72.0], [2.0, 1.0, 0.5], [0.1, 0.2, 0.3]
    weights = trapezoid_weights(t, LAMBDA_PHYS)
    fit = integrate_trapezoid_tail(t, y, LAMBDA_PHYS, sd=sd)
    assert fit.integral_sd == pytest.approx(math.sqrt(np.sum((weights * np.asarray(sd)) ** 2)))


def test_trapezoid_of_a_physically_decaying_curve_with_constant_head() -> None:
    t = np.linspace(0.0, 400.0, 4001)
    fit = integrate_trapezoid_tail(t, _mono(t, 1.0, LAMBDA_PHYS), LAMBDA_PHYS)
    assert fit.integral == pytest.approx(1.0 / LAMBDA_PHYS, rel=1e-5)


# -- voxel-wise -----------------------------------------------------------------
def test_voxel_fit_equals_voi_fit_for_uniform_kinetics() -> None:
    rng = np.random.default_rng(9)
    amplitude = rng.uniform(0.1, 2.0, (6, 7, 8))
    mask = rng.uniform(size=amplitude.shape) < 0.5
    stack = np.exp(-LAMBDA_KIDNEY * PAPER_TIMES_H)[:, None, None, None] * amplitude[None]
    voxels = fit_voxels_monoexponential(PAPER_TIMES_H, stack, LAMBDA_PHYS, mask=mask)
    voi_curve = stack[:, mask].mean(axis=1)
    voi = fit_monoexponential(PAPER_TIMES_H, voi_curve, LAMBDA_PHYS)
    assert voxels.dose[mask].mean() == pytest.approx(voi.integral, rel=1e-9)
    assert voxels.n_fallback == 0 and voxels.n_clipped == 0
    assert np.all(voxels.dose[~mask] == 0.0)
    assert np.all(np.isnan(voxels.lambda_per_h[~mask]))


def test_voxel_fit_differs_from_voi_fit_for_mixed_kinetics() -> None:
    lam = np.array([math.log(2.0) / 20.0, math.log(2.0) / 150.0]).reshape(1, 1, 2)
    stack = np.exp(-lam[None] * PAPER_TIMES_H[:, None, None, None])
    voxels = fit_voxels_monoexponential(PAPER_TIMES_H, stack, LAMBDA_PHYS)
    np.testing.assert_allclose(voxels.dose.ravel(), 1.0 / lam.ravel(), rtol=1e-9)
    voi = fit_monoexponential(PAPER_TIMES_H, stack.reshape(4, -1).mean(axis=1), LAMBDA_PHYS)
    assert abs(voi.integral - voxels.dose.mean()) > 0.01 * voi.integral


def test_voxel_fit_clips_and_refits() -> None:
    values = _mono(PAPER_TIMES_H, 1.0, 0.5 * LAMBDA_PHYS) * np.array([1.0, 1.02, 0.97, 1.01])
    stack = values.reshape(4, 1, 1, 1)
    voxels = fit_voxels_monoexponential(PAPER_TIMES_H, stack, LAMBDA_PHYS)
    voi = fit_monoexponential(PAPER_TIMES_H, values, LAMBDA_PHYS)
    assert voxels.n_clipped == 1
    assert voxels.lambda_per_h.item() == LAMBDA_PHYS
    assert voxels.dose.item() == pytest.approx(voi.integral, rel=1e-9)


def test_voxel_fit_falls_back_to_the_trapezoid() -> None:
    values = np.array([0.0, 1.0, 0.5, -0.1])
    stack = np.stack([values, _mono(PAPER_TIMES_H, 1.0, LAMBDA_KIDNEY)], axis=1).reshape(4, 1, 1, 2)
    voxels = fit_voxels_monoexponential(PAPER_TIMES_H, stack, LAMBDA_PHYS)
    expected = integrate_trapezoid_tail(
        PAPER_TIMES_H, np.clip(values, 0, None), LAMBDA_PHYS
    ).integral
    assert voxels.n_fallback == 1
    assert voxels.fallback_mask.ravel().tolist() == [True, False]
    assert voxels.dose.ravel()[0] == pytest.approx(expected)
    assert voxels.dose.ravel()[1] == pytest.approx(1.0 / LAMBDA_KIDNEY, rel=1e-9)


def test_voxel_fit_sorts_times() -> None:
    order = [3, 1, 0, 2]
    stack = _mono(PAPER_TIMES_H, 2.0, LAMBDA_KIDNEY).reshape(4, 1, 1, 1)
    voxels = fit_voxels_monoexponential(PAPER_TIMES_H[order], stack[order], LAMBDA_PHYS)
    assert voxels.dose.item() == pytest.approx(2.0 / LAMBDA_KIDNEY, rel=1e-9)


def test_voxel_fit_input_errors() -> None:
    with pytest.raises(InsufficientDataError):
        fit_voxels_monoexponential([24.0], np.ones((1, 2, 2, 2)), LAMBDA_PHYS)
    with pytest.raises(FitError, match="shape"):
        fit_voxels_monoexponential(PAPER_TIMES_H, np.ones((3, 2, 2, 2)), LAMBDA_PHYS)
    with pytest.raises(FitError, match="Mask"):
        fit_voxels_monoexponential(
            PAPER_TIMES_H, np.ones((4, 2, 2, 2)), LAMBDA_PHYS, mask=np.ones((2, 2))
        )


@settings(max_examples=40, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(5.0, 159.0))
def test_monoexponential_integral_property(d0: float, half_life_h: float) -> None:
    lam = math.log(2.0) / half_life_h
    fit = fit_monoexponential(PAPER_TIMES_H, _mono(PAPER_TIMES_H, d0, lam), LAMBDA_PHYS)
    assert fit.integral == pytest.approx(d0 / lam, rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    arrays(np.float64, 4, elements=st.floats(0, 10)),
    arrays(np.float64, 4, elements=st.floats(0, 10)),
    st.floats(-5, 5),
)
def test_trapezoid_is_linear_in_the_values(a: np.ndarray, b: np.ndarray, c: float) -> None:
    def integral(y: np.ndarray) -> float:
        return integrate_trapezoid_tail(PAPER_TIMES_H, y, LAMBDA_PHYS).integral

    assert integral(a + c * b) == pytest.approx(integral(a) + c * integral(b), abs=1e-9)
