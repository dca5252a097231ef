"""Lesion response against total absorbed dose: Fig 3 (ΔV%) and Fig 4 (TCP).

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Figs 3 and 4.
Liang KY, Zeger SL. Longitudinal data analysis using generalized linear
models. Biometrika 1986;73:13–22 (GEE).
Fieller EC. Some problems in interval estimation. J R Stat Soc B
1954;16:175–185 (confidence interval of a ratio, here D50 = −β₀/β₁).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import numpy.typing as npt
import pandas as pd
import statsmodels.api as sm
import statsmodels.formula.api as smf
from patsy import build_design_matrices, dmatrix
from scipy import special, stats
from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMResults

from theranode.dosimetry.cohort.data import CohortData, lesion_totals
from theranode.dosimetry.cohort.mixed_models import fit_mixed
from theranode.dosimetry.cohort.results import (
    CurvePoint,
    DoseResponse,
    Interval,
    NotEstimable,
    TumourControl,
)

logger = logging.getLogger(__name__)

MIN_LESIONS = 6
MIN_PATIENTS = 5  # a patient random effect needs several patients
GRID_POINTS = 60
Z_95 = float(stats.norm.ppf(0.975))


def response_table(data: CohortData) -> pd.DataFrame:
    """Lesions with a total AD and a ΔV%: ``patient_id, lesion_id, total_ad_gy, delta_v_pct``."""
    totals = lesion_totals(data)
    keep = np.isfinite(totals["delta_v_pct"]) & (totals["total_ad_gy"] > 0)
    return totals.loc[keep].reset_index(drop=True)


def _too_few(table: pd.DataFrame, what: str) -> NotEstimable | None:
    n_lesions, n_patients = len(table), table["patient_id"].nunique()
    if n_lesions < MIN_LESIONS or n_patients < MIN_PATIENTS:
        return NotEstimable(
            f"{what} needs ≥ {MIN_LESIONS} lesions from ≥ {MIN_PATIENTS} patients with a "
            f"total AD and both volumes; found {n_lesions} lesion(s) from {n_patients} patient(s)."
        )
    if table["total_ad_gy"].nunique() < 3:
        return NotEstimable(f"{what} needs at least 3 distinct total AD values.")
    return None


def dose_response(data: CohortData, spline_df: int = 4) -> DoseResponse | NotEstimable:
    """Fig 3: ΔV% ~ total AD, linear mixed model with a patient random intercept.

    The slope comes from the linear model; the plotted curve (with its 95 %
    pointwise band from the fixed-effect covariance) from the same model with
    a cubic B-spline of total AD with ``spline_df`` degrees of freedom.
    """
    table = response_table(data)
    problem = _too_few(table, "The dose–response model")
    if problem is not None:
        return problem
    linear = _fit_mixed("delta_v_pct ~ total_ad_gy", table)
    if isinstance(linear, NotEstimable):
        return linear
    df = spline_df if table["total_ad_gy"].nunique() > spline_df + 2 else 3
    curve = spline_curve(table, df)
    low, high = (float(v) for v in linear.conf_int().loc["total_ad_gy"])
    return DoseResponse(
        model="MixedLM ΔV% ~ total AD + (1|patient), REML",
        slope_pct_per_gy=float(linear.fe_params["total_ad_gy"]),
        slope_ci=Interval(low, high),
        slope_p=float(linear.pvalues["total_ad_gy"]),
        intercept_pct=float(linear.fe_params["Intercept"]),
        n_lesions=int(len(table)),
        n_patients=int(table["patient_id"].nunique()),
        spline_df=df,
        curve=curve,
        stable_above_gy=stable_above(table),
    )


def _fit_mixed(formula: str, table: pd.DataFrame) -> MixedLMResults | NotEstimable:
    return fit_mixed(smf.mixedlm(formula, table, groups=table["patient_id"]), formula)


def _grid(table: pd.DataFrame) -> npt.NDArray[np.float64]:
    dose = table["total_ad_gy"].to_numpy(dtype=float)
    return np.linspace(dose.min(), dose.max(), GRID_POINTS)


def spline_curve(table: pd.DataFrame, df: int) -> tuple[CurvePoint, ...]:
    """Fitted ΔV% of the B-spline mixed model on a dose grid, with a 95 % band.

    The band is pointwise, from the fixed-effect covariance: var(x'β̂) = x' V x.
    An empty tuple when the spline model cannot be fitted.
    """
    design = dmatrix(f"bs(total_ad_gy, df={df})", table, return_type="dataframe")
    model = MixedLM(table["delta_v_pct"].to_numpy(dtype=float), design, groups=table["patient_id"])
    result = fit_mixed(model, f"ΔV% ~ bs(AD, df={df})")
    if isinstance(result, NotEstimable):
        logger.info("Dose-response spline not drawn: %s", result.reason)
        return ()
    grid = _grid(table)
    grid_design = np.asarray(build_design_matrices([design.design_info], {"total_ad_gy": grid})[0])
    k = grid_design.shape[1]
    beta = np.asarray(result.fe_params)[:k]
    covariance = np.asarray(result.cov_params())[:k, :k]
    fitted = grid_design @ beta
    se = np.sqrt(np.einsum("ij,jk,ik->i", grid_design, covariance, grid_design))
    return tuple(
        CurvePoint(float(x), float(y), float(y - Z_95 * s), float(y + Z_95 * s))
        for x, y, s in zip(grid, fitted, se, strict=True)
    )


def stable_above(table: pd.DataFrame, growth_pct: float = 20.0) -> float | None:
    """Smallest observed total AD above which no lesion grew by more than ``growth_pct``."""
    grew = table.loc[table["delta_v_pct"] > growth_pct, "total_ad_gy"]
    doses = np.sort(table["total_ad_gy"].to_numpy(dtype=float))
    if grew.empty:
        return float(doses[0])
    above = doses[doses > grew.max()]
    return float(above[0]) if above.size else None


# --- Fig 4 -------------------------------------------------------------------


def tumour_control(data: CohortData) -> TumourControl | NotEstimable:
    """Fig 4: P(ΔV% ≤ 0) against total AD by GEE logistic regression; D50 with Fieller CI."""
    table = response_table(data)
    problem = _too_few(table, "The tumour-control model")
    if problem is not None:
        return problem
    table = table.assign(controlled=(table["delta_v_pct"] <= 0.0).astype(float))
    n_controlled = int(table["controlled"].sum())
    if min(n_controlled, len(table) - n_controlled) < 2:
        return NotEstimable(
            f"Tumour control needs ≥ 2 controlled and ≥ 2 uncontrolled lesions; found "
            f"{n_controlled} controlled of {len(table)}."
        )
    separated = _separation(table)
    if separated is not None:
        return separated
    fits = _fit_logistic(table)
    if isinstance(fits, NotEstimable):
        return fits
    gee, naive = fits
    b0, b1 = float(gee.params["Intercept"]), float(gee.params["total_ad_gy"])
    covariance = gee.cov_params().to_numpy()
    low, high = (float(v) for v in gee.conf_int().loc["total_ad_gy"])
    naive_b0, naive_b1 = float(naive.params["Intercept"]), float(naive.params["total_ad_gy"])
    return TumourControl(
        model="GEE logistic controlled ~ total AD, exchangeable within patient, robust SE",
        intercept=b0,
        slope_per_gy=b1,
        slope_ci=Interval(low, high),
        slope_p=float(gee.pvalues["total_ad_gy"]),
        d50_gy=-b0 / b1 if b1 != 0 else None,
        d50_ci=fieller_interval(b0, b1, covariance),
        n_lesions=int(len(table)),
        n_controlled=n_controlled,
        curve=_logistic_curve(b0, b1, covariance, _grid(table)),
        naive_slope_per_gy=naive_b1,
        naive_d50_gy=-naive_b0 / naive_b1 if naive_b1 != 0 else None,
    )


def _separation(table: pd.DataFrame) -> NotEstimable | None:
    """Complete or quasi-complete separation by dose makes the logistic slope infinite."""
    dose = table["total_ad_gy"]
    controlled = dose[table["controlled"] == 1.0]
    growing = dose[table["controlled"] == 0.0]
    if growing.max() <= controlled.min() or controlled.max() <= growing.min():
        return NotEstimable(
            "Complete separation: the controlled and uncontrolled lesions do not overlap in "
            f"total AD (controlled {controlled.min():.1f}–{controlled.max():.1f} Gy, "
            f"uncontrolled {growing.min():.1f}–{growing.max():.1f} Gy); the logistic slope is "
            "infinite and D50 is not estimable."
        )
    return None


def _fit_logistic(table: pd.DataFrame):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            gee = smf.gee(
                "controlled ~ total_ad_gy",
                groups="patient_id",
                data=table,
                family=sm.families.Binomial(),
                cov_struct=sm.cov_struct.Exchangeable(),
            ).fit()
            naive = smf.logit("controlled ~ total_ad_gy", data=table).fit(disp=False)
        except (np.linalg.LinAlgError, ValueError, RuntimeError) as error:
            return NotEstimable(f"The logistic model could not be fitted: {error}.")
    values = np.concatenate([gee.params, gee.bse, naive.params])
    if not np.all(np.isfinite(values)):
        return NotEstimable("The logistic model gave non-finite estimates (separation?).")
    return gee, naive


def fieller_interval(
    b0: float, b1: float, covariance: npt.NDArray[np.float64], level: float = 0.95
) -> Interval:
    """Fieller confidence interval of θ = −b0/b1 (the dose at 50 % probability).

    Solves (b0 + θ b1)² = z² (V00 + 2θ V01 + θ² V11); the interval is bounded
    only when the slope is significantly non-zero (b1² > z² V11), otherwise
    both bounds are ``None``.
    """
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    v00, v01, v11 = covariance[0, 0], covariance[0, 1], covariance[1, 1]
    a = b1**2 - z**2 * v11
    b = 2.0 * (b0 * b1 - z**2 * v01)
    c = b0**2 - z**2 * v00
    discriminant = b**2 - 4.0 * a * c
    if a <= 0 or discriminant < 0:
        return Interval(None, None, level)
    roots = sorted(((-b - np.sqrt(discriminant)) / (2 * a), (-b + np.sqrt(discriminant)) / (2 * a)))
    return Interval(float(roots[0]), float(roots[1]), level)


def _logistic_curve(
    b0: float, b1: float, covariance: npt.NDArray[np.float64], grid: npt.NDArray[np.float64]
) -> tuple[CurvePoint, ...]:
    design = np.column_stack([np.ones_like(grid), grid])
    eta = design @ np.array([b0, b1])
    se = np.sqrt(np.einsum("ij,jk,ik->i", design, covariance, design))
    return tuple(
        CurvePoint(
            float(x),
            float(special.expit(e)),
            float(special.expit(e - Z_95 * s)),
            float(special.expit(e + Z_95 * s)),
        )
        for x, e, s in zip(grid, eta, se, strict=True)
    )
