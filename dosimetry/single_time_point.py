"""Absorbed dose of a cycle imaged at a single time point.

Scaled from a multi-time-point cycle (Hebert 2024, cycles 3-4)
----------------------------------------------------------------
::

    AD_c = AD_c2 × (N_c / N_c2) × (V_c2 / V_c) × e^(λ_eff,c2 (t_c − t_c2))

``N`` is the total count (or activity) in the VOI on the ~24 h scan, ``V``
its volume, ``t`` the scan time after injection, ``c2`` the reference
multi-time-point cycle. The formula assumes the dose-rate curve of cycle c
has the shape of cycle c2, ``Ḋ_c(t) = s·Ḋ_c2(t)``, so the dose, the integral
of the curve, scales with ``s``. Per unit mass (concentration N/V),
measured at different times on a monoexponential ``Ḋ₀ e^(−λt)``::

    s = [N_c/V_c · e^(+λ t_c)] / [N_c2/V_c2 · e^(+λ t_c2)]

— each measured concentration is brought back to injection by ``e^(+λt)``
before the ratio. Hence the correction ``e^(λ(t_c − t_c2))``: a cycle-c
scan taken later than the reference scan has decayed more and its counts are
scaled up; equal scan times give a factor of 1, which is the paper's formula.
``N`` must be measured the same way in both cycles (same camera, protocol and
acquisition duration, or converted to activity).

Hänscheid 2018 and Madsen 2018
------------------------------
For a monoexponential curve ``D = Ḋ(t) e^(λt)/λ`` exactly. Madsen uses it
with a population λ; Hänscheid replaces ``e^(λt)/λ`` by ``2t/ln 2``, a
λ-free approximation that is best when the scan time is near the effective
half-life (t ≈ 96 h for 177Lu-DOTATATE).

Results are uncorrected for partial volume (``recovery_coefficient`` 1):
apply :func:`theranode.dosimetry.recovery.apply_recovery` with the volume of this
cycle afterwards. The reference cycle's dose is un-corrected first (multiplied
by its recovery coefficient), so corrected and uncorrected references give the
same result.

References
----------
Hebert et al., J Nucl Med 2024;65:923-930 (formula for cycles 3 and 4).
Hänscheid H, Lapa C, Buck AK, Lassmann M, Werner RA. Dose mapping after
endoradiotherapy with 177Lu-DOTATATE/DOTATOC by a single measurement after
4 days. J Nucl Med 2018;59:75-81.
Madsen MT, Menda Y, O'Dorisio TM, O'Dorisio MS. Technical Note: Single time
point dose estimate for exponential clearance. Med Phys 2018;45:2318-2324.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from theranode.dosimetry.errors import DosimetryError, InsufficientDataError
from theranode.dosimetry.results import DoseMethod, Organ, VoiDose, VoiKind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VoiScan:
    """One VOI on one single-time-point scan.

    Attributes
    ----------
    total_counts:
        Total counts (or activity, MBq) in the VOI — any quantity
        proportional to the VOI's activity, measured identically in the
        cycles compared.
    volume_ml:
        Volume of the VOI on that scan.
    elapsed_h:
        Scan time after injection.
    """

    total_counts: float
    volume_ml: float
    elapsed_h: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.total_counts) and self.total_counts >= 0):
            raise DosimetryError(f"VOI counts must be finite and ≥ 0, got {self.total_counts}.")
        if not (math.isfinite(self.volume_ml) and self.volume_ml > 0):
            raise DosimetryError(f"VOI volume must be positive, got {self.volume_ml} mL.")
        if not (math.isfinite(self.elapsed_h) and self.elapsed_h >= 0):
            raise DosimetryError(f"Scan time after injection must be ≥ 0 h, got {self.elapsed_h}.")

    @property
    def concentration(self) -> float:
        """Counts per mL."""
        return self.total_counts / self.volume_ml


def scaling_factor(
    reference_scan: VoiScan, scan: VoiScan, lambda_eff_per_h: float | None = None
) -> float:
    """``s = (N_c/N_c2) × (V_c2/V_c) × e^(λ_eff (t_c − t_c2))`` (module docstring).

    Raises
    ------
    InsufficientDataError
        The scan times differ and no λ_eff is given.
    DosimetryError
        The reference scan has no counts.
    """
    if reference_scan.total_counts <= 0:
        raise DosimetryError(
            "The reference cycle's VOI has no counts on its 24 h scan; the scaled "
            "single-time-point formula cannot be used. Choose another reference cycle."
        )
    delta_h = scan.elapsed_h - reference_scan.elapsed_h
    ratio = scan.concentration / reference_scan.concentration
    if delta_h == 0.0:
        return ratio
    if lambda_eff_per_h is None or not lambda_eff_per_h > 0:
        raise InsufficientDataError(
            f"The scans are {delta_h:+.2f} h apart but no positive effective decay constant "
            f"was given (got {lambda_eff_per_h}); pass the reference cycle's λ_eff."
        )
    return ratio * math.exp(lambda_eff_per_h * delta_h)


def reference_lambda_per_h(reference: VoiDose) -> float | None:
    """Effective decay constant of the reference VOI: ln 2 / T_eff, or None."""
    if reference.effective_half_life_h is not None and reference.effective_half_life_h > 0:
        return math.log(2.0) / reference.effective_half_life_h
    if reference.fit is not None and reference.fit.effective_half_life_h:
        return math.log(2.0) / reference.fit.effective_half_life_h
    return None


def scale_from_reference_cycle(
    reference: VoiDose,
    reference_scan: VoiScan,
    scan: VoiScan,
    lambda_eff_per_h: float | None = None,
) -> VoiDose:
    """Dose of a single-time-point cycle scaled from a multi-time-point one.

    Parameters
    ----------
    reference:
        The same VOI's dose in the reference (multi-time-point) cycle.
    reference_scan:
        The VOI on the reference cycle's ~24 h scan.
    scan:
        The VOI on this cycle's ~24 h scan.
    lambda_eff_per_h:
        λ_eff for the scan-time correction; by default the reference's
        (:func:`reference_lambda_per_h`).

    Returns
    -------
    VoiDose
        Method :attr:`DoseMethod.SINGLE_TIME_POINT_SCALED`, the volume of
        ``scan``, uncorrected for partial volume. ``mean_gy_sd`` carries the
        reference's relative uncertainty only.
    """
    lam = reference_lambda_per_h(reference) if lambda_eff_per_h is None else lambda_eff_per_h
    factor = scaling_factor(reference_scan, scan, lam)
    rc = reference.recovery_coefficient
    tia = reference.time_integrated_activity_mbq_h
    activity_factor = factor * scan.volume_ml / reference_scan.volume_ml
    note = (
        f"scaled from the reference cycle ({reference.mean_gy:.4g} Gy) by {factor:.4f} "
        f"(scan at {scan.elapsed_h:.2f} h vs {reference_scan.elapsed_h:.2f} h)"
    )
    return VoiDose(
        name=reference.name,
        kind=reference.kind,
        method=DoseMethod.SINGLE_TIME_POINT_SCALED,
        volume_ml=scan.volume_ml,
        mean_gy=reference.mean_gy * rc * factor,
        mean_gy_sd=reference.mean_gy_sd * rc * factor,
        organ=reference.organ,
        time_integrated_activity_mbq_h=None if tia is None else tia * rc * activity_factor,
        effective_half_life_h=None if lam is None else math.log(2.0) / lam,
        excluded=reference.excluded,
        exclusion_reason=reference.exclusion_reason,
        notes=(note, "uncertainty: reference cycle only"),
    )


def hanscheid_dose_gy(dose_rate_gy_per_h: float, elapsed_h: float) -> float:
    """Hänscheid 2018: ``D ≈ Ḋ(t) · 2t / ln 2``."""
    _check_time(elapsed_h)
    return dose_rate_gy_per_h * 2.0 * elapsed_h / math.log(2.0)


def madsen_dose_gy(dose_rate_gy_per_h: float, elapsed_h: float, lambda_eff_per_h: float) -> float:
    """Madsen 2018: ``D = Ḋ(t) · e^(λt) / λ`` with a population λ_eff."""
    _check_time(elapsed_h)
    _check_lambda(lambda_eff_per_h)
    return dose_rate_gy_per_h * math.exp(lambda_eff_per_h * elapsed_h) / lambda_eff_per_h


def hanscheid(
    name: str,
    kind: VoiKind,
    dose_rate_gy_per_h: float,
    elapsed_h: float,
    volume_ml: float,
    dose_rate_sd_gy_per_h: float = math.nan,
    organ: Organ | None = None,
) -> VoiDose:
    """VOI dose by Hänscheid's approximation (:func:`hanscheid_dose_gy`).

    ``mean_gy_sd`` propagates the dose-rate sd only, not the error of the
    approximation itself.
    """
    factor_h = hanscheid_dose_gy(1.0, elapsed_h)
    return VoiDose(
        name=name,
        kind=kind,
        method=DoseMethod.HANSCHEID,
        volume_ml=volume_ml,
        mean_gy=dose_rate_gy_per_h * factor_h,
        mean_gy_sd=dose_rate_sd_gy_per_h * factor_h,
        organ=organ,
        notes=(f"D = Ḋ({elapsed_h:.2f} h) × 2t/ln2; sd excludes the approximation error",),
    )


def madsen(
    name: str,
    kind: VoiKind,
    dose_rate_gy_per_h: float,
    elapsed_h: float,
    volume_ml: float,
    population_lambda_per_h: float,
    dose_rate_sd_gy_per_h: float = math.nan,
    population_lambda_sd_per_h: float = 0.0,
    organ: Organ | None = None,
) -> VoiDose:
    """VOI dose by Madsen's formula (:func:`madsen_dose_gy`).

    The sd combines the dose-rate sd and the spread of the population λ::

        var D = (e^(λt)/λ)² var Ḋ + (D (t − 1/λ))² var λ
    """
    lam = population_lambda_per_h
    dose = madsen_dose_gy(dose_rate_gy_per_h, elapsed_h, lam)
    d_rate = math.exp(lam * elapsed_h) / lam
    d_lambda = dose * (elapsed_h - 1.0 / lam)
    sd = math.sqrt(
        (d_rate * dose_rate_sd_gy_per_h) ** 2 + (d_lambda * population_lambda_sd_per_h) ** 2
    )
    return VoiDose(
        name=name,
        kind=kind,
        method=DoseMethod.MADSEN,
        volume_ml=volume_ml,
        mean_gy=dose,
        mean_gy_sd=sd,
        organ=organ,
        effective_half_life_h=math.log(2.0) / lam,
        notes=(f"D = Ḋ({elapsed_h:.2f} h) × e^(λt)/λ with population λ = {lam:.5g} /h",),
    )


def _check_time(elapsed_h: float) -> None:
    if not (math.isfinite(elapsed_h) and elapsed_h > 0):
        raise DosimetryError(f"The scan time after injection must be positive, got {elapsed_h} h.")


def _check_lambda(lambda_per_h: float) -> None:
    if not (math.isfinite(lambda_per_h) and lambda_per_h > 0):
        raise DosimetryError(
            f"The effective decay constant must be positive, got {lambda_per_h} 1/h."
        )
