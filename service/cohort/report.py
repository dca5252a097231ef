"""The cohort report: run every analysis and write a versioned report folder.

``run_cohort`` (called by ``theranode cohort run`` and by the scheduler)
writes ``<reports_dir>/cohort/<UTC timestamp>-<input hash 8>/`` holding

- ``report.json`` — every result (``NotEstimable`` with its reason where the
  data do not allow an analysis) and the provenance;
- ``provenance.json`` — software versions, method choices, input data hash;
- ``tables/*.csv`` — Tables 3–6, Fig 5 and Fig 6 statistics, per-lesion and
  per-patient data; a text cell a spreadsheet would run as a formula (it
  begins with ``=``, ``+``, ``-``, ``@``, tab or carriage return: an imported
  patient or lesion id such as ``=HYPERLINK(…)``) is written with a leading
  ``'`` (:func:`spreadsheet_text`), numbers as they are;
- ``figures/*.png`` and ``*.svg`` — KM curves with at-risk tables,
  dose–response scatter with model band and the 20 % line, TCP curve,
  Spearman panels, per-cycle absorbed dose distributions (their texts drawn
  as written, a ``$`` never starting mathtext:
  :func:`~theranode.dicomio.pdf_report.literal_texts`);
- ``report.html`` — one self-contained page (figures embedded as PNG data).

The folder is written under a temporary name and renamed when complete; the
``latest`` symlink is replaced (atomically) only then, so a failed run
leaves the previous report in place.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import math
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from theranode.dicomio.pdf_report import literal_texts
from theranode.dosimetry.cohort.analysis import AnalysisOptions, analyse_cohort
from theranode.dosimetry.cohort.data import (
    CohortData,
    DoseRow,
    lesion_doses,
    lesion_totals,
    organ_doses,
    patient_lesion_indices,
)
from theranode.dosimetry.cohort.results import (
    CohortReport,
    CurvePoint,
    NotEstimable,
    SurvivalComparison,
    as_plain,
)
from theranode.service.cohort.loading import load_cohort_data
from theranode.service.store.database import Database

logger = logging.getLogger(__name__)

LATEST = "latest"
PACKAGES = (
    "numpy",
    "scipy",
    "pandas",
    "statsmodels",
    "lifelines",
    "matplotlib",
    "patsy",
    "sqlite-utils",
)
FIGURE_FORMATS = ("png", "svg")
GROWTH_LINE_PCT = 20.0


def run_cohort(
    db: Database,
    reports_dir: Path | str,
    now: dt.datetime | None = None,
    own_doses: Iterable[DoseRow] = (),
    options: AnalysisOptions = AnalysisOptions(),
) -> Path:
    """Analyse the cohort in ``db`` and write a new report folder; return its path.

    Parameters
    ----------
    db
        Database with the outcome tables.
    reports_dir
        Root of the reports; the run goes to ``reports_dir/cohort/``.
    now
        Time stamp of the run (default: current UTC time).
    own_doses
        theranode's own dose results, merged over imported doses.
    options
        Analysis choices (recorded in the report).

    Raises
    ------
    Exception
        Whatever made the run fail; the previous report and ``latest`` stay.
    """
    started = now or dt.datetime.now(dt.UTC)
    data = load_cohort_data(db, own_doses)
    report = analyse_cohort(data, options)
    input_hash = data.content_hash()
    root = Path(reports_dir) / "cohort"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{started.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{input_hash[:8]}"
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    staging.chmod(0o700)  # patient-level tables: the node's user only (umask 077 for its files)
    try:
        write_report(staging, data, report, provenance(report, input_hash, started))
        final = _free_name(root, name)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _point_latest(root, final)
    logger.info("Cohort report written to %s", final)
    return final


def _free_name(root: Path, name: str) -> Path:
    candidate, number = root / name, 2
    while candidate.exists():
        candidate, number = root / f"{name}-{number}", number + 1
    return candidate


def _point_latest(root: Path, target: Path) -> None:
    """Atomically make ``root/latest`` point at ``target`` (a relative symlink)."""
    temporary = root / f".{LATEST}.{os.getpid()}"
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target.name, target_is_directory=True)
    os.replace(temporary, root / LATEST)


def provenance(report: CohortReport, input_hash: str, started: dt.datetime) -> dict[str, Any]:
    """Software versions, method choices and the input data hash of a run."""
    versions = {"python": platform.python_version(), "theranode": _version("theranode")}
    versions.update({name: _version(name) for name in PACKAGES})
    return {
        "created_at": started.astimezone(dt.UTC).isoformat(timespec="seconds"),
        "input_sha256": input_hash,
        "software": versions,
        "methods": as_plain(report.methods),
        "counts": as_plain(report.counts),
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# --- writing ---------------------------------------------------------------------------


def write_report(
    folder: Path, data: CohortData, report: CohortReport, prov: dict[str, Any]
) -> None:
    """Write JSON, CSV tables, figures and the HTML page into ``folder``."""
    plain = as_plain(report)
    (folder / "report.json").write_text(
        json.dumps(
            {"provenance": prov, "report": plain}, indent=1, allow_nan=False, ensure_ascii=False
        ),
        encoding="utf-8",
    )
    (folder / "provenance.json").write_text(
        json.dumps(prov, indent=1, ensure_ascii=False), encoding="utf-8"
    )
    tables = result_tables(data, report)
    (folder / "tables").mkdir()
    for name, frame in tables.items():
        spreadsheet_safe(frame).to_csv(folder / "tables" / f"{name}.csv", index=False)
    (folder / "figures").mkdir()
    figures = {name: literal_texts(draw(data, report)) for name, draw in FIGURES.items()}
    for name, figure in figures.items():
        for extension in FIGURE_FORMATS:
            figure.savefig(folder / "figures" / f"{name}.{extension}", dpi=110, bbox_inches="tight")
    html_text = render_html(report, prov, tables, folder / "figures")
    (folder / "report.html").write_text(html_text, encoding="utf-8")


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def spreadsheet_text(value: Any) -> Any:
    """A text cell a spreadsheet would evaluate, prefixed with ``'``; any other value as is.

    Text beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return is
    read as a formula by Excel and LibreOffice (``=HYPERLINK(…)``,
    ``=cmd|' /C calc'!A0``); the leading single quote makes it text. A text
    that is a plain decimal number (``-1.5``) is left alone.

    References
    ----------
    OWASP, "CSV Injection" (owasp.org/www-community/attacks/CSV_Injection).
    """
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS) and not _NUMBER.fullmatch(
        value
    ):
        return "'" + value
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every text cell and column name through :func:`spreadsheet_text`."""
    safe = frame.rename(columns=lambda name: spreadsheet_text(str(name)))
    for column in safe.columns:
        if pd.api.types.is_object_dtype(safe[column]) or pd.api.types.is_string_dtype(
            safe[column]
        ):
            safe[column] = safe[column].map(spreadsheet_text)
    return safe


