"""Tables 3 and 4 on small hand-made cohorts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from theranode.dosimetry.cohort.ctcae import EgfrEquation, Sex, egfr_ckd_epi
from theranode.dosimetry.cohort.data import CohortData
from theranode.dosimetry.cohort.labs import add_computed_egfr, lab_changes, toxicity_table
from theranode.dosimetry.cohort.results import LabChange, NotEstimable, ToxicityTable


def _cohort(labs: list[tuple[str, str, str, float, float | None]], n: int = 4) -> CohortData:
    patients = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n)],
            "sex": ["M", "F"] * (n // 2),
            "age_at_start_y": [60.0] * n,
            "first_injection_date": ["2020-01-01"] * n,
            "progression_date": [None] * n,
            "death_date": [None] * n,
            "last_followup_date": ["2022-01-01"] * n,
            "recist_m3": ["SD"] * n,
        }
    )
    cycles = pd.DataFrame(
        {
            "patient_id": [f"P{i}" for i in range(n) for _ in range(2)],
            "cycle": [1, 2] * n,
            "admin_date": ["2020-01-01", "2020-02-26"] * n,
            "activity_gbq": [7.4] * (2 * n),
        }
    )
    frame = pd.DataFrame(labs, columns=["patient_id", "date", "analyte", "value", "lln"]).assign(
        uln=np.nan
    )
    return CohortData.from_frames(patients=patients, cycles=cycles, labs=frame)


def test_worst_grade_per_patient_during_therapy() -> None:
    data = _cohort(
        [
            ("P0", "2019-12-20", "wbc", 0.5, 4.0),  # baseline: not during therapy
            ("P0", "2020-01-15", "wbc", 3.5, 4.0),  # grade 1
            ("P1", "2020-01-15", "wbc", 2.5, 4.0),  # grade 2
            ("P1", "2020-03-10", "wbc", 1.5, 4.0),  # grade 3 (last + 13 d)
            ("P2", "2020-01-15", "wbc", 3.5, None),  # grade 0 or 1: undetermined
            ("P3", "2020-06-01", "wbc", 0.5, 4.0),  # after last + 56 d: not counted
        ]
    )
    table = toxicity_table(data, data.labs)
    assert isinstance(table, ToxicityTable)
    (row,) = table.rows
    assert row.analyte == "wbc"
    assert row.n_patients == 3
    assert row.at_least == (2, 1, 1, 0)
    assert row.grade1_undetermined == 1


def test_no_lab_during_therapy_is_not_estimable() -> None:
    data = _cohort([("P0", "2019-12-20", "wbc", 5.0, 4.0)])
    assert isinstance(toxicity_table(data, data.labs), NotEstimable)


def test_month3_change_paired_and_paper_compatible_unpaired() -> None:
    before = [6.0, 7.0, 5.0, 8.0]
    after = [4.0, 4.5, 4.2, 5.0]
    rows = [(f"P{i}", "2019-12-15", "wbc", v, 4.0) for i, v in enumerate(before)]
    rows += [(f"P{i}", "2020-05-30", "wbc", v, 4.0) for i, v in enumerate(after)]  # last + 94 d
    data = _cohort(rows)
    result = next(
        r for r in lab_changes(data, data.labs) if r.analyte == "wbc" and r.timepoint == "month 3"
    )
    change = result.result
    assert isinstance(change, LabChange)
    assert change.n == 4
    assert change.baseline_mean == pytest.approx(6.5)
    assert change.followup_sd == pytest.approx(np.std(after, ddof=1))
    assert change.paired.p_value == pytest.approx(stats.ttest_rel(after, before).pvalue)
    assert change.unpaired.p_value == pytest.approx(stats.ttest_ind(after, before).pvalue)
    month12 = next(
        r for r in lab_changes(data, data.labs) if r.analyte == "wbc" and r.timepoint == "month 12"
    )
    assert isinstance(month12.result, NotEstimable)
    assert "0 patient" in month12.result.reason


@pytest.mark.parametrize(
    ("mean_before", "sd_before", "mean_after", "sd_after", "n", "paper_p"),
    [
        (72.1, 15.0, 72.5, 17.3, 31, 0.921),  # GFR, month 3
        (216.1, 68.0, 185.5, 69.1, 24, 0.128),  # platelets, month 12
        (70.4, 13.9, 76.0, 18.1, 23, 0.247),  # GFR, month 12
    ],
)
def test_paper_table4_p_values_are_those_of_the_unpaired_test(
    mean_before: float, sd_before: float, mean_after: float, sd_after: float, n: int, paper_p: float
) -> None:
    # Why the unpaired test is kept "paper-compatible": Table 4's reported means and SDs
    # reproduce its P values with Student's two-sample test (pooled variance).
    p = stats.ttest_ind_from_stats(mean_before, sd_before, n, mean_after, sd_after, n).pvalue
    assert p == pytest.approx(paper_p, abs=0.006)


def test_egfr_computed_from_creatinine_at_the_age_of_the_sample() -> None:
    data = _cohort([("P1", "2021-01-01", "creat", 1.0, 0.5)])
    labs = add_computed_egfr(data, EgfrEquation.CKD_EPI_2021)
    egfr = labs.loc[labs["analyte"] == "egfr", "value"].item()
    age = 60.0 + 366 / 365.25
    assert egfr == pytest.approx(egfr_ckd_epi(1.0, age, Sex.FEMALE, EgfrEquation.CKD_EPI_2021))
