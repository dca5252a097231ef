"""The PDF dose report physicists print and sign, and its Encapsulated PDF object.

Rendered with matplotlib's object-oriented API (no pyplot state, so it is
safe in worker threads) into a multi-page PDF, A4 or Letter
(:class:`PaperSize`). The cycle report's pages:

1. the summary a physicist signs: identification, cycle, administered
   activity, method, the VOI dose table, this cycle's kidney and marrow doses
   as a share of their course limits, warnings wrapped to the page, a dose
   thumbnail (coronal MIP) and a "Checked by / date" line;
2. the dose on the reference CT (:mod:`theranode.dicomio.report_figures`):
   axial, coronal and sagittal slices through the kidneys and the hottest
   lesion with VOI contours and a colour bar in Gy, and the coronal MIP;
3. time-activity curves with the fitted model, DVHs, the registration table
   with a checkerboard of the reference CT and each later CT moved by its
   registration, warnings, software version and the settings used.

The PDF carries no creation date, so the same result renders to the same
bytes. Names come from the inputs (ROI names, the patient's name), so every
text is drawn as written (:func:`literal_texts`): a ``$`` never starts
matplotlib mathtext. Fonts are embedded as TrueType subsets with a ToUnicode
map (``pdf.fonttype`` 42), so the text can be searched and copied. The file
is not PDF/A: matplotlib writes neither the XMP metadata nor the output intent
PDF/A requires, and theranode does not claim conformance.

Every mean absorbed dose is printed with its standard uncertainty (k = 1) from
the EANM budget and the budget's dominant component; a result computed before
theranode stated a budget prints the kinetic fit's standard deviation instead,
marked as such. Doses have 3 significant figures and uncertainties 2, written
without an exponent. Each page states the partial-volume method and the SPECT
resolution (FWHM) its correction used.

References
----------
DICOM PS3.3 A.45.1 (Encapsulated PDF IOD), C.24.2 (Encapsulated Document
module), C.8.6.1 (SC Equipment module). Kinetic models as in
:mod:`theranode.dosimetry.kinetics` (Sjögreen Gleisner et al., EANM 2022).
Uncertainty: Gear JI et al., Eur J Nucl Med Mol Imaging 2018;45:2456-2474;
JCGM 100:2008 (GUM) 6.3 (coverage factor) and 7.2.6 (at most two significant
digits for an uncertainty).
"""

from __future__ import annotations

import enum
import logging
import math
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from io import BytesIO
from typing import Any

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.table import Table
from matplotlib.text import Text
from matplotlib.textpath import TextToPath
from pydicom.dataset import Dataset

from theranode.dicomio.dvh import dvhs_from_masks
from theranode.dicomio.part10 import (
    dicom_date,
    dicom_time,
    file_meta,
    set_creation,
    set_equipment,
    sop_reference,
)
from theranode.dicomio.report_figures import (
    CT_WINDOW_HU,
    DOSE_COLORMAP,
    DOSE_FLOOR_FRACTION,
    RegisteredCt,
    ReportImages,
    Scene,
    View,
    build_scene,
    display_grid,
    dose_colorbar,
    draw_checkerboard,
    draw_dose_mip,
    draw_dose_row,
    grid_centre_mm,
    hottest_lesion,
    kidneys_point_mm,
    registration_point_mm,
    registration_scene,
    slice_indices,
)
from theranode.dicomio.source import SourceContext, patient_study_dataset
from theranode.dicomio.sr import (
    SpectResolution,
    partial_volume_method,
    require_kind,
    spect_resolutions,
)
from theranode.dicomio.uids import OutputObject, ResultIdentity, ResultKind, output_uids
from theranode.dosimetry.course import KIDNEY_ORGANS, CourseLimits
from theranode.dosimetry.results import (
    CycleResult,
    DoseUncertainty,
    KineticFit,
    KineticModel,
    UncertaintyComponent,
    VoiDose,
    VoiKind,
)
from theranode.dosimetry.roi import CumulativeDvh
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


class PaperSize(enum.Enum):
    """The page size of a PDF report, named as ``[reports] paper_size`` names it.

    References
    ----------
    ISO 216:2007 (A4, 210 mm × 297 mm); ANSI/ASME Y14.1 (Letter, 8.5 in × 11 in).
    """

    A4 = "A4"
    LETTER = "Letter"

    @property
    def inches(self) -> tuple[float, float]:
        """Width and height of the page in inches (portrait)."""
        return (8.27, 11.69) if self is PaperSize.A4 else (8.5, 11.0)


A4_INCHES = PaperSize.A4.inches
CURVES_PER_PAGE = 6
TABLE_ROWS_PER_PAGE = 28
TEXT_LINES_PER_PAGE = 70


def line_width_pt(paper: PaperSize = PaperSize.A4) -> float:
    """Width of a header or footer line: the page between a 6 % left and a 6 % right margin."""
    return 0.88 * paper.inches[0] * 72


#: Width of a header or footer line on A4.
LINE_WIDTH_PT = line_width_pt(PaperSize.A4)
HEADER_POINTS = 8.0
FOOTER_POINTS = 7.0
_TEXT_PATH = TextToPath()
PDF_METADATA: dict[str, Any] = {
    "Creator": "theranode",
    "Producer": None,
    "CreationDate": None,
}


# -- small formatting helpers --------------------------------------------------
def sig_figs(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, ``–`` when absent or not finite."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def plain_number(value: float | None, digits: int = 3) -> str:
    """``value`` rounded to ``digits`` significant figures, written without an exponent.

    ``1532.25`` → ``1530``, ``0.07342`` → ``0.0734``; ``–`` when absent or not finite.
    """
    if value is None or not math.isfinite(value):
        return "–"
    rounded = float(f"{value:.{digits}g}")
    if rounded == 0:
        return "0"
    exponent = math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{max(digits - 1 - exponent, 0)}f}"