def _summary_columns(summary: object) -> dict[str, Any]:
    if isinstance(summary, NotEstimable):
        return {
            "n": 0,
            "median": None,
            "min": None,
            "max": None,
            "mean": None,
            "sd": None,
            "note": summary.reason,
        }
    s: Any = summary
    return {
        "n": s.n,
        "median": s.median,
        "min": s.minimum,
        "max": s.maximum,
        "mean": s.mean,
        "sd": s.sd,
        "note": "",
    }


def result_tables(data: CohortData, report: CohortReport) -> dict[str, pd.DataFrame]:
    """The report's tables as data frames (written as CSV and shown in HTML)."""
    return {
        "table3_ctcae": _table3(report),
        "table4_lab_changes": _table4(report),
        "table5_doses": pd.DataFrame(
            [
                {"voi": r.voi, "cycle": r.cycle, **_summary_columns(r.summary)}
                for r in report.distributions
            ]
        ),
        "table6_lesion_indices": pd.DataFrame(
            [{"index": r.index.value, **_summary_columns(r.summary)} for r in report.lesion_indices]
        ),
        "fig5_correlations": _fig5_table(report),
        "fig6_survival": _fig6_table(report),
        "lesions": lesion_totals(data),
        "patients": patient_lesion_indices(data),
    }


