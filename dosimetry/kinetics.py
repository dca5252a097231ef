"""Time–dose-rate (or time–activity) curves: fits, integrals, model choice.

The absorbed dose of a cycle is the integral from injection to infinity of the
dose-rate curve Ḋ(t) of a VOI (or a voxel). Models:

``MONOEXPONENTIAL``
    Ḋ(t) = Ḋ₀ e^(−λt), λ ≥ λ_phys, integral Ḋ₀/λ. Uptake is taken as
    instantaneous at injection (the paper's model, Hebert 2024).
``BIEXPONENTIAL_UPTAKE``
    Ḋ(t) = A (e^(−λ₁t) − e^(−λ₂t)), λ₂ > λ₁ ≥ λ_phys, integral
    A (1/λ₁ − 1/λ₂); zero at injection, uptake rate λ₂, washout λ₁.
``TRAPEZOID_TAIL``
    Trapezoids between the measured points, a head segment from injection to
    the first point (:class:`HeadSegment`) and physical decay after the last
    point, integral ``y_last/λ_phys``.

The effective decay constant is bounded below by the physical one: biological
elimination can only add to decay. Data decaying slower than λ_phys (noise,
late uptake) are fitted with λ clipped at λ_phys and Ḋ₀ refitted under the
clip.

Uncertainty of the integral comes from the fit covariance (Jacobian at the
optimum, scaled by the residual variance when no standard deviations are
given) propagated with the delta method. Model choice uses AICc, which needs
more points than parameters + 1.

Voxel-wise fits (:func:`fit_voxels_monoexponential`) and VOI fits
(:func:`fit_monoexponential` of the VOI mean curve) answer different
questions. The integral is linear, but the fit is not: the mean of several
exponentials with different λ is not an exponential, so the VOI-fit dose and
the mean of the voxel-dose map inside the VOI differ in general (and by the
noise treatment: voxel fits are weighted log-linear, VOI fits non-linear
least squares). They coincide when the kinetics are uniform in the VOI (one
λ, any amplitudes), because the VOI mean curve is then the exponential with
that λ and amplitude mean(Ḋ₀).

References
----------
Sjögreen Gleisner K et al., EANM dosimetry committee recommendations for
dosimetry of 177Lu-labelled somatostatin-receptor- and PSMA-targeting
ligands, Eur J Nucl Med Mol Imaging 2022;49:1778-1809 (models, integration,
uncertainty propagation).
Kletting P et al., Optimized dosimetry with AICc model selection, Med Phys
2013;40:102504.
Burnham KP, Anderson DR. Model Selection and Multimodel Inference, 2002 (AICc).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum

import numpy as np
import numpy.typing as npt
from scipy.optimize import least_squares

from theranode.dosimetry.errors import FitError, InsufficientDataError
from theranode.dosimetry.results import KineticFit, KineticModel

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Number of free parameters of each fitted model (for AICc).
N_PARAMETERS: dict[KineticModel, int] = {
    KineticModel.MONOEXPONENTIAL: 2,
    KineticModel.BIEXPONENTIAL_UPTAKE: 3,
}
#: Upper bound of the uptake-minus-washout rate of the bi-exponential, 1/h
#: (an uptake half-life of ~25 s: beyond it uptake is instantaneous anyway).
MAX_UPTAKE_EXCESS_PER_H = 100.0
_UPTAKE_STARTS_PER_H = (0.02, 0.1, 0.5, 2.0, 10.0)
_TOLERANCE = 1e-14
_RSS_FLOOR = 1e-300


class HeadSegment(str, Enum):
    """How the trapezoid method treats injection → first time point."""

    #: The value at the first point is held back to injection (rectangle),
    #: consistent with the instantaneous-uptake assumption of the mono fit.
    CONSTANT = "constant back to injection"
    #: A straight line from zero at injection to the first point (triangle).
    LINEAR_FROM_ZERO = "linear from zero at injection"


@dataclass(frozen=True)
class _Curve:
    elapsed_h: FloatArray
    values: FloatArray
    weights: FloatArray
    has_sd: bool

    @property
    def n(self) -> int:
        return int(self.elapsed_h.size)


# -- public API -------------------------------------------------------------
def aicc(rss: float, n_points: int, n_parameters: int) -> float:
    """Corrected Akaike information criterion of a least-squares fit.

    ``AICc = n ln(RSS/n) + 2k + 2k(k+1)/(n−k−1)``; lower is better. A zero
    RSS (noise-free data) is floored at 1e-300 so that ties go to the model
    with fewer parameters.

    Raises
    ------
    InsufficientDataError
        ``n ≤ k + 1``: the small-sample correction is undefined.
    """
    if n_points <= n_parameters + 1:
        raise InsufficientDataError(
            f"AICc needs more than k + 1 = {n_parameters + 1} points for a model with "
            f"{n_parameters} parameters, got {n_points}; compare models on more time points."
        )
    n, k = n_points, n_parameters
    rss_used = max(float(rss), _RSS_FLOOR)
    return n * math.log(rss_used / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def fit_monoexponential(
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    lambda_phys_per_h: float,
    sd: npt.ArrayLike | None = None,
) -> KineticFit:
    """Fit Ḋ(t) = Ḋ₀ e^(−λt) with λ ≥ λ_phys by bounded least squares.

    Parameters
    ----------
    elapsed_h:
        Times after injection (h), at least two distinct.
    values:
        Curve values (e.g. VOI mean dose rate in Gy/h).
    lambda_phys_per_h:
        Physical decay constant, the lower bound of λ.
    sd:
        Absolute standard deviations of ``values``; when omitted the residual
        variance scales the covariance (relative weights).

    Returns
    -------
    KineticFit
        Parameters ``initial_value`` and ``lambda_per_h``; ``integral`` =
        Ḋ₀/λ (instantaneous uptake); ``integral_sd`` by the delta method
        (NaN when two points and no ``sd`` leave no residual degree of freedom).

    Raises
    ------
    FitError
        Fewer than two time points (use :mod:`theranode.dosimetry.single_time_point`),
        or no positive value.
    """
    curve = _prepare(elapsed_h, values, sd, lambda_phys_per_h, min_points=2, what="monoexponential")
    lam0 = max(_loglinear_lambda(curve), lambda_phys_per_h * (1 + 1e-6))
    d0 = _amplitude_given_lambda(curve, lam0)
    result = least_squares(
        lambda p: _mono_residuals(curve, p),
        x0=[d0, lam0],
        jac=lambda p: _mono_jacobian(curve, p),
        bounds=([0.0, lambda_phys_per_h], [np.inf, np.inf]),
        x_scale="jac",
        xtol=_TOLERANCE,
        ftol=_TOLERANCE,
        gtol=_TOLERANCE,
    )
    d0, lam = (float(v) for v in result.x)
    if result.active_mask[1] != 0 or lam <= lambda_phys_per_h * (1 + 1e-8):
        return _mono_clipped(curve, lambda_phys_per_h)
    rss = float(np.sum(_mono_residuals(curve, result.x) ** 2))
    cov = _covariance(_mono_jacobian(curve, result.x), rss, curve)
    grad = np.array([1.0 / lam, -d0 / lam**2])
    return KineticFit(
        model=KineticModel.MONOEXPONENTIAL,
        parameters={"initial_value": d0, "lambda_per_h": lam},
        integral=d0 / lam,
        integral_sd=_delta_sd(grad, cov),
        effective_half_life_h=math.log(2.0) / lam,
        aicc=_aicc_or_none(rss, curve.n, N_PARAMETERS[KineticModel.MONOEXPONENTIAL]),
    )


def fit_biexponential_uptake(
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    lambda_phys_per_h: float,
    sd: npt.ArrayLike | None = None,
) -> KineticFit:
    """Fit Ḋ(t) = A (e^(−λ₁t) − e^(−λ₂t)) with λ₂ > λ₁ ≥ λ_phys.

    Parametrised as ``(A, λ₁, δ = λ₂ − λ₁)`` with ``0 < δ ≤ 100/h``, started
    from several uptake rates; the best optimum is kept. The integral is
    A (1/λ₁ − 1/λ₂); the effective half-life reported is the washout one,
    ln 2/λ₁.

    Raises
    ------
    FitError
        Fewer than three time points or no positive value.
    """
    curve = _prepare(elapsed_h, values, sd, lambda_phys_per_h, min_points=3, what="bi-exponential")
    lam1_start = max(_loglinear_lambda(_tail(curve)), lambda_phys_per_h * (1 + 1e-6))
    best = min(
        (
            _biexp_from_start(curve, lambda_phys_per_h, lam1_start, delta)
            for delta in _UPTAKE_STARTS_PER_H
        ),
        key=lambda fit: fit[1],
    )
    params, rss = best
    amplitude, lam1, delta = (float(v) for v in params)
    lam2 = lam1 + delta
    cov = _covariance(_biexp_jacobian(curve, params), rss, curve)
    grad = np.array(
        [1 / lam1 - 1 / lam2, -amplitude / lam1**2 + amplitude / lam2**2, amplitude / lam2**2]
    )
    notes: list[str] = []
    if lam1 <= lambda_phys_per_h * (1 + 1e-8):
        notes.append("washout slower than physical decay in the data: λ₁ clipped to λ_phys")
    if delta >= MAX_UPTAKE_EXCESS_PER_H * (1 - 1e-6):
        notes.append("no uptake phase resolved: uptake rate at its upper bound")
    return KineticFit(
        model=KineticModel.BIEXPONENTIAL_UPTAKE,
        parameters={
            "amplitude": amplitude,
            "lambda_washout_per_h": lam1,
            "lambda_uptake_per_h": lam2,
        },
        integral=amplitude * (1 / lam1 - 1 / lam2),
        integral_sd=_delta_sd(grad, cov),
        effective_half_life_h=math.log(2.0) / lam1,
        aicc=_aicc_or_none(rss, curve.n, N_PARAMETERS[KineticModel.BIEXPONENTIAL_UPTAKE]),
        uptake_model="first-order uptake from zero at injection (rate λ₂)",
        notes=tuple(notes),
    )


def trapezoid_weights(
    elapsed_h: npt.ArrayLike,
    lambda_phys_per_h: float,
    head: HeadSegment = HeadSegment.CONSTANT,
) -> FloatArray:
    """Weights ``w`` such that the trapezoid-with-tail integral is ``w @ values``.

    ``elapsed_h`` must be sorted. The integral is linear in the values: head
    segment (``t₁·y₁`` for :attr:`HeadSegment.CONSTANT`, ``t₁·y₁/2`` for
    :attr:`HeadSegment.LINEAR_FROM_ZERO`), trapezoids between points, and the
    physical-decay tail ``y_n/λ_phys``.
    """
    t = np.asarray(elapsed_h, dtype=np.float64)
    if t.ndim != 1 or t.size < 1 or np.any(np.diff(t) <= 0) or t[0] < 0:
        raise FitError(
            f"Trapezoid integration needs sorted, distinct, non-negative times; got {t}."
        )
    _check_lambda_phys(lambda_phys_per_h)
    weights = np.zeros_like(t)
    weights[0] = t[0] if head is HeadSegment.CONSTANT else t[0] / 2.0
    half_steps = np.diff(t) / 2.0
    weights[:-1] += half_steps
    weights[1:] += half_steps
    weights[-1] += 1.0 / lambda_phys_per_h
    return weights


def integrate_trapezoid_tail(
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    lambda_phys_per_h: float,
    sd: npt.ArrayLike | None = None,
    head: HeadSegment = HeadSegment.CONSTANT,
) -> KineticFit:
    """Trapezoid integral with a head segment and a physical-decay tail.

    See :func:`trapezoid_weights`. ``integral_sd`` propagates ``sd``
    (independent errors) through the linear weights; it is NaN without ``sd``
    because the method has no residuals to estimate noise from.
    """
    curve = _prepare(
        elapsed_h,
        values,
        sd,
        lambda_phys_per_h,
        min_points=1,
        what="trapezoid",
        need_positive=False,
    )
    weights = trapezoid_weights(curve.elapsed_h, lambda_phys_per_h, head)
    integral = float(weights @ curve.values)
    integral_sd = float(np.sqrt(np.sum(weights**2 / curve.weights))) if curve.has_sd else math.nan
    return KineticFit(
        model=KineticModel.TRAPEZOID_TAIL,
        parameters={
            "head_until_h": float(curve.elapsed_h[0]),
            "tail_from_h": float(curve.elapsed_h[-1]),
            "lambda_tail_per_h": lambda_phys_per_h,
        },
        integral=integral,
        integral_sd=integral_sd,
        effective_half_life_h=None,
        uptake_model=f"head segment: {head.value}; physical decay after the last point",
    )


def fit_curve(
    model: KineticModel,
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    lambda_phys_per_h: float,
    sd: npt.ArrayLike | None = None,
) -> KineticFit:
    """Fit or integrate the curve with ``model`` (dispatch by enum)."""
    methods: dict[KineticModel, Callable[..., KineticFit]] = {
        KineticModel.MONOEXPONENTIAL: fit_monoexponential,
        KineticModel.BIEXPONENTIAL_UPTAKE: fit_biexponential_uptake,
        KineticModel.TRAPEZOID_TAIL: integrate_trapezoid_tail,
    }
    return methods[KineticModel(model)](elapsed_h, values, lambda_phys_per_h, sd)


def fit_best(
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    lambda_phys_per_h: float,
    sd: npt.ArrayLike | None = None,
    models: Sequence[KineticModel] = (
        KineticModel.MONOEXPONENTIAL,
        KineticModel.BIEXPONENTIAL_UPTAKE,
    ),
    fallback: KineticModel = KineticModel.TRAPEZOID_TAIL,
) -> KineticFit:
    """The model of ``models`` with the lowest AICc, with fallbacks.

    A model is eligible for AICc when ``n > k + 1``. When none is eligible
    or fits, the first of ``models`` that can be fitted at all (``n ≥ k``) is
    used without ranking, then ``fallback``. The choice and the reasons are
    written into ``notes``.

    Raises
    ------
    FitError
        No model, not even the fallback, can handle the data.
    """
    n = int(np.asarray(elapsed_h).size)
    notes: list[str] = []
    ranked: list[KineticFit] = []
    for model in models:
        k = _n_parameters(model)
        if n <= k + 1:
            notes.append(f"{model.value} not ranked: {n} points, AICc needs at least {k + 2}")
            continue
        try:
            ranked.append(fit_curve(model, elapsed_h, values, lambda_phys_per_h, sd))
        except FitError as error:
            notes.append(f"{model.value} failed: {error}")
    if ranked:
        best = min(ranked, key=lambda fit: fit.aicc if fit.aicc is not None else math.inf)
        scores = ", ".join(f"{fit.model.value} {fit.aicc:.3f}" for fit in ranked)
        notes.append(f"chosen by AICc ({scores})")
        return replace(best, notes=best.notes + tuple(notes))
    return _fit_unranked(elapsed_h, values, lambda_phys_per_h, sd, (*models, fallback), notes)


@dataclass(frozen=True, eq=False)
class VoxelFit:
    """Voxel-wise integrals of a dose-rate stack.

    Attributes
    ----------
    dose:
        Integral per voxel (Gy for Gy/h input); 0 outside the mask.
    lambda_per_h:
        Fitted effective decay constant; NaN outside the mask and where the
        trapezoid fallback was used.
    fallback_mask:
        Voxels integrated by trapezoid + physical tail (non-positive or
        non-finite samples, or a degenerate fit).
    clipped_mask:
        Voxels whose λ was clipped to λ_phys.
    """

    dose: FloatArray
    lambda_per_h: FloatArray
    fallback_mask: BoolArray
    clipped_mask: BoolArray

    @property
    def n_fallback(self) -> int:
        """Number of voxels integrated by the trapezoid fallback."""
        return int(self.fallback_mask.sum())

    @property
    def n_clipped(self) -> int:
        """Number of voxels with λ clipped to λ_phys."""
        return int(self.clipped_mask.sum())


def fit_voxels_monoexponential(
    elapsed_h: npt.ArrayLike,
    dose_rate_stack: npt.ArrayLike,
    lambda_phys_per_h: float,
    mask: npt.ArrayLike | None = None,
    head: HeadSegment = HeadSegment.CONSTANT,
) -> VoxelFit:
    """Monoexponential integral of every voxel, vectorised.

    Per voxel, ln Ḋ = ln Ḋ₀ − λt is fitted by weighted linear least squares
    in closed form with weights Ḋ² (which makes the log fit first-order
    equivalent to least squares on the linear scale). Where λ < λ_phys, λ is
    set to λ_phys and Ḋ₀ refitted on the linear scale,
    Ḋ₀ = Σ Ḋᵢ e^(−λtᵢ) / Σ e^(−2λtᵢ), as :func:`fit_monoexponential` does.
    Voxels with a non-positive or non-finite sample, or a degenerate fit,
    fall back to :func:`trapezoid_weights` (negative samples set to 0).

    Parameters
    ----------
    elapsed_h:
        Times after injection, shape ``(T,)``, ``T ≥ 2``.
    dose_rate_stack:
        Dose-rate maps on one grid, shape ``(T, ...)``.
    mask:
        Voxels to integrate, shape ``dose_rate_stack.shape[1:]``; all when
        omitted.

    Raises
    ------
    InsufficientDataError
        Fewer than two time points.
    FitError
        Shapes disagree or times are not distinct.
    """
    t, stack, selected = _prepare_stack(elapsed_h, dose_rate_stack, mask, lambda_phys_per_h)
    samples = stack[:, selected]
    dose_v, lam_v, fallback_v, clipped_v = _fit_columns(t, samples, lambda_phys_per_h, head)
    shape = stack.shape[1:]
    dose = np.zeros(shape)
    lam = np.full(shape, np.nan)
    fallback = np.zeros(shape, dtype=bool)
    clipped = np.zeros(shape, dtype=bool)
    dose[selected], lam[selected] = dose_v, lam_v
    fallback[selected], clipped[selected] = fallback_v, clipped_v
    logger.debug(
        "voxel fit: %d voxels, %d fallback, %d clipped",
        int(selected.sum()),
        int(fallback_v.sum()),
        int(clipped_v.sum()),
    )
    return VoxelFit(dose=dose, lambda_per_h=lam, fallback_mask=fallback, clipped_mask=clipped)


# -- curve preparation ------------------------------------------------------
def _prepare(
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    sd: npt.ArrayLike | None,
    lambda_phys_per_h: float,
    min_points: int,
    what: str,
    need_positive: bool = True,
) -> _Curve:
    t = np.atleast_1d(np.asarray(elapsed_h, dtype=np.float64))
    y = np.atleast_1d(np.asarray(values, dtype=np.float64))
    _check_lambda_phys(lambda_phys_per_h)
    if t.ndim != 1 or t.shape != y.shape:
        raise FitError(
            f"Times and values must be 1-D of equal length; got shapes {t.shape} and {y.shape}."
        )
    if t.size < min_points:
        raise FitError(
            f"A {what} fit needs at least {min_points} time points, got {t.size}. For a "
            "single scan use theranode.dosimetry.single_time_point "
            "(scaled cycle, Hänscheid, Madsen)."
        )
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(y))) or np.any(t < 0):
        raise FitError(f"Times must be finite and ≥ 0 and values finite; got t={t}, values={y}.")
    if np.unique(t).size != t.size:
        raise FitError(f"Time points must be distinct, got {t}; average repeated scans first.")
    if need_positive and not np.any(y > 0):
        raise FitError(f"The {what} model needs positive values, got {y}.")
    weights = _weights(sd, t.size)
    order = np.argsort(t)
    return _Curve(t[order], y[order], weights[order], sd is not None)


def _weights(sd: npt.ArrayLike | None, n: int) -> FloatArray:
    if sd is None:
        return np.ones(n)
    s = np.broadcast_to(np.asarray(sd, dtype=np.float64), (n,))
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise FitError(f"Standard deviations must be finite and positive, got {s}.")
    return np.asarray(1.0 / s**2, dtype=np.float64)


def _check_lambda_phys(lambda_phys_per_h: float) -> None:
    if not (math.isfinite(lambda_phys_per_h) and lambda_phys_per_h > 0):
        raise FitError(
            f"The physical decay constant must be positive, got {lambda_phys_per_h} 1/h; "
            "pass nuclear_data(...).decay_constant_per_h."
        )


def _tail(curve: _Curve) -> _Curve:
    """The points from the maximum on (the washout phase), at least two."""
    start = min(int(np.argmax(curve.values)), curve.n - 2)
    return _Curve(
        curve.elapsed_h[start:], curve.values[start:], curve.weights[start:], curve.has_sd
    )


# -- monoexponential ----------------------------------------------------------
def _loglinear_lambda(curve: _Curve) -> float:
    """λ of a y²-weighted log-linear fit on the positive points (0 if impossible)."""
    positive = curve.values > 0
    t, y = curve.elapsed_h[positive], curve.values[positive]
    if t.size < 2:
        return 0.0
    slope = np.polyfit(t, np.log(y), 1, w=y)[0]
    return float(-slope) if np.isfinite(slope) else 0.0


def _amplitude_given_lambda(curve: _Curve, lam: float) -> float:
    """Weighted least-squares Ḋ₀ for a fixed λ (closed form)."""
    e = np.exp(-lam * curve.elapsed_h)
    return float(np.sum(curve.weights * curve.values * e) / np.sum(curve.weights * e * e))


def _mono_residuals(curve: _Curve, p: npt.ArrayLike) -> FloatArray:
    d0, lam = np.asarray(p, dtype=np.float64)
    model = d0 * np.exp(-lam * curve.elapsed_h)
    return np.asarray((model - curve.values) * np.sqrt(curve.weights), dtype=np.float64)


def _mono_jacobian(curve: _Curve, p: npt.ArrayLike) -> FloatArray:
    d0, lam = np.asarray(p, dtype=np.float64)
    e = np.exp(-lam * curve.elapsed_h)
    jac = np.column_stack([e, -d0 * curve.elapsed_h * e])
    return np.asarray(jac * np.sqrt(curve.weights)[:, None], dtype=np.float64)


def _mono_clipped(curve: _Curve, lambda_phys_per_h: float) -> KineticFit:
    """Monoexponential with λ fixed at λ_phys and Ḋ₀ refitted."""
    lam = lambda_phys_per_h
    d0 = _amplitude_given_lambda(curve, lam)
    rss = float(np.sum(_mono_residuals(curve, [d0, lam]) ** 2))
    jac = _mono_jacobian(curve, [d0, lam])[:, :1]
    cov = _covariance(jac, rss, curve)
    return KineticFit(
        model=KineticModel.MONOEXPONENTIAL,
        parameters={"initial_value": d0, "lambda_per_h": lam},
        integral=d0 / lam,
        integral_sd=_delta_sd(np.array([1.0 / lam]), cov),
        effective_half_life_h=math.log(2.0) / lam,
        aicc=_aicc_or_none(rss, curve.n, N_PARAMETERS[KineticModel.MONOEXPONENTIAL]),
        notes=("decay slower than physical in the data: λ clipped to λ_phys, Ḋ₀ refitted",),
    )


# -- bi-exponential -----------------------------------------------------------
def _biexp_shape(curve: _Curve, lam1: float, delta: float) -> tuple[FloatArray, FloatArray]:
    e1 = np.exp(-lam1 * curve.elapsed_h)
    e2 = np.exp(-(lam1 + delta) * curve.elapsed_h)
    return e1, e2


def _biexp_residuals(curve: _Curve, p: npt.ArrayLike) -> FloatArray:
    amplitude, lam1, delta = np.asarray(p, dtype=np.float64)
    e1, e2 = _biexp_shape(curve, lam1, delta)
    return np.asarray(
        (amplitude * (e1 - e2) - curve.values) * np.sqrt(curve.weights), dtype=np.float64
    )


def _biexp_jacobian(curve: _Curve, p: npt.ArrayLike) -> FloatArray:
    amplitude, lam1, delta = np.asarray(p, dtype=np.float64)
    t = curve.elapsed_h
    e1, e2 = _biexp_shape(curve, lam1, delta)
    jac = np.column_stack([e1 - e2, amplitude * t * (e2 - e1), amplitude * t * e2])
    return np.asarray(jac * np.sqrt(curve.weights)[:, None], dtype=np.float64)


def _biexp_from_start(
    curve: _Curve, lambda_phys_per_h: float, lam1: float, delta: float
) -> tuple[FloatArray, float]:
    e1, e2 = _biexp_shape(curve, lam1, delta)
    g = e1 - e2
    amplitude = max(
        float(np.sum(curve.weights * curve.values * g) / np.sum(curve.weights * g * g)), 1e-12
    )
    result = least_squares(
        lambda p: _biexp_residuals(curve, p),
        x0=[amplitude, lam1, delta],
        jac=lambda p: _biexp_jacobian(curve, p),
        bounds=([0.0, lambda_phys_per_h, 1e-9], [np.inf, np.inf, MAX_UPTAKE_EXCESS_PER_H]),
        x_scale="jac",
        xtol=_TOLERANCE,
        ftol=_TOLERANCE,
        gtol=_TOLERANCE,
        max_nfev=2000,
    )
    params = np.asarray(result.x, dtype=np.float64)
    return params, float(np.sum(_biexp_residuals(curve, params) ** 2))


# -- shared statistics --------------------------------------------------------
def _covariance(jacobian: FloatArray, rss: float, curve: _Curve) -> FloatArray:
    """Parameter covariance (JᵀJ)⁻¹ · s², s² = RSS/(n − k) without given sd."""
    n, k = jacobian.shape
    if curve.has_sd:
        scale = 1.0
    elif n > k:
        scale = rss / (n - k)
    else:
        return np.full((k, k), np.nan)
    return np.asarray(np.linalg.pinv(jacobian.T @ jacobian) * scale, dtype=np.float64)


def _delta_sd(gradient: FloatArray, covariance: FloatArray) -> float:
    variance = float(gradient @ covariance @ gradient)
    return math.sqrt(variance) if variance >= 0 else math.nan


def _aicc_or_none(rss: float, n: int, k: int) -> float | None:
    return aicc(rss, n, k) if n > k + 1 else None


def _n_parameters(model: KineticModel) -> int:
    if model not in N_PARAMETERS:
        raise FitError(
            f"{model.value} has no fitted parameters and cannot be ranked by AICc; "
            "pass it as the fallback of fit_best instead."
        )
    return N_PARAMETERS[model]


def _fit_unranked(
    elapsed_h: npt.ArrayLike,
    values: npt.ArrayLike,
    lambda_phys_per_h: float,
    sd: npt.ArrayLike | None,
    candidates: Sequence[KineticModel],
    notes: list[str],
) -> KineticFit:
    errors: list[str] = []
    for model in candidates:
        try:
            fit = fit_curve(model, elapsed_h, values, lambda_phys_per_h, sd)
        except FitError as error:
            errors.append(f"{model.value}: {error}")
            continue
        notes.append(f"{model.value} used without AICc ranking (too few points)")
        return replace(fit, notes=fit.notes + tuple(notes))
    raise FitError("No kinetic model could handle the curve: " + "; ".join(errors))


# -- voxel-wise -----------------------------------------------------------------
def _prepare_stack(
    elapsed_h: npt.ArrayLike,
    dose_rate_stack: npt.ArrayLike,
    mask: npt.ArrayLike | None,
    lambda_phys_per_h: float,
) -> tuple[FloatArray, FloatArray, BoolArray]:
    t = np.asarray(elapsed_h, dtype=np.float64)
    stack = np.asarray(dose_rate_stack, dtype=np.float64)
    _check_lambda_phys(lambda_phys_per_h)
    if t.ndim != 1 or t.size < 2:
        raise InsufficientDataError(
            f"Voxel-wise fitting needs at least two time points, got {t.size}; use "
            "theranode.dosimetry.single_time_point for a single scan."
        )
    if stack.ndim < 2 or stack.shape[0] != t.size:
        raise FitError(
            f"The dose-rate stack must have shape (T, ...) with T = {t.size} time points; "
            f"got {stack.shape}."
        )
    if np.unique(t).size != t.size or not np.all(np.isfinite(t)) or np.any(t < 0):
        raise FitError(f"Times must be distinct, finite and ≥ 0; got {t}.")
    selected = (
        np.ones(stack.shape[1:], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    )
    if selected.shape != stack.shape[1:]:
        raise FitError(f"Mask shape {selected.shape} does not match the maps' {stack.shape[1:]}.")
    order = np.argsort(t)
    return t[order], stack[order], selected


def _fit_columns(
    t: FloatArray, samples: FloatArray, lambda_phys_per_h: float, head: HeadSegment
) -> tuple[FloatArray, FloatArray, BoolArray, BoolArray]:
    """Closed-form weighted log-linear fits of the columns of ``samples`` (T, M)."""
    positive = np.all(np.isfinite(samples) & (samples > 0), axis=0)
    y = np.where(positive, samples, 1.0)
    w, log_y, tc = y**2, np.log(y), t[:, None]
    s_w, s_t, s_tt = w.sum(0), (w * tc).sum(0), (w * tc**2).sum(0)
    s_y, s_ty = (w * log_y).sum(0), (w * tc * log_y).sum(0)
    det = s_w * s_tt - s_t**2
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = -(s_w * s_ty - s_t * s_y) / det
        log_d0 = (s_y + lam * s_t) / s_w
    ok = positive & np.isfinite(lam) & (det > 1e-12 * s_w * s_tt)
    clipped = ok & (lam < lambda_phys_per_h)
    e = np.exp(-lambda_phys_per_h * t)
    refit_d0 = (e @ y) / (e @ e)
    lam = np.where(clipped, lambda_phys_per_h, lam)
    d0 = np.where(clipped, refit_d0, np.exp(np.where(ok, log_d0, 0.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        dose = np.where(ok, d0 / lam, 0.0)
    weights = trapezoid_weights(t, lambda_phys_per_h, head)
    trapezoid = weights @ np.clip(
        np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0), 0.0, None
    )
    dose = np.where(ok, dose, trapezoid)
    return dose, np.where(ok, lam, np.nan), ~ok, clipped
