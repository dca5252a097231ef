"""Tables 5 and 6 on a hand-made cohort."""

from __future__ import annotations

import pandas as pd
import pytest

from theranode.dosimetry.cohort.data import CohortData, organ_doses, patient_lesion_indices
from theranode.dosimetry.cohort.distributions import dose_distributions, lesion_index_distributions
from theranode.dosimetry.cohort.results import LesionIndex, NotEstimable, Summary


def _data() -> CohortData:
    doses = pd.DataFrame(
        [
            ("A", 1, "les1", "lesion", 30.0),
            ("A", 2, "les1", "lesion", 20.0),
            ("A", 1, "les2", "lesion", 10.0),
            ("A", 2, "les2", "lesion", 10.0),
            ("B", 1, "les1", "lesion", 60.0),
            ("A", 1, "Kidney_L", "organ", 3.0),
            ("A", 1, "kidney right", "organ", 5.0),
            ("B", 1, "Kidneys", "organ", 2.0),
            ("B", 1, "Bone Marrow", "organ", 0.3),
        ],
        columns=["patient_id", "cycle", "voi", "kind", "ad_gy"],
    )
    return CohortData.from_frames(doses=doses)


def test_lesion_indices_per_patient() -> None:
    indices = patient_lesion_indices(_data()).set_index("patient_id")
    assert indices.loc["A", "mean"] == pytest.approx(35.0)  # totals 50 and 20
    assert indices.loc["A", "min"] == 20.0
    assert indices.loc["A", "max"] == 50.0
    assert indices.loc["B", "n_lesions"] == 1
    rows = {row.index: row.summary for row in lesion_index_distributions(_data())}
    assert isinstance(rows[LesionIndex.MEAN], Summary)
    assert rows[LesionIndex.MEAN].median == pytest.approx(47.5)


def test_kidneys_from_left_and_right_and_aliases() -> None:
    organs = organ_doses(_data())
    kidneys = organs.loc[organs["organ"] == "kidneys"].set_index("patient_id")["ad_gy"]
    assert kidneys.loc["A"] == pytest.approx(4.0)
    assert kidneys.loc["B"] == pytest.approx(2.0)


def test_table5_rows_and_missing_organs() -> None:
    rows = {(r.voi, r.cycle): r.summary for r in dose_distributions(_data())}
    lesions_c1 = rows[("lesions", "1")]
    assert isinstance(lesions_c1, Summary)
    assert (lesions_c1.n, lesions_c1.median, lesions_c1.minimum, lesions_c1.maximum) == (
        3,
        30.0,
        10.0,
        60.0,
    )
    total = rows[("lesions", "total")]
    assert isinstance(total, Summary) and total.median == 50.0
    assert isinstance(rows[("spleen", "1")], NotEstimable)
    assert isinstance(rows[("lesions", "3")], NotEstimable)
