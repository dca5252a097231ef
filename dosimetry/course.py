"""Cumulative doses, lesion indices and flags over a treatment course.

* Cumulative AD (CumAD) of a VOI is the sum of its mean AD over the cycles
  of the course (Hebert 2024); VOIs are matched across cycles by name. The
  standard deviations are combined in quadrature (cycles independent), so an
  unknown (NaN) sd in any cycle makes the total's sd unknown.
* Lesion indices: mean, minimum and maximum of the lesions' total AD over
  the lesions not excluded (Hebert 2024, Table 6).
* Uncertainty budgets (:mod:`theranode.dosimetry.uncertainty`, when every
  cycle's VOI has one): a total adds calibration, partial volume and the
  reference cycle linearly over the cycles (one camera, one reference) and
  the rest in quadrature; the mean lesion index adds calibration and partial
  volume linearly over the lesions; the minimum and maximum indices carry
  the budget of the lesion that is the minimum or maximum.
* Projection: with ``n`` of ``planned`` cycles done, each VOI's total after
  the course is projected as its mean per-cycle AD × ``planned`` — future
  cycles are assumed to deliver the average of the past ones. Lesion AD
  fell over the cycles in the paper (median 32.0 → 18.7 Gy from cycle 1 to
  4), so lesion projections tend to overestimate; kidney AD was stable.
* Flags: the paper's prognostic cut-points (mean total lesion AD > 91.36 Gy,
  minimum > 52.52 Gy associated with longer PFS/OS) and the 23 Gy kidney
  limit of recent PRRT trials and the 2 Gy bone-marrow limit (Forrer 2009),
  each with a warning from 80 % of it. All limits
  are parameters (:class:`CourseLimits`). Lesion flags use the projected
  indices while the course is incomplete, the totals once it is complete.

Each flag is ``"<CODE>: <text>"`` with the code from :class:`FlagCode`.

Projection uncertainty (:func:`projection`)
-------------------------------------------
With ``n`` cycles done of ``N`` planned (``m = N − n`` still to come), a VOI's
projected total is its mean per-cycle AD × ``N``
(:func:`theranode.dosimetry.course.projected_totals`: the future cycles are
assumed to deliver the average of the past ones). Its standard uncertainty
combines, in quadrature,

1. the measurement: the standard uncertainty of the total so far (its EANM
   budget, else the summed fits' sd) scaled by ``N / n`` — the future cycles
   are assumed to be measured with the same relative uncertainty, and the
   errors shared by the cycles (calibration, partial volume) to repeat, so
   the budget scales like the dose;
2. the cycle-to-cycle variation, when ``n ≥ 2``: with ``s`` the sample
   standard deviation of the per-cycle doses, the sum of ``m`` future cycles
   predicted by ``m`` times the mean of ``n`` varies by
   ``s · √(m (1 + m / n))`` (prediction of a sum of new observations).

With one cycle done the variation between cycles is unknown and the error
bar is the measurement part alone (said in the figure's guide). The two parts
overlap — the observed spread includes the random part of the measurement —
so the combined value errs on the large side. A complete course has no
projection: its error bar is the total's own uncertainty. Lesion AD fell
from cycle to cycle in the paper (Hebert 2024), so lesion projections tend
to overestimate.

References
----------
Hebert et al., J Nucl Med 2024;65:923-930 (CumAD, Table 6 indices,
cut-points 91.36 Gy and 52.52 Gy, 23 Gy kidney limit).
Del Prete M et al., Personalized 177Lu-octreotate PRRT of neuroendocrine
tumours: initial results from the P-PRRT trial, Eur J Nucl Med Mol Imaging
2019;46:728-742, and Sundlöv A et al., Eur J Nucl Med Mol Imaging
2022;49:3830-3840 (23 Gy kidney limit, the paper's refs 19-20).
Forrer F et al., Bone marrow dosimetry in peptide receptor radionuclide
therapy with [177Lu-DOTA0,Tyr3]octreotate, Eur J Nucl Med Mol Imaging
2009;36:1138-1146 (2 Gy bone-marrow limit).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from theranode.dosimetry.errors import DosimetryError, InsufficientDataError
from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CycleResult,
    DoseUncertainty,
    LesionIndices,
    Organ,
    VoiDose,
    VoiKind,
)
from theranode.dosimetry.uncertainty import (
    CORRELATED_BETWEEN_CYCLES,
    CORRELATED_BETWEEN_VOIS,
    mean_of_doses,
    sum_of_doses,
)

logger = logging.getLogger(__name__)

#: Organs checked against the kidney limit.
KIDNEY_ORGANS = frozenset({Organ.KIDNEYS, Organ.KIDNEY_LEFT, Organ.KIDNEY_RIGHT})


class FlagCode(str, Enum):
    """Machine-readable prefix of each course flag."""

    LESION_MEAN_BELOW_CUT = "LESION_MEAN_BELOW_CUT"
    LESION_MIN_BELOW_CUT = "LESION_MIN_BELOW_CUT"
    KIDNEY_LIMIT_EXCEEDED = "KIDNEY_LIMIT_EXCEEDED"
    KIDNEY_LIMIT_APPROACHING = "KIDNEY_LIMIT_APPROACHING"
    KIDNEY_LIMIT_PROJECTED = "KIDNEY_LIMIT_PROJECTED"
    MARROW_LIMIT_EXCEEDED = "MARROW_LIMIT_EXCEEDED"
    MARROW_LIMIT_APPROACHING = "MARROW_LIMIT_APPROACHING"
    MARROW_LIMIT_PROJECTED = "MARROW_LIMIT_PROJECTED"
    NO_ELIGIBLE_LESION = "NO_ELIGIBLE_LESION"
    VOI_MISSING_IN_CYCLE = "VOI_MISSING_IN_CYCLE"


@dataclass(frozen=True)
class CourseLimits:
    """Cut-points and limits for the course flags (defaults: Hebert 2024)."""

    lesion_mean_cut_gy: float = 91.36
    lesion_min_cut_gy: float = 52.52
    kidney_limit_gy: float = 23.0
    warning_fraction: float = 0.8
    marrow_limit_gy: float = 2.0

    def __post_init__(self) -> None:
        if not 0.0 < self.warning_fraction <= 1.0:
            raise DosimetryError(
                "The kidney warning fraction must be in (0, 1], "
                f"got {self.warning_fraction}."
            )
        if min(
            self.lesion_mean_cut_gy,
            self.lesion_min_cut_gy,
            self.kidney_limit_gy,
            self.marrow_limit_gy,
        ) <= 0:
            raise DosimetryError("Course cut-points and limits must be positive doses in Gy.")


def cumulative_doses(cycles: Sequence[CycleResult]) -> tuple[CumulativeDose, ...]:
    """Total AD per VOI name over ``cycles`` (sd in quadrature).

    A VOI is excluded in the total when it is excluded in any cycle.

    Raises
    ------
    InsufficientDataError
        No cycle given.
    DosimetryError
        Two cycles share a number, or a VOI name changes kind between cycles.
    """
    ordered = _ordered_cycles(cycles)
    by_name: dict[str, list[tuple[int, VoiDose]]] = {}
    for cycle in ordered:
        for voi in cycle.vois:
            by_name.setdefault(voi.name, []).append((cycle.cycle_number, voi))
    return tuple(_cumulate(name, entries) for name, entries in by_name.items())


def lesion_indices(cumulative: Sequence[CumulativeDose]) -> LesionIndices | None:
    """Mean, min and max total AD over the lesions not excluded (None if none)."""
    lesions = [c for c in cumulative if c.kind is VoiKind.LESION and not c.excluded]
    if not lesions:
        return None
    totals = [c.total_gy for c in lesions]
    lowest = min(lesions, key=lambda c: c.total_gy)
    highest = max(lesions, key=lambda c: c.total_gy)
    budgets = [(c.total_gy, c.uncertainty) for c in lesions if c.uncertainty is not None]
    return LesionIndices(
        n_lesions=len(totals),
        mean_total_gy=math.fsum(totals) / len(totals),
        min_total_gy=lowest.total_gy,
        max_total_gy=highest.total_gy,
        mean_uncertainty=mean_of_doses(budgets, CORRELATED_BETWEEN_VOIS)
        if len(budgets) == len(lesions) else None,
        min_uncertainty=lowest.uncertainty,
        max_uncertainty=highest.uncertainty,
    )


def projected_totals(cumulative: Sequence[CumulativeDose], planned_cycles: int) -> dict[str, float]:
    """Per VOI name: mean per-cycle AD × max(planned, cycles with a dose)."""
    if planned_cycles < 1:
        raise DosimetryError(f"The planned number of cycles must be ≥ 1, got {planned_cycles}.")
    projected: dict[str, float] = {}
    for dose in cumulative:
        n_done = len(dose.per_cycle_gy)
        projected[dose.name] = dose.total_gy / n_done * max(planned_cycles, n_done)
    return projected


@dataclass(frozen=True)
class Projection:
    """A VOI's total so far and its projection to the planned cycles (module docstring).

    ``standard_uncertainty_gy`` is ``None`` when the total has no stated
    uncertainty; ``with_spread`` says whether it includes the cycle-to-cycle
    variation.
    """

    name: str
    total_gy: float
    projected_gy: float
    cycles_done: int
    planned_cycles: int
    standard_uncertainty_gy: float | None
    with_spread: bool

    @property
    def complete(self) -> bool:
        """No cycle left to project."""
        return self.cycles_done >= self.planned_cycles


def total_uncertainty_gy(dose: CumulativeDose) -> float | None:
    """The total's standard uncertainty: its budget's, else the fits' sd, else None."""
    if dose.uncertainty is not None:
        return dose.uncertainty.standard_gy
    return dose.total_gy_sd if math.isfinite(dose.total_gy_sd) else None