#: Short names of the uncertainty components for the dose tables.
COMPONENT_LABELS = {
    UncertaintyComponent.CALIBRATION: "calibration",
    UncertaintyComponent.PARTIAL_VOLUME: "partial vol.",
    UncertaintyComponent.VOLUME: "volume",
    UncertaintyComponent.COUNTS: "counts",
    UncertaintyComponent.REGISTRATION: "registration",
    UncertaintyComponent.KINETIC_FIT: "fit residuals",
    UncertaintyComponent.SINGLE_TIME_POINT_METHOD: "STP method",
    UncertaintyComponent.REFERENCE_CYCLE: "ref. cycle",
}
#: What a dose table's "dominant u" column says of a result without a budget.
NO_BUDGET = "no budget"


def dose_with_uncertainty(
    dose_gy: float, budget: DoseUncertainty | None, sd_gy: float | None = None
) -> str:
    """``23.4 ± 1.2``: the dose (3 significant figures) ± its standard uncertainty (k = 1,
    2 significant figures) from ``budget``, else ± ``sd_gy``, else the dose alone."""
    spread = budget.standard_gy if budget is not None else sd_gy
    if spread is None or not math.isfinite(spread):
        return plain_number(dose_gy)
    return f"{plain_number(dose_gy)} ± {plain_number(spread, 2)}"


def dominant_text(budget: DoseUncertainty | None) -> str:
    """The budget's dominant component and its relative size (``volume 11 %``)."""
    if budget is None:
        return NO_BUDGET
    dominant = budget.dominant
    if dominant is None:
        return "–"
    percent = plain_number(100.0 * budget.components[dominant], 2)
    return f"{COMPONENT_LABELS[dominant]} {percent} %"


def uncertainty_footnote(
    any_without_budget: bool, *, paper: PaperSize = PaperSize.A4
) -> list[str]:
    """What ± means in the dose tables (and, when a row has no budget, what it says)."""
    lines = wrap_to_page(
        "± u: standard uncertainty (coverage factor k = 1) of the EANM uncertainty budget "
        "(Gear et al. 2018); the interval dose ± 2u (k = 2) covers about 95\u00a0%. "
        "Dominant u: the largest component of the budget, as a relative standard uncertainty.",
        FOOTER_POINTS,
        paper=paper,
    )
    if any_without_budget:
        lines += wrap_to_page(
            f"{NO_BUDGET}: computed without an uncertainty budget (older version); "
            "± is the kinetic fit's standard deviation.",
            FOOTER_POINTS,
            paper=paper,
        )
    return lines


def fwhm_text(resolutions: Sequence[SpectResolution]) -> str:
    """``10 mm (4, 24, 72 h); 12.5 mm (192 h)``: each FWHM with the time points it served."""
    by_fwhm: dict[float, list[float]] = {}
    for r in resolutions:
        by_fwhm.setdefault(r.fwhm_mm, []).append(r.elapsed_h)
    return "; ".join(
        f"{f:g} mm ({', '.join(f'{t:g}' for t in times)} h)" for f, times in by_fwhm.items()
    )


def partial_volume_lines(
    result: CycleResult, *, paper: PaperSize = PaperSize.A4
) -> list[str]:
    """The partial-volume method (its description) and the SPECT FWHM it used."""
    method = partial_volume_method(result.settings)
    resolutions = spect_resolutions(result)
    fwhm = fwhm_text(resolutions) if resolutions else "none needed by this method"
    text = (
        f"Partial-volume correction: {method.value}, {method.description}. "
        f"SPECT resolution (FWHM) used: {fwhm}."
    )
    return wrap_to_page(text, HEADER_POINTS, paper=paper)


def text_width_pt(text: str, points: float) -> float:
    """Width of ``text`` drawn in the default font at ``points``, in points."""
    width, _, _ = _TEXT_PATH.get_text_width_height_descent(
        text, FontProperties(size=points), ismath=False
    )
    return float(width)


def wrap_to_page(text: str, points: float, *, paper: PaperSize = PaperSize.A4) -> list[str]:
    """``text`` broken at spaces into lines no wider than :func:`line_width_pt` of
    ``paper`` (continuation lines indented); a single word wider than that is cut."""
    return wrap_lines(text, points, line_width_pt(paper))


def wrap_lines(text: str, points: float, width_pt: float) -> list[str]:
    """``text`` broken at spaces into lines no wider than ``width_pt`` (continuation
    lines indented); a single word wider than that is cut.

    Each line is filled word by word as long as it fits. How many of the next
    words still fit is found by bisection, since a line only grows wider as
    words are added (their glyphs go to the right of the others): the lines
    are those of trying one word after another, from a few measurements per
    line instead of one per word (:func:`_words_that_fit`).
    """
    widths: dict[str, float] = {}

    def width(candidate: str) -> float:
        if candidate not in widths:
            widths[candidate] = text_width_pt(candidate, points)
        return widths[candidate]

    words = text.split(" ")
    lines: list[str] = []
    line = ""
    i = 0
    while i < len(words):
        if not line:  # a line's first word is taken unmeasured
            line = words[i]
            i += 1
            continue
        n = _words_that_fit(line, words[i:], width, width_pt)
        line = " ".join([line, *words[i:i + n]])
        i += n
        if i < len(words):
            lines.append(line)
            line = "  " + words[i]
            i += 1
    lines.append(line)
    return [_cut_to_page(line, width_pt, width) for line in lines]


def _words_that_fit(
    line: str, words: Sequence[str], width: Callable[[str], float], width_pt: float
) -> int:
    """How many of ``words`` (in order, space-separated) ``line`` can take within ``width_pt``.

    Bisection on the number of words: the width of ``line`` and ``n`` more words
    never falls as ``n`` grows, so the first ``n`` that does not fit is followed
    by none that does.
    """
    low, high = 0, len(words)  # low words fit; more than high do not
    while low < high:
        middle = (low + high + 1) // 2
        if width(" ".join([line, *words[:middle]])) <= width_pt:
            low = middle
        else:
            high = middle - 1
    return low


