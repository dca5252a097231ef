"""Kidney BED: known answers, limits, monotonicity and the propagated uncertainty."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from theranode.dosimetry.bed import (
    FROM_BUDGET,
    FROM_FIT_SD,
    BedParameters,
    course_bed,
    cycle_bed_derivative,
    cycle_bed_gy,
    kidney_beds,
)
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.results import (
    CycleResult,
    DoseMethod,
    DoseUncertainty,
    Organ,
    UncertaintyComponent,
    VoiDose,
    VoiKind,
)

KIDNEY = BedParameters(alpha_beta_gy=2.6, repair_half_time_h=2.8)
doses = st.floats(min_value=0.01, max_value=30.0)
half_lives = st.floats(min_value=1.0, max_value=200.0)


def _kidney(
    dose_gy: float,
    t_eff_h: float | None,
    method: DoseMethod = DoseMethod.MULTI_TIME_POINT,
    uncertainty: DoseUncertainty | None = None,
    name: str = "kidney_left",
) -> VoiDose:
    return VoiDose(
        name=name, kind=VoiKind.ORGAN, method=method, volume_ml=160.0, mean_gy=dose_gy,
        mean_gy_sd=0.1 * dose_gy, organ=Organ.KIDNEY_LEFT, effective_half_life_h=t_eff_h,
        uncertainty=uncertainty,
    )


def _cycle(number: int, *vois: VoiDose, settings: dict[str, object] | None = None) -> CycleResult:
    return CycleResult(
        cycle_number=number, method=vois[0].method, administered_activity_mbq=7400.0,
        time_points_h=(24.0,), vois=vois, settings=settings or {},
    )


# -- the formula --------------------------------------------------------------------
def test_known_answer_one_cycle() -> None:
    # 3 Gy, T_eff 50 h: 2.8 / (2.6 · 52.8) = 0.0203963 /Gy; BED = 3 · (1 + 3 · 0.0203963)
    assert cycle_bed_gy(3.0, 50.0, KIDNEY) == pytest.approx(3.183566, rel=1e-6)
    assert cycle_bed_derivative(3.0, 50.0, KIDNEY) == pytest.approx(1.122378, rel=1e-6)


def test_known_answer_course_is_the_sum_of_the_cycles() -> None:
    # cycle 2: 2.5 Gy, T_eff 40 h: 2.8 / (2.6 · 42.8) = 0.0251617 /Gy → 2.657261 Gy
    assert course_bed([(3.0, 50.0), (2.5, 40.0)], KIDNEY) == pytest.approx(5.840827, rel=1e-6)


def test_no_repair_time_or_infinite_alpha_beta_gives_the_absorbed_dose() -> None:
    assert cycle_bed_gy(4.0, 50.0, BedParameters(2.6, 1e-12)) == pytest.approx(4.0, rel=1e-12)
    assert cycle_bed_gy(4.0, 50.0, BedParameters(1e15, 2.8)) == pytest.approx(4.0, rel=1e-12)


@given(half_lives)
def test_small_doses_have_a_bed_equal_to_the_dose(t_eff_h: float) -> None:
    assert cycle_bed_gy(1e-6, t_eff_h, KIDNEY) / 1e-6 == pytest.approx(1.0, abs=1e-6)


@given(doses, half_lives)
def test_bed_exceeds_the_dose_and_rises_with_dose_and_repair_time(d: float, t: float) -> None:
    bed = cycle_bed_gy(d, t, KIDNEY)
    assert bed > d
    assert cycle_bed_gy(d * 1.1, t, KIDNEY) > bed
    assert cycle_bed_gy(d, t, BedParameters(2.6, 5.0)) > bed


@given(doses, half_lives)
def test_bed_falls_with_slower_clearance_and_larger_alpha_beta(d: float, t: float) -> None:
    bed = cycle_bed_gy(d, t, KIDNEY)
    assert cycle_bed_gy(d, t * 1.5, KIDNEY) < bed
    assert cycle_bed_gy(d, t, BedParameters(5.0, 2.8)) < bed


@given(doses, half_lives)
def test_derivative_matches_a_finite_difference(d: float, t: float) -> None:
    h = 1e-5 * d
    numeric = (cycle_bed_gy(d + h, t, KIDNEY) - cycle_bed_gy(d - h, t, KIDNEY)) / (2 * h)
    assert cycle_bed_derivative(d, t, KIDNEY) == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs", [{"alpha_beta_gy": 0.0}, {"repair_half_time_h": -1.0}, {"limit_gy": math.nan}]
)
def test_parameters_are_validated(kwargs: dict[str, float]) -> None:
    with pytest.raises(DosimetryError, match="Wessels 2008"):
        BedParameters(**kwargs)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(DosimetryError, match="half-life"):
        cycle_bed_gy(3.0, 0.0, KIDNEY)
    with pytest.raises(DosimetryError, match="absorbed dose"):
        cycle_bed_gy(-1.0, 50.0, KIDNEY)


# -- a course -------------------------------------------------------------------------
def test_course_of_two_multi_time_point_cycles() -> None:
    cycles = [_cycle(2, _kidney(2.5, 40.0)), _cycle(1, _kidney(3.0, 50.0))]
    (bed,) = kidney_beds(cycles, KIDNEY)
    assert bed.name == "kidney_left"
    assert bed.total_bed_gy == pytest.approx(5.840827, rel=1e-6)
    assert bed.per_cycle_bed_gy == pytest.approx({1: 3.183566, 2: 2.657261}, rel=1e-6)
    assert [c.effective_half_life_h for c in bed.cycles] == [50.0, 40.0]
    assert bed.notes == () and bed.reason is None
    assert bed.total_dose_gy == pytest.approx(5.5)


def test_single_time_point_cycle_uses_the_multi_time_point_half_life_and_says_so() -> None:
    cycles = [
        _cycle(1, _kidney(3.0, 50.0)),
        _cycle(2, _kidney(2.5, None, DoseMethod.HANSCHEID), settings={"reference_cycle": None}),
    ]
    (bed,) = kidney_beds(cycles, KIDNEY)
    # cycle 2 with T_eff 50 h: 2.5 · (1 + 2.5 · 0.0203963) = 2.627477
    assert bed.per_cycle_bed_gy[2] == pytest.approx(2.627477, rel=1e-6)
    assert bed.cycles[1].borrowed and bed.cycles[1].half_life_cycle == 1
    assert bed.notes == ("cycle 2: T_eff 50 h of multi-time-point cycle 1",)


def test_the_reference_cycle_is_preferred_over_the_nearest() -> None:
    cycles = [
        _cycle(1, _kidney(3.0, 50.0)),
        _cycle(2, _kidney(3.0, 30.0)),
        _cycle(3, _kidney(2.5, None, DoseMethod.HANSCHEID), settings={"reference_cycle": 1}),
        _cycle(4, _kidney(2.5, None, DoseMethod.HANSCHEID)),
    ]
    (bed,) = kidney_beds(cycles, KIDNEY)
    assert [c.half_life_cycle for c in bed.cycles] == [1, 2, 1, 2]


def test_without_any_half_life_the_bed_is_not_computed() -> None:
    cycles = [
        _cycle(1, _kidney(3.0, None)),
        _cycle(2, _kidney(2.5, None, DoseMethod.HANSCHEID)),
    ]
    (bed,) = kidney_beds(cycles, KIDNEY)
    assert bed.total_bed_gy is None and bed.cycles == ()
    assert bed.reason is not None and "cycle 1 (multi-time-point) has no effective" in bed.reason


def test_only_kidney_vois_get_a_bed() -> None:
    liver = VoiDose("liver", VoiKind.ORGAN, DoseMethod.MULTI_TIME_POINT, 1500.0, 1.0, 0.1,
                    organ=Organ.LIVER, effective_half_life_h=70.0)
    right = _kidney(2.0, 45.0, name="kidney_right")
    beds = kidney_beds([_cycle(1, _kidney(3.0, 50.0), right, liver)], KIDNEY)
    assert [b.name for b in beds] == ["kidney_left", "kidney_right"]


# -- uncertainty ------------------------------------------------------------------------
def _budgeted_course(component: UncertaintyComponent, relative: float) -> list[CycleResult]:
    return [
        _cycle(n, _kidney(d, t, uncertainty=DoseUncertainty(d, {component: relative})))
        for n, (d, t) in enumerate([(3.0, 50.0), (2.5, 40.0), (4.0, 60.0)], start=1)
    ]


def _bed_of(doses_gy: list[float]) -> float:
    return course_bed(list(zip(doses_gy, [50.0, 40.0, 60.0], strict=True)), KIDNEY)


def test_a_component_shared_by_the_cycles_propagates_linearly() -> None:
    """Calibration moves every cycle's dose together: u = dBED/dε for D_i(1 + ε r)."""
    r, eps = 0.05, 1e-6
    (bed,) = kidney_beds(_budgeted_course(UncertaintyComponent.CALIBRATION, r), KIDNEY)
    up = _bed_of([d * (1 + eps * r) for d in (3.0, 2.5, 4.0)])
    down = _bed_of([d * (1 - eps * r) for d in (3.0, 2.5, 4.0)])
    assert bed.standard_uncertainty_gy == pytest.approx((up - down) / (2 * eps), rel=1e-6)
    assert bed.uncertainty is not None and bed.uncertainty_basis == FROM_BUDGET
    assert bed.uncertainty.dose_gy == pytest.approx(bed.total_bed_gy)
    assert bed.uncertainty.dominant is UncertaintyComponent.CALIBRATION


def test_an_independent_component_propagates_in_quadrature() -> None:
    r, eps = 0.08, 1e-6
    (bed,) = kidney_beds(_budgeted_course(UncertaintyComponent.COUNTS, r), KIDNEY)
    base = [3.0, 2.5, 4.0]
    terms = []
    for i, d in enumerate(base):
        up = [*base[:i], d * (1 + eps * r), *base[i + 1:]]
        down = [*base[:i], d * (1 - eps * r), *base[i + 1:]]
        terms.append((_bed_of(up) - _bed_of(down)) / (2 * eps))
    assert bed.standard_uncertainty_gy == pytest.approx(math.hypot(*terms), rel=1e-6)
    assert bed.standard_uncertainty_gy < sum(terms)


def test_without_budgets_the_fit_sd_is_propagated_and_said_so() -> None:
    (bed,) = kidney_beds([_cycle(1, _kidney(3.0, 50.0))], KIDNEY)
    assert bed.uncertainty is None and bed.uncertainty_basis == FROM_FIT_SD
    assert bed.standard_uncertainty_gy == pytest.approx(1.122378 * 0.3, rel=1e-6)
