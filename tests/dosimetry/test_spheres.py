"""The sphere phantom a site images for its recovery curve, and the sigmoid fit."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.recovery import (
    SigmoidRecovery,
    fit_sigmoid_recovery,
    sigmoid_recovery_fit,
)
from theranode.dosimetry.synthetic.phantom import CountingStatistics
from theranode.dosimetry.synthetic.spheres import (
    NEMA_SPHERE_DIAMETERS_MM,
    SphereRecovery,
    SphereSetup,
    measure_sphere_recovery,
    predicted_warm_rc,
    recovery_fit,
    recovery_table,
    sphere_fraction,
    sphere_volume_ml,
)

FWHM_MM = 10.0
Measured = tuple[SphereRecovery, ...]


@pytest.fixture(scope="module")
def cold() -> Measured:
    return measure_sphere_recovery(SphereSetup(fwhm_mm=FWHM_MM), seed=3)


def test_nema_spheres_have_their_stated_volumes(cold: Measured) -> None:
    assert [round(r.volume_ml, 2) for r in cold] == [0.52, 1.15, 2.57, 5.58, 11.49, 26.52]
    assert sphere_volume_ml(37.0) == pytest.approx(4.0 / 3.0 * math.pi * 18.5**3 / 1000.0)
    assert {r.fwhm_mm for r in cold} == {FWHM_MM}
    assert all(math.isinf(r.contrast) and not r.background_subtracted for r in cold)


def test_supersampled_occupancy_integrates_to_the_sphere_volume() -> None:
    spacing, radius = 4.0, 13.0
    axis = (np.arange(15) - 7.0) * spacing
    z, y, x = np.meshgrid(axis - 0.7, axis + 1.1, axis - 0.3, indexing="ij")
    distance = np.sqrt(x**2 + y**2 + z**2)
    steps = ((np.arange(8) + 0.5) / 8 - 0.5) * spacing
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), -1).reshape(-1, 3)
    fraction = sphere_fraction(radius, distance, spacing, offsets)
    assert fraction.sum() * spacing**3 == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)
    assert set(np.unique(fraction[distance < radius - 4])) == {1.0}


def test_rc_increases_with_volume_and_stays_below_one(cold: Measured) -> None:
    rcs = [r.rc for r in cold]
    assert all(b > a for a, b in pairwise(rcs))
    assert 0.0 < rcs[0] < 0.3 and rcs[-1] < 0.85


def test_rc_tends_to_one_as_the_surface_to_volume_ratio_falls() -> None:
    """The spill-out lives in a shell of fixed width at the surface, so 1 − RC ∝ 1/d."""
    measured = measure_sphere_recovery(
        SphereSetup(fwhm_mm=FWHM_MM, diameters_mm=(80.0, 160.0), supersampling=3), seed=1
    )
    loss = [1.0 - r.rc for r in measured]
    assert measured[1].rc > 0.9
    assert loss[1] / loss[0] == pytest.approx(0.5, abs=0.08)


def test_worse_resolution_recovers_less(cold: Measured) -> None:
    blurred = measure_sphere_recovery(SphereSetup(fwhm_mm=15.0), seed=3)
    assert all(b.rc < a.rc for a, b in zip(cold, blurred, strict=True))


@pytest.mark.parametrize("ratio", [4.0, 8.0])
def test_warm_background_raises_the_unsubtracted_rc_as_the_model_predicts(
    cold: Measured, ratio: float
) -> None:
    warm = measure_sphere_recovery(
        SphereSetup(fwhm_mm=FWHM_MM, sphere_to_background=ratio), seed=3
    )
    for w, c in zip(warm, cold, strict=True):
        assert w.contrast == ratio
        assert w.rc == pytest.approx(predicted_warm_rc(c.rc, ratio), abs=1e-9)
        assert w.rc > c.rc


def test_background_subtraction_gives_back_the_cold_rc(cold: Measured) -> None:
    subtracted = measure_sphere_recovery(
        SphereSetup(fwhm_mm=FWHM_MM, sphere_to_background=4.0, background_subtracted=True),
        seed=3,
    )
    for s, c in zip(subtracted, cold, strict=True):
        assert s.background_subtracted
        assert s.rc == pytest.approx(c.rc, abs=1e-9)


def test_noise_is_seeded_and_unbiased(cold: Measured) -> None:
    counting = CountingStatistics(cps_per_mbq=15.0, duration_s=1800.0)
    setup = SphereSetup(fwhm_mm=FWHM_MM, counting=counting, diameters_mm=(22.0, 37.0))
    first = measure_sphere_recovery(setup, seed=5)
    assert measure_sphere_recovery(setup, seed=5) == first
    assert measure_sphere_recovery(setup, seed=6) != first
    # Every seed also moves the spheres; the noise-free RC at the same positions:
    noise_free = {
        seed: measure_sphere_recovery(SphereSetup(fwhm_mm=FWHM_MM, diameters_mm=(22.0, 37.0)),
                                      seed=seed)
        for seed in range(40)
    }
    for index in (0, 1):
        errors = [
            measure_sphere_recovery(setup, seed=seed)[index].rc - noise_free[seed][index].rc
            for seed in range(40)
        ]
        spread = float(np.std(errors))
        assert spread > 0.0
        assert abs(float(np.mean(errors))) < 4.0 * spread / math.sqrt(len(errors))


def test_invalid_setups_are_refused() -> None:
    with pytest.raises(DosimetryError, match="FWHM"):
        SphereSetup(fwhm_mm=0.0)
    with pytest.raises(DosimetryError, match="exceed 1"):
        SphereSetup(fwhm_mm=10.0, sphere_to_background=1.0)
    with pytest.raises(DosimetryError, match="warm background"):
        SphereSetup(fwhm_mm=10.0, background_subtracted=True)


def test_measured_points_become_a_table_and_a_fitted_curve(cold: Measured) -> None:
    table = recovery_table(cold)
    assert table.coefficient(cold[3].volume_ml) == pytest.approx(cold[3].rc)
    fit = recovery_fit(cold)
    for r in cold[1:]:
        assert fit.coefficient(r.volume_ml) == pytest.approx(r.rc, abs=0.04)
    assert fit.n_points == len(NEMA_SPHERE_DIAMETERS_MM)


# -- the sigmoid fit ------------------------------------------------------------------
VOLUMES_ML = (0.5, 1.2, 2.6, 5.6, 11.5, 26.5, 54.0, 97.0)


@pytest.mark.parametrize(
    "truth",
    [SigmoidRecovery(0.85, 2.1, 0.75), SigmoidRecovery(1.0, 2.0, 1.0),
     SigmoidRecovery(0.7, 6.0, 1.4)],
)
def test_sigmoid_fit_recovers_known_parameters(truth: SigmoidRecovery) -> None:
    rcs = [truth.coefficient(v) for v in VOLUMES_ML]
    found = fit_sigmoid_recovery(VOLUMES_ML, rcs)
    assert found.plateau == pytest.approx(truth.plateau, rel=1e-4)
    assert found.half_volume_ml == pytest.approx(truth.half_volume_ml, rel=1e-4)
    assert found.slope == pytest.approx(truth.slope, rel=1e-4)


def test_sigmoid_fit_uncertainty_matches_the_spread_of_refits() -> None:
    """u(RC(V)) from the covariance agrees with Monte Carlo refits of noisy points."""
    truth, sd = SigmoidRecovery(0.85, 2.5, 0.9), 0.01
    exact = np.array([truth.coefficient(v) for v in VOLUMES_ML])
    rng = np.random.default_rng(7)
    fitted = sigmoid_recovery_fit(VOLUMES_ML, exact + rng.normal(0, sd, exact.size),
                                  rc_sd=[sd] * exact.size)
    refits = [
        fit_sigmoid_recovery(VOLUMES_ML, exact + rng.normal(0, sd, exact.size)).coefficient(4.0)
        for _ in range(200)
    ]
    assert fitted.standard_uncertainty(4.0) == pytest.approx(float(np.std(refits)), rel=0.25)
    assert fitted.standard_uncertainty(4.0) < sd


def test_unweighted_fit_scales_the_covariance_by_the_residuals() -> None:
    truth = SigmoidRecovery(0.9, 3.0, 1.1)
    exact = [truth.coefficient(v) for v in VOLUMES_ML]
    assert sigmoid_recovery_fit(VOLUMES_ML, exact).standard_uncertainty(3.0) < 1e-6
    wobble = [rc + (0.02 if i % 2 else -0.02) for i, rc in enumerate(exact)]
    fit = sigmoid_recovery_fit(VOLUMES_ML, wobble)
    assert fit.residual_sd == pytest.approx(0.02, rel=0.5)
    assert 0.003 < fit.standard_uncertainty(3.0) < 0.04


def test_sigmoid_fit_needs_four_points_and_sane_values() -> None:
    with pytest.raises(DosimetryError, match="at least 4"):
        fit_sigmoid_recovery((1.0, 5.0, 20.0), (0.3, 0.6, 0.8))
    with pytest.raises(DosimetryError, match="one RC"):
        fit_sigmoid_recovery((1.0, 5.0, 20.0, 40.0), (0.3, 0.6, 0.8))
    with pytest.raises(DosimetryError, match="positive"):
        fit_sigmoid_recovery((1.0, 5.0, 20.0, 40.0), (0.3, -0.6, 0.8, 0.9))