def _cut_to_page(line: str, width_pt: float, width: Callable[[str], float]) -> str:
    while len(line) > 1 and width(line) > width_pt:
        line = line[:-2] + "…"
    return line


def _dicom_date_text(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) >= 8 else value or "–"


def flatten_settings(settings: Mapping[str, object], prefix: str = "") -> list[str]:
    """``key.sub = value`` lines of a nested settings mapping, sorted by key."""
    lines: list[str] = []
    for key in sorted(settings, key=str):
        value = settings[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            lines.extend(flatten_settings(value, name + "."))
        else:
            lines.append(f"{name} = {value!r}")
    return lines


def literal_texts(fig: Figure) -> Figure:
    """Make every text of ``fig`` draw as written, then return ``fig``.

    matplotlib parses text between ``$`` signs as mathtext (and as TeX with
    ``text.usetex``): an ROI named ``$\\foo$ liver`` would fail the render
    with "Unknown symbol". Titles, labels, legend entries, free text and
    table cells are set to ``parse_math=False, usetex=False`` (matplotlib
    ≥ 3.5); tick labels are left to their formatter, which may use mathtext
    (``10²`` on a log axis) and never holds input text.
    """
    from_formatters = {
        id(artist)
        for ax in fig.axes
        for axis in (ax.xaxis, ax.yaxis)
        for artist in axis.findobj(Text)
        if artist is not axis.label
    }
    texts = [a for a in fig.findobj(Text) if isinstance(a, Text) and id(a) not in from_formatters]
    for table in fig.findobj(Table):
        if isinstance(table, Table):
            texts.extend(cell.get_text() for cell in table.get_celld().values())
    for text in texts:
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def chunked(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, max(len(items), 1), size):
        yield items[start : start + size]


def page(*, paper: PaperSize = PaperSize.A4) -> Figure:
    """An empty portrait page of ``paper`` size."""
    return Figure(figsize=paper.inches)


# -- kinetic model curves --------------------------------------------------------
def model_curve(
    fit: KineticFit,
    elapsed_h: npt.NDArray[np.float64],
    points: Sequence[tuple[float, float]],
) -> npt.NDArray[np.float64] | None:
    """The fitted curve at ``elapsed_h``, or ``None`` when it cannot be drawn.

    Monoexponential: Ḋ₀ e^(−λt); biexponential with uptake:
    A (e^(−λ₁t) − e^(−λ₂t)); trapezoid: straight lines through the measured
    ``points`` (time, value), constant before the first and physical decay
    after the last (:mod:`theranode.dosimetry.kinetics`).
    """
    p = fit.parameters
    if fit.model is KineticModel.MONOEXPONENTIAL:
        lam = p.get("lambda_per_h") or (
            math.log(2) / fit.effective_half_life_h
            if fit.effective_half_life_h
            else None
        )
        if lam is None:
            return None
        d0 = p.get("initial_value", fit.integral * lam)
        return np.asarray(d0 * np.exp(-lam * elapsed_h), dtype=float)
    if fit.model is KineticModel.BIEXPONENTIAL_UPTAKE:
        keys = ("amplitude", "lambda_washout_per_h", "lambda_uptake_per_h")
        if not all(k in p for k in keys):
            return None
        a, l1, l2 = (p[k] for k in keys)
        return np.asarray(
            a * (np.exp(-l1 * elapsed_h) - np.exp(-l2 * elapsed_h)), dtype=float
        )
    return _trapezoid_curve(fit, elapsed_h, points)


def _trapezoid_curve(
    fit: KineticFit,
    elapsed_h: npt.NDArray[np.float64],
    points: Sequence[tuple[float, float]],
) -> npt.NDArray[np.float64] | None:
    lam = fit.parameters.get("lambda_tail_per_h")
    if lam is None or not points:
        return None
    times = np.asarray([t for t, _ in points])
    values = np.asarray([v for _, v in points])
    inside = np.interp(elapsed_h, times, values)
    tail = values[-1] * np.exp(-lam * (elapsed_h - times[-1]))
    return np.asarray(np.where(elapsed_h > times[-1], tail, inside), dtype=np.float64)


def _curve_series(voi: VoiDose) -> tuple[str, list[tuple[float, float]]]:
    """Which measured series the fit describes (dose rate or activity) and its points."""
    rate = [(p.elapsed_h, p.mean_dose_rate_gy_per_h) for p in voi.curve]
    activity = [(p.elapsed_h, p.activity_mbq) for p in voi.curve]
    if voi.fit is None or voi.fit.model is KineticModel.TRAPEZOID_TAIL:
        return "rate", rate
    times = np.asarray([t for t, _ in rate])
    predicted = model_curve(voi.fit, times, rate)
    if predicted is None:
        return "rate", rate
    errors = {
        name: float(np.sum((predicted - np.asarray([v for _, v in series])) ** 2))
        / max(float(np.sum(np.asarray([v for _, v in series]) ** 2)), 1e-300)
        for name, series in (("rate", rate), ("activity", activity))
    }
    return (
        ("activity", activity)
        if errors["activity"] < errors["rate"]
        else ("rate", rate)
    )


def _draw_curve(ax: Axes, voi: VoiDose) -> None:
    kind, points = _curve_series(voi)
    unit = "Gy/h" if kind == "rate" else "MBq"
    ax.set_title(f"{voi.name} ({voi.kind.value})", fontsize=9)
    ax.set_xlabel("time after injection (h)", fontsize=8)
    ax.set_ylabel(
        ("mean dose rate" if kind == "rate" else "activity") + f" ({unit})", fontsize=8
    )
    ax.tick_params(labelsize=7)
    if not points:
        ax.text(
            0.5, 0.5, "no time points", ha="center", va="center", transform=ax.transAxes
        )
        return
    times = [t for t, _ in points]
    ax.plot(times, [v for _, v in points], "o", color="black", label="measured")
    if voi.fit is not None:
        grid = np.linspace(0.0, max(times) * 1.15, 200)
        curve = model_curve(voi.fit, grid, points)
        if curve is not None:
            ax.plot(grid, curve, "-", color="tab:blue", label=voi.fit.model.value)
        ax.text(
            0.98,
            0.95,
            f"integral {sig_figs(voi.fit.integral)} ± {sig_figs(voi.fit.integral_sd, 2)}\n"
            f"T_eff {sig_figs(voi.fit.effective_half_life_h)} h",
            ha="right",
            va="top",
            fontsize=7,
            transform=ax.transAxes,
        )
    ax.set_xlim(left=0.0)
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize=7, loc="lower left")