def projection(dose: CumulativeDose, planned_cycles: int) -> Projection:
    """The projected total of ``dose`` after ``planned_cycles`` and its uncertainty."""
    n_done = len(dose.per_cycle_gy)
    n_total = max(planned_cycles, n_done)
    remaining = n_total - n_done
    projected = projected_totals([dose], planned_cycles)[dose.name]
    measured = total_uncertainty_gy(dose)
    u_measurement = None if measured is None else measured * n_total / n_done
    with_spread = n_done >= 2 and remaining > 0
    u_spread = 0.0
    if with_spread:
        s = statistics.stdev(dose.per_cycle_gy.values())
        u_spread = s * math.sqrt(remaining * (1.0 + remaining / n_done))
    u = None if u_measurement is None else math.hypot(u_measurement, u_spread)
    return Projection(
        dose.name, dose.total_gy, projected, n_done, n_total, u, with_spread
    )


def course_flags(
    cumulative: Sequence[CumulativeDose],
    cycles_done: int,
    planned_cycles: int,
    limits: CourseLimits = CourseLimits(),
) -> tuple[str, ...]:
    """Flags of the course (module docstring); empty when nothing to report."""
    projected = projected_totals(cumulative, planned_cycles)
    complete = cycles_done >= planned_cycles
    flags = list(_kidney_flags(cumulative, projected, complete, planned_cycles, limits))
    flags += _marrow_flags(cumulative, projected, complete, planned_cycles, limits)
    flags += _lesion_flags(cumulative, projected, complete, planned_cycles, limits)
    return tuple(flags)


