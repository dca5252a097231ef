"""Write a :class:`CohortData` record as the outcome CSV files (test helper)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from theranode.dosimetry.cohort.data import CohortData

LAB_UNITS = {"hgb": "g/dL", "creat": "mg/dL", "egfr": "mL/min/1.73m2"}


def export_outcome_csv(data: CohortData, folder: Path) -> list[Path]:
    """The five outcome CSV files of ``data`` in ``folder`` (import format)."""
    folder.mkdir(parents=True, exist_ok=True)
    patients = data.patients.rename(columns={"age_at_start_y": "age_at_start"})
    labs = data.labs.assign(unit=data.labs["analyte"].map(LAB_UNITS).fillna("10^9/L"))
    frames = {
        "patients": patients,
        "cycles": data.cycles,
        "lesions": data.lesions,
        "labs": labs,
        "doses": data.doses,
    }
    paths = []
    for name, frame in frames.items():
        out = frame.copy()
        for column in out.columns:
            if pd.api.types.is_datetime64_any_dtype(out[column]):
                out[column] = out[column].dt.strftime("%Y-%m-%d")
        path = folder / f"{name}.csv"
        out.to_csv(path, index=False)
        paths.append(path)
    return paths