# -- pages -------------------------------------------------------------------
def person_name_text(value: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``) as ``Family, Given Middle``."""
    parts = [p for p in value.split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in [given, *parts[2:3]] if p)
    return f"{family}, {rest}" if rest else family or "–"


def identification_lines(source: SourceContext, identity: ResultIdentity) -> list[str]:
    patient = (
        f"Patient: {person_name_text(source.patient_name)}    ID: {source.patient_id}"
        f"    born {_dicom_date_text(source.patient_birth_date)}    sex {source.patient_sex or '–'}"
    )
    study = (
        f"Study: {_dicom_date_text(source.study_date)}"
        f"    accession {source.accession_number or '–'}"
        f"    study UID {source.study_instance_uid}"
    )
    result = (
        f"Result: {identity.label}    computed {identity.created_at:%Y-%m-%d %H:%M}"
        f"    theranode {identity.software_version}"
    )
    return [patient, study, result]


def _header(fig: Figure, title: str, lines: Sequence[str]) -> None:
    fig.text(0.06, 0.965, title, fontsize=14, weight="bold", va="top")
    for i, line in enumerate(lines):
        fig.text(0.06, 0.935 - 0.018 * i, line, fontsize=8, va="top")


TABLE_POINTS = 6.0


def table_width_pt(paper: PaperSize = PaperSize.A4) -> float:
    """Width of the table axes (92 % of the page) less matplotlib's cell padding margin."""
    return 0.90 * paper.inches[0] * 72


#: Width of a table on A4.
TABLE_WIDTH_PT = table_width_pt(PaperSize.A4)


def table_points(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, paper: PaperSize = PaperSize.A4
) -> float:
    """The table's font size: 6 pt, or less when its widest cells would not fit the page.

    matplotlib sizes a column to its widest text × (1 + 2 × Cell.PAD).
    """
    widest = [
        max(text_width_pt(str(text), TABLE_POINTS) for text in column)
        for column in zip(columns, *rows, strict=True)
    ]
    needed = (1.0 + 2.0 * 0.1) * sum(widest)
    width_pt = table_width_pt(paper)
    return TABLE_POINTS * min(1.0, width_pt / needed) if needed > 0 else TABLE_POINTS


def table_page(
    title: str,
    header_lines: Sequence[str],
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    footer: Sequence[str] = (),
    *,
    paper: PaperSize = PaperSize.A4,
    table_bottom: float = 0.30,
) -> Figure:
    """A page with a title, header lines, a table of ``rows`` and a footer below it.

    The table is drawn from below the header down towards ``table_bottom``
    (figure fraction); the footer starts 0.03 below that.
    """
    fig = page(paper=paper)
    _header(fig, title, header_lines)
    top = header_bottom(header_lines)
    ax = fig.add_axes((0.04, table_bottom, 0.92, top - table_bottom))
    ax.axis("off")
    if rows:
        table = ax.table(
            cellText=[list(r) for r in rows],
            colLabels=list(columns),
            loc="upper center",
        )
        table.auto_set_font_size(False)
        table.set_fontsize(table_points(columns, rows, paper=paper))
        table.auto_set_column_width(list(range(len(columns))))
        table.scale(1.0, 1.25)
    if footer:
        fig.text(0.06, table_bottom - 0.03, "\n".join(footer), fontsize=FOOTER_POINTS, va="top")
    return literal_texts(fig)  # drawn as written even when measured before the render


def header_bottom(header_lines: Sequence[str]) -> float:
    """Figure fraction below the title and ``header_lines`` of :func:`table_page`."""
    return 0.90 - 0.018 * len(header_lines)


def table_height(n_rows: int, paper: PaperSize = PaperSize.A4) -> float:
    """Figure fraction a :func:`table_page` table of ``n_rows`` rows (and its column
    labels) takes: matplotlib makes each row 1.2 × 10 pt high (``Table.FONTSIZE``,
    whatever the cells' font size), scaled by 1.25."""
    return (n_rows + 1) * 1.2 * Table.FONTSIZE * 1.25 / (paper.inches[1] * 72)


def lines_at(
    fig: Figure,
    x: float,
    top: float,
    lines: Sequence[str],
    points: float,
    paper: PaperSize,
    **style: Any,
) -> float:
    """Draw ``lines`` downwards from ``top`` (figure fraction) at ``points``, 1.3 line
    spacing; return the figure fraction below the last line."""
    step = 1.3 * points / (paper.inches[1] * 72)
    for n, line in enumerate(lines):
        fig.text(x, top - n * step, line, fontsize=points, va="top", **style)
    return top - len(lines) * step


