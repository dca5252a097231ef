"""Cohort report runs: folder contents, atomic replacement, failure safety, Chromium rendering."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

import theranode.service.cohort.report as cohort_report
from tests.peers import require_tool
from tests.service.cohort_files import export_outcome_csv
from tests.synthetic_cohort import synthetic_cohort
from theranode.dosimetry.cohort.analysis import analyse_cohort
from theranode.dosimetry.cohort.data import CohortData
from theranode.service.cohort.imports import import_outcome_files
from theranode.service.cohort.loading import load_cohort_data
from theranode.service.cohort.report import LATEST, run_cohort
from theranode.service.store import open_database
from theranode.service.store.database import Database

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
FORMULA_ID = '=HYPERLINK("http://x","y")'


def with_formula_lesion(data: CohortData) -> CohortData:
    """``data`` with its first lesion renamed to a spreadsheet formula, its volume down 1.5 %."""
    first = data.lesions.index[0]
    patient, lesion = data.lesions.loc[first, ["patient_id", "lesion_id"]]
    data.lesions.loc[first, ["lesion_id", "vol_bl_cm3", "vol_m3_cm3"]] = [FORMULA_ID, 100.0, 98.5]
    rows = (data.doses["patient_id"] == patient) & (data.doses["voi"] == lesion)
    data.doses.loc[rows, "voi"] = FORMULA_ID
    return data


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Database, Path, Path]:
    folder = tmp_path_factory.mktemp("cohort")
    db = open_database()
    data = with_formula_lesion(synthetic_cohort(35, seed=2024).data)
    report = import_outcome_files(db, export_outcome_csv(data, folder / "csv"))
    assert report.ok, report.summary()
    run = run_cohort(db, folder / "reports", now=NOW)
    return db, folder / "reports", run


def test_run_writes_a_versioned_folder(reports: tuple[Database, Path, Path]) -> None:
    _, root, run = reports
    assert run.parent == root / "cohort"
    assert run.name.startswith("20240501T120000Z-")
    assert (root / "cohort" / LATEST).resolve() == run.resolve()
    for name in ("report.json", "provenance.json", "report.html"):
        assert (run / name).is_file()
    for figure in (
        "fig1_doses_by_cycle",
        "fig3_dose_response",
        "fig4_tcp",
        "fig5_correlations",
        "fig6_survival",
    ):
        assert (run / "figures" / f"{figure}.png").stat().st_size > 1000
        assert (
            (run / "figures" / f"{figure}.svg")
            .read_text(encoding="utf-8")
            .lstrip()
            .startswith("<?xml")
        )
    for table in (
        "table3_ctcae",
        "table4_lab_changes",
        "table5_doses",
        "table6_lesion_indices",
        "fig6_survival",
    ):
        assert (run / "tables" / f"{table}.csv").stat().st_size > 50


def test_provenance_records_versions_methods_and_input_hash(
    reports: tuple[Database, Path, Path],
) -> None:
    _, _, run = reports
    provenance = json.loads((run / "provenance.json").read_text(encoding="utf-8"))
    assert len(provenance["input_sha256"]) == 64 and run.name.endswith(
        provenance["input_sha256"][:8]
    )
    assert {"lifelines", "statsmodels", "scipy", "python"} <= set(provenance["software"])
    assert provenance["methods"]["cox_ties"] == "Efron"
    assert "log(-log)" in provenance["methods"]["km_ci_transform"]
    body = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert body["report"]["counts"]["patients"] == 35


def test_failed_run_leaves_previous_report(
    reports: tuple[Database, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, root, run = reports
    before = sorted(p.name for p in (root / "cohort").iterdir())

    def broken(folder: Path, *args: object) -> None:
        (folder / "report.json").write_text("partial", encoding="utf-8")
        raise RuntimeError("disk full")

    monkeypatch.setattr(cohort_report, "write_report", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_cohort(db, root, now=NOW + dt.timedelta(days=1))
    assert sorted(p.name for p in (root / "cohort").iterdir()) == before
    assert (root / "cohort" / LATEST).resolve() == run.resolve()


def test_second_run_moves_latest(
    reports: tuple[Database, Path, Path], tmp_path: Path
) -> None:
    db, root, _ = reports
    first = run_cohort(db, tmp_path, now=NOW)
    second = run_cohort(db, tmp_path, now=NOW)
    assert first != second and second.name.endswith("-2")
    assert (tmp_path / "cohort" / LATEST).resolve() == second.resolve()


@pytest.mark.peer
def test_html_renders_in_headless_chromium(
    reports: tuple[Database, Path, Path], tmp_path: Path
) -> None:
    chromium = require_tool("chromium")
    _, _, run = reports
    screenshot = tmp_path / "report.png"
    completed = subprocess.run(
        [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
            "--v=0", "--window-size=1280,4000", f"--screenshot={screenshot}",
            (run / "report.html").as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]
    console = [
        line for line in completed.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
    ]
    assert not console, console
    pixels = image.imread(screenshot)
    assert pixels.shape[0] >= 1000 and pixels.shape[1] >= 1000
    assert float(np.std(pixels[..., :3])) > 0.05  # not a blank page
    assert float(np.mean(pixels[..., :3] < 0.5)) > 0.005  # text and figures drawn



def test_csv_tables_neutralise_formulas_but_not_numbers(
    reports: tuple[Database, Path, Path],
) -> None:
    """An imported lesion id a spreadsheet would run is written as text (issue 12 item 8)."""
    _, _, run = reports
    with (run / "tables" / "lesions.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.DictReader(file))
    (row,) = [r for r in rows if "HYPERLINK" in r["lesion_id"]]
    assert row["lesion_id"] == "'" + FORMULA_ID
    assert row["delta_v_pct"] == "-1.5"  # a number stays a number
    assert not [r for r in rows if r["lesion_id"].startswith(("=", "+", "-", "@"))]


def test_html_tables_escape_imported_text() -> None:
    frame = pd.DataFrame({"patient_id": ["<script>alert(1)</script>"], "<b>": [1.5]})
    table = cohort_report.html_table(frame)
    assert "<script>" not in table and "<b>" not in table
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in table and "&lt;b&gt;" in table


def test_empty_database_still_gives_a_report_and_figure_texts_are_drawn_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every analysis not estimable still makes a report; a ``$`` pair in a figure's text is
    not mathtext, so ``$\\foo$`` fails no run (issue 12 item 9)."""

    def with_math_title(draw: Any) -> Any:
        def drawn(data: CohortData, report: Any) -> Any:
            figure = draw(data, report)
            figure.suptitle("$\\foo$ lesion")
            return figure

        return drawn

    figures = {name: with_math_title(draw) for name, draw in cohort_report.FIGURES.items()}
    monkeypatch.setattr(cohort_report, "FIGURES", figures)
    db = open_database()
    run = run_cohort(db, tmp_path, now=NOW)
    text = (run / "report.html").read_text(encoding="utf-8")
    assert "not estimable" in text.lower() or "Not estimable" in text
    assert (run / "figures" / "fig4_tcp.png").stat().st_size > 1000


def test_organ_boxes_are_labelled_by_organ_and_every_figure_has_a_reading_guide(
    reports: tuple[Database, Path, Path],
) -> None:
    """Fig 1's organ panel names its organs (not box positions 1-16) and every figure in the
    HTML is followed by a short guide to reading it (issue 16 item 7)."""
    db, _, run = reports
    data = load_cohort_data(db)
    figure = cohort_report.figure_doses_by_cycle(data, analyse_cohort(data))
    lesion_ax, organ_ax = figure.axes
    texts = {t.get_text() for t in organ_ax.texts}
    assert {"liver", "spleen", "kidneys", "L2–L4 marrow"} <= texts
    assert [t.get_text() for t in organ_ax.get_xticklabels()] == ["1", "2", "3", "4"] * 4
    assert [t.get_text() for t in lesion_ax.get_xticklabels()] == ["1", "2", "3", "4"]
    html_text = (run / "report.html").read_text(encoding="utf-8")
    assert html_text.count('<p class="guide">') == len(cohort_report.READING_GUIDES)
    assert "the line is the median" in html_text
