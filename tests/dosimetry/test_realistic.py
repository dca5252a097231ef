"""Realistic cycle inputs: blur by the expected amount, unbiased seeded noise, true-edge VOIs.

The expected blur loss of a VOI drawn on the edge of a large convex object
of surface S and volume V: near the surface the object looks like a
half-space, whose blurred profile inside loses ∫₀^∞ (1 − Φ(d/σ)) dd = σ/√(2π)
per unit area, so the VOI mean falls by S σ / (√(2π) V) × (1 − B/C) (B the
background outside, C the object's concentration). Voxel averaging on a
grid of spacing s adds a box of variance s²/12 per axis: σ² → σ² + s²/12.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from theranode.dosimetry.cycle import CycleInputs
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.synthetic import phantom as ph
from theranode.dosimetry.synthetic.realistic import (
    CLINICAL_COUNTING,
    ImagingProtocol,
    RealisticCycle,
    poisson_activity,
    psf_blur,
    render_realistic_cycle,
)

CT_GRID = ph.ImageGrid.centred((90, 65, 40), (4.0, 4.0, 4.0), (0.0, 0.0, -5.0))
SPECT_SPACING_MM = 6.0
SPECT_GRID = ph.ImageGrid.centred((60, 43, 27), (SPECT_SPACING_MM,) * 3, (0.0, 0.0, -5.0))
FWHM_MM = 10.0


@pytest.fixture(scope="module")
def course() -> ph.CourseSpec:
    return ph.default_course(ph.default_model(lungs=False))


@pytest.fixture(scope="module")
def blurred(course: ph.CourseSpec) -> RealisticCycle:
    return render_realistic_cycle(course, 1, CT_GRID, SPECT_GRID, ImagingProtocol(FWHM_MM))


@pytest.fixture(scope="module")
def sharp(course: ph.CourseSpec) -> RealisticCycle:
    return render_realistic_cycle(
        course, 1, CT_GRID, SPECT_GRID, ImagingProtocol(0.0, counting=None)
    )


def _ellipsoid_surface_mm2(a: float, b: float, c: float) -> float:
    """Knud Thomsen's approximation (p = 1.6075, within 1.1 %)."""
    p = 1.6075
    return 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _expected_loss(course: ph.CourseSpec, voi: str, fwhm_mm: float, elapsed_h: float) -> float:
    model = course.model
    shape = model.voi_structure(voi).shape
    sigma2 = (fwhm_mm / (2 * math.sqrt(2 * math.log(2)))) ** 2 + SPECT_SPACING_MM**2 / 12
    surface_to_volume = _ellipsoid_surface_mm2(*shape.semi_axes_mm) / (shape.volume_ml * 1000)
    kinetics = ph.cycle_kinetics(model, course.cycle(1))
    inside = kinetics[model.voi(voi).structures[0]].concentration_mbq_per_ml(elapsed_h)
    outside = kinetics["Body"].concentration_mbq_per_ml(elapsed_h)
    return surface_to_volume * math.sqrt(sigma2 / (2 * math.pi)) * (1 - outside / inside)


def _voi_mean_over_truth(
    course: ph.CourseSpec, rendered: RealisticCycle, voi: str, index: int = 0
) -> float:
    tp = rendered.time_points[index]
    mask = ph.voi_contour_mask(course.model, voi, SPECT_GRID, tp.transform)
    kinetics = ph.cycle_kinetics(course.model, course.cycle(1))
    truth = kinetics[course.model.voi(voi).structures[0]].concentration_mbq_per_ml(tp.elapsed_h)
    return float(rendered.expected_spect[index].array[mask].mean()) / (truth * 1e6)


@pytest.mark.parametrize("voi", ["Kidney_L", "Kidney_R", "Spleen"])
@pytest.mark.parametrize("which", ["sharp", "blurred"])
def test_voi_means_fall_by_the_expected_spill_out(
    course: ph.CourseSpec, voi: str, which: str, request: pytest.FixtureRequest
) -> None:
    rendered: RealisticCycle = request.getfixturevalue(which)
    fwhm = rendered.protocol.fwhm_mm
    loss = 1.0 - _voi_mean_over_truth(course, rendered, voi)
    expected = _expected_loss(course, voi, fwhm, rendered.time_points[0].elapsed_h)
    assert loss == pytest.approx(expected, rel=0.15), (voi, fwhm)


def test_blur_lowers_kidney_means_by_more_than_a_tenth(
    course: ph.CourseSpec, blurred: RealisticCycle, sharp: RealisticCycle
) -> None:
    for voi in ("Kidney_L", "Kidney_R"):
        ratio = _voi_mean_over_truth(course, blurred, voi) / _voi_mean_over_truth(
            course, sharp, voi
        )
        assert 0.8 < ratio < 0.9, voi


