"""Biologically effective dose (BED) of the kidneys over a treatment course.

Linear-quadratic model for a dose delivered at a mono-exponentially falling
dose rate after instantaneous uptake, with complete repair between cycles
(weeks apart). Per cycle ``i`` with absorbed dose ``D_i`` and effective
half-life ``T_eff,i``::

    BED_i = D_i · [1 + D_i · T_rep / ((α/β) · (T_rep + T_eff,i))]

and the course's BED is ``Σ BED_i``. ``T_rep`` is the repair half-time of
sublethal damage; ``T_rep / (T_rep + T_eff)`` is Dale's ``λ / (μ + λ)`` with
``λ = ln 2 / T_eff`` and ``μ = ln 2 / T_rep``.

Effective half-life per cycle: the kidney VOI's own (a multi-time-point fit,
a single-time-point cycle scaled with its reference's, Madsen's population
value). A single-time-point cycle without one (Hänscheid) uses the same
VOI's half-life from a multi-time-point cycle of the course: the one the
cycle was scaled from (``settings["reference_cycle"]``), else the nearest
earlier, else the nearest later one; the result says so per cycle. A kidney
VOI with a cycle that has no half-life to use gets no BED (``None`` with the
reason), never a guessed one.

Uncertainty: ``BED`` is linearised in each cycle's dose,
``∂BED_i/∂D_i = 1 + 2 D_i T_rep / ((α/β)(T_rep + T_eff,i))``, and the dose
budget (:mod:`theranode.dosimetry.uncertainty`) is propagated with the same
correlations as a course total: calibration, partial volume and the
reference cycle add linearly over the cycles, the other components in
quadrature (:func:`~theranode.dosimetry.uncertainty.sum_of_doses` applied to
``∂BED_i/∂D_i · D_i``). A cycle without a budget makes the BED's uncertainty
the kinetic fits' standard deviations, propagated in quadrature, said so in
:attr:`KidneyBed.uncertainty_basis`. The uncertainties of ``α/β``, ``T_rep``
and ``T_eff`` are not propagated: ``∂BED_i/∂T_eff = −D_i² T_rep / ((α/β)
(T_rep + T_eff)²)`` is below 0.01 Gy per hour of half-life for kidney doses
of a few Gy per cycle and half-lives of tens of hours.

References
----------
Dale RG, The application of the linear-quadratic dose-effect equation to
fractionated and protracted radiotherapy, Br J Radiol 1985;58:515-528.
Wessels BW et al., MIRD Pamphlet No. 20: the effect of model assumptions on
kidney dosimetry and response, J Nucl Med 2008;49:1884-1899 (α/β = 2.6 Gy,
T_rep = 2.8 h for the kidneys).
Bodei L et al., Long-term evaluation of renal toxicity after peptide receptor
radionuclide therapy with 90Y-DOTATOC and 177Lu-DOTATATE: the role of
associated risk factors, Eur J Nucl Med Mol Imaging 2008;35:1847-1856
(kidney BED thresholds 28 Gy with risk factors, 40 Gy without).
JCGM 100:2008 (GUM) 5.1.3 (first-order propagation), 5.2.2 (correlated inputs).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from theranode.dosimetry.course import KIDNEY_ORGANS
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.results import (
    CycleResult,
    DoseMethod,
    DoseUncertainty,
    VoiDose,
)
from theranode.dosimetry.uncertainty import CORRELATED_BETWEEN_CYCLES, sum_of_doses

logger = logging.getLogger(__name__)

#: What :attr:`KidneyBed.uncertainty_basis` says.
FROM_BUDGET = "EANM uncertainty budget"
FROM_FIT_SD = "kinetic fit sd (no budget)"


@dataclass(frozen=True)
class BedParameters:
    """Linear-quadratic parameters of the kidneys and the course's BED limit.

    Attributes
    ----------
    alpha_beta_gy:
        α/β ratio, Gy (2.6 Gy, Wessels 2008).
    repair_half_time_h:
        Repair half-time of sublethal damage, h (2.8 h, Wessels 2008).
    limit_gy:
        Course limit of the kidney BED, Gy (40 Gy without risk factors,
        28 Gy with them; Bodei 2008).
    """

    alpha_beta_gy: float = 2.6
    repair_half_time_h: float = 2.8
    limit_gy: float = 40.0

    def __post_init__(self) -> None:
        for name, value, unit in (
            ("α/β", self.alpha_beta_gy, "Gy"),
            ("repair half-time", self.repair_half_time_h, "h"),
            ("kidney BED limit", self.limit_gy, "Gy"),
        ):
            if not (math.isfinite(value) and value > 0):
                raise DosimetryError(
                    f"The kidney {name} must be a positive, finite value in {unit}, "
                    f"got {value}; the defaults are α/β 2.6 Gy and a "
                    "repair half-time of 2.8 h (Wessels 2008) and a BED limit of 40 Gy "
                    "(Bodei 2008)."
                )


def _relative_effectiveness_term(
    effective_half_life_h: float, parameters: BedParameters
) -> float:
    """``T_rep / ((α/β)(T_rep + T_eff))`` in 1/Gy."""
    if not (math.isfinite(effective_half_life_h) and effective_half_life_h > 0):
        raise DosimetryError(
            f"An effective half-life must be positive and finite, got {effective_half_life_h} h."
        )
    t_rep = parameters.repair_half_time_h
    return t_rep / (parameters.alpha_beta_gy * (t_rep + effective_half_life_h))


def _check_dose(dose_gy: float) -> None:
    if not (math.isfinite(dose_gy) and dose_gy >= 0):
        raise DosimetryError(f"An absorbed dose must be finite and ≥ 0 Gy, got {dose_gy}.")


def cycle_bed_gy(dose_gy: float, effective_half_life_h: float, parameters: BedParameters) -> float:
    """BED of one cycle: ``D [1 + D T_rep / ((α/β)(T_rep + T_eff))]`` (Dale 1985).

    Raises
    ------
    DosimetryError
        A negative or non-finite dose, or a half-life that is not positive.
    """
    _check_dose(dose_gy)
    return dose_gy * (1.0 + dose_gy * _relative_effectiveness_term(effective_half_life_h,
                                                                     parameters))


def cycle_bed_derivative(
    dose_gy: float, effective_half_life_h: float, parameters: BedParameters
) -> float:
    """``∂BED/∂D = 1 + 2 D T_rep / ((α/β)(T_rep + T_eff))`` of one cycle."""
    _check_dose(dose_gy)
    return 1.0 + 2.0 * dose_gy * _relative_effectiveness_term(effective_half_life_h, parameters)


@dataclass(frozen=True)
class CycleBed:
    """One cycle's kidney BED and the effective half-life it used.

    ``half_life_cycle`` is the cycle whose half-life was used: this cycle's
    number when it had its own.
    """

    cycle_number: int
    dose_gy: float
    effective_half_life_h: float
    half_life_cycle: int
    bed_gy: float
    derivative: float

    @property
    def borrowed(self) -> bool:
        """Whether the half-life came from another (multi-time-point) cycle."""
        return self.half_life_cycle != self.cycle_number


@dataclass(frozen=True)
class KidneyBed:
    """The course BED of one kidney VOI.

    ``total_bed_gy`` is ``None`` when a cycle had no effective half-life to
    use; ``reason`` then says which. ``uncertainty`` is the BED's budget
    (relative components, k = 1) when every cycle's dose has one;
    ``standard_uncertainty_gy`` is the combined standard uncertainty in any
    case it could be computed (``None`` otherwise).
    """

    name: str
    parameters: BedParameters
    cycles: tuple[CycleBed, ...]
    total_bed_gy: float | None
    standard_uncertainty_gy: float | None = None
    uncertainty: DoseUncertainty | None = None
    uncertainty_basis: str = ""
    reason: str | None = None

    @property
    def per_cycle_bed_gy(self) -> dict[int, float]:
        """BED per cycle number."""
        return {c.cycle_number: c.bed_gy for c in self.cycles}

    @property
    def total_dose_gy(self) -> float:
        """Sum of the cycles' absorbed doses."""
        return math.fsum(c.dose_gy for c in self.cycles)

    @property
    def notes(self) -> tuple[str, ...]:
        """Which cycles used another cycle's effective half-life."""
        return tuple(
            f"cycle {c.cycle_number}: T_eff {c.effective_half_life_h:.3g} h of "
            f"multi-time-point cycle {c.half_life_cycle}"
            for c in self.cycles
            if c.borrowed
        )