#: Short names of the kinetic models for the dose table.
MODEL_LABELS = {
    KineticModel.MONOEXPONENTIAL: "mono-exp",
    KineticModel.BIEXPONENTIAL_UPTAKE: "bi-exp uptake",
    KineticModel.TRAPEZOID_TAIL: "trapezoid+tail",
}
VOI_COLUMNS = (
    "VOI",
    "kind",
    "vol (mL)",
    "mean AD ± u (Gy)",
    "dominant u",
    "min",
    "max",
    "D98",
    "D2",
    "TIA (MBq·h)",
    "T_eff (h)",
    "RC",
    "PV factor",
    "model",
    "note",
)


def voi_row(voi: VoiDose) -> list[str]:
    """One row of the VOI dose table."""
    return [
        voi.name[:22],
        voi.kind.value,
        plain_number(voi.volume_ml),
        dose_with_uncertainty(voi.mean_gy, voi.uncertainty, voi.mean_gy_sd),
        dominant_text(voi.uncertainty),
        plain_number(voi.min_gy),
        plain_number(voi.max_gy),
        plain_number(voi.d98_gy),
        plain_number(voi.d2_gy),
        plain_number(voi.time_integrated_activity_mbq_h),
        plain_number(voi.effective_half_life_h),
        sig_figs(voi.recovery_coefficient),
        sig_figs(voi.partial_volume_factor),
        MODEL_LABELS[voi.fit.model] if voi.fit is not None else "–",
        "excluded" if voi.excluded else "",
    ]


def exclusion_lines(vois: Sequence[VoiDose], *, paper: PaperSize = PaperSize.A4) -> list[str]:
    """Why each excluded VOI of a table page was excluded, wrapped below the table."""
    reasons = [f"{v.name} ({v.exclusion_reason or 'no reason given'})" for v in vois if v.excluded]
    if not reasons:
        return []
    return wrap_to_page("Excluded: " + "; ".join(reasons) + ".", FOOTER_POINTS, paper=paper)


def method_lines(result: CycleResult, paper: PaperSize = PaperSize.A4) -> list[str]:
    """The dose method of every VOI: one line when they share one, else each method
    with its VOIs (a single-time-point cycle may fall back per VOI)."""
    by_method: dict[str, list[str]] = {}
    for voi in result.vois:
        by_method.setdefault(voi.method.value, []).append(voi.name)
    if len(by_method) <= 1:
        method = next(iter(by_method), result.method.value)
        return [f"Method: {method} (every VOI)"]
    text = "Method per VOI: " + "; ".join(
        f"{method}: {', '.join(names)}" for method, names in by_method.items()
    )
    return wrap_to_page(text, HEADER_POINTS, paper=paper)


def _cycle_lines(result: CycleResult, paper: PaperSize) -> list[str]:
    times = ", ".join(f"{t:g}" for t in result.time_points_h) or "–"
    activity = sig_figs(result.administered_activity_mbq, 5)
    return [
        f"Cycle {result.cycle_number}: administered {activity} MBq Lu-177 DOTATATE; "
        + f"time points {times} h",
        *method_lines(result, paper),
        *partial_volume_lines(result, paper=paper),
    ]


#: The course limits when none are given: kidneys 23 Gy, marrow 2 Gy (EANM 2022).
DEFAULT_LIMITS = CourseLimits()
#: VOI rows on the summary page; the others continue on table pages after it.
SUMMARY_ROWS = 14
#: Bottom of the summary page's table (figure fraction): the blocks below need the rest.
SUMMARY_TABLE_BOTTOM = 0.50
SIGNATURE_LINE = (
    "Checked by: ______________________________    Date: ________________    "
    "Signature: ______________________"
)


def limit_lines(result: CycleResult, limits: CourseLimits) -> list[str]:
    """This cycle's kidney and marrow mean AD as a share of their course limits.

    References
    ----------
    Sjögreen Gleisner K et al., Eur J Nucl Med Mol Imaging 2022;49:1778-1809
    (kidney 23 Gy and marrow 2 Gy as the limits of the course); Hebert K et al.,
    J Nucl Med 2024;65:923-930.
    """
    lines = []
    for what, limit, vois in (
        ("kidney", limits.kidney_limit_gy,
         [v for v in result.vois if v.organ in KIDNEY_ORGANS]),
        ("marrow", limits.marrow_limit_gy,
         [v for v in result.vois if v.kind is VoiKind.MARROW]),
    ):
        if not vois:
            lines.append(f"{what}: no {what} VOI in this cycle")
        for voi in vois:
            dose = dose_with_uncertainty(voi.mean_gy, voi.uncertainty, voi.mean_gy_sd)
            share = plain_number(100.0 * voi.mean_gy / limit)
            note = " (excluded)" if voi.excluded else ""
            lines.append(
                f"{voi.name}{note}: {dose} Gy = {share} % of the {plain_number(limit)} Gy "
                "course limit"
            )
    return lines


def _summary_blocks(
    fig: Figure, result: CycleResult, top: float, limits: CourseLimits, paper: PaperSize,
    text_width_pt: float,
) -> None:
    """Footnote, the limits block, the warnings and the signature line, from ``top`` down."""
    y = top
    footnote = uncertainty_footnote(any(v.uncertainty is None for v in result.vois), paper=paper)
    footnote += exclusion_lines(result.vois[:SUMMARY_ROWS], paper=paper)
    y = lines_at(fig, 0.06, y, footnote, FOOTER_POINTS, paper) - 0.01
    y = lines_at(fig, 0.06, y, ["Kidneys and marrow against their course limits (this cycle)"],
                 HEADER_POINTS, paper, weight="bold")
    limit_text = [
        part for line in limit_lines(result, limits)
        for part in wrap_lines(line, HEADER_POINTS, text_width_pt)
    ]
    y = lines_at(fig, 0.06, y, limit_text, HEADER_POINTS, paper) - 0.01
    y = lines_at(fig, 0.06, y, ["Warnings and flags"], HEADER_POINTS, paper, weight="bold")
    warnings = [
        part for w in (result.warnings or ("none",))
        for part in wrap_lines(f"• {w}", FOOTER_POINTS, text_width_pt)
    ]
    room = max(2, int((y - 0.07) / (1.3 * FOOTER_POINTS / (paper.inches[1] * 72))))
    if len(warnings) > room:
        more = len(warnings) - room + 1
        warnings = [*warnings[: room - 1],
                    f"… {more} more lines on the page 'Warnings, software and settings'"]
    lines_at(fig, 0.06, y, warnings, FOOTER_POINTS, paper)
    lines_at(fig, 0.06, 0.045, [SIGNATURE_LINE], HEADER_POINTS, paper)


