"""One truth per result: every VOI mean of a dose map is the reported VOI dose.

For a multi-time-point cycle (voxel-wise fit), a single-time-point cycle scaled
from a reference cycle (Hebert 2024), single-time-point fallbacks (Hänscheid,
Madsen) and a course (registered sum), the map's mean over each VOI's mask on
the dose grid must be within 1 % of the value the report gives for that VOI
(recovery-corrected for lesions). The masks are rebuilt here from the VOIs as
drawn on the reference CT, not taken from the result.
"""

from __future__ import annotations

import json
import math

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
from theranode.dosimetry.dose_map import VoiTarget, normalise_to_voi_means
from theranode.dosimetry.records_json import record_from_json, record_to_json
from theranode.dosimetry.registration import resample_mask
from theranode.dosimetry.results import CourseResult, CycleResult, DoseMethod, VoiKind
from theranode.dosimetry.synthetic import phantom as ph
from theranode.dosimetry.volume import Volume

CT_GRID = ph.ImageGrid.centred((96, 72, 48), (4.0, 4.0, 4.0), (0.0, 0.0, -5.0))
SPECT_GRID = ph.ImageGrid.centred((60, 45, 30), (6.4, 6.4, 6.4), (0.0, 0.0, -5.0))
SEED = 3
TOLERANCE = 0.01
MADSEN_HALF_LIVES = {"organ": 70.0, "marrow": 40.0, "lesion": 100.0}


@pytest.fixture(scope="module")
def course() -> ph.CourseSpec:
    return ph.default_course(ph.default_model(lungs=False))


@pytest.fixture(scope="module")
def time_points(course: ph.CourseSpec) -> tuple[ph.TimePoint, ...]:
    return ph.course_time_points(course, seed=SEED)


def _inputs(
    course: ph.CourseSpec, number: int, time_points: tuple[ph.TimePoint, ...], moved: bool
) -> CycleInputs:
    model, cycle = course.model, course.cycle(number)
    mine = [tp for tp in time_points if tp.cycle_number == number]
    poses = [tp.transform if moved else ph.RigidTransform() for tp in mine]
    images = tuple(
        TimePointImages(
            tp.elapsed_h,
            ph.render_ct(model, CT_GRID, pose),
            ph.render_activity(model, SPECT_GRID, tp.elapsed_h, pose, cycle=cycle),
        )
        for tp, pose in zip(mine, poses, strict=True)
    )
    vox = ph.voxelise(model, CT_GRID, poses[0])
    vois = tuple(
        VoiMask(
            v.name,
            v.kind,
            CT_GRID.volume(vox.fraction(model.voi_labels(v.name)) >= 0.5, "mask"),
            v.organ,
        )
        for v in model.vois
    )
    return CycleInputs(number, images, vois, 7400.0)


def map_means(dose_map: Volume, inputs: CycleInputs) -> dict[str, float]:
    """Mean of the map over each VOI of the reference CT, rasterised on the dose grid."""
    out = {}
    for voi in inputs.vois:
        mask = resample_mask(voi.mask, dose_map, None, 0.5).array.astype(bool)
        if mask.any():
            out[voi.name] = float(np.asarray(dose_map.array, dtype=float)[mask].mean())
    return out


def assert_map_matches_report(result: CycleResult, inputs: CycleInputs) -> None:
    assert result.dose_map is not None
    means = map_means(result.dose_map, inputs)
    assert set(means) == {v.name for v in result.vois}
    for voi in result.vois:
        assert means[voi.name] == pytest.approx(voi.mean_gy, rel=TOLERANCE), voi.name


@pytest.fixture(scope="module")
def inputs1(course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]) -> CycleInputs:
    return _inputs(course, 1, time_points, moved=True)


@pytest.fixture(scope="module")
def cycle1(inputs1: CycleInputs) -> CycleResult:
    return compute_multi_time_point_cycle(inputs1)


@pytest.fixture(scope="module")
def inputs2(course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]) -> CycleInputs:
    return _inputs(course, 2, time_points, moved=False)


@pytest.fixture(scope="module")
def cycle2(inputs2: CycleInputs) -> CycleResult:
    return compute_multi_time_point_cycle(inputs2, registrations=[None] * 4)


@pytest.fixture(scope="module")
def inputs3(course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]) -> CycleInputs:
    return _inputs(course, 3, time_points, moved=True)


@pytest.fixture(scope="module")
def cycle3(inputs3: CycleInputs, cycle2: CycleResult) -> CycleResult:
    return compute_single_time_point_cycle(inputs3, reference=cycle2)


@pytest.fixture(scope="module")
def inputs4(course: ph.CourseSpec, time_points: tuple[ph.TimePoint, ...]) -> CycleInputs:
    return _inputs(course, 4, time_points, moved=True)


def test_multi_time_point_map_means_are_the_reported_means(
    cycle1: CycleResult, inputs1: CycleInputs
) -> None:
    assert cycle1.method is DoseMethod.MULTI_TIME_POINT
    assert_map_matches_report(cycle1, inputs1)
    assert "voxel-wise" in str(cycle1.settings["dose_map"])


def test_scaled_single_time_point_map_means_are_the_reported_means(
    cycle3: CycleResult, inputs3: CycleInputs
) -> None:
    assert {v.method for v in cycle3.vois} == {DoseMethod.SINGLE_TIME_POINT_SCALED}
    assert_map_matches_report(cycle3, inputs3)
    assert "Hebert 2024" in str(cycle3.settings["dose_map"])
    assert "outside every VOI Hänscheid" in str(cycle3.settings["dose_map"])