def course_bed(
    doses: Sequence[tuple[float, float]], parameters: BedParameters
) -> float:
    """``Σ BED_i`` over ``(dose_gy, effective_half_life_h)`` pairs, full repair between them."""
    return math.fsum(cycle_bed_gy(d, t, parameters) for d, t in doses)


def kidney_beds(
    cycles: Sequence[CycleResult], parameters: BedParameters
) -> tuple[KidneyBed, ...]:
    """The course BED of every kidney VOI of ``cycles`` (the organs the kidney limit applies to,
    :data:`~theranode.dosimetry.course.KIDNEY_ORGANS`).

    VOIs are matched across cycles by name, as the course totals are.
    """
    ordered = sorted(cycles, key=lambda c: c.cycle_number)
    names = dict.fromkeys(
        v.name for c in ordered for v in c.vois if v.organ in KIDNEY_ORGANS
    )
    return tuple(_kidney_bed(name, ordered, parameters) for name in names)


def _kidney_bed(
    name: str, cycles: Sequence[CycleResult], parameters: BedParameters
) -> KidneyBed:
    present = [(c, v) for c in cycles if (v := _voi(c, name)) is not None]
    own = _own_half_lives(present)
    multi = sorted(
        c.cycle_number for c, _ in present
        if c.method is DoseMethod.MULTI_TIME_POINT and c.cycle_number in own
    )
    beds: list[CycleBed] = []
    for cycle, voi in present:
        source = _half_life_source(cycle, own, multi)
        if source is None:
            reason = (
                f"cycle {cycle.cycle_number} ({cycle.method.value}) has no effective half-life "
                f"for {name!r} and the course has no multi-time-point cycle with one to use; "
                "the BED needs T_eff in every cycle."
            )
            logger.info("kidney BED of %r not computed: %s", name, reason)
            return KidneyBed(name, parameters, (), None, reason=reason)
        t_eff = own[source]
        beds.append(
            CycleBed(
                cycle.cycle_number,
                voi.mean_gy,
                t_eff,
                source,
                cycle_bed_gy(voi.mean_gy, t_eff, parameters),
                cycle_bed_derivative(voi.mean_gy, t_eff, parameters),
            )
        )
    total = math.fsum(b.bed_gy for b in beds)
    budget, u_gy, basis = _bed_uncertainty(beds, [v for _, v in present], total)
    return KidneyBed(name, parameters, tuple(beds), total, u_gy, budget, basis)