def summary_page(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    scene: Scene | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    paper: PaperSize = PaperSize.A4,
) -> Figure:
    """Page 1, the summary a physicist signs: identification, cycle, method, the VOI table
    (its first :data:`SUMMARY_ROWS` rows), kidneys and marrow against the course limits,
    warnings, a thumbnail of the dose (coronal MIP) and a signature line."""
    header = [*identification_lines(source, identity), *_cycle_lines(result, paper)]
    fig = table_page(
        f"Lu-177 dosimetry report — cycle {result.cycle_number}", header, VOI_COLUMNS,
        [voi_row(v) for v in result.vois[:SUMMARY_ROWS]], paper=paper,
        table_bottom=SUMMARY_TABLE_BOTTOM,
    )
    table_end = header_bottom(header) - table_height(min(len(result.vois), SUMMARY_ROWS), paper)
    top = table_end - 0.02
    width_pt = line_width_pt(paper) * (0.62 if scene is not None else 1.0)
    _summary_blocks(fig, result, top, limits, paper, width_pt)
    if scene is not None:
        ax = fig.add_axes((0.68, 0.07, 0.28, top - 0.12))
        ax.set_anchor("N")
        draw_dose_mip(ax, scene, "dose, coronal MIP")
    return fig


def _dose_table_pages(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    paper: PaperSize,
    scene: Scene | None,
    limits: CourseLimits,
) -> list[Figure]:
    pages = [summary_page(result, source, identity, scene=scene, limits=limits, paper=paper)]
    rest = result.vois[SUMMARY_ROWS:]
    if not rest:
        return pages
    header = [*identification_lines(source, identity), *_cycle_lines(result, paper)]
    title = f"Lu-177 dosimetry report — cycle {result.cycle_number} (continued)"
    footnote = uncertainty_footnote(any(v.uncertainty is None for v in result.vois), paper=paper)
    return pages + [
        table_page(
            title, header, VOI_COLUMNS, [voi_row(v) for v in chunk],
            [*footnote, *exclusion_lines(chunk, paper=paper)], paper=paper,
        )
        for chunk in chunked(rest, TABLE_ROWS_PER_PAGE)
    ]


def dose_page(
    result: CycleResult, scene: Scene, heading: str, *, paper: PaperSize = PaperSize.A4
) -> Figure:
    """The dose on the reference CT: axial, coronal and sagittal slices through the
    kidneys' centroid and through the hottest lesion, with VOI contours and a colour
    bar in Gy per row, and the coronal maximum-intensity projection."""
    fig = page(paper=paper)
    fig.text(0.06, 0.975, heading, fontsize=12, weight="bold", va="top")
    kidneys = kidneys_point_mm(result, scene)
    if kidneys is not None:
        draw_dose_row(fig, (0.05, 0.655, 0.90, 0.285), scene, kidneys,
                      "(a) through the kidneys' centroid")
    else:
        fig.text(0.06, 0.80, "(a) no kidney VOI: no slices through the kidneys",
                 fontsize=8, va="top")
    name, point = hottest_lesion(result, scene)
    what = "hottest voxel" if name == "hottest voxel" else f"hottest lesion, {name}"
    draw_dose_row(fig, (0.05, 0.355, 0.90, 0.285), scene, point, f"(b) through the {what}")
    ax = fig.add_axes((0.05, 0.05, 0.38, 0.27))
    image = draw_dose_mip(ax, scene)
    dose_colorbar(fig, fig.add_axes((0.44, 0.08, 0.015, 0.2)), image)
    legend = dose_legend(scene)
    lines_at(fig, 0.53, 0.31, [part for line in legend for part in wrap_lines(
        line, FOOTER_POINTS, 0.41 * paper.inches[0] * 72)], FOOTER_POINTS, paper)
    return fig


def dose_legend(scene: Scene) -> list[str]:
    """How to read the dose images."""
    low, high = CT_WINDOW_HU
    kinds = sorted({o.kind for o in scene.outlines}, key=lambda k: k.value)
    contours = ", ".join(f"{k.value} {CONTOUR_COLOURS_NAMES[k]}" for k in kinds) or "none"
    spacing = plain_number(scene.grid.spacing_mm[0], 2)
    ct = (f"CT in grey, window {low:g} to {high:g} HU" if scene.ct is not None
          else "no CT given: the dose alone")
    return [
        "How to read these images",
        (f"{ct}; absorbed dose in colour ({DOSE_COLORMAP}), not drawn below "
         f"{100 * DOSE_FLOOR_FRACTION:g} % of each row's maximum; one colour bar per row."),
        f"VOI contours: {contours}.",
        ("Radiological convention: the patient's right on the image's left; R/L, A/P, S/I "
         "mark the patient directions."),
        (f"Images resampled to {spacing} mm voxels for display; the doses in the tables "
         "come from the full-resolution map."),
    ]


CONTOUR_COLOURS_NAMES = {VoiKind.ORGAN: "cyan", VoiKind.MARROW: "green", VoiKind.LESION: "white"}


