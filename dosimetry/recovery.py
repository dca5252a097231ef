"""Recovery coefficients (partial-volume correction) and lesion eligibility.

The recovery coefficient RC(V) is the measured over the true mean
concentration of a sphere of volume V imaged and reconstructed with the
clinical protocol; the corrected mean dose is ``dose / RC(V)``. RC depends on
the camera, collimator, energy window and reconstruction, so the curve is
configuration data that every site measures with its own phantom (spheres in
a warm or cold background). Two forms are offered:

* :class:`RecoveryTable` — measured (volume, RC) points interpolated linearly
  in log volume and held constant outside the measured range;
* :class:`SigmoidRecovery` — ``RC(V) = a / (1 + (b/V)^c)``, the usual fit to
  such points.

:data:`DEFAULT_RECOVERY` is the sigmoid with a = 1, b = 2 mL, c = 1: it is
built from the one number the paper states, RC ≈ 0.5 at 2 cm³ (Hebert 2024,
Supplemental Fig. 1), tends to 1 for organ-sized volumes (0.91 at 20 mL,
0.99 at 200 mL). It is a configurable default, not a measurement: sites must
replace it with their own curve.

References
----------
Hebert et al., J Nucl Med 2024;65:923-930 (RC 0.5 at 2 cm³; lesions < 2 cm³
excluded).
Dewaraja YK et al., MIRD Pamphlet No. 23: quantitative SPECT for patient-
specific 3-dimensional dosimetry in internal radionuclide therapy, J Nucl
Med 2012;53:1310-1325 (recovery coefficients).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.optimize import curve_fit

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.results import VoiDose, VoiKind

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Smallest lesion the paper analyses, mL (= cm³).
MIN_LESION_VOLUME_ML = 2.0


def _check_coefficient(rc: float) -> None:
    if not (0.0 < rc <= 1.0):
        raise DosimetryError(
            f"A recovery coefficient must be in (0, 1], got {rc}; check the phantom data."
        )


def _check_volume(volume_ml: float) -> None:
    if not (math.isfinite(volume_ml) and volume_ml > 0):
        raise DosimetryError(f"A VOI volume must be positive and finite, got {volume_ml} mL.")


class RecoveryCurve(Protocol):
    """Anything that gives a recovery coefficient for a volume."""

    def coefficient(self, volume_ml: float) -> float:
        """RC at ``volume_ml`` (0 < RC ≤ 1)."""
        ...


@dataclass(frozen=True)
class RecoveryTable:
    """Measured recovery coefficients, interpolated linearly in log volume.

    Parameters
    ----------
    volumes_ml:
        Sphere volumes, strictly increasing and positive.
    coefficients:
        RC at those volumes, each in (0, 1].
    """

    volumes_ml: tuple[float, ...]
    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        volumes = tuple(float(v) for v in self.volumes_ml)
        rcs = tuple(float(v) for v in self.coefficients)
        object.__setattr__(self, "volumes_ml", volumes)
        object.__setattr__(self, "coefficients", rcs)
        if len(volumes) != len(rcs) or len(volumes) < 2:
            raise DosimetryError(
                f"A recovery table needs at least two (volume, RC) pairs of equal length; "
                f"got {len(volumes)} volumes and {len(rcs)} coefficients."
            )
        if min(volumes) <= 0 or any(b <= a for a, b in pairwise(volumes)):
            raise DosimetryError(
                f"Recovery table volumes must be positive and strictly increasing, got {volumes}."
            )
        for rc in rcs:
            _check_coefficient(rc)

    def coefficient(self, volume_ml: float) -> float:
        """RC at ``volume_ml``; constant beyond the first and last points."""
        _check_volume(volume_ml)
        log_v = np.log(np.asarray(self.volumes_ml))
        return float(np.interp(math.log(volume_ml), log_v, np.asarray(self.coefficients)))


@dataclass(frozen=True)
class SigmoidRecovery:
    """``RC(V) = a / (1 + (b/V)^c)``.

    Parameters
    ----------
    plateau:
        ``a``, the RC of very large objects, in (0, 1].
    half_volume_ml:
        ``b``: the volume at which RC = a/2.
    slope:
        ``c`` > 0, steepness in log volume.
    """

    plateau: float = 1.0
    half_volume_ml: float = 2.0
    slope: float = 1.0

    def __post_init__(self) -> None:
        _check_coefficient(self.plateau)
        if not (self.half_volume_ml > 0 and self.slope > 0):
            raise DosimetryError(
                f"Sigmoid recovery needs b > 0 mL and c > 0, got b={self.half_volume_ml}, "
                f"c={self.slope}."
            )

    def coefficient(self, volume_ml: float) -> float:
        """RC at ``volume_ml``."""
        _check_volume(volume_ml)
        return float(self.plateau / (1.0 + (self.half_volume_ml / volume_ml) ** self.slope))


@dataclass(frozen=True)
class SigmoidRecoveryFit:
    """A sigmoid fitted to measured (volume, RC) points, with its covariance.

    Attributes
    ----------
    curve:
        The fitted :class:`SigmoidRecovery`.
    covariance:
        3×3 covariance of ``(a, b, c)`` (plateau, half volume in mL, slope),
        row-major. Without stated point uncertainties it is scaled by the
        residual variance (N − 3 degrees of freedom).
    residual_sd:
        Root-mean-square residual of RC, sqrt(Σ r² / (N − 3)).
    n_points:
        Number of measured points.
    """

    curve: SigmoidRecovery
    covariance: tuple[tuple[float, float, float], ...]
    residual_sd: float
    n_points: int

    def coefficient(self, volume_ml: float) -> float:
        """RC of the fitted curve at ``volume_ml``."""
        return self.curve.coefficient(volume_ml)

    def standard_uncertainty(self, volume_ml: float) -> float:
        """u(RC(V)) from the parameter covariance (first-order propagation).

        ``u² = gᵀ Σ g`` with g the gradient of ``a / (1 + q)``, ``q = (b/V)^c``:
        ``∂/∂a = 1/(1+q)``, ``∂/∂b = −a c q / (b (1+q)²)``,
        ``∂/∂c = −a q ln(b/V) / (1+q)²``.

        References
        ----------
        JCGM 100:2008 (GUM), 5.1.2 (law of propagation of uncertainty).
        """
        _check_volume(volume_ml)
        a, b, c = self.curve.plateau, self.curve.half_volume_ml, self.curve.slope
        q = (b / volume_ml) ** c
        gradient = np.array(
            [
                1.0 / (1.0 + q),
                -a * c * q / (b * (1.0 + q) ** 2),
                -a * q * math.log(b / volume_ml) / (1.0 + q) ** 2,
            ]
        )
        variance = float(gradient @ np.asarray(self.covariance) @ gradient)
        return math.sqrt(max(variance, 0.0))


#: Fewest (volume, RC) points a sigmoid fit accepts: three parameters and one
#: degree of freedom left for the residual (and so the covariance).
MIN_SIGMOID_POINTS = 4


def _fit_points(
    volumes_ml: Sequence[float], rcs: Sequence[float], rc_sd: Sequence[float] | None
) -> tuple[FloatArray, FloatArray, FloatArray | None]:
    volumes = np.asarray(volumes_ml, dtype=np.float64)
    values = np.asarray(rcs, dtype=np.float64)
    sd = None if rc_sd is None else np.asarray(rc_sd, dtype=np.float64)
    if volumes.shape != values.shape or (sd is not None and sd.shape != values.shape):
        raise DosimetryError(
            f"A recovery fit needs one RC (and one uncertainty, if given) per volume; got "
            f"{volumes.size} volumes, {values.size} RCs"
            + ("" if sd is None else f" and {sd.size} uncertainties")
            + "."
        )
    if volumes.size < MIN_SIGMOID_POINTS:
        raise DosimetryError(
            f"A sigmoid recovery curve a/(1+(b/V)^c) has three parameters and needs at least "
            f"{MIN_SIGMOID_POINTS} measured (volume, RC) points; got {volumes.size}. Measure "
            "more spheres (the NEMA IEC body phantom has six) or use a RecoveryTable."
        )
    for volume in volumes:
        _check_volume(float(volume))
    if not bool(np.all(np.isfinite(values) & (values > 0))):
        raise DosimetryError(f"Measured RCs must be positive and finite, got {values.tolist()}.")
    if sd is not None and not bool(np.all(np.isfinite(sd) & (sd > 0))):
        raise DosimetryError(f"RC uncertainties must be positive, got {sd.tolist()}.")
    return volumes, values, sd


def _sigmoid(volume_ml: FloatArray, a: float, b: float, c: float) -> FloatArray:
    return np.asarray(a / (1.0 + (b / volume_ml) ** c), dtype=np.float64)


def sigmoid_recovery_fit(
    volumes_ml: Sequence[float],
    rcs: Sequence[float],
    rc_sd: Sequence[float] | None = None,
) -> SigmoidRecoveryFit:
    """Least-squares fit of ``RC(V) = a / (1 + (b/V)^c)`` with its covariance.

    Bounded to a ∈ (0, 1], b > 0, c > 0 (trust-region reflective). Start:
    a = largest RC, b = the volume whose RC is nearest half of it, c = 1.

    Parameters
    ----------
    volumes_ml:
        Sphere volumes (mL), positive.
    rcs:
        Measured recovery coefficients at those volumes.
    rc_sd:
        Optional standard uncertainty of each RC: the fit is then weighted
        and the covariance absolute; otherwise scaled by the residuals.

    Raises
    ------
    DosimetryError
        Fewer than :data:`MIN_SIGMOID_POINTS` points, mismatched lengths, bad
        values, or a fit that does not converge.

    References
    ----------
    Dewaraja YK et al., MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325
    (recovery coefficients from sphere measurements).
    """
    volumes, values, sd = _fit_points(volumes_ml, rcs, rc_sd)
    plateau0 = float(min(1.0, values.max()))
    half0 = float(volumes[np.argmin(np.abs(values - plateau0 / 2.0))])
    try:
        params, covariance = curve_fit(
            _sigmoid,
            volumes,
            values,
            p0=(plateau0, half0, 1.0),
            sigma=sd,
            absolute_sigma=sd is not None,
            bounds=((1e-9, 1e-9, 1e-6), (1.0, np.inf, np.inf)),
            method="trf",
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
        )
    except (RuntimeError, ValueError) as error:
        raise DosimetryError(
            f"The sigmoid recovery fit did not converge on volumes {volumes.tolist()} mL and "
            f"RCs {values.tolist()} ({error}); check the measurements or use a RecoveryTable."
        ) from None
    residuals = values - _sigmoid(volumes, *params)
    curve = SigmoidRecovery(float(params[0]), float(params[1]), float(params[2]))
    cov = np.nan_to_num(np.asarray(covariance, dtype=np.float64), nan=0.0, posinf=0.0)
    logger.debug("sigmoid recovery fit: %s from %d points", curve, volumes.size)
    return SigmoidRecoveryFit(
        curve=curve,
        covariance=tuple(tuple(float(v) for v in row) for row in cov),  # type: ignore[misc]
        residual_sd=float(np.sqrt(np.sum(residuals**2) / (volumes.size - 3))),
        n_points=int(volumes.size),
    )


def fit_sigmoid_recovery(
    volumes_ml: Sequence[float],
    rcs: Sequence[float],
    rc_sd: Sequence[float] | None = None,
) -> SigmoidRecovery:
    """The sigmoid ``a / (1 + (b/V)^c)`` fitted to measured points.

    See :func:`sigmoid_recovery_fit` for the method, the errors and the
    covariance (``u(RC)`` for an uncertainty budget).
    """
    return sigmoid_recovery_fit(volumes_ml, rcs, rc_sd).curve


#: Default curve anchored on the paper's RC(2 cm³) ≈ 0.5; replace per site.
DEFAULT_RECOVERY = SigmoidRecovery(plateau=1.0, half_volume_ml=2.0, slope=1.0)


def correct(mean: float, volume_ml: float, curve: RecoveryCurve = DEFAULT_RECOVERY) -> float:
    """Partial-volume corrected mean: ``mean / RC(volume_ml)``."""
    return mean / curve.coefficient(volume_ml)


def apply_recovery(voi: VoiDose, curve: RecoveryCurve = DEFAULT_RECOVERY) -> VoiDose:
    """A copy of ``voi`` with its mean dose divided by RC(volume).

    The mean, its standard deviation and the time-integrated activity are
    corrected and ``recovery_coefficient`` records RC. RC is a statement about
    the VOI mean concentration, so the voxel statistics (min, max, D98, D2)
    are left as measured and a note says so.

    Raises
    ------
    DosimetryError
        ``voi`` already carries a recovery coefficient other than 1.
    """
    if voi.recovery_coefficient != 1.0:
        raise DosimetryError(
            f"VOI {voi.name!r} is already recovery-corrected (RC {voi.recovery_coefficient}); "
            "apply the correction once, to the uncorrected result."
        )
    rc = curve.coefficient(voi.volume_ml)
    tia = voi.time_integrated_activity_mbq_h
    note = f"mean corrected for partial volume: RC({voi.volume_ml:.3g} mL) = {rc:.3f}; "
    note += "min/max/D98/D2 not corrected"
    return replace(
        voi,
        mean_gy=voi.mean_gy / rc,
        mean_gy_sd=voi.mean_gy_sd / rc,
        time_integrated_activity_mbq_h=None if tia is None else tia / rc,
        recovery_coefficient=rc,
        notes=(*voi.notes, note),
    )


@dataclass(frozen=True)
class LesionEligibility:
    """Whether a lesion is large enough for the analysis, and why not."""

    eligible: bool
    reason: str | None = None


def lesion_eligibility(volume_ml: float, min_ml: float = MIN_LESION_VOLUME_ML) -> LesionEligibility:
    """Lesions below ``min_ml`` are excluded (RC < 0.5 below 2 cm³, Hebert 2024)."""
    _check_volume(volume_ml)
    if volume_ml >= min_ml:
        return LesionEligibility(eligible=True)
    return LesionEligibility(
        eligible=False,
        reason=f"lesion volume {volume_ml:.3g} mL is below the {min_ml:g} mL minimum "
        "(partial-volume effect too large)",
    )


def apply_lesion_eligibility(voi: VoiDose, min_ml: float = MIN_LESION_VOLUME_ML) -> VoiDose:
    """Mark a lesion VOI below ``min_ml`` as excluded; other VOIs are returned as is."""
    if voi.kind is not VoiKind.LESION or voi.excluded:
        return voi
    verdict = lesion_eligibility(voi.volume_ml, min_ml)
    if verdict.eligible:
        return voi
    logger.info("lesion %s excluded: %s", voi.name, verdict.reason)
    return replace(voi, excluded=True, exclusion_reason=verdict.reason)
