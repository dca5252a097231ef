"""CTCAE v4.03 grades at every threshold edge; CKD-EPI against published worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from theranode.dosimetry.cohort.ctcae import (
    BANDS,
    UNDETERMINED,
    EgfrEquation,
    Sex,
    ctcae_grade,
    ctcae_grades,
    egfr_ckd_epi,
)
from theranode.dosimetry.cohort.data import Analyte

# (analyte, LLN, [(value, expected grade)]) — "<a–b" means b ≤ value < a (CTCAE v4.03).
EDGES = [
    (
        Analyte.HGB,
        12.0,
        [(12.0, 0), (11.99, 1), (10.0, 1), (9.99, 2), (8.0, 2), (7.99, 3), (1.0, 3)],
    ),
    (
        Analyte.WBC,
        4.0,
        [(4.0, 0), (3.99, 1), (3.0, 1), (2.99, 2), (2.0, 2), (1.99, 3), (1.0, 3), (0.99, 4)],
    ),
    (
        Analyte.LYMPH,
        1.0,
        [(1.0, 0), (0.99, 1), (0.8, 1), (0.79, 2), (0.5, 2), (0.49, 3), (0.2, 3), (0.19, 4)],
    ),
    (
        Analyte.NEUT,
        1.8,
        [(1.8, 0), (1.79, 1), (1.5, 1), (1.49, 2), (1.0, 2), (0.99, 3), (0.5, 3), (0.49, 4)],
    ),
    (
        Analyte.PLT,
        150.0,
        [(150.0, 0), (149.0, 1), (75.0, 1), (74.9, 2), (50.0, 2), (49.9, 3), (25.0, 3), (24.9, 4)],
    ),
    (
        Analyte.EGFR,
        90.0,
        [(90.0, 0), (89.9, 1), (60.0, 1), (59.9, 2), (30.0, 2), (29.9, 3), (15.0, 3), (14.9, 4)],
    ),
]


@pytest.mark.parametrize(("analyte", "lln", "cases"), EDGES, ids=[e[0].value for e in EDGES])
def test_every_threshold_edge(analyte: Analyte, lln: float, cases: list[tuple[float, int]]) -> None:
    for value, expected in cases:
        assert ctcae_grade(analyte, value, lln) == expected, (analyte, value)
    values = np.array([v for v, _ in cases])
    assert list(ctcae_grades(analyte, values, lln)) == [g for _, g in cases]


def test_anemia_has_no_laboratory_grade_4() -> None:
    assert BANDS[Analyte.HGB].g4_below is None
    assert ctcae_grade(Analyte.HGB, 3.0, 12.0) == 3


def test_grade_1_needs_the_lln() -> None:
    assert ctcae_grade(Analyte.WBC, 3.5, None) == UNDETERMINED
    assert ctcae_grade(Analyte.WBC, 2.5, None) == 2  # grade ≥ 2 does not need the LLN
    grades = ctcae_grades(Analyte.PLT, [100.0, 60.0, 200.0], [np.nan, np.nan, 150.0])
    assert list(grades) == [UNDETERMINED, 2, 0]


# CKD-EPI 2021: values shown by the NKF eGFR calculator (kidney.org), as recorded in
# ml4oncology/ml4oncology scripts/unit_test.py (creatinine µmol/L, age 70) and a
# calculator test (1.1 mg/dL, male, 50 y → 82).
EXAMPLES_2021 = [
    (200.0 / 88.4, 70, Sex.MALE, 30),
    (200.0 / 88.4, 70, Sex.FEMALE, 23),
    (100.0 / 88.4, 70, Sex.MALE, 70),
    (100.0 / 88.4, 70, Sex.FEMALE, 52),
    (1.1, 50, Sex.MALE, 82),
]
# CKD-EPI 2009: values of the NKF GFR calculator recorded in ellessenne/SCREAM
# tests/testthat/test-ckd_epi.R (creatinine µmol/L); the calculator rounds to integers.
EXAMPLES_2009 = [
    (50.0, 40, Sex.MALE, 129),
    (50.0, 40, Sex.FEMALE, 116),
    (30.0, 50, Sex.MALE, 148),
    (30.0, 50, Sex.FEMALE, 128),
    (60.0, 60, Sex.MALE, 104),
    (60.0, 60, Sex.FEMALE, 95),
    (100.0, 70, Sex.MALE, 65),
    (100.0, 70, Sex.FEMALE, 49),
]


@pytest.mark.parametrize(("scr_mg_dl", "age", "sex", "expected"), EXAMPLES_2021)
def test_ckd_epi_2021_worked_examples(scr_mg_dl: float, age: int, sex: Sex, expected: int) -> None:
    assert round(egfr_ckd_epi(scr_mg_dl, age, sex, EgfrEquation.CKD_EPI_2021)) == expected


@pytest.mark.parametrize(("scr_umol", "age", "sex", "expected"), EXAMPLES_2009)
def test_ckd_epi_2009_worked_examples(scr_umol: float, age: int, sex: Sex, expected: int) -> None:
    assert round(egfr_ckd_epi(scr_umol / 88.4, age, sex, EgfrEquation.CKD_EPI_2009)) == expected


def test_ckd_epi_knee_is_continuous() -> None:
    for sex, kappa in ((Sex.FEMALE, 0.7), (Sex.MALE, 0.9)):
        for equation in EgfrEquation:
            below = egfr_ckd_epi(kappa - 1e-9, 60, sex, equation)
            above = egfr_ckd_epi(kappa + 1e-9, 60, sex, equation)
            assert below == pytest.approx(above, rel=1e-6)


def test_ckd_epi_rejects_non_positive_input() -> None:
    with pytest.raises(ValueError, match="positive creatinine"):
        egfr_ckd_epi(0.0, 60, Sex.MALE)