def _curve_pages(
    vois: Sequence[VoiDose], heading: str, *, paper: PaperSize = PaperSize.A4
) -> list[Figure]:
    pages = []
    with_curves = [v for v in vois if v.curve]
    for chunk in chunked(with_curves, CURVES_PER_PAGE):
        if not chunk:
            break
        fig = page(paper=paper)
        fig.suptitle(heading, fontsize=12)
        axes = fig.subplots(3, 2).ravel()
        for ax, voi in zip(axes, chunk, strict=False):
            _draw_curve(ax, voi)
        for ax in axes[len(chunk) :]:
            ax.axis("off")
        fig.subplots_adjust(hspace=0.45, wspace=0.3, top=0.93, bottom=0.06)
        pages.append(fig)
    return pages


def dvh_page(
    dvhs: Mapping[str, CumulativeDvh], heading: str, *, paper: PaperSize = PaperSize.A4
) -> Figure:
    """The cumulative DVHs of every VOI on one page."""
    fig = page(paper=paper)
    fig.suptitle(heading, fontsize=12)
    ax = fig.add_axes((0.1, 0.45, 0.85, 0.45))
    for name in sorted(dvhs):
        dvh = dvhs[name]
        ax.plot(
            dvh.dose_bins, 100.0 * np.asarray(dvh.volume_fraction), label=name, lw=1
        )
    ax.set_xlabel("absorbed dose (Gy)")
    ax.set_ylabel("volume receiving at least the dose (%)")
    ax.set_ylim(0, 102)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


REGISTRATION_COLUMNS = (
    "time (h)",
    "metric",
    "before",
    "after",
    "translation (mm)",
    "rotation (°)",
    "converged",
)


def _registration_rows(result: CycleResult) -> list[list[str]]:
    return [
        [
            sig_figs(r.elapsed_h),
            r.metric,
            plain_number(r.value_before, 4),
            plain_number(r.value_after, 4),
            ", ".join(f"{v:.1f}" for v in r.translation_mm),
            ", ".join(f"{v:.2f}" for v in r.rotation_deg),
            "yes" if r.converged else "NO",
        ]
        for r in result.registration
    ]


def map_lines(method: object, width: int = 110) -> list[str]:
    """How the RT Dose map was made, wrapped for a text page (nothing without a map)."""
    if not isinstance(method, str) or not method or method == "none":
        return []
    return [*textwrap.wrap(f"Dose map: {method}.", width, subsequent_indent="  "), ""]


def text_pages(
    title: str, lines: Sequence[str], *, paper: PaperSize = PaperSize.A4
) -> list[Figure]:
    """``lines`` in a monospaced font, each wrapped to the page (continuation lines
    indented), :data:`TEXT_LINES_PER_PAGE` to a page."""
    width = monospace_columns(TEXT_POINTS, paper)
    wrapped = [
        part
        for line in lines
        for part in (textwrap.wrap(line, width, subsequent_indent="    ",
                                   break_on_hyphens=False) or [""])
    ]
    pages = []
    for i, chunk in enumerate(chunked(wrapped, TEXT_LINES_PER_PAGE)):
        fig = page(paper=paper)
        fig.text(
            0.06,
            0.965,
            title + (" (continued)" if i else ""),
            fontsize=12,
            weight="bold",
            va="top",
        )
        fig.text(
            0.06,
            0.93,
            "\n".join(chunk) or "–",
            fontsize=TEXT_POINTS,
            family="monospace",
            va="top",
        )
        pages.append(fig)
    return pages


TEXT_POINTS = 7.0


def monospace_columns(points: float, paper: PaperSize = PaperSize.A4) -> int:
    """How many characters of the monospaced font at ``points`` fit a line of the page."""
    advance, _, _ = _TEXT_PATH.get_text_width_height_descent(
        "M" * 10, FontProperties(family="monospace", size=points), ismath=False
    )
    return max(20, int(line_width_pt(paper) / (float(advance) / 10)))


#: Later time points whose checkerboards share one page.
CHECKERBOARDS_PER_PAGE = 3


def registration_pages(
    result: CycleResult,
    heading: str,
    *,
    reference_ct: Volume | None = None,
    registered: Sequence[RegisteredCt] = (),
    scene: Scene | None = None,
    paper: PaperSize = PaperSize.A4,
) -> list[Figure]:
    """The registration table and, per later time point, checkerboards (axial and
    coronal) of the reference CT against that time point's CT moved by its registration."""
    rows = _registration_rows(result)
    note = [] if rows else ["No registration: a single time point, or none recorded."]
    if reference_ct is None or not registered:
        return [table_page(heading, note, REGISTRATION_COLUMNS, rows, paper=paper)]
    note = wrap_to_page(
        "Checkerboards: squares of the reference CT alternate with squares of the later CT "
        "moved by the registration found; edges continuous across squares mean a good match.",
        HEADER_POINTS, paper=paper,
    )
    grid = scene.grid if scene is not None else display_grid(reference_ct)
    reference = scene.ct if scene is not None else None
    point = registration_point_mm(result, scene, registered) or grid_centre_mm(grid)
    ijk = slice_indices(grid, point)
    pages = []
    for n, chunk in enumerate(chunked(list(registered), CHECKERBOARDS_PER_PAGE)):
        title = heading + (" (continued)" if n else "")
        fig = table_page(title, note, REGISTRATION_COLUMNS, rows, paper=paper,
                         table_bottom=0.72)
        for m, item in enumerate(chunk):
            moved = registration_scene(reference_ct, item, grid, reference)
            bottom = 0.48 - m * 0.225
            for c, view in enumerate((View.AXIAL, View.CORONAL)):
                ax = fig.add_axes((0.08 + c * 0.45, bottom, 0.40, 0.21))
                draw_checkerboard(ax, moved, view, ijk)
        pages.append(fig)
    return pages


def settings_lines(
    settings: Mapping[str, object], identity: ResultIdentity
) -> list[str]:
    return [f"theranode {identity.software_version}", "", *flatten_settings(settings)]


