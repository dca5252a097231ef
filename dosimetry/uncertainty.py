"""Uncertainty budget of a VOI's mean absorbed dose (EANM; GUM).

Every VOI dose gets a combined standard uncertainty (k = 1) and its
components, each a *relative* standard uncertainty of the dose, so that a
physicist sees what dominates. The model follows the EANM guidance (Gear
2018): the law of propagation of uncertainty (GUM, JCGM 100:2008, 5.1.2)
through the dosimetry chain, with the kinetic fit's full covariance.

Which errors are random and which systematic
--------------------------------------------
For a multi-time-point cycle each time point's VOI mean dose rate carries
(:class:`TimePointSpread`):

* **random between time points** — independent at each scan, so they enter the
  fit as its per-point standard deviations and leave through its covariance:
  *count noise* (each scan is its own Poisson realisation and reconstruction)
  and *registration* (each time point's CT is registered to the reference CT
  on its own; its residual error is independent of the other time points');
* **systematic for the VOI** — one draw moves every time point together, so
  they are *not* fitted but propagated as fully correlated shifts of the
  curve: *calibration* (one factor, one camera: the same relative error at
  every point, hence exactly ``u_cal`` on the dose), *partial volume* (one
  PSF FWHM or one recovery curve; the engine gives the signed relative change
  of each point when the FWHM moves by its sd) and *volume/segmentation* (the
  VOI is drawn once and carried to every time point; the engine gives the
  signed relative change of each point's value when the volume moves by its
  sd).

A systematic shift with per-point relative sizes ``s_i`` changes the dose by
``Σ_i (∂D/∂y_i) y_i s_i``, with ∂D/∂y_i the sensitivity of the fitted
integral to each point (linearised weighted least squares); equal ``s_i``
give exactly ``s`` because D is homogeneous of degree one in the values.

The kinetic fit
---------------
Ḋ(t) = Ḋ₀ e^(−λt), D = Ḋ₀/λ, fitted by
:func:`theranode.dosimetry.kinetics.fit_monoexponential` with absolute
standard deviations ``σ_i = y_i √(u_counts,i² + u_reg,i²)``; then::

    u²(D)/D² = u²(Ḋ₀)/Ḋ₀² + u²(λ)/λ² − 2 cov(Ḋ₀, λ)/(Ḋ₀ λ)

which equals ``Σ_i (∂D/∂y_i)² σ_i² / D²`` and is split into its counts and
registration parts that way. When the residual scatter exceeds what the σ_i
explain (reduced χ² = RSS/(n − k) > 1) the covariance is scaled by χ²
(Birge ratio); the excess, ``(χ² − 1)`` times the random variance, is the
*kinetic fit* component (model misfit or understated noise). With two time
points there is no residual degree of freedom: the curve passes through both
points, the stated σ alone give the covariance and the kinetic-fit component
is 0. When λ is clipped at λ_phys the fit has one free parameter (Ḋ₀), λ is
taken as exact (the bound), and χ² has n − 1 degrees of freedom.

Single time point
-----------------
D = Ḋ(t)·τ: calibration, partial volume, volume and counts at t as above,
plus the method's own spread (Hänscheid 2018; Madsen 2018; the paper's
scaling from the patient's reference cycle, Hebert 2024) and, for the
scaling, the reference cycle: its λ_eff through the ``e^(λ_eff Δt)``
correction (``Δt·u(λ_eff)``) and its random errors (:class:`ReferenceCycle`).

Sums (course totals, lesion indices)
------------------------------------
Components that are one error shared by the summed doses add linearly in Gy
(calibration: one camera and factor; partial volume: one PSF or recovery
curve; between cycles scaled from one reference cycle, that reference), the
others in quadrature (GUM 5.2, correlation coefficient 1 or 0). The mean
lesion index is the sum ÷ n. The minimum and maximum indices are one lesion's
total each: their uncertainty is that lesion's (no order-statistic
correction).

References
----------
Gear JI, Cox MG, Gustafsson J, et al. EANM practical guidance on uncertainty
analysis for molecular radiotherapy absorbed dose calculations. Eur J Nucl
Med Mol Imaging 2018;45:2456-2474.
JCGM 100:2008, Evaluation of measurement data — Guide to the expression of
uncertainty in measurement (GUM), sections 5.1-5.2 and 6.
JCGM 101:2008, Propagation of distributions using a Monte Carlo method
(GUM Supplement 1).
Birge RT. The calculation of errors by the method of least squares. Phys Rev
1932;40:207-227 (scaling by the reduced χ²).
Finocchiaro D, Gear JI, Fioroni F, et al. Uncertainty analysis of tumour
absorbed dose calculations in molecular radiotherapy. EJNMMI Phys 2020.
Hebert et al., J Nucl Med 2024;65:923-930 (scaling of cycles 3-4).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError, FitError, InsufficientDataError
from theranode.dosimetry.kinetics import (
    _covariance,
    _mono_jacobian,
    _mono_residuals,
    _prepare,
    fit_monoexponential,
)
from theranode.dosimetry.recovery import RecoveryCurve
from theranode.dosimetry.results import (
    DoseMethod,
    DoseUncertainty,
    UncertaintyComponent,
    VoiKind,
)

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Largest relative standard uncertainty accepted as an input (100 % is a typo
#: for a fraction: 5 % is 0.05).
_MAX_RELATIVE = 1.0
#: Largest PSF FWHM sd or registration sd accepted, mm.
_MAX_MM = 50.0


#: One error shared by every cycle of a VOI's course (summed linearly).
CORRELATED_BETWEEN_CYCLES = frozenset(
    {
        UncertaintyComponent.CALIBRATION,
        UncertaintyComponent.PARTIAL_VOLUME,
        UncertaintyComponent.REFERENCE_CYCLE,
    }
)
#: One error shared by the VOIs of one patient (summed linearly).
CORRELATED_BETWEEN_VOIS = frozenset(
    {UncertaintyComponent.CALIBRATION, UncertaintyComponent.PARTIAL_VOLUME}
)


# -- inputs ---------------------------------------------------------------------
@dataclass(frozen=True)
class UncertaintyInputs:
    """Input standard uncertainties of the budget (k = 1).

    Relative values are fractions (0.05 is 5 %). Defaults and their sources
    are in ``docs/uncertainty.md``.

    Attributes
    ----------
    calibration_relative:
        Of the SPECT calibration factor (Gear 2018: typically 2-5 %).
    psf_fwhm_sd_mm:
        Of the camera's PSF FWHM; the engine perturbs the partial-volume
        correction by ± this much.
    recovery_curve_relative:
        Of the recovery coefficient curve itself (the paper's RC path).
    organ_volume_relative, lesion_volume_relative:
        Of a VOI's volume (segmentation), for organs and marrow, and lesions.
    registration_sd_mm:
        Residual registration error, 1 sd per axis.
    scaled_method_relative, hanscheid_relative, madsen_relative:
        Spread of each single-time-point method.
    """

    calibration_relative: float = 0.05
    psf_fwhm_sd_mm: float = 1.0
    recovery_curve_relative: float = 0.05
    organ_volume_relative: float = 0.05
    lesion_volume_relative: float = 0.15
    registration_sd_mm: float = 2.0
    scaled_method_relative: float = 0.05
    hanscheid_relative: float = 0.30
    madsen_relative: float = 0.30

    def __post_init__(self) -> None:
        for name in (
            "calibration_relative",
            "recovery_curve_relative",
            "organ_volume_relative",
            "lesion_volume_relative",
            "scaled_method_relative",
            "hanscheid_relative",
            "madsen_relative",
        ):
            _check_relative(name, getattr(self, name))
        for name in ("psf_fwhm_sd_mm", "registration_sd_mm"):
            _check_mm(name, getattr(self, name))

    def volume_relative(self, kind: VoiKind) -> float:
        """Relative volume uncertainty of a VOI of ``kind`` (lesion or organ/marrow)."""
        if VoiKind(kind) is VoiKind.LESION:
            return self.lesion_volume_relative
        return self.organ_volume_relative

    def method_relative(self, method: DoseMethod) -> float:
        """Spread of a single-time-point ``method``.

        Raises
        ------
        DosimetryError
            ``method`` is the multi-time-point one, which has no such spread.
        """
        spreads = {
            DoseMethod.SINGLE_TIME_POINT_SCALED: self.scaled_method_relative,
            DoseMethod.HANSCHEID: self.hanscheid_relative,
            DoseMethod.MADSEN: self.madsen_relative,
        }
        method = DoseMethod(method)
        if method not in spreads:
            raise DosimetryError(
                f"{method.value!r} is not a single-time-point method; its uncertainty comes "
                "from the kinetic fit (multi_time_point_budget)."
            )
        return spreads[method]


@dataclass(frozen=True)
class TimePointSpread:
    """One time point of a VOI's curve with its relative standard uncertainties.

    Attributes
    ----------
    elapsed_h:
        Time after injection.
    value:
        VOI mean dose rate, Gy/h (any unit: the budget is relative).
    counts_relative:
        RANDOM between time points: count noise of the VOI mean (≥ 0).
    registration_relative:
        RANDOM between time points: the VOI mean's change under the residual
        registration error (≥ 0; 0 on the reference time point, whose VOIs
        were drawn on it).
    partial_volume_relative:
        SYSTEMATIC for the VOI: signed relative change of the corrected value
        when the PSF FWHM grows by its sd (or, on the RC path, the recovery
        curve's relative uncertainty).
    volume_relative:
        SYSTEMATIC for the VOI: signed relative change of the value when the
        VOI's volume grows by its sd (:func:`segmentation_relative`).
    """

    elapsed_h: float
    value: float
    counts_relative: float = 0.0
    registration_relative: float = 0.0
    partial_volume_relative: float = 0.0
    volume_relative: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.elapsed_h) and self.elapsed_h >= 0):
            raise DosimetryError(f"A time point must be ≥ 0 h after injection, got {self.elapsed_h}.")
        if not (math.isfinite(self.value) and self.value >= 0):
            raise DosimetryError(
                f"A VOI mean dose rate must be finite and ≥ 0, got {self.value} at "
                f"{self.elapsed_h} h."
            )
        _check_relative("counts_relative", self.counts_relative)
        _check_relative("registration_relative", self.registration_relative)
        _check_signed("partial_volume_relative", self.partial_volume_relative)
        _check_signed("volume_relative", self.volume_relative)

    @property
    def random_relative(self) -> float:
        """Relative sd of the value from the random sources (counts, registration)."""
        return math.hypot(self.counts_relative, self.registration_relative)


@dataclass(frozen=True)
class ReferenceCycle:
    """What the scaled single-time-point budget needs of the reference cycle.

    Attributes
    ----------
    lambda_eff_sd_per_h:
        Standard uncertainty of the reference fit's λ_eff
        (:attr:`KineticCovariance.lambda_sd_per_h`).
    delta_h:
        This cycle's scan time minus the reference cycle's scan time.
    dose_random_relative:
        Random relative uncertainty of the reference dose (counts,
        registration, kinetic fit components combined).
    scan_counts_relative:
        Count noise of the VOI on the reference cycle's ~24 h scan.
    """

    lambda_eff_sd_per_h: float
    delta_h: float
    dose_random_relative: float = 0.0
    scan_counts_relative: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lambda_eff_sd_per_h) and self.lambda_eff_sd_per_h >= 0):
            raise DosimetryError(
                f"The sd of the reference λ_eff must be finite and ≥ 0 1/h, got "
                f"{self.lambda_eff_sd_per_h}."
            )
        if not math.isfinite(self.delta_h):
            raise DosimetryError(f"The scan-time difference must be finite, got {self.delta_h} h.")
        _check_relative("dose_random_relative", self.dose_random_relative)
        _check_relative("scan_counts_relative", self.scan_counts_relative)

    @classmethod
    def from_reference(
        cls,
        fit: KineticCovariance,
        budget: DoseUncertainty,
        delta_h: float,
        scan_counts_relative: float = 0.0,
    ) -> ReferenceCycle:
        """From the reference VOI's :func:`kinetic_covariance` and its budget."""
        return cls(
            lambda_eff_sd_per_h=fit.lambda_sd_per_h,
            delta_h=delta_h,
            dose_random_relative=budget.random_relative,
            scan_counts_relative=scan_counts_relative,
        )

    @property
    def relative(self) -> float:
        """√((Δt·u(λ_eff))² + u_dose,random² + u_scan counts²)."""
        return math.sqrt(
            (self.delta_h * self.lambda_eff_sd_per_h) ** 2
            + self.dose_random_relative**2
            + self.scan_counts_relative**2
        )


# -- result ---------------------------------------------------------------------
@dataclass(frozen=True)
class KineticCovariance:
    """The weighted mono-exponential fit of a VOI curve, linearised.

    Attributes
    ----------
    initial_value, lambda_per_h:
        Fitted Ḋ₀ and λ.
    covariance:
        Of (Ḋ₀, λ) from the stated σ_i, unscaled; λ's row and column are 0
        when λ is clipped at λ_phys.
    dose_sensitivity_h:
        ∂D/∂y_i per time point, in time order (hours for Gy/h values).
    reduced_chi_square:
        RSS/(n − k) of the weighted fit; None without residual degrees of
        freedom.
    clipped:
        λ at its lower bound λ_phys.
    """

    initial_value: float
    lambda_per_h: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    dose_sensitivity_h: tuple[float, ...]
    reduced_chi_square: float | None
    clipped: bool

    @property
    def dose_gy(self) -> float:
        """D = Ḋ₀/λ."""
        return self.initial_value / self.lambda_per_h

    @property
    def scale(self) -> float:
        """Birge factor applied to the covariance: max(1, χ²_red), 1 without dof."""
        chi2 = self.reduced_chi_square
        return 1.0 if chi2 is None else max(1.0, chi2)

    @property
    def lambda_sd_per_h(self) -> float:
        """Standard uncertainty of λ, scaled by the Birge factor (0 when clipped)."""
        return math.sqrt(max(self.covariance[1][1], 0.0) * self.scale)

    @property
    def random_relative(self) -> float:
        """u(D)/D from the stated random σ_i alone (unscaled)."""
        return math.sqrt(
            max(relative_dose_variance(self.initial_value, self.lambda_per_h, self.covariance), 0.0)
        )


@dataclass(frozen=True)
class MonteCarloUncertainty:
    """The dose's distribution by sampling the same model (GUM Supplement 1).

    ``low_gy`` and ``high_gy`` are the 2.5th and 97.5th percentiles.
    """

    dose_gy: float
    mean_gy: float
    standard_gy: float
    low_gy: float
    high_gy: float
    n_trials: int
    n_failed: int = 0


# -- helpers for the engine -----------------------------------------------------
def poisson_relative(total_counts: float) -> float:
    """Relative sd of a VOI's counts, 1/√N (a lower bound after reconstruction)."""
    if not (math.isfinite(total_counts) and total_counts > 0):
        raise DosimetryError(
            f"Poisson noise needs a positive number of counts, got {total_counts}; a VOI "
            "with no counts has no measurable mean."
        )
    return 1.0 / math.sqrt(total_counts)


def perturbation_relative(nominal: float, minus: float, plus: float) -> float:
    """Signed relative change per sd by central difference: (plus − minus)/(2·nominal).

    ``minus`` and ``plus`` are the value recomputed with an input moved by −1
    and +1 sd (the PSF FWHM; the VOI shifted by the registration sd along one
    axis — combine the three axes with :func:`math.hypot`).
    """
    if not (math.isfinite(nominal) and nominal != 0):
        raise DosimetryError(f"A relative change needs a finite, non-zero nominal, got {nominal}.")
    return (plus - minus) / (2.0 * nominal)


def recovery_log_slope(curve: RecoveryCurve, volume_ml: float, step: float = 0.01) -> float:
    """d ln RC / d ln V at ``volume_ml``, by central difference in log volume."""
    up = curve.coefficient(volume_ml * math.exp(step))
    down = curve.coefficient(volume_ml * math.exp(-step))
    return (math.log(up) - math.log(down)) / (2.0 * step)


def recovery_relative(
    curve: RecoveryCurve, volume_ml: float, inputs: UncertaintyInputs
) -> float:
    """Relative uncertainty of RC(V) itself, the partial-volume term on the RC path.

    u(RC)/RC from the curve's fit covariance when the curve has one
    (:class:`theranode.dosimetry.recovery.SigmoidRecoveryFit`), else
    ``inputs.recovery_curve_relative``. The curve's slope × u(V) belongs to
    the volume term (:func:`segmentation_relative`), not here.
    """
    standard_uncertainty = getattr(curve, "standard_uncertainty", None)
    if not callable(standard_uncertainty):
        return inputs.recovery_curve_relative
    return float(standard_uncertainty(volume_ml)) / curve.coefficient(volume_ml)


def segmentation_relative(
    volume_relative: float, mean_log_slope: float = 0.0, recovery_log_slope: float = 0.0
) -> float:
    """Signed relative change of a corrected VOI mean when V grows by its sd.

    The corrected mean is C(V)/RC(V): ``(∂ln C/∂ln V − ∂ln RC/∂ln V)·u(V)/V``.
    ``mean_log_slope`` is the measured mean's dependence on the VOI (the
    engine dilates and erodes the VOI); ``recovery_log_slope`` is
    :func:`recovery_log_slope` on the RC path, else 0.

    References
    ----------
    Gear et al. 2018 (the recovery coefficient's uncertainty from the
    curve's slope × u(V)).
    """
    _check_relative("volume_relative", volume_relative)
    return (mean_log_slope - recovery_log_slope) * volume_relative


def relative_dose_variance(
    initial_value: float,
    lambda_per_h: float,
    covariance: tuple[tuple[float, float], tuple[float, float]],
) -> float:
    """u²(D)/D² = u²(Ḋ₀)/Ḋ₀² + u²(λ)/λ² − 2 cov(Ḋ₀, λ)/(Ḋ₀ λ) for D = Ḋ₀/λ.

    References
    ----------
    Gear et al. 2018 (time-integrated activity of a mono-exponential);
    JCGM 100:2008, 5.2.2 (correlated input quantities).
    """
    (var_d0, cov_d0_lam), (_, var_lam) = covariance
    d0, lam = initial_value, lambda_per_h
    return var_d0 / d0**2 + var_lam / lam**2 - 2.0 * cov_d0_lam / (d0 * lam)


# -- multi-time-point -----------------------------------------------------------
def kinetic_covariance(
    spreads: Sequence[TimePointSpread], lambda_phys_per_h: float
) -> KineticCovariance:
    """Weighted mono-exponential fit of ``spreads`` and its linearisation.

    σ_i = value_i × random_relative_i (absolute sd for
    :func:`theranode.dosimetry.kinetics.fit_monoexponential`).

    Raises
    ------
    InsufficientDataError
        Fewer than two time points.
    DosimetryError
        A value is not positive or a time point has no random uncertainty.
    """
    ordered = _ordered(spreads)
    t, y, sd = _curve_arrays(ordered)
    fit = fit_monoexponential(t, y, lambda_phys_per_h, sd=sd)
    d0, lam = fit.parameters["initial_value"], fit.parameters["lambda_per_h"]
    clipped = lam <= lambda_phys_per_h * (1 + 1e-8)
    curve = _prepare(t, y, sd, lambda_phys_per_h, min_points=2, what="monoexponential")
    jacobian = _mono_jacobian(curve, [d0, lam])
    if clipped:
        jacobian = jacobian[:, :1]
        gradient = np.array([1.0 / lam])
    else:
        gradient = np.array([1.0 / lam, -d0 / lam**2])
    rss = float(np.sum(_mono_residuals(curve, [d0, lam]) ** 2))
    cov = _covariance(jacobian, rss, curve)
    sensitivity = (gradient @ cov @ jacobian.T) * np.sqrt(curve.weights)
    dof = t.size - jacobian.shape[1]
    return KineticCovariance(
        initial_value=d0,
        lambda_per_h=lam,
        covariance=_full_covariance(cov),
        dose_sensitivity_h=tuple(float(v) for v in sensitivity),
        reduced_chi_square=rss / dof if dof > 0 else None,
        clipped=clipped,
    )


def multi_time_point_budget(
    spreads: Sequence[TimePointSpread],
    inputs: UncertaintyInputs,
    lambda_phys_per_h: float,
) -> DoseUncertainty:
    """Uncertainty of D = Ḋ₀/λ fitted to a multi-time-point curve (module docstring).

    Returns
    -------
    DoseUncertainty
        ``dose_gy`` is the fit's integral; components calibration, partial
        volume, volume (systematic), counts, registration (random, through
        the fit) and kinetic fit (the residual scatter beyond the stated σ).

    References
    ----------
    Gear et al. 2018 (propagation through the fit's covariance); Birge
    1932 (scaling by the reduced χ²).
    """
    ordered = _ordered(spreads)
    fit = kinetic_covariance(ordered, lambda_phys_per_h)
    dose = fit.dose_gy
    weight = np.asarray(fit.dose_sensitivity_h) * np.array([s.value for s in ordered]) / dose
    counts = _quadrature(weight, [s.counts_relative for s in ordered])
    registration = _quadrature(weight, [s.registration_relative for s in ordered])
    excess = math.sqrt(fit.scale - 1.0) * math.hypot(counts, registration)
    if fit.clipped:
        logger.debug("uncertainty: λ clipped at λ_phys; λ taken as exact")
    return DoseUncertainty(
        dose_gy=dose,
        effective_decay_sd_per_h=fit.lambda_sd_per_h,
        components={
            UncertaintyComponent.CALIBRATION: inputs.calibration_relative,
            UncertaintyComponent.PARTIAL_VOLUME: _correlated(
                weight, [s.partial_volume_relative for s in ordered]
            ),
            UncertaintyComponent.VOLUME: _correlated(weight, [s.volume_relative for s in ordered]),
            UncertaintyComponent.COUNTS: counts,
            UncertaintyComponent.REGISTRATION: registration,
            UncertaintyComponent.KINETIC_FIT: excess,
        },
    )


def monte_carlo_budget(
    spreads: Sequence[TimePointSpread],
    inputs: UncertaintyInputs,
    lambda_phys_per_h: float,
    n_trials: int = 2000,
    seed: int = 0,
) -> MonteCarloUncertainty:
    """The multi-time-point budget by sampling (GUM Supplement 1).

    Per trial: one normal draw for each systematic factor (calibration,
    partial volume, volume: every time point moves together), one per point
    and source for the random errors (inflated by √χ²_red when the scatter
    exceeds the stated σ, as the analytic budget does), a refit with the
    stated σ, the dose × the calibration factor. Trials whose refit fails
    (e.g. no positive value left) are counted in ``n_failed`` and dropped.

    References
    ----------
    JCGM 101:2008 (GUM Supplement 1), 7 (the Monte Carlo method) and 7.7
    (coverage interval from the 2.5th and 97.5th percentiles).
    """
    if n_trials < 2:
        raise DosimetryError(f"A Monte-Carlo budget needs at least 2 trials, got {n_trials}.")
    ordered = _ordered(spreads)
    sd = _curve_arrays(ordered)[2]
    nominal = kinetic_covariance(ordered, lambda_phys_per_h)
    rng = np.random.default_rng(seed)
    doses = [
        _monte_carlo_trial(rng, ordered, inputs, lambda_phys_per_h, math.sqrt(nominal.scale), sd)
        for _ in range(n_trials)
    ]
    sampled = np.array([d for d in doses if d is not None])
    if sampled.size < 2:
        raise FitError(f"Only {sampled.size} of {n_trials} Monte-Carlo refits succeeded.")
    low, high = np.percentile(sampled, [2.5, 97.5])
    return MonteCarloUncertainty(
        dose_gy=nominal.dose_gy,
        mean_gy=float(sampled.mean()),
        standard_gy=float(sampled.std(ddof=1)),
        low_gy=float(low),
        high_gy=float(high),
        n_trials=n_trials,
        n_failed=n_trials - int(sampled.size),
    )


# -- single time point ------------------------------------------------------------
def single_time_point_budget(
    dose_gy: float,
    spread: TimePointSpread,
    inputs: UncertaintyInputs,
    method: DoseMethod,
    reference: ReferenceCycle | None = None,
) -> DoseUncertainty:
    """Uncertainty of D = Ḋ(t)·τ from one scan (module docstring).

    Parameters
    ----------
    dose_gy:
        The single-time-point dose.
    spread:
        The scan's VOI mean and its relative uncertainties.
    method:
        Hänscheid, Madsen or the scaling from a reference cycle.
    reference:
        Required for the scaling: the reference cycle's λ_eff uncertainty and
        random errors (the ``REFERENCE_CYCLE`` component).

    Raises
    ------
    DosimetryError
        A multi-time-point method, or the scaling without ``reference``.

    References
    ----------
    Hebert et al. 2024 (the scaling); Hänscheid et al. 2018; Madsen et al.
    2018; spreads of the methods in ``docs/uncertainty.md``.
    """
    method = DoseMethod(method)
    spread_of_method = inputs.method_relative(method)
    components = {
        UncertaintyComponent.CALIBRATION: inputs.calibration_relative,
        UncertaintyComponent.PARTIAL_VOLUME: abs(spread.partial_volume_relative),
        UncertaintyComponent.VOLUME: abs(spread.volume_relative),
        UncertaintyComponent.COUNTS: spread.counts_relative,
        UncertaintyComponent.REGISTRATION: spread.registration_relative,
        UncertaintyComponent.SINGLE_TIME_POINT_METHOD: spread_of_method,
    }
    if method is DoseMethod.SINGLE_TIME_POINT_SCALED:
        if reference is None:
            raise DosimetryError(
                "The scaled single-time-point budget needs the reference cycle (its λ_eff "
                "uncertainty and random errors): pass reference=ReferenceCycle(...)."
            )
        components[UncertaintyComponent.REFERENCE_CYCLE] = reference.relative
    return DoseUncertainty(dose_gy=dose_gy, components=components)


# -- sums -------------------------------------------------------------------------
def sum_of_doses(
    items: Sequence[tuple[float, DoseUncertainty]],
    correlated: frozenset[UncertaintyComponent] = CORRELATED_BETWEEN_CYCLES,
) -> DoseUncertainty:
    """Uncertainty of a sum of doses (a course total).

    Each item is ``(dose_gy, uncertainty)``: the uncertainty's relative
    components are applied to ``dose_gy`` (so a budget made before a
    multiplicative correction, e.g. recovery, still applies). Components in
    ``correlated`` add linearly in Gy, the others in quadrature.

    Raises
    ------
    InsufficientDataError
        No item.

    References
    ----------
    JCGM 100:2008, 5.2.2 (correlation coefficient 1: standard uncertainties
    add linearly; 0: in quadrature).
    """
    if not items:
        raise InsufficientDataError("A sum of doses needs at least one dose.")
    for dose, _ in items:
        if not (math.isfinite(dose) and dose >= 0):
            raise DosimetryError(f"Summed doses must be finite and ≥ 0 Gy, got {dose}.")
    total = math.fsum(dose for dose, _ in items)
    keys = [c for c in UncertaintyComponent if any(c in u.components for _, u in items)]
    components = {}
    for component in keys:
        parts = [dose * u.components.get(component, 0.0) for dose, u in items]
        combined = math.fsum(parts) if component in correlated else math.hypot(*parts)
        components[component] = combined / total if total > 0 else 0.0
    return DoseUncertainty(dose_gy=total, components=components)


def mean_of_doses(
    items: Sequence[tuple[float, DoseUncertainty]],
    correlated: frozenset[UncertaintyComponent] = CORRELATED_BETWEEN_VOIS,
) -> DoseUncertainty:
    """Uncertainty of the mean of doses (the per-patient mean lesion index).

    The sum's (:func:`sum_of_doses`, lesions of one patient: calibration and
    partial volume shared) ÷ n; relative components are unchanged by ÷ n.
    """
    total = sum_of_doses(items, correlated)
    return DoseUncertainty(dose_gy=total.dose_gy / len(items), components=total.components)


# -- internals ----------------------------------------------------------------------
def _check_relative(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value < _MAX_RELATIVE):
        raise DosimetryError(
            f"{name} must be a relative standard uncertainty in [0, 1) (0.05 is 5 %), got "
            f"{value}."
        )


def _check_signed(name: str, value: float) -> None:
    if not (math.isfinite(value) and abs(value) < _MAX_RELATIVE):
        raise DosimetryError(
            f"{name} must be a signed relative change in (−1, 1) (0.05 is 5 %), got {value}."
        )


def _check_mm(name: str, value: float) -> None:
    if not (math.isfinite(value) and 0.0 <= value <= _MAX_MM):
        raise DosimetryError(
            f"{name} must be a standard uncertainty in mm within [0, {_MAX_MM:g}], got {value}."
        )


def _ordered(spreads: Sequence[TimePointSpread]) -> list[TimePointSpread]:
    if len(spreads) < 2:
        raise InsufficientDataError(
            f"A multi-time-point budget needs at least two time points, got {len(spreads)}; "
            "use single_time_point_budget for one scan."
        )
    ordered = sorted(spreads, key=lambda s: s.elapsed_h)
    for spread in ordered:
        if spread.value <= 0 or spread.random_relative <= 0:
            raise DosimetryError(
                f"The time point at {spread.elapsed_h} h has value {spread.value} and random "
                f"relative uncertainty {spread.random_relative}; the weighted fit needs a "
                "positive value and a positive count-noise (or registration) uncertainty at "
                "every point (e.g. poisson_relative of the VOI's counts)."
            )
    return ordered


def _curve_arrays(ordered: Sequence[TimePointSpread]) -> tuple[FloatArray, FloatArray, FloatArray]:
    t = np.array([s.elapsed_h for s in ordered], dtype=np.float64)
    y = np.array([s.value for s in ordered], dtype=np.float64)
    sd = y * np.array([s.random_relative for s in ordered], dtype=np.float64)
    return t, y, sd


def _full_covariance(cov: FloatArray) -> tuple[tuple[float, float], tuple[float, float]]:
    if cov.shape == (1, 1):
        return (float(cov[0, 0]), 0.0), (0.0, 0.0)
    return (float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))


def _quadrature(weight: FloatArray, relative: Sequence[float]) -> float:
    """√Σ (w_i r_i)²: independent per-point errors through the fit."""
    return float(np.sqrt(np.sum((weight * np.asarray(relative)) ** 2)))


def _correlated(weight: FloatArray, relative: Sequence[float]) -> float:
    """|Σ w_i s_i|: one shared error of per-point size s_i through the fit."""
    return float(abs(np.sum(weight * np.asarray(relative))))


def _monte_carlo_trial(
    rng: np.random.Generator,
    ordered: Sequence[TimePointSpread],
    inputs: UncertaintyInputs,
    lambda_phys_per_h: float,
    inflation: float,
    sd: FloatArray,
) -> float | None:
    n = len(ordered)
    z_cal, z_pv, z_vol = rng.standard_normal(3)
    z_counts, z_reg = rng.standard_normal(n), rng.standard_normal(n)
    factor = np.array(
        [
            (1 + s.partial_volume_relative * z_pv)
            * (1 + s.volume_relative * z_vol)
            * (1 + inflation * (s.counts_relative * zc + s.registration_relative * zr))
            for s, zc, zr in zip(ordered, z_counts, z_reg, strict=True)
        ]
    )
    values = np.array([s.value for s in ordered]) * factor
    times = [s.elapsed_h for s in ordered]
    try:
        fit = fit_monoexponential(times, values, lambda_phys_per_h, sd=sd)
    except FitError:
        return None
    return float(fit.integral * (1 + inputs.calibration_relative * z_cal))
