"""Known-answer and property tests of the cycle orchestration on the analytic phantom.

Partial volume on the SPECT grid is physics, not a bug: on a 4 mm grid a VOI
mean loses 4-5 % for kidney-sized organs and ~10-20 % for 3-7 mL lesions
(mixed voxels at the border), and the liver gains ~3 % from hot lesions
inside it. So the tests split the question:

* registration and VOI propagation are checked against the same pipeline on
  the same images given the *true* repositioning transforms (same partial
  volume): organs within 1 %, lesions ≥ 4 mL within 3 %. (Against an
  unmoved patient the comparison would also measure how the grid samples
  each pose: ±1 % for kidneys and up to ±20 % for a 5 mL lesion at 4 mm.)
* the analytic truth is checked within the partial-volume budget of the grid
  for organs, and for lesions after recovery correction with an RC curve
  calibrated, like a physicist would, by imaging spheres with the same
  resolution (10 % with blur and Poisson noise).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from theranode.dosimetry.course_map import compute_course
from theranode.dosimetry.cycle import (
    CycleInputs,
    EngineSettings,
    StpFallback,
    TimePointImages,
    VoiMask,
    compute_multi_time_point_cycle,
    compute_single_time_point_cycle,
)
from theranode.dosimetry.errors import InsufficientDataError
from theranode.dosimetry.recovery import RecoveryTable
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import CycleResult, DoseMethod, VoiKind
from theranode.dosimetry.synthetic import phantom as ph
from theranode.dosimetry.synthetic.realistic import poisson_activity, psf_blur
from theranode.dosimetry.synthetic.spheres import (
    SphereSetup,
    measure_sphere_recovery,
    recovery_table,
)
from theranode.dosimetry.volume import Volume

CT_GRID = ph.ImageGrid.centred((144, 104, 64), (2.5, 2.5, 2.5), (0.0, 0.0, -5.0))
SPECT_GRID = ph.ImageGrid.centred((90, 65, 40), (4.0, 4.0, 4.0), (0.0, 0.0, -5.0))
ORGANS = ("Liver", "Kidney_L", "Kidney_R", "Spleen")
LARGE_LESIONS = ("Lesion_01", "Lesion_04")  # ≥ 4 mL
SEED = 11
FWHM_MM = 10.0


@pytest.fixture(scope="module")
def course() -> ph.CourseSpec:
    return ph.default_course(ph.default_model(lungs=False))


@pytest.fixture(scope="module")
def time_points(course: ph.CourseSpec) -> tuple[ph.TimePoint, ...]:
    return ph.course_time_points(course, seed=SEED)


def _reference_vois(
    model: ph.PhantomModel, transform: ph.RigidTransform
) -> tuple[VoiMask, ...]:
    vox = ph.voxelise(model, CT_GRID, transform)
    return tuple(
        VoiMask(
            v.name,
            v.kind,
            CT_GRID.volume(vox.fraction(model.voi_labels(v.name)) >= 0.5, "mask"),
            v.organ,
        )
        for v in model.vois
    )


def _images(
    course: ph.CourseSpec,
    cycle: ph.CycleSpec,
    points: list[tuple[float, ph.RigidTransform]],
    spect: callable = lambda volume: volume,  # type: ignore[valid-type]
) -> tuple[TimePointImages, ...]:
    model = course.model
    out = []
    for elapsed_h, transform in points:
        ct = ph.render_ct(model, CT_GRID, transform)
        activity = ph.render_activity(
            model, SPECT_GRID, elapsed_h, transform, cycle=cycle
        )
        out.append(TimePointImages(elapsed_h, ct, spect(activity)))
    return tuple(out)


def _cycle_inputs(
    course: ph.CourseSpec,
    number: int,
    time_points: tuple[ph.TimePoint, ...],
    moved: bool = True,
    spect: callable = lambda volume: volume,  # type: ignore[valid-type]
) -> CycleInputs:
    cycle = course.cycle(number)
    mine = [tp for tp in time_points if tp.cycle_number == number]
    points = [
        (tp.elapsed_h, tp.transform if moved else ph.RigidTransform()) for tp in mine
    ]
    vois = _reference_vois(course.model, points[0][1])
    return CycleInputs(number, _images(course, cycle, points, spect), vois, 7400.0)


@pytest.fixture(scope="module")
def moved_inputs1(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> CycleInputs:
    return _cycle_inputs(course, 1, time_points)


@pytest.fixture(scope="module")
def moved_cycle1(moved_inputs1: CycleInputs) -> CycleResult:
    return compute_multi_time_point_cycle(moved_inputs1)


def _true_registration(
    reference: ph.RigidTransform, moving: ph.RigidTransform
) -> RigidRegistration:
    return RigidRegistration.known(ph.relative_affine(reference, moving))


@pytest.fixture(scope="module")
def static_cycle1(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> CycleResult:
    inputs = _cycle_inputs(course, 1, time_points, moved=False)
    return compute_multi_time_point_cycle(inputs, registrations=[None] * 4)


def test_repositioning_between_time_points_is_undone(
    moved_inputs1: CycleInputs,
    moved_cycle1: CycleResult,
    time_points: tuple[ph.TimePoint, ...],
) -> None:
    mine = [tp for tp in time_points if tp.cycle_number == 1]
    truth = [None] + [
        _true_registration(mine[0].transform, tp.transform) for tp in mine[1:]
    ]
    settings = EngineSettings(voxelwise_map=False)
    exact = compute_multi_time_point_cycle(moved_inputs1, settings, truth)
    for name in ORGANS + ("BoneMarrow_L2-L4",):
        found, expected = moved_cycle1.voi(name).mean_gy, exact.voi(name).mean_gy
        assert found == pytest.approx(expected, rel=0.01), name
    for name in LARGE_LESIONS:
        found, expected = moved_cycle1.voi(name).mean_gy, exact.voi(name).mean_gy
        assert found == pytest.approx(expected, rel=0.03), name


def test_registration_quality_is_reported(
    moved_cycle1: CycleResult, time_points: tuple[ph.TimePoint, ...]
) -> None:
    moved = [tp for tp in time_points if tp.cycle_number == 1][1:]
    assert [q.elapsed_h for q in moved_cycle1.registration] == [
        tp.elapsed_h for tp in moved
    ]
    for quality, tp in zip(moved_cycle1.registration, moved, strict=True):
        assert quality.converged
        assert quality.value_after < quality.value_before
        assert (
            max(abs(a) for a in quality.rotation_deg)
            < max(abs(a) for a in tp.transform.rotation_deg) + 0.3
        )


def test_organs_match_analytic_truth_within_partial_volume(
    static_cycle1: CycleResult, course: ph.CourseSpec
) -> None:
    cycle = course.cycle(1)
    for (
        name
    ) in ORGANS:  # 4 mm grid: kidneys lose ~6 %, the liver gains ~3 % from its lesions
        truth = ph.mean_dose_gy(course.model, name, cycle)
        assert static_cycle1.voi(name).mean_gy == pytest.approx(truth, rel=0.08), name


DIGITAL_GRID = ph.ImageGrid.centred((120, 88, 56), (3.0, 3.0, 3.0), (0.0, 0.0, -5.0))


def test_digital_phantom_without_partial_volume_gives_the_analytic_dose(
    course: ph.CourseSpec,
) -> None:
    """Ideal imaging (CT and SPECT on one grid, voxel-centre sampling, no blur):
    registration off, nothing mixes at borders, so density, LED, the fit and its
    integral must reproduce the analytic mean absorbed dose of every VOI, lesions
    included (before recovery correction, which belongs to real imaging)."""
    cycle = course.cycle(1)
    vox = ph.voxelise(course.model, DIGITAL_GRID, ph.RigidTransform(), 1)
    images = tuple(
        TimePointImages(
            elapsed_h,
            ph.render_ct(course.model, DIGITAL_GRID, voxelisation=vox),
            ph.render_activity(course.model, DIGITAL_GRID, elapsed_h, cycle=cycle,
                               voxelisation=vox),
        )
        for elapsed_h in cycle.scan_elapsed_h
    )
    vois = tuple(
        VoiMask(v.name, v.kind,
                DIGITAL_GRID.volume(vox.fraction(course.model.voi_labels(v.name)) >= 0.5, "mask"),
                v.organ)
        for v in course.model.vois
    )
    result = compute_multi_time_point_cycle(
        CycleInputs(1, images, vois, 7400.0), EngineSettings(voxelwise_map=False),
        registrations=[None] * len(images),
    )
    for voi in course.model.vois:
        found = result.voi(voi.name)
        uncorrected = found.mean_gy * found.recovery_coefficient
        truth = ph.mean_dose_gy(course.model, voi.name, cycle)
        assert uncorrected == pytest.approx(truth, rel=1e-3), voi.name


def test_fitted_clearance_matches_truth(
    moved_cycle1: CycleResult, course: ph.CourseSpec
) -> None:
    kinetics = ph.cycle_kinetics(course.model, course.cycle(1))
    for name in ORGANS:
        truth_h = kinetics[course.model.voi(name).structures[0]].effective_half_life_h
        found_h = moved_cycle1.voi(name).effective_half_life_h
        assert found_h == pytest.approx(truth_h, rel=0.05), name


def test_result_carries_map_statistics_and_settings(moved_cycle1: CycleResult) -> None:
    assert moved_cycle1.method is DoseMethod.MULTI_TIME_POINT
    assert moved_cycle1.dose_map is not None and moved_cycle1.dose_map.unit == "Gy"
    assert moved_cycle1.dose_map.shape == SPECT_GRID.shape_zyx
    for voi in moved_cycle1.vois:
        assert voi.d98_gy is not None and voi.d2_gy is not None
        assert voi.min_gy <= voi.d98_gy <= voi.d2_gy <= voi.max_gy  # type: ignore[operator]
        assert len(voi.curve) == 4
    assert moved_cycle1.settings["kinetic_model"] == "monoexponential"
    assert moved_cycle1.settings["dose_grid"] == "reference time point SPECT grid"


def test_small_lesion_is_excluded_and_lesions_get_rc(moved_cycle1: CycleResult) -> None:
    small = moved_cycle1.voi("Lesion_05")
    assert small.excluded and "below" in (small.exclusion_reason or "")
    assert moved_cycle1.voi("Lesion_01").recovery_coefficient < 1.0
    assert moved_cycle1.voi("Liver").recovery_coefficient == 1.0


# -- single-time-point cycles ---------------------------------------------------
@pytest.fixture(scope="module")
def static_cycle2(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> CycleResult:
    inputs = _cycle_inputs(course, 2, time_points, moved=False)
    settings = EngineSettings(voxelwise_map=False)
    return compute_multi_time_point_cycle(inputs, settings, registrations=[None] * 4)


@pytest.mark.parametrize("number", [3, 4])
def test_single_time_point_cycles_follow_the_papers_formula(
    number: int,
    course: ph.CourseSpec,
    time_points: tuple[ph.TimePoint, ...],
    static_cycle2: CycleResult,
) -> None:
    """AD_c / AD_c2 equals the formula's ratio.

    Both cycles are imaged in the same pose so that partial volume, identical
    in both, cancels in the ratio: the test is about the scaling and the Δt
    correction (cycle 3 is scanned at 26 h against the reference's 24 h).
    """
    result = compute_single_time_point_cycle(
        _cycle_inputs(course, number, time_points, moved=False), reference=static_cycle2
    )
    assert result.method is DoseMethod.SINGLE_TIME_POINT_SCALED
    model, cycle, reference = course.model, course.cycle(number), course.cycle(2)
    for name in ORGANS + LARGE_LESIONS:
        expected_ratio = ph.stp_formula_dose_gy(
            model, name, cycle, reference, cycle.scan_elapsed_h[0], 24.0
        ) / ph.mean_dose_gy(model, name, reference)
        found = result.voi(name).mean_gy / static_cycle2.voi(name).mean_gy
        # The liver holds lesions whose uptake falls across cycles; their
        # spill-in into the liver VOI changes with it (~1 %).
        tolerance = {"Liver": 0.02}.get(name, 0.01 if name in ORGANS else 0.03)
        assert found == pytest.approx(expected_ratio, rel=tolerance), name


def test_single_time_point_without_reference_uses_hanscheid(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> None:
    result = compute_single_time_point_cycle(_cycle_inputs(course, 4, time_points))
    assert {v.method for v in result.vois} == {DoseMethod.HANSCHEID}
    assert result.warnings and "fallback" in result.warnings[0]
    liver = result.voi("Liver")
    rate = liver.curve[0].mean_dose_rate_gy_per_h
    assert liver.mean_gy == pytest.approx(rate * 2 * 24.0 / math.log(2.0))


def test_madsen_needs_a_population_half_life(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> None:
    inputs = _cycle_inputs(course, 4, time_points)
    with pytest.raises(InsufficientDataError, match="population"):
        compute_single_time_point_cycle(
            inputs, EngineSettings(stp_fallback=StpFallback.MADSEN)
        )
    half_lives = {"organ": 70.0, "marrow": 40.0, "lesion": 100.0}
    settings = EngineSettings(
        stp_fallback=StpFallback.MADSEN, population_half_life_h=half_lives
    )
    result = compute_single_time_point_cycle(inputs, settings)
    assert result.voi("Spleen").method is DoseMethod.MADSEN
    assert result.voi("Spleen").effective_half_life_h == pytest.approx(70.0)


def test_course_sums_cycles_and_maps(
    moved_cycle1: CycleResult,
    course: ph.CourseSpec,
    time_points: tuple[ph.TimePoint, ...],
    static_cycle2: CycleResult,
) -> None:
    cycle4_inputs = _cycle_inputs(course, 4, time_points)
    cycle4 = compute_single_time_point_cycle(cycle4_inputs, reference=static_cycle2)
    first_ct = ph.render_ct(course.model, CT_GRID, time_points[0].transform)
    result = compute_course(
        [cycle4, moved_cycle1], reference_cts=[cycle4_inputs.reference.ct, first_ct]
    )
    total = next(c for c in result.cumulative if c.name == "Kidney_L")
    expected = moved_cycle1.voi("Kidney_L").mean_gy + cycle4.voi("Kidney_L").mean_gy
    assert total.total_gy == pytest.approx(expected)
    assert result.course_map is not None
    assert result.course_map.shape == moved_cycle1.dose_map.shape  # type: ignore[union-attr]
    assert float(result.course_map.array.max()) > float(
        moved_cycle1.dose_map.array.max()
    )  # type: ignore[union-attr]


# -- properties --------------------------------------------------------------------
def _scaled(inputs: CycleInputs, factor: float) -> CycleInputs:
    points = tuple(
        replace(tp, spect=tp.spect.with_array(tp.spect.array * factor))
        for tp in inputs.time_points
    )
    return replace(inputs, time_points=points)


def test_dose_is_linear_in_activity(
    course: ph.CourseSpec,
    time_points: tuple[ph.TimePoint, ...],
    static_cycle2: CycleResult,
) -> None:
    inputs = _cycle_inputs(course, 2, time_points, moved=False)
    settings = EngineSettings(voxelwise_map=False)
    doubled = compute_multi_time_point_cycle(_scaled(inputs, 2.5), settings, [None] * 4)
    for voi in static_cycle2.vois:
        assert doubled.voi(voi.name).mean_gy == pytest.approx(
            2.5 * voi.mean_gy, rel=1e-6
        )


def test_dose_is_invariant_under_a_rigid_move_of_the_whole_patient(
    course: ph.CourseSpec, static_cycle1: CycleResult
) -> None:
    """The whole patient (all time points and VOIs) moved together: same doses.

    The move is a whole number of voxels of both grids (20 mm = 8 CT voxels
    = 5 SPECT voxels), so the grids sample the patient identically and the
    doses must agree to rounding.
    """
    move = ph.RigidTransform((0.0, 0.0, 0.0), (20.0, 0.0, 0.0))
    cycle = course.cycle(1)
    points = [(t, move) for t in cycle.scan_elapsed_h]
    inputs = CycleInputs(
        1, _images(course, cycle, points), _reference_vois(course.model, move)
    )
    moved = compute_multi_time_point_cycle(
        inputs, EngineSettings(voxelwise_map=False), [None] * 4
    )
    for voi in static_cycle1.vois:
        assert moved.voi(voi.name).mean_gy == pytest.approx(voi.mean_gy, rel=1e-4), (
            voi.name
        )


def test_fewer_than_two_time_points_is_refused(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> None:
    with pytest.raises(InsufficientDataError, match="at least 2"):
        compute_multi_time_point_cycle(_cycle_inputs(course, 4, time_points))


# -- noise, blur and a calibrated recovery curve --------------------------------
def sphere_recovery_curve(
    grid: ph.ImageGrid,
    fwhm_mm: float,
    volumes_ml: tuple[float, ...],
    supersampling: int = 5,
) -> RecoveryTable:
    """RC(V) measured on simulated hot spheres in a cold background.

    The calibration a physicist makes with a sphere phantom
    (:mod:`theranode.dosimetry.synthetic.spheres`): each sphere rendered with
    partial-volume sub-sampling on the SPECT voxel size, blurred with the
    SPECT resolution (Gaussian FWHM), its mean taken in the 0.5-occupancy
    mask of its true outline, as the engine does with VOIs.
    """
    diameters = tuple((6.0 * v * 1000.0 / math.pi) ** (1.0 / 3.0) for v in volumes_ml)
    setup = SphereSetup(
        fwhm_mm=fwhm_mm,
        spacing_mm=max(grid.spacing_mm),
        diameters_mm=diameters,
        supersampling=supersampling,
    )
    return recovery_table(measure_sphere_recovery(setup, seed=SEED))


def _noisy(rng: np.random.Generator) -> callable:  # type: ignore[valid-type]
    statistics = ph.CountingStatistics(cps_per_mbq=20.0, duration_s=2700.0)

    def degrade(activity: Volume) -> Volume:
        return poisson_activity(psf_blur(activity, FWHM_MM), statistics, rng)

    return degrade


def test_noisy_blurred_lesions_with_calibrated_rc_match_truth(
    course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]
) -> None:
    curve = sphere_recovery_curve(
        SPECT_GRID, FWHM_MM, (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    )
    assert curve.coefficient(2.0) < curve.coefficient(8.0) < 1.0
    inputs = _cycle_inputs(
        course, 1, time_points, spect=_noisy(np.random.default_rng(SEED))
    )
    settings = EngineSettings(recovery_curve=curve, voxelwise_map=False)
    result = compute_multi_time_point_cycle(inputs, settings)
    cycle = course.cycle(1)
    for name in LARGE_LESIONS:
        truth = ph.mean_dose_gy(course.model, name, cycle)
        assert result.voi(name).mean_gy == pytest.approx(truth, rel=0.10), name
        assert result.voi(name).kind is VoiKind.LESION