def summarize_course(
    cycles: Sequence[CycleResult],
    planned_cycles: int = 4,
    limits: CourseLimits = CourseLimits(),
) -> CourseResult:
    """Cumulative doses, lesion indices, projections and flags of a course.

    ``course_map`` is left ``None``: summing the cycles' dose maps needs them
    on one grid, which the orchestration does.
    """
    ordered = _ordered_cycles(cycles)
    cumulative = cumulative_doses(ordered)
    flags = _missing_flags(ordered, cumulative)
    flags += course_flags(cumulative, len(ordered), planned_cycles, limits)
    for flag in flags:
        logger.info("course flag: %s", flag)
    return CourseResult(
        cycles=ordered,
        cumulative=cumulative,
        lesion_indices=lesion_indices(cumulative),
        flags=flags,
        projected_total_gy=projected_totals(cumulative, planned_cycles),
        planned_cycles=planned_cycles,
    )


# -- helpers ------------------------------------------------------------------
def _ordered_cycles(cycles: Sequence[CycleResult]) -> tuple[CycleResult, ...]:
    if not cycles:
        raise InsufficientDataError("A course summary needs at least one cycle result.")
    numbers = [c.cycle_number for c in cycles]
    if len(set(numbers)) != len(numbers):
        raise DosimetryError(
            f"Cycle numbers must be unique within a course, got {sorted(numbers)}; "
            "keep one result per cycle."
        )
    return tuple(sorted(cycles, key=lambda c: c.cycle_number))


def _cumulate(name: str, entries: list[tuple[int, VoiDose]]) -> CumulativeDose:
    kinds = {voi.kind for _, voi in entries}
    if len(kinds) > 1:
        raise DosimetryError(
            f"VOI {name!r} has different kinds across cycles ({sorted(k.value for k in kinds)}); "
            "VOIs are matched by name, so give different VOIs different names."
        )
    organs = [voi.organ for _, voi in entries if voi.organ is not None]
    return CumulativeDose(
        name=name,
        kind=entries[0][1].kind,
        total_gy=math.fsum(voi.mean_gy for _, voi in entries),
        total_gy_sd=math.sqrt(math.fsum(voi.mean_gy_sd**2 for _, voi in entries)),
        per_cycle_gy={number: voi.mean_gy for number, voi in entries},
        organ=organs[0] if organs else None,
        excluded=any(voi.excluded for _, voi in entries),
        uncertainty=_total_uncertainty([voi for _, voi in entries]),
    )


def _total_uncertainty(vois: Sequence[VoiDose]) -> DoseUncertainty | None:
    """The budget of a VOI's course total (None when a cycle has none)."""
    budgets = [(v.mean_gy, v.uncertainty) for v in vois if v.uncertainty is not None]
    if len(budgets) != len(vois):
        return None
    return sum_of_doses(budgets, CORRELATED_BETWEEN_CYCLES)


