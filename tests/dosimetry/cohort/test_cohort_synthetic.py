"""The synthetic cohort matches the paper's marginals and is reproducible."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.synthetic_cohort import synthetic_cohort
from theranode.dosimetry.cohort.data import lesion_totals, patient_lesion_indices


def test_paper_sized_cohort_marginals() -> None:
    cohort = synthetic_cohort()
    data = cohort.data
    assert len(data.patients) == 35
    assert len(data.lesions) == 146
    per_patient = data.lesions.groupby("patient_id").size()
    assert per_patient.min() >= 1 and per_patient.max() <= 9
    counts = data.cycles.groupby("patient_id")["cycle"].max().value_counts().to_dict()
    assert counts == {4: 30, 3: 3, 2: 2}  # Table 2
    assert (data.lesions["vol_bl_cm3"] >= 2.0).all()
    assert data.lesions["site"].value_counts(normalize=True)["liver"] == pytest.approx(
        0.65, abs=0.12
    )


def test_large_cohort_medians_near_table5_and_6() -> None:
    data = synthetic_cohort(2000, seed=3).data
    lesion = data.doses.loc[data.doses["kind"] == "lesion"].groupby("cycle")["ad_gy"].median()
    assert lesion.loc[1] == pytest.approx(31.99, rel=0.1)
    assert lesion.loc[4] == pytest.approx(18.74, rel=0.1)
    assert lesion_totals(data)["total_ad_gy"].median() == pytest.approx(94.43, rel=0.1)
    assert patient_lesion_indices(data)["mean"].median() == pytest.approx(91.36, rel=0.12)
    organs = data.doses.loc[data.doses["kind"] == "organ"]
    c1 = organs.loc[organs["cycle"] == 1].groupby("voi")["ad_gy"].median()
    assert c1.loc["spleen"] == pytest.approx(3.42, rel=0.1)
    assert c1.loc["bone_marrow"] == pytest.approx(0.29, rel=0.1)


def test_same_seed_same_cohort_other_seed_other_cohort() -> None:
    a, b, c = synthetic_cohort(seed=5), synthetic_cohort(seed=5), synthetic_cohort(seed=6)
    pd.testing.assert_frame_equal(a.data.doses, b.data.doses)
    assert a.data.content_hash() == b.data.content_hash() != c.data.content_hash()


def test_events_never_precede_the_end_of_therapy() -> None:
    data = synthetic_cohort(500, seed=2).data
    last = data.cycles.groupby("patient_id")["admin_date"].max()
    patients = data.patients.set_index("patient_id")
    death = patients["death_date"].dropna()
    assert (death > last.reindex(death.index)).all()
    progression = patients["progression_date"].dropna()
    assert (progression <= patients["last_followup_date"].reindex(progression.index)).all()
