"""Benchmark: a 10,000-patient synthetic cohort analysed end to end.

Generates the cohort, writes it as outcome CSV files, imports them into an
in-memory database, runs every analysis and writes the full report (JSON,
CSV, figures, HTML). Prints the wall time of each stage and the ratio of the
analysis + report time to the 60 s target of issue 6.

Run: ``.venv/bin/python benchmarks/cohort.py [n_patients]``
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.service.cohort_files

from tests.service.cohort_files import export_outcome_csv  # noqa: E402
from tests.synthetic_cohort import synthetic_cohort  # noqa: E402
from theranode.service.cohort.imports import import_outcome_files  # noqa: E402
from theranode.service.cohort.report import run_cohort  # noqa: E402
from theranode.service.store import open_database  # noqa: E402

TARGET_S = 60.0


def main(n_patients: int = 10_000) -> float:
    """Run the benchmark; return the analysis + report wall time in seconds."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        start = time.perf_counter()
        cohort = synthetic_cohort(n_patients, seed=1)
        paths = export_outcome_csv(cohort.data, root)
        generated = time.perf_counter()
        db = open_database()
        report = import_outcome_files(db, paths)
        if not report.ok:
            raise SystemExit(report.summary())
        imported = time.perf_counter()
        run = run_cohort(db, root / "reports")
        done = time.perf_counter()
        analysed = done - imported
        print(
            f"patients {n_patients}, lesions {len(cohort.data.lesions)}, "
            f"lab values {len(cohort.data.labs)}"
        )
        print(f"generate + write CSV  {generated - start:7.1f} s")
        print(f"import (validate)     {imported - generated:7.1f} s")
        print(f"analyse + report      {analysed:7.1f} s  -> {run.name}")
        print(f"ratio to {TARGET_S:.0f} s target: {analysed / TARGET_S:.2f}")
        return analysed


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