def _missing_flags(
    cycles: Sequence[CycleResult], cumulative: Sequence[CumulativeDose]
) -> tuple[str, ...]:
    numbers = [c.cycle_number for c in cycles]
    flags = []
    for dose in cumulative:
        missing = [n for n in numbers if n not in dose.per_cycle_gy]
        if missing:
            flags.append(
                f"{FlagCode.VOI_MISSING_IN_CYCLE.value}: VOI {dose.name!r} has no dose in "
                f"cycle(s) {', '.join(map(str, missing))}; its total covers the other cycles."
            )
    return tuple(flags)


def _kidney_flags(
    cumulative: Sequence[CumulativeDose],
    projected: dict[str, float],
    complete: bool,
    planned_cycles: int,
    limits: CourseLimits,
) -> list[str]:
    kidneys = [d for d in cumulative if d.organ in KIDNEY_ORGANS]
    return _limit_flags(
        kidneys, "kidney", limits.kidney_limit_gy, projected, complete, planned_cycles, limits
    )


def _marrow_flags(
    cumulative: Sequence[CumulativeDose],
    projected: dict[str, float],
    complete: bool,
    planned_cycles: int,
    limits: CourseLimits,
) -> list[str]:
    marrow = [d for d in cumulative if d.kind is VoiKind.MARROW]
    return _limit_flags(
        marrow, "marrow", limits.marrow_limit_gy, projected, complete, planned_cycles, limits
    )


_LIMIT_CODES = {
    "kidney": (
        FlagCode.KIDNEY_LIMIT_EXCEEDED,
        FlagCode.KIDNEY_LIMIT_APPROACHING,
        FlagCode.KIDNEY_LIMIT_PROJECTED,
    ),
    "marrow": (
        FlagCode.MARROW_LIMIT_EXCEEDED,
        FlagCode.MARROW_LIMIT_APPROACHING,
        FlagCode.MARROW_LIMIT_PROJECTED,
    ),
}


def _limit_flags(
    doses: Sequence[CumulativeDose],
    what: str,
    limit: float,
    projected: dict[str, float],
    complete: bool,
    planned_cycles: int,
    limits: CourseLimits,
) -> list[str]:
    """Exceeded, approaching (from the warning fraction) and projected flags of one limit."""
    exceeded, approaching, projects = _LIMIT_CODES[what]
    warning = limits.warning_fraction * limit
    flags = []
    for dose in doses:
        label = f"{what} VOI {dose.name!r}"
        if dose.total_gy >= limit:
            flags.append(
                f"{exceeded.value}: {label} cumulative AD "
                f"{dose.total_gy:.2f} Gy ≥ the {limit:g} Gy limit."
            )
        elif dose.total_gy >= warning:
            flags.append(
                f"{approaching.value}: {label} cumulative AD "
                f"{dose.total_gy:.2f} Gy ≥ {limits.warning_fraction:.0%} of the "
                f"{limit:g} Gy limit."
            )
        if not complete and dose.total_gy < limit and projected[dose.name] >= limit:
            flags.append(
                f"{projects.value}: {label} projected AD after "
                f"{planned_cycles} cycles {projected[dose.name]:.2f} Gy ≥ the {limit:g} Gy limit."
            )
    return flags


def _lesion_flags(
    cumulative: Sequence[CumulativeDose],
    projected: dict[str, float],
    complete: bool,
    planned_cycles: int,
    limits: CourseLimits,
) -> list[str]:
    lesions = [c for c in cumulative if c.kind is VoiKind.LESION]
    eligible = [c for c in lesions if not c.excluded]
    if not eligible:
        if lesions:
            return [
                f"{FlagCode.NO_ELIGIBLE_LESION.value}: all {len(lesions)} lesions are excluded."
            ]
        return []
    totals = [c.total_gy if complete else projected[c.name] for c in eligible]
    mean_gy, min_gy = math.fsum(totals) / len(totals), min(totals)
    what = "total" if complete else f"projected total (after {planned_cycles} cycles)"
    flags = []
    if mean_gy <= limits.lesion_mean_cut_gy:
        flags.append(
            f"{FlagCode.LESION_MEAN_BELOW_CUT.value}: mean {what} lesion AD {mean_gy:.2f} Gy "
            f"≤ {limits.lesion_mean_cut_gy:g} Gy, the cut-point above which PFS was longer "
            "(Hebert 2024, HR 0.39)."
        )
    if min_gy <= limits.lesion_min_cut_gy:
        flags.append(
            f"{FlagCode.LESION_MIN_BELOW_CUT.value}: minimum {what} lesion AD {min_gy:.2f} Gy "
            f"≤ {limits.lesion_min_cut_gy:g} Gy, the cut-point above which PFS and OS were "
            "longer (Hebert 2024, PFS HR 0.34, OS HR 0.23)."
        )
    return flags