def _table3(report: CohortReport) -> pd.DataFrame:
    if isinstance(report.toxicity, NotEstimable):
        return pd.DataFrame([{"note": report.toxicity.reason}])
    return pd.DataFrame(
        [
            {
                "term": r.term,
                "analyte": r.analyte,
                "patients": r.n_patients,
                **{f"grade>={k}": r.at_least[k - 1] for k in range(1, 5)},
                **{
                    f"grade>={k} %": round(100 * r.at_least[k - 1] / r.n_patients, 1)
                    for k in range(1, 5)
                },
                "grade 1 undetermined (no LLN)": r.grade1_undetermined,
            }
            for r in report.toxicity.rows
        ]
    )


def _table4(report: CohortReport) -> pd.DataFrame:
    rows = []
    for row in report.lab_changes:
        r: Any = row.result
        if isinstance(r, NotEstimable):
            rows.append({"analyte": row.analyte, "timepoint": row.timepoint, "note": r.reason})
            continue
        rows.append(
            {
                "analyte": r.analyte,
                "unit": r.unit,
                "timepoint": r.timepoint,
                "n": r.n,
                "baseline mean": r.baseline_mean,
                "baseline sd": r.baseline_sd,
                "follow-up mean": r.followup_mean,
                "follow-up sd": r.followup_sd,
                "p paired (primary)": r.paired.p_value,
                "p unpaired (paper-compatible)": r.unpaired.p_value,
                "note": "",
            }
        )
    return pd.DataFrame(rows)


def _fig5_table(report: CohortReport) -> pd.DataFrame:
    rows = []
    for row in report.correlations:
        r: Any = row.result
        if isinstance(r, NotEstimable):
            rows.append({"organ": row.organ, "analyte": row.analyte, "note": r.reason})
        else:
            rows.append(
                {
                    "organ": r.organ,
                    "analyte": r.analyte,
                    "n": r.n_observations,
                    "patients": r.n_patients,
                    "spearman rho": r.rho,
                    "p": r.p_value,
                    "note": "",
                }
            )
    return pd.DataFrame(rows)


def _median_text(median: Any) -> str:
    value = "not reached" if median.median_months is None else f"{median.median_months:.1f}"
    low = "–" if median.ci.low is None else f"{median.ci.low:.1f}"
    high = "not reached" if median.ci.high is None else f"{median.ci.high:.1f}"
    return f"{value} ({low} to {high})"


def _fig6_table(report: CohortReport) -> pd.DataFrame:
    rows = []
    for row in report.survival:
        r: Any = row.result
        base = {"endpoint": row.endpoint.value, "index": row.index.value}
        if isinstance(r, NotEstimable):
            rows.append({**base, "note": r.reason})
            continue
        rows.append(
            {
                **base,
                "cut Gy": r.cut_gy,
                "n high": r.high.n,
                "events high": r.high.events,
                "median high (95% CI), mo": _median_text(r.high.median),
                "n low": r.low.n,
                "events low": r.low.events,
                "median low (95% CI), mo": _median_text(r.low.median),
                "HR high vs low": r.hazard_ratio,
                "HR 95% CI low": r.hazard_ratio_ci.low,
                "HR 95% CI high": r.hazard_ratio_ci.high,
                "Cox p": r.hazard_ratio_p,
                "log-rank p": r.logrank.p_value,
                "note": "",
            }
        )
    return pd.DataFrame(rows)


# --- figures -----------------------------------------------------------------------------