#: matplotlib's ``pdf.fonttype`` of every render: TrueType (Type 42) fonts, embedded as subsets
#: with a ToUnicode map, so the text can be searched and copied (Type 3 fonts are
#: embedded too, but characters beyond Latin-1 are drawn as shapes).
PDF_FONTTYPE = 42


def render_pages(pages: Sequence[Figure]) -> bytes:
    """The pages as one PDF, numbered ``page n/N``, fonts embedded (:data:`PDF_FONTTYPE`).

    The font type is a matplotlib rc parameter, set for the render only: jobs render
    in worker processes, one PDF at a time.
    """
    buffer = BytesIO()
    with mpl.rc_context({"pdf.fonttype": PDF_FONTTYPE}), PdfPages(buffer, metadata=PDF_METADATA) as pdf:
        for number, fig in enumerate(pages, start=1):
            fig.text(0.94, 0.015, f"page {number}/{len(pages)}", fontsize=7, ha="right")
            pdf.savefig(literal_texts(fig))
    return buffer.getvalue()


def resolve_dvhs(
    dose: Volume | None,
    dvhs: Mapping[str, CumulativeDvh] | None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None,
) -> dict[str, CumulativeDvh]:
    if dvhs:
        return dict(dvhs)
    if masks and dose is not None:
        return dvhs_from_masks(dose, masks)
    return {}


def render_cycle_pdf(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
    images: ReportImages | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    paper: PaperSize = PaperSize.A4,
) -> bytes:
    """The PDF report of one cycle.

    Parameters
    ----------
    dvhs:
        Cumulative DVHs by VOI name. When absent and ``masks`` (VOI masks on
        the dose grid) are given, they are computed from ``result.dose_map``.
    masks:
        VOI masks (arrays on the dose grid, or Volumes); also the contours of
        the dose images.
    images:
        The reference CT under the dose images and the later CTs with their
        registrations for the checkerboards; without it the dose is drawn alone.
    limits:
        The course limits the summary page compares kidneys and marrow with.
    paper:
        Page size.
    """
    return render_pages(
        cycle_report_pages(result, source, identity, dvhs=dvhs, masks=masks, images=images,
                           limits=limits, paper=paper)
    )


def cycle_report_pages(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
    images: ReportImages | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    paper: PaperSize = PaperSize.A4,
) -> list[Figure]:
    """The pages of :func:`render_cycle_pdf`, not yet rendered (to check their layout)."""
    label = f"cycle {result.cycle_number}"
    images = images or ReportImages()
    scene = build_scene(result, masks or {}, images.reference_ct)
    pages = _dose_table_pages(result, source, identity, paper, scene, limits)
    if scene is not None:
        pages.append(dose_page(result, scene, f"Absorbed dose on the CT — {label}", paper=paper))
    pages += _curve_pages(
        result.vois, f"Time–activity curves and fitted models — {label}", paper=paper
    )
    resolved = resolve_dvhs(result.dose_map, dvhs, masks)
    if resolved:
        pages.append(dvh_page(resolved, f"Cumulative DVHs — {label}", paper=paper))
    pages += registration_pages(
        result, f"Registration quality — {label}", reference_ct=images.reference_ct,
        registered=images.registered, scene=scene, paper=paper,
    )
    warnings = [f"• {w}" for w in result.warnings] or ["• none"]
    lines = [
        *map_lines(result.settings.get("dose_map") if result.dose_map is not None else None),
        "Warnings:", *warnings, "", *settings_lines(result.settings, identity),
    ]
    pages += text_pages(f"Warnings, software and settings — {label}", lines, paper=paper)
    return pages


# -- DICOM encapsulation -----------------------------------------------------
def encapsulate_pdf(
    pdf: bytes, source: SourceContext, identity: ResultIdentity, *, title: str
) -> Dataset:
    """An Encapsulated PDF dataset holding ``pdf`` in the reference CT's study."""
    uids = output_uids(source, identity, OutputObject.PDF)
    ds = patient_study_dataset(source)
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = uids.sop_instance_uid
    ds.Modality = OutputObject.PDF.modality
    ds.SeriesInstanceUID = uids.series_instance_uid
    ds.SeriesNumber = identity.series_number(OutputObject.PDF)
    ds.SeriesDescription = identity.series_description(OutputObject.PDF)
    set_equipment(ds, identity)
    ds.ConversionType = "SYN"
    set_creation(ds, identity)
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = dicom_date(identity.created_at) + dicom_time(
        identity.created_at
    )
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.SourceInstanceSequence = [sop_reference(ref) for ref in source.all_instances]
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.file_meta = file_meta(ENCAPSULATED_PDF_STORAGE, uids.sop_instance_uid)
    ds.preamble = b"\x00" * 128
    logger.info(
        "Encapsulated PDF %s for %s: %d bytes",
        uids.sop_instance_uid,
        identity.label,
        len(pdf),
    )
    return ds


def write_cycle_pdf(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
    images: ReportImages | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    paper: PaperSize = PaperSize.A4,
) -> Dataset:
    """Encapsulated PDF report of one cycle (parameters of :func:`render_cycle_pdf`)."""
    require_kind(identity, ResultKind.CYCLE)
    pdf = render_cycle_pdf(result, source, identity, dvhs=dvhs, masks=masks, images=images,
                           limits=limits, paper=paper)
    return encapsulate_pdf(
        pdf, source, identity, title=identity.series_description(OutputObject.PDF)
    )


def extract_pdf(ds: Dataset) -> bytes:
    """The PDF bytes of an Encapsulated PDF dataset (padding removed)."""
    data = bytes(ds.EncapsulatedDocument)
    length = ds.get("EncapsulatedDocumentLength")
    return data[: int(length)] if length is not None else data