def test_scaled_map_is_the_dose_rate_times_one_factor_per_voi(
    cycle3: CycleResult, inputs3: CycleInputs, cycle2: CycleResult
) -> None:
    """Inside a VOI that holds no smaller VOI, D(x)/Ḋ(x) is one number: the VOI's τ."""
    assert cycle3.dose_map is not None
    kidney = cycle3.voi("Kidney_L")
    mask = next(v.mask for v in cycle3.map_vois if v.name == "Kidney_L")
    rate = kidney.curve[0].mean_dose_rate_gy_per_h
    tau_h = kidney.mean_gy / rate
    dose = np.asarray(cycle3.dose_map.array, dtype=float)[mask]
    positive = dose > 0
    assert positive.mean() > 0.9
    ratios = dose[positive] / (dose[positive].mean() / tau_h)
    assert float(np.mean(ratios)) == pytest.approx(tau_h, rel=1e-6)
    # the factor carries the reference cycle's kinetics, not Hänscheid's 2t/ln 2
    assert tau_h != pytest.approx(2 * inputs3.time_points[0].elapsed_h / math.log(2), rel=0.02)


@pytest.mark.parametrize("fallback", [StpFallback.HANSCHEID, StpFallback.MADSEN])
def test_fallback_single_time_point_map_means_are_the_reported_means(
    fallback: StpFallback, inputs4: CycleInputs
) -> None:
    settings = EngineSettings(stp_fallback=fallback, population_half_life_h=MADSEN_HALF_LIVES)
    result = compute_single_time_point_cycle(inputs4, settings)
    expected = DoseMethod.HANSCHEID if fallback is StpFallback.HANSCHEID else DoseMethod.MADSEN
    assert {v.method for v in result.vois} == {expected}
    assert_map_matches_report(result, inputs4)
    assert any(v.kind is VoiKind.LESION and v.recovery_coefficient < 1 for v in result.vois)


def test_map_method_is_stated_in_at_most_64_characters(
    cycle1: CycleResult, cycle3: CycleResult
) -> None:
    for result in (cycle1, cycle3):
        comment = str(result.settings["dose_map_comment"])
        assert 0 < len(comment) <= 64
        assert comment.isascii()


@pytest.fixture(scope="module")
def course_result(
    cycle1: CycleResult,
    cycle2: CycleResult,
    cycle3: CycleResult,
    inputs1: CycleInputs,
    inputs2: CycleInputs,
    inputs3: CycleInputs,
    inputs4: CycleInputs,
) -> CourseResult:
    cycle4 = compute_single_time_point_cycle(inputs4, reference=cycle2)
    cycles = [cycle1, cycle2, cycle3, cycle4]
    cts = [i.reference.ct for i in (inputs1, inputs2, inputs3, inputs4)]
    return compute_course(cycles, reference_cts=cts)


def test_course_map_means_are_the_course_totals(
    course_result: CourseResult, inputs1: CycleInputs
) -> None:
    assert course_result.course_map is not None
    means = map_means(course_result.course_map, inputs1)
    for total in course_result.cumulative:
        assert means[total.name] == pytest.approx(total.total_gy, rel=TOLERANCE), total.name
    assert "course total" in course_result.course_map_method
    assert len(course_result.course_map_comment) <= 64


def test_lesion_wins_inside_the_liver_and_the_liver_mean_still_holds() -> None:
    grid = Volume(np.ones((6, 6, 6)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), unit="Gy")
    liver = np.zeros((6, 6, 6), dtype=bool)
    liver[1:5, 1:5, 1:5] = True
    lesion = np.zeros_like(liver)
    lesion[2:3, 2:3, 2:4] = True
    result = normalise_to_voi_means(
        grid, [VoiTarget("Liver", liver, 2.0), VoiTarget("Lesion", lesion, 30.0)]
    )
    dose = np.asarray(result.dose.array, dtype=float)
    assert dose[lesion] == pytest.approx(30.0)
    assert dose[liver].mean() == pytest.approx(2.0)
    assert dose[liver & ~lesion] == pytest.approx((2.0 * 64 - 60.0) / 62)
    assert dose[~liver] == pytest.approx(1.0)  # outside every VOI: as computed
    assert not result.warnings


def test_a_voi_its_smaller_vois_overfill_is_reported() -> None:
    grid = Volume(np.ones((4, 4, 4)), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), unit="Gy")
    organ = np.ones((4, 4, 4), dtype=bool)
    lesion = np.zeros_like(organ)
    lesion[0, 0, :] = True
    result = normalise_to_voi_means(
        grid, [VoiTarget("Organ", organ, 1.0), VoiTarget("Lesion", lesion, 100.0)]
    )
    assert result.factors["Organ"] == 0.0
    assert result.warnings and "'Organ'" in result.warnings[0]


def test_map_vois_survive_storage_as_the_stored_results_are(cycle3: CycleResult) -> None:
    arrays: dict[str, np.ndarray] = {}
    doc = json.loads(json.dumps(record_to_json(cycle3, CycleResult, "result", arrays.__setitem__)))
    restored = record_from_json(doc, CycleResult, "result", lambda key, dtype, shape: arrays[key])
    assert [v.name for v in restored.map_vois] == [v.name for v in cycle3.map_vois]
    for before, after in zip(cycle3.map_vois, restored.map_vois, strict=True):
        assert after.mask.dtype == bool and np.array_equal(after.mask, before.mask)
        assert after.factor == pytest.approx(before.factor, nan_ok=True)