def _not_estimable(ax: Axes, title: str, reason: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(
        0.5,
        0.5,
        f"not estimable:\n{reason}",
        ha="center",
        va="center",
        wrap=True,
        fontsize=8,
        transform=ax.transAxes,
    )
    ax.set_axis_off()


def figure_doses_by_cycle(data: CohortData, report: CohortReport) -> Figure:
    """Fig 1: absorbed dose per cycle, lesions and organs (box plots)."""
    figure = Figure(figsize=(10, 4))
    lesion_ax, organ_ax = figure.subplots(1, 2)
    lesions = lesion_doses(data)
    _boxes(lesion_ax, {"": [lesions.loc[lesions["cycle"] == c, "ad_gy"] for c in CYCLES]},
           "lesions")
    organs = organ_doses(data)
    groups = {
        label: [organs.loc[(organs["organ"] == organ) & (organs["cycle"] == c), "ad_gy"]
                for c in CYCLES]
        for organ, label in ORGAN_LABELS.items()
    }
    _boxes(organ_ax, groups, "organs")
    return figure


#: Cycles of the paper's protocol, and the organs of Fig 1 with their axis labels.
CYCLES = (1, 2, 3, 4)
ORGAN_LABELS = {"liver": "liver", "spleen": "spleen", "kidneys": "kidneys",
                "bone_marrow": "L2–L4 marrow"}


def _boxes(ax: Axes, groups: dict[str, list[pd.Series]], title: str) -> None:
    """One box per cycle, grouped under each label (a gap between groups)."""
    values = [[s.to_numpy(dtype=float) for s in series] for series in groups.values()]
    if not any(v.size for group in values for v in group):
        _not_estimable(ax, title, "no absorbed dose")
        return
    step = len(CYCLES) + 1
    positions = [g * step + c for g in range(len(values)) for c in range(1, len(CYCLES) + 1)]
    flat = [v if v.size else np.array([np.nan]) for group in values for v in group]
    ax.boxplot(flat, positions=positions, showfliers=False)
    ax.set_xticks(positions, [str(c) for _ in values for c in CYCLES], fontsize=7)
    for g, label in enumerate(groups):
        if label:
            ax.text(g * step + (len(CYCLES) + 1) / 2, -0.11, label, ha="center", va="top",
                    fontsize=8, transform=ax.get_xaxis_transform())
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 10, not 10¹
    ax.yaxis.set_minor_formatter(FuncFormatter(_two_and_five))
    ax.set_ylabel("absorbed dose per cycle (Gy)")
    ax.set_xlabel("cycle", labelpad=18 if any(groups) else 4)
    ax.set_title(title, fontsize=9)


def _two_and_five(value: float, _: object) -> str:
    """Minor log-axis labels at 2× and 5× each decade only (20, 50; never 2×10¹)."""
    if value <= 0:
        return ""
    leading = round(value / 10 ** math.floor(math.log10(value)))
    return f"{value:g}" if leading in (2, 5) else ""


def _curve_with_band(
    ax: Axes, curve: Sequence[CurvePoint], color: str, label: str | None = None
) -> None:
    """A fitted curve and its confidence band; a bound that is missing leaves a gap."""
    xs = [p.x for p in curve]
    ax.plot(xs, [p.y for p in curve], color=color, label=label)
    ax.fill_between(
        xs,
        [np.nan if p.low is None else p.low for p in curve],
        [np.nan if p.high is None else p.high for p in curve],
        color=color,
        alpha=0.25,
    )


def figure_dose_response(data: CohortData, report: CohortReport) -> Figure:
    """Fig 3: ΔV% vs total AD with the spline model, its band and the 20 % line."""
    figure = Figure(figsize=(6, 4.5))
    ax = figure.subplots()
    result = report.dose_response
    if isinstance(result, NotEstimable):
        _not_estimable(ax, "Fig 3 — lesion volume change vs total AD", result.reason)
        return figure
    table = lesion_totals(data).dropna(subset=["delta_v_pct"])
    ax.scatter(table["total_ad_gy"], table["delta_v_pct"], s=8, alpha=0.5, rasterized=True)
    _curve_with_band(ax, result.curve, "C1", label="mixed model (B-spline)")
    ax.axhline(GROWTH_LINE_PCT, linestyle=":", color="k", label="+20 %")
    ax.set_xlabel("total lesion absorbed dose (Gy)")
    ax.set_ylabel("ΔV% (BL-CT → M3-CT)")
    ax.set_title(
        f"Fig 3 — slope {result.slope_pct_per_gy:.3f} %/Gy (p = {result.slope_p:.2g})", fontsize=9
    )
    ax.legend(fontsize=8)
    return figure


def figure_tcp(data: CohortData, report: CohortReport) -> Figure:
    """Fig 4: tumour-control probability vs total AD with its band."""
    figure = Figure(figsize=(6, 4.5))
    ax = figure.subplots()
    result = report.tumour_control
    if isinstance(result, NotEstimable):
        _not_estimable(ax, "Fig 4 — tumour control probability", result.reason)
        return figure
    _curve_with_band(ax, result.curve, "C2")
    ax.axhline(0.5, linestyle=":", color="k")
    d50 = "n/a" if result.d50_gy is None else f"{result.d50_gy:.1f} Gy"
    ax.set_title(f"Fig 4 — TCP (ΔV% ≤ 0), D50 = {d50}", fontsize=9)
    ax.set_xlabel("total lesion absorbed dose (Gy)")
    ax.set_ylabel("probability of control")
    ax.set_ylim(0, 1)
    return figure


def figure_correlations(data: CohortData, report: CohortReport) -> Figure:
    """Fig 5 (and supplemental): Spearman panels with LOESS curve and band."""
    rows = report.correlations
    figure = Figure(figsize=(12, 3.2 * ((len(rows) + 3) // 4)), layout="constrained")
    axes = np.atleast_1d(figure.subplots((len(rows) + 3) // 4, 4)).ravel()
    for ax, row in zip(axes, rows, strict=False):
        r: Any = row.result
        title = f"{row.organ} vs {row.analyte}"
        if isinstance(r, NotEstimable):
            _not_estimable(ax, title, r.reason)
            continue
        _curve_with_band(ax, r.loess, "C3")
        ax.set_title(f"{title}: ρ = {r.rho:.2f} (p = {r.p_value:.2g})", fontsize=8)
        ax.set_xlabel(f"{row.organ} cumulative AD (Gy)", fontsize=8)
        ax.set_ylabel("% change from baseline", fontsize=8)
    for ax in axes[len(rows) :]:
        ax.set_axis_off()
    return figure


def figure_survival(data: CohortData, report: CohortReport) -> Figure:
    """Fig 6: KM curves of OS/PFS by median-split mean/min lesion AD, with at-risk tables."""
    rows = [row for row in report.survival if row.index.value in ("mean", "min")]
    figure = Figure(figsize=(11, 9))
    axes = figure.subplots(2, 2).ravel()
    for ax, row in zip(axes, rows, strict=False):
        title = f"{row.endpoint.value} by {row.index.value} total lesion AD"
        if isinstance(row.result, NotEstimable):
            _not_estimable(ax, title, row.result.reason)
            continue
        _km_panel(ax, row.result, title)
    figure.subplots_adjust(hspace=0.7, wspace=0.3)
    return figure


def _km_panel(ax: Axes, result: SurvivalComparison, title: str) -> None:
    for number, curve in enumerate(result.curves):
        color = f"C{number}"
        ax.step(curve.times_months, curve.survival, where="post", color=color, label=curve.label)
        ax.fill_between(
            curve.times_months, curve.low, curve.high, step="post", color=color, alpha=0.15
        )
        ticks = np.searchsorted(curve.times_months, curve.censor_times_months, side="right") - 1
        heights = np.asarray(curve.survival)[np.clip(ticks, 0, None)]
        ax.plot(curve.censor_times_months, heights, "|", color=color, markersize=6)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("months since first injection", fontsize=8)
    ax.set_title(
        f"{title}\nHR {result.hazard_ratio:.2f} (log-rank p = {result.logrank.p_value:.2g})",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xticks(result.at_risk.times_months)
    for line, (label, counts) in enumerate(result.at_risk.counts.items()):
        y = -0.28 - 0.09 * line
        ax.text(-0.02, y, label, transform=ax.transAxes, ha="right", fontsize=7, color=f"C{line}")
        for t, count in zip(result.at_risk.times_months, counts, strict=True):
            ax.text(t, y, str(count), transform=ax.get_xaxis_transform(), ha="center", fontsize=7)
    ax.text(-0.02, -0.19, "at risk", transform=ax.transAxes, ha="right", fontsize=7)


FIGURES = {
    "fig1_doses_by_cycle": figure_doses_by_cycle,
    "fig3_dose_response": figure_dose_response,
    "fig4_tcp": figure_tcp,
    "fig5_correlations": figure_correlations,
    "fig6_survival": figure_survival,
}


# --- HTML ---------------------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}
td.t{text-align:left}img{max-width:100%;border:1px solid #ddd}.ne{color:#a40}
.guide{max-width:60em;font-size:.9em;color:#444}
code{background:#f4f4f4}"""


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return '<td class="t">—</td>'
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4g}"
        return f"<td>{text}</td>"
    if isinstance(value, (int, np.integer)):
        return f"<td>{value}</td>"
    return f'<td class="t">{html.escape(str(value))}</td>'


def html_table(frame: pd.DataFrame, max_rows: int = 60) -> str:
    """A data frame as an HTML table (first ``max_rows`` rows)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join(
        "<tr>" + "".join(_cell(v) for v in row) + "</tr>"
        for row in frame.head(max_rows)
        .astype(object)
        .where(frame.head(max_rows).notna(), None)
        .itertuples(index=False)
    )
    more = (
        f"<p>… {len(frame) - max_rows} more rows in the CSV file.</p>"
        if len(frame) > max_rows
        else ""
    )
    return f"<table><tr>{head}</tr>{rows}</table>{more}"


def _image(folder: Path, name: str, alt: str) -> str:
    data = base64.b64encode((folder / f"{name}.png").read_bytes()).decode("ascii")
    guide = READING_GUIDES.get(name, "")
    return (f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'
            + (f'<p class="guide">{html.escape(guide)}</p>' if guide else ""))


#: How to read each figure, printed under it.
READING_GUIDES = {
    "fig1_doses_by_cycle": (
        "Each box is one cycle's absorbed doses over the cohort: the line is the median, the "
        "box the middle half, the whiskers reach 1.5 box-lengths (outliers not drawn); the dose "
        "axis is logarithmic. Left, every lesion; right, one group of four cycles per organ. "
        "Falling lesion boxes from cycle 1 to 4 are what the paper reports (median 32.0 → "
        "18.7 Gy); organ boxes should stay level."),
    "fig3_dose_response": (
        "Each dot is one lesion: its total absorbed dose over the course against its volume "
        "change from the baseline CT to the month-3 CT. The line and band are the mixed model's "
        "estimate and 95 % confidence band; below the dotted +20 % line a lesion did not "
        "progress. A falling curve means more dose, more shrinkage."),
    "fig4_tcp": (
        "Probability that a lesion does not grow (ΔV ≤ 0) as a function of its total absorbed "
        "dose, with the 95 % confidence band; D50 is the dose at which half the lesions are "
        "controlled. A wide band means few lesions near that dose."),
    "fig5_correlations": (
        "One panel per organ and blood count: the organ's cumulative absorbed dose against the "
        "count's change from baseline, with a LOESS curve and band; ρ is Spearman's rank "
        "correlation. A negative ρ for marrow or spleen against platelets or lymphocytes is the "
        "dose-toxicity relation the paper looks for."),
    "fig6_survival": (
        "Kaplan–Meier survival of patients split at the median of the mean (or minimum) total "
        "lesion dose, with 95 % bands, censoring ticks and the number still at risk under each "
        "axis; HR is the Cox hazard ratio of the high-dose group and p the log-rank test."),
}


def _trend_html(report: CohortReport) -> str:
    trend: Any = report.trend
    if isinstance(trend, NotEstimable):
        return f'<p class="ne">Not estimable: {html.escape(trend.reason)}</p>'
    tests = []
    for test in (trend.friedman, trend.page):
        if isinstance(test, NotEstimable):
            tests.append(f"not estimable ({html.escape(test.reason)})")
        else:
            tests.append(f"{html.escape(test.test)}: p = {test.p_value:.3g} (n = {test.n})")
    return (
        f"<p>{html.escape(trend.model)}: lesion AD × {trend.ratio_per_cycle:.3f} per cycle "
        f"(95 % CI {trend.ratio_ci.low:.3f}–{trend.ratio_ci.high:.3f}), p = {trend.p_value:.3g}; "
        f"{trend.n_lesions} lesions of {trend.n_patients} patients. "
        f"Sensitivity: {'; '.join(tests)}.</p>"
    )


def render_html(
    report: CohortReport, prov: dict[str, Any], tables: dict[str, pd.DataFrame], figures: Path
) -> str:
    """The self-contained HTML report."""
    methods = "".join(
        f"<tr><td class='t'>{html.escape(k)}</td><td class='t'>{html.escape(str(v))}</td></tr>"
        for k, v in prov["methods"].items()
        if k != "type"
    )
    software = ", ".join(f"{html.escape(k)} {html.escape(v)}" for k, v in prov["software"].items())
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in report.warnings) or "<li>none</li>"
    c = report.counts
    sections = [
        f"<h1>theranode cohort report</h1><p>Created {html.escape(prov['created_at'])}; "
        f"{c.patients} patients, {c.cycles} cycles, {c.lesions} lesions, {c.lab_values} laboratory "
        f"values, {c.dose_rows} dose rows. "
        f"Input data SHA-256 <code>{prov['input_sha256']}</code>.</p>",
        f"<h2>Data warnings</h2><ul>{warnings}</ul>",
        "<h2>Table 3 — CTCAE v4.03 laboratory toxicity during therapy</h2>"
        + html_table(tables["table3_ctcae"]),
        "<h2>Table 4 — laboratory values before and after therapy</h2>"
        + html_table(tables["table4_lab_changes"]),
        "<h2>Table 5 — absorbed doses (Gy)</h2>" + html_table(tables["table5_doses"]),
        _image(figures, "fig1_doses_by_cycle", "absorbed dose per cycle"),
        "<h2>Absorbed dose across cycles</h2>" + _trend_html(report),
        "<h2>Table 6 — lesion indices per patient (Gy)</h2>"
        + html_table(tables["table6_lesion_indices"]),
        "<h2>Fig 3 — lesion volume change vs total absorbed dose</h2>"
        + _image(figures, "fig3_dose_response", "dose response"),
        "<h2>Fig 4 — tumour control probability</h2>"
        + _image(figures, "fig4_tcp", "tumour control probability"),
        "<h2>Fig 5 — organ dose vs blood counts</h2>"
        + html_table(tables["fig5_correlations"])
        + _image(figures, "fig5_correlations", "correlations"),
        "<h2>Fig 6 — survival by lesion dose</h2>"
        + html_table(tables["fig6_survival"])
        + _image(figures, "fig6_survival", "Kaplan-Meier curves"),
        f"<h2>Methods and provenance</h2><table>{methods}</table><p>Software: {software}.</p>",
    ]
    body = "\n".join(sections)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>theranode cohort report</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )
