"""Tables 5 and 6: absorbed dose distributions per cycle and lesion indices.

References
----------
Hebert et al., J Nucl Med 2024;65:923–930, Tables 5 and 6.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from theranode.dosimetry.cohort.data import (
    CohortData,
    lesion_doses,
    organ_doses,
    patient_lesion_indices,
)
from theranode.dosimetry.cohort.results import (
    DistributionRow,
    LesionIndex,
    LesionIndexRow,
    NotEstimable,
    Summary,
)
from theranode.dosimetry.results import Organ

logger = logging.getLogger(__name__)

#: Organs of Table 5, in the paper's order, with their row labels.
TABLE5_ORGANS = (
    (Organ.LIVER, "healthy liver"),
    (Organ.SPLEEN, "spleen"),
    (Organ.KIDNEYS, "kidneys"),
    (Organ.BONE_MARROW, "bone marrow"),
)
LESIONS_LABEL = "lesions"


def summarise(values: pd.Series | np.ndarray, what: str) -> Summary | NotEstimable:
    """Median (range), mean and SD of the finite values; SD ``None`` for n = 1."""
    array = np.asarray(values, dtype=float)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return NotEstimable(f"No value for {what}.")
    return Summary(
        n=int(array.size),
        median=float(np.median(array)),
        minimum=float(array.min()),
        maximum=float(array.max()),
        mean=float(array.mean()),
        sd=float(array.std(ddof=1)) if array.size > 1 else None,
    )


def dose_distributions(data: CohortData, max_cycle: int = 4) -> tuple[DistributionRow, ...]:
    """Table 5: per VOI type, AD in each cycle 1..``max_cycle`` and the total.

    The total of a VOI is the sum over the cycles it has doses for (one value
    per organ per patient, one per lesion).
    """
    rows: list[DistributionRow] = []
    organs = organ_doses(data)
    for organ, label in TABLE5_ORGANS:
        frame = organs.loc[organs["organ"] == organ.value]
        totals = frame.groupby("patient_id")["ad_gy"].sum()
        rows.extend(_voi_rows(label, frame, totals, max_cycle))
    lesions = lesion_doses(data)
    totals = lesions.groupby(["patient_id", "lesion_id"])["ad_gy"].sum()
    rows.extend(_voi_rows(LESIONS_LABEL, lesions, totals, max_cycle))
    return tuple(rows)


def _voi_rows(
    label: str, frame: pd.DataFrame, totals: pd.Series, max_cycle: int
) -> list[DistributionRow]:
    rows = []
    for cycle in range(1, max_cycle + 1):
        values = frame.loc[frame["cycle"] == cycle, "ad_gy"]
        rows.append(
            DistributionRow(label, str(cycle), summarise(values, f"{label} in cycle {cycle}"))
        )
    rows.append(DistributionRow(label, "total", summarise(totals, f"{label} total")))
    return rows


def lesion_index_distributions(data: CohortData) -> tuple[LesionIndexRow, ...]:
    """Table 6: distribution over patients of the mean, min and max lesion total AD."""
    indices = patient_lesion_indices(data)
    return tuple(
        LesionIndexRow(index, summarise(indices[index.value], f"{index.value} lesion total AD"))
        for index in LesionIndex
    )
