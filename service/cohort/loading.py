"""The imported outcome tables as the input record of the cohort analyses.

:func:`load_cohort_data` reads what ``theranode outcomes import``
(:mod:`theranode.service.cohort.imports`) stored and builds the
:class:`~theranode.dosimetry.cohort.data.CohortData` record the analyses
take; the columns of every table are the ones
:mod:`theranode.dosimetry.cohort.data` declares. theranode's own dose results
take the place of imported doses of the same patient, cycle and VOI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd

from theranode.dosimetry.cohort.data import DOSE_COLUMNS, CohortData, DoseKind, DoseRow
from theranode.service.store import outcomes as store
from theranode.service.store.database import Database

logger = logging.getLogger(__name__)


def load_cohort_data(db: Database, own_doses: Iterable[DoseRow] = ()) -> CohortData:
    """The cohort as a :class:`CohortData` record.

    Parameters
    ----------
    db
        Database with the outcome tables.
    own_doses
        theranode's own dose results (from the index). They take precedence
        over imported doses of the same patient, cycle and VOI.
    """
    return CohortData.from_frames(
        patients=_imported(db, "patients"),
        cycles=_imported(db, "cycles"),
        lesions=_imported(db, "lesions"),
        labs=_imported(db, "labs"),
        doses=_merge_doses(_imported(db, "doses"), own_doses),
    )


def _imported(db: Database, kind: str) -> pd.DataFrame | None:
    """The stored rows of one outcome kind; ``None`` (an empty table) when there are none."""
    rows = store.rows(db, kind)
    return pd.DataFrame(rows) if rows else None


def _merge_doses(imported: pd.DataFrame | None, own_doses: Iterable[DoseRow]) -> pd.DataFrame:
    columns = list(DOSE_COLUMNS)
    own = pd.DataFrame(
        [
            (d.patient_id, int(d.cycle), d.voi, DoseKind(d.kind).value, float(d.ad_gy))
            for d in own_doses
        ],
        columns=columns,
    )
    imported = imported.loc[:, columns] if imported is not None else pd.DataFrame(columns=columns)
    if own.empty:
        return imported
    keys = set(zip(own["patient_id"], own["cycle"], own["voi"], strict=True))
    overridden = [
        k in keys
        for k in zip(imported["patient_id"], imported["cycle"], imported["voi"], strict=True)
    ]
    if any(overridden):
        logger.info(
            "%d imported dose row(s) superseded by theranode's own results", sum(overridden)
        )
    kept = imported.loc[[not o for o in overridden]]
    return pd.concat([own, kept], ignore_index=True)
