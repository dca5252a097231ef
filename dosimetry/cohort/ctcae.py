"""CTCAE v4.03 laboratory grades and the CKD-EPI eGFR equations.

References
----------
National Cancer Institute. Common Terminology Criteria for Adverse Events
(CTCAE) version 4.03, 14 June 2010: "Anemia", "White blood cell decreased",
"Lymphocyte count decreased", "Neutrophil count decreased", "Platelet count
decreased", "Chronic kidney disease".

Levey AS, Stevens LA, Schmid CH, et al. A new equation to estimate glomerular
filtration rate. Ann Intern Med 2009;150:604–612 (CKD-EPI 2009).

Inker LA, Eneanya ND, Coresh J, et al. New creatinine- and cystatin C–based
equations to estimate GFR without race. N Engl J Med 2021;385:1737–1749
(CKD-EPI 2021).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.cohort.data import Analyte

logger = logging.getLogger(__name__)

#: µmol/L of creatinine per mg/dL (molar mass 113.12 g/mol).
CREATININE_UMOL_PER_MG_DL = 88.4


class Sex(str, Enum):
    """Sex as used by the eGFR equations."""

    MALE = "M"
    FEMALE = "F"


class EgfrEquation(str, Enum):
    """CKD-EPI creatinine equations."""

    CKD_EPI_2009 = "CKD-EPI 2009"
    CKD_EPI_2021 = "CKD-EPI 2021"


@dataclass(frozen=True)
class _CkdEpiCoefficients:
    scale: float
    alpha_female: float
    alpha_male: float
    exponent_high: float
    age_base: float
    female_factor: float


_CKD_EPI = {
    EgfrEquation.CKD_EPI_2009: _CkdEpiCoefficients(141.0, -0.329, -0.411, -1.209, 0.993, 1.018),
    EgfrEquation.CKD_EPI_2021: _CkdEpiCoefficients(142.0, -0.241, -0.302, -1.200, 0.9938, 1.012),
}


def egfr_ckd_epi(
    creatinine_mg_dl: float,
    age_y: float,
    sex: Sex,
    equation: EgfrEquation = EgfrEquation.CKD_EPI_2009,
) -> float:
    """eGFR (mL/min/1.73 m²) from serum creatinine by a CKD-EPI equation.

    eGFR = A × min(Scr/κ, 1)^α × max(Scr/κ, 1)^β × c^age × f[female], with
    κ = 0.7 (F) / 0.9 (M); 2009: A 141, α −0.329 F / −0.411 M, β −1.209,
    c 0.993, f 1.018 (the race coefficient is not applied); 2021: A 142,
    α −0.241 F / −0.302 M, β −1.200, c 0.9938, f 1.012.

    Parameters
    ----------
    creatinine_mg_dl
        Standardised serum creatinine in mg/dL (µmol/L ÷ 88.4).
    age_y
        Age in years.
    sex
        Sex of the patient.
    equation
        Which CKD-EPI equation.

    References
    ----------
    Levey et al., Ann Intern Med 2009;150:604–612; Inker et al., N Engl J Med
    2021;385:1737–1749.
    """
    if creatinine_mg_dl <= 0 or age_y <= 0:
        raise ValueError(
            f"CKD-EPI needs a positive creatinine and age; got {creatinine_mg_dl} mg/dL, {age_y} y."
        )
    coefficients = _CKD_EPI[equation]
    female = sex is Sex.FEMALE
    kappa = 0.7 if female else 0.9
    alpha = coefficients.alpha_female if female else coefficients.alpha_male
    ratio = creatinine_mg_dl / kappa
    egfr: float = (
        coefficients.scale
        * min(ratio, 1.0) ** alpha
        * max(ratio, 1.0) ** coefficients.exponent_high
        * coefficients.age_base**age_y
    )
    return egfr * coefficients.female_factor if female else egfr


@dataclass(frozen=True)
class GradeBands:
    """Lower-is-worse grade thresholds of one CTCAE term.

    Grade 1: LLN > value ≥ ``g2_below``; grade k ≥ 2: value < the k-th
    threshold (and ≥ the next). ``g4_below`` is ``None`` when grade 4 is not
    defined by a laboratory value (anemia: "life-threatening consequences").
    """

    term: str
    unit: str
    g2_below: float
    g3_below: float
    g4_below: float | None


#: CTCAE v4.03 laboratory terms for decreased values, in canonical units.
BANDS: dict[Analyte, GradeBands] = {
    Analyte.HGB: GradeBands("Anemia", "g/dL", 10.0, 8.0, None),
    Analyte.WBC: GradeBands("White blood cell decreased", "10^9/L", 3.0, 2.0, 1.0),
    Analyte.LYMPH: GradeBands("Lymphocyte count decreased", "10^9/L", 0.8, 0.5, 0.2),
    Analyte.NEUT: GradeBands("Neutrophil count decreased", "10^9/L", 1.5, 1.0, 0.5),
    Analyte.PLT: GradeBands("Platelet count decreased", "10^9/L", 75.0, 50.0, 25.0),
    Analyte.EGFR: GradeBands("Chronic kidney disease (eGFR)", "mL/min/1.73m2", 60.0, 30.0, 15.0),
}

#: Grade value meaning "0 or 1: the LLN is missing".
UNDETERMINED = -1


def ctcae_grade(analyte: Analyte, value: float, lln: float | None) -> int:
    """CTCAE v4.03 grade (0–4) of a decreased laboratory value.

    The grade-k range "<a – b" means b ≤ value < a. Grade 1 needs the lab's
    lower limit of normal; when ``lln`` is ``None`` and the value is above
    the grade-2 threshold the grade is :data:`UNDETERMINED` (0 or 1).

    References
    ----------
    CTCAE v4.03 (NCI 2010), terms listed in :data:`BANDS`.
    """
    bands = BANDS[analyte]
    if bands.g4_below is not None and value < bands.g4_below:
        return 4
    if value < bands.g3_below:
        return 3
    if value < bands.g2_below:
        return 2
    if lln is None or not np.isfinite(lln):
        return UNDETERMINED
    return 1 if value < lln else 0


def ctcae_grades(
    analyte: Analyte, values: npt.ArrayLike, llns: npt.ArrayLike
) -> npt.NDArray[np.int64]:
    """Vectorised :func:`ctcae_grade` (``NaN`` LLN = missing)."""
    bands = BANDS[analyte]
    value_array = np.asarray(values, dtype=float)
    lln_array = np.broadcast_to(np.asarray(llns, dtype=float), value_array.shape)
    g4_below = -np.inf if bands.g4_below is None else bands.g4_below
    with np.errstate(invalid="ignore"):
        conditions = [
            value_array < g4_below,
            value_array < bands.g3_below,
            value_array < bands.g2_below,
            np.isnan(lln_array),
            value_array < lln_array,
        ]
    return np.select(conditions, [4, 3, 2, UNDETERMINED, 1], default=0).astype(np.int64)
