"""Cumulative doses, lesion indices, projections and flags."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from theranode.dosimetry.course import (
    CourseLimits,
    FlagCode,
    course_flags,
    cumulative_doses,
    lesion_indices,
    projected_totals,
    projection,
    summarize_course,
)
from theranode.dosimetry.errors import DosimetryError, InsufficientDataError
from theranode.dosimetry.results import (
    CumulativeDose,
    CycleResult,
    DoseMethod,
    Organ,
    VoiDose,
    VoiKind,
)


def _voi(
    name: str,
    mean_gy: float,
    kind: VoiKind = VoiKind.LESION,
    sd: float = 1.0,
    organ: Organ | None = None,
    excluded: bool = False,
) -> VoiDose:
    return VoiDose(
        name=name,
        kind=kind,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=10.0,
        mean_gy=mean_gy,
        mean_gy_sd=sd,
        organ=organ,
        excluded=excluded,
    )


def _cycle(number: int, vois: list[VoiDose]) -> CycleResult:
    return CycleResult(
        cycle_number=number,
        method=DoseMethod.MULTI_TIME_POINT,
        administered_activity_mbq=7400.0,
        time_points_h=(4.0, 24.0, 72.0, 192.0),
        vois=tuple(vois),
    )


def _kidneys(gy: float) -> VoiDose:
    return _voi("kidneys", gy, VoiKind.ORGAN, sd=0.3, organ=Organ.KIDNEYS)


def _course(kidney_gy: float = 2.7, lesion_scale: float = 1.0) -> list[CycleResult]:
    cycles = []
    for number in (1, 2, 3, 4):
        cycles.append(
            _cycle(
                number,
                [
                    _kidneys(kidney_gy),
                    _voi("L1", 40.0 * lesion_scale),
                    _voi("L2", 20.0 * lesion_scale, sd=2.0),
                    _voi("L3", 5.0, excluded=True),
                ],
            )
        )
    return cycles


def test_cumulative_totals_and_quadrature_sd() -> None:
    totals = {c.name: c for c in cumulative_doses(_course())}
    assert totals["kidneys"].total_gy == pytest.approx(10.8)
    assert totals["kidneys"].total_gy_sd == pytest.approx(math.sqrt(4 * 0.09))
    assert totals["kidneys"].organ is Organ.KIDNEYS
    assert totals["L2"].total_gy == pytest.approx(80.0)
    assert totals["L2"].total_gy_sd == pytest.approx(4.0)
    assert totals["L1"].per_cycle_gy == {1: 40.0, 2: 40.0, 3: 40.0, 4: 40.0}
    assert totals["L3"].excluded


def test_lesion_indices_skip_excluded_lesions() -> None:
    indices = lesion_indices(cumulative_doses(_course()))
    assert indices is not None
    assert indices.n_lesions == 2
    assert indices.mean_total_gy == pytest.approx(120.0)
    assert indices.min_total_gy == pytest.approx(80.0)
    assert indices.max_total_gy == pytest.approx(160.0)


def test_no_lesions_gives_no_indices() -> None:
    assert lesion_indices(cumulative_doses([_cycle(1, [_kidneys(3.0)])])) is None


def test_projection_is_mean_per_cycle_times_planned() -> None:
    done = _course()[:2]
    projected = projected_totals(cumulative_doses(done), planned_cycles=4)
    assert projected["kidneys"] == pytest.approx(4 * 2.7)
    assert projected["L1"] == pytest.approx(160.0)
    assert projected_totals(cumulative_doses(_course()), 2)["L1"] == pytest.approx(160.0)


def test_complete_course_with_good_lesion_doses_has_no_flags() -> None:
    result = summarize_course(_course())
    assert result.flags == ()
    assert result.course_map is None
    assert result.planned_cycles == 4
    assert [c.cycle_number for c in result.cycles] == [1, 2, 3, 4]


def _codes(flags: tuple[str, ...]) -> list[str]:
    return [flag.split(":")[0] for flag in flags]


def test_low_lesion_doses_are_flagged() -> None:
    flags = summarize_course(_course(lesion_scale=0.5)).flags  # totals 80 and 40 Gy
    assert _codes(flags) == [
        FlagCode.LESION_MEAN_BELOW_CUT.value,
        FlagCode.LESION_MIN_BELOW_CUT.value,
    ]
    assert "60.00 Gy ≤ 91.36 Gy" in flags[0]
    assert "40.00 Gy ≤ 52.52 Gy" in flags[1]


def test_incomplete_course_flags_lesions_on_the_projection() -> None:
    flags = summarize_course(_course(lesion_scale=0.5)[:2]).flags
    assert _codes(flags) == [
        FlagCode.LESION_MEAN_BELOW_CUT.value,
        FlagCode.LESION_MIN_BELOW_CUT.value,
    ]
    assert "projected" in flags[0]
    assert summarize_course(_course()[:2]).flags == ()


@pytest.mark.parametrize(
    ("per_cycle_gy", "cycles_done", "expected"),
    [
        (4.0, 4, []),  # 16 Gy < 18.4 Gy
        (4.7, 4, [FlagCode.KIDNEY_LIMIT_APPROACHING]),  # 18.8 Gy
        (6.0, 4, [FlagCode.KIDNEY_LIMIT_EXCEEDED]),  # 24 Gy
        (6.0, 2, [FlagCode.KIDNEY_LIMIT_PROJECTED]),  # 12 Gy done, 24 Gy projected
        (10.0, 2, [FlagCode.KIDNEY_LIMIT_APPROACHING, FlagCode.KIDNEY_LIMIT_PROJECTED]),
        (12.0, 2, [FlagCode.KIDNEY_LIMIT_EXCEEDED]),
    ],
)
def test_kidney_flags(per_cycle_gy: float, cycles_done: int, expected: list[FlagCode]) -> None:
    flags = summarize_course(_course(kidney_gy=per_cycle_gy)[:cycles_done]).flags
    assert _codes(flags) == [code.value for code in expected]


@pytest.mark.parametrize(
    ("per_cycle_gy", "cycles_done", "expected"),
    [
        (0.35, 4, []),  # 1.4 Gy < 1.6 Gy
        (0.45, 4, [FlagCode.MARROW_LIMIT_APPROACHING]),  # 1.8 Gy
        (0.55, 4, [FlagCode.MARROW_LIMIT_EXCEEDED]),  # 2.2 Gy
        (0.55, 2, [FlagCode.MARROW_LIMIT_PROJECTED]),  # 1.1 Gy done, 2.2 Gy projected
    ],
)
def test_marrow_flags(per_cycle_gy: float, cycles_done: int, expected: list[FlagCode]) -> None:
    marrow = _voi("L2-L4 marrow", per_cycle_gy, VoiKind.MARROW, sd=0.05, organ=Organ.BONE_MARROW)
    cycles = [replace(c, vois=(*c.vois, marrow)) for c in _course()[:cycles_done]]
    flags = summarize_course(cycles).flags
    assert _codes(flags) == [code.value for code in expected]
    assert all("marrow VOI 'L2-L4 marrow'" in flag for flag in flags)


def test_limits_are_parameters() -> None:
    cumulative = cumulative_doses(_course())
    strict = CourseLimits(lesion_mean_cut_gy=150.0, lesion_min_cut_gy=100.0, kidney_limit_gy=10.0)
    codes = _codes(course_flags(cumulative, 4, 4, strict))
    assert codes == [
        FlagCode.KIDNEY_LIMIT_EXCEEDED.value,
        FlagCode.LESION_MEAN_BELOW_CUT.value,
        FlagCode.LESION_MIN_BELOW_CUT.value,
    ]
    with pytest.raises(DosimetryError):
        CourseLimits(warning_fraction=1.5)


def test_missing_voi_and_excluded_lesions_are_flagged() -> None:
    cycles = [_cycle(1, [_voi("L1", 30.0, excluded=True)]), _cycle(2, [_kidneys(3.0)])]
    result = summarize_course(cycles, planned_cycles=2)
    codes = _codes(result.flags)
    assert FlagCode.VOI_MISSING_IN_CYCLE.value in codes
    assert FlagCode.NO_ELIGIBLE_LESION.value in codes
    assert result.lesion_indices is None


def test_cycles_are_ordered_and_must_be_unique() -> None:
    cycles = _course()
    result = summarize_course([cycles[2], cycles[0], cycles[1], cycles[3]])
    assert [c.cycle_number for c in result.cycles] == [1, 2, 3, 4]
    with pytest.raises(DosimetryError, match="unique"):
        summarize_course([cycles[0], cycles[0]])
    with pytest.raises(InsufficientDataError):
        summarize_course([])


def test_kind_mismatch_across_cycles_is_refused() -> None:
    cycles = [_cycle(1, [_voi("X", 1.0)]), _cycle(2, [_voi("X", 1.0, VoiKind.ORGAN)])]
    with pytest.raises(DosimetryError, match="different kinds"):
        cumulative_doses(cycles)


def test_projection_uncertainty_scales_the_budget_and_adds_the_cycle_spread() -> None:
    dose = CumulativeDose("kidney", VoiKind.ORGAN, 5.0, 0.5, {1: 2.0, 2: 3.0})
    p = projection(dose, 4)
    # measurement 0.5 · 4/2 = 1.0 Gy; spread sd 0.7071 · √(2 · (1 + 2/2)) = 1.4142 Gy
    assert p.projected_gy == 10.0 and p.with_spread
    assert p.standard_uncertainty_gy == pytest.approx(math.sqrt(1.0 + 2.0), rel=1e-12)


def test_one_cycle_projects_the_measurement_only_and_a_complete_course_its_total() -> None:
    one = projection(CumulativeDose("k", VoiKind.ORGAN, 2.0, 0.2, {1: 2.0}), 4)
    assert one.projected_gy == 8.0 and one.standard_uncertainty_gy == pytest.approx(0.8)
    assert not one.with_spread
    done = projection(CumulativeDose("k", VoiKind.ORGAN, 8.0, 0.4, dict.fromkeys(range(4), 2.0)), 4)
    assert done.complete and done.standard_uncertainty_gy == pytest.approx(0.4)
    unknown = projection(CumulativeDose("k", VoiKind.ORGAN, 2.0, math.nan, {1: 2.0}), 4)
    assert unknown.standard_uncertainty_gy is None