def test_blur_keeps_the_total_activity(blurred: RealisticCycle, sharp: RealisticCycle) -> None:
    for b, s in zip(blurred.expected_spect, sharp.expected_spect, strict=True):
        assert float(b.array.sum()) == pytest.approx(float(s.array.sum()), rel=2e-3)


def test_inputs_carry_every_time_point_the_true_edge_vois_and_the_truth(
    course: ph.CourseSpec, blurred: RealisticCycle
) -> None:
    inputs = blurred.inputs(seed=1)
    assert isinstance(inputs, CycleInputs)
    assert [tp.elapsed_h for tp in inputs.time_points] == [4.0, 24.0, 72.0, 192.0]
    assert inputs.time_points[0].ct.shape == CT_GRID.shape_zyx
    assert inputs.time_points[0].spect.shape == SPECT_GRID.shape_zyx
    assert inputs.time_points[0].spect.unit == "Bq/mL"
    assert [v.name for v in inputs.vois] == [v.name for v in course.model.vois]
    for voi in inputs.vois:
        contour_ml = course.model.voi_contour_volume_ml(voi.name)
        assert voi.volume_ml == pytest.approx(contour_ml, rel=0.25 if contour_ml < 10 else 0.05)
        assert blurred.truth_gy[voi.name] == ph.mean_dose_gy(
            course.model, voi.name, course.cycle(1)
        )
    # the patient moved between the scans, and the CTs show it
    assert not blurred.time_points[1].transform.is_identity()
    assert not np.array_equal(inputs.time_points[0].ct.array, inputs.time_points[1].ct.array)


def test_a_seed_gives_one_noise_realisation(blurred: RealisticCycle) -> None:
    first = blurred.inputs(seed=4).time_points[2].spect.array
    assert np.array_equal(first, blurred.inputs(seed=4).time_points[2].spect.array)
    assert not np.array_equal(first, blurred.inputs(seed=5).time_points[2].spect.array)
    assert np.array_equal(
        blurred.inputs(seed=None).time_points[2].spect.array, blurred.expected_spect[2].array
    )


def test_noise_is_unbiased_over_seeds_and_poisson_in_size(
    course: ph.CourseSpec, blurred: RealisticCycle
) -> None:
    index = 3  # 192 h: the fewest counts
    tp = blurred.time_points[index]
    mask = ph.voi_contour_mask(course.model, "Kidney_L", SPECT_GRID, tp.transform)
    expected = blurred.expected_spect[index].array.astype(np.float64)
    means = np.array(
        [blurred.inputs(seed=s).time_points[index].spect.array[mask].mean() for s in range(30)]
    )
    target = float(expected[mask].mean())
    standard_error = float(means.std(ddof=1)) / math.sqrt(means.size)
    assert abs(float(means.mean()) - target) < 4 * standard_error
    # the spread of the VOI mean is Poisson's: var(mean) = Σ λ_i / per² / n²
    per = CLINICAL_COUNTING.expected_counts_per_bq_per_ml(
        SPECT_GRID.voxel_volume_ml, nuclear_data(Radionuclide.LU177).decay_constant_per_h
    )
    predicted_sd = math.sqrt(float(expected[mask].sum()) / per) / int(mask.sum())
    assert float(means.std(ddof=1)) == pytest.approx(predicted_sd, rel=0.35)


def test_poisson_activity_refuses_counts_and_blur_needs_a_sane_fwhm() -> None:
    volume = CT_GRID.volume(np.ones(CT_GRID.shape_zyx, dtype=np.float32), "counts")
    with pytest.raises(DosimetryError, match="Bq/mL"):
        poisson_activity(volume, CLINICAL_COUNTING, np.random.default_rng(0))
    with pytest.raises(DosimetryError, match="FWHM"):
        ImagingProtocol(fwhm_mm=-1.0)
    assert psf_blur(volume, 0.0) is volume


def test_a_cycle_without_scans_is_refused(course: ph.CourseSpec) -> None:
    with pytest.raises(DosimetryError, match="no scan"):
        render_realistic_cycle(course, 9, CT_GRID, SPECT_GRID)


def test_time_points_state_the_psf_or_a_misstated_one(blurred: RealisticCycle) -> None:
    if not hasattr(blurred.inputs().time_points[0], "spect_fwhm_mm"):
        pytest.skip("this engine's TimePointImages takes no PSF")
    assert {tp.spect_fwhm_mm for tp in blurred.inputs().time_points} == {FWHM_MM}
    misstated = blurred.inputs(seed=2, stated_fwhm_mm=9.0)
    assert {tp.spect_fwhm_mm for tp in misstated.time_points} == {9.0}
    assert np.array_equal(misstated.time_points[1].spect.array,
                          blurred.inputs(seed=2).time_points[1].spect.array)
