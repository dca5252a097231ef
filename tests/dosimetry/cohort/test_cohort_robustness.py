"""Too little data never crashes and never yields NaN: every analysis says why instead."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.synthetic_cohort import synthetic_cohort
from theranode.dosimetry.cohort.analysis import analyse_cohort
from theranode.dosimetry.cohort.data import CohortData
from theranode.dosimetry.cohort.results import NotEstimable, as_plain
from theranode.dosimetry.errors import InsufficientDataError


def _subset(n_patients: int) -> CohortData:
    data = synthetic_cohort(35, seed=4).data
    keep = set(data.patients["patient_id"].iloc[:n_patients])
    frames = {
        name: getattr(data, name).loc[lambda f: f["patient_id"].isin(keep)]
        for name in ("patients", "cycles", "lesions", "labs", "doses")
    }
    return CohortData.from_frames(**frames)


@pytest.mark.parametrize("n_patients", [0, 1, 2, 3])
def test_tiny_cohorts_give_not_estimable(n_patients: int) -> None:
    report = analyse_cohort(_subset(n_patients))
    json.dumps(as_plain(report), allow_nan=False)
    assert isinstance(report.dose_response, NotEstimable)
    assert all(isinstance(row.result, NotEstimable) for row in report.survival)
    for row in report.survival:
        assert row.result.reason  # type: ignore[union-attr]


def test_empty_cohort() -> None:
    report = analyse_cohort(CohortData.from_frames())
    assert isinstance(report.toxicity, NotEstimable)
    assert isinstance(report.trend, NotEstimable)
    assert all(isinstance(r.summary, NotEstimable) for r in report.distributions)
    assert report.counts.patients == 0


def test_no_events_at_all() -> None:
    data = _subset(35)
    patients = data.patients.assign(progression_date=pd.NaT, death_date=pd.NaT)
    patients["last_followup_date"] = pd.Timestamp("2023-06-30")
    no_events = CohortData.from_frames(patients, data.cycles, data.lesions, data.labs, data.doses)
    report = analyse_cohort(no_events)
    assert all(isinstance(s, NotEstimable) for s in report.survival_overall)
    assert all("event" in r.result.reason for r in report.survival)  # type: ignore[union-attr]


def test_missing_column_is_reported_clearly() -> None:
    with pytest.raises(InsufficientDataError, match="sex"):
        CohortData.from_frames(patients=pd.DataFrame({"patient_id": ["A"]}))