def _voi(cycle: CycleResult, name: str) -> VoiDose | None:
    try:
        return cycle.voi(name)
    except KeyError:
        return None


def _own_half_lives(present: Sequence[tuple[CycleResult, VoiDose]]) -> dict[int, float]:
    """Cycle number → the VOI's own effective half-life, where it has one."""
    own: dict[int, float] = {}
    for cycle, voi in present:
        t_eff = voi.effective_half_life_h
        if t_eff is None and voi.fit is not None:
            t_eff = voi.fit.effective_half_life_h
        if t_eff is not None and math.isfinite(t_eff) and t_eff > 0:
            own[cycle.cycle_number] = t_eff
    return own


def _half_life_source(
    cycle: CycleResult, own: Mapping[int, float], multi: Sequence[int]
) -> int | None:
    """The cycle whose half-life ``cycle`` uses (module docstring), or None.

    ``multi``: the multi-time-point cycles with a half-life of this VOI, ascending.
    """
    number = cycle.cycle_number
    if number in own:
        return number
    if cycle.method is DoseMethod.MULTI_TIME_POINT:
        return None
    reference = cycle.settings.get("reference_cycle")
    if isinstance(reference, int) and reference in multi:
        return reference
    earlier = [n for n in multi if n < number]
    later = [n for n in multi if n > number]
    if earlier:
        return earlier[-1]
    return later[0] if later else None


def _bed_uncertainty(
    beds: Sequence[CycleBed], vois: Sequence[VoiDose], total_gy: float
) -> tuple[DoseUncertainty | None, float | None, str]:
    """The BED's budget, standard uncertainty and basis (module docstring)."""
    budgets = [v.uncertainty for v in vois]
    if all(b is not None for b in budgets) and total_gy > 0:
        linear = sum_of_doses(
            [(b.derivative * b.dose_gy, u) for b, u in zip(beds, budgets, strict=True)
             if u is not None],
            CORRELATED_BETWEEN_CYCLES,
        )
        scale = linear.dose_gy / total_gy
        budget = DoseUncertainty(
            total_gy, {c: r * scale for c, r in linear.components.items()}
        )
        return budget, budget.standard_gy, FROM_BUDGET
    parts = [b.derivative * v.mean_gy_sd for b, v in zip(beds, vois, strict=True)]
    if all(math.isfinite(p) for p in parts):
        return None, math.sqrt(math.fsum(p * p for p in parts)), FROM_FIT_SD
    return None, None, ""
