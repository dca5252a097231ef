"""The PDF report of a treatment course and its Encapsulated PDF object.

Page 1 is the summary a physicist signs: identification, planned cycles,
partial-volume method, the table of cumulative absorbed dose per VOI and
cycle with the total ± u, the projection to the planned cycles ± u and the
kidney BED ± u; below it the kidneys' and bone marrow's totals, projections
and BED against their limits, the lesion indices against the paper's
cut-points, the course flags (wrapped, never clipped) and each cycle's
method; lines that do not fit continue on the next page. Then the figures
(:mod:`theranode.dicomio.course_figures`: stacked doses per cycle, the
projection with its uncertainty and the limits, the lesion indices and the
kidney BED), the cumulative DVHs when given, and the warnings, limits and
settings. Layout, number formatting and encapsulation are shared with the
cycle report (:mod:`theranode.dicomio.pdf_report`), on A4 or Letter.

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (cumulative doses, lesion indices
and their cut-points). Bodei L et al., Eur J Nucl Med Mol Imaging
2008;35:1847-1856 and Wessels BW et al., J Nucl Med 2008;49:1884-1899 (kidney
BED, :mod:`theranode.dosimetry.bed`). DICOM PS3.3 A.45.1 (Encapsulated PDF IOD).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.table import Table
from pydicom.dataset import Dataset

from theranode.dicomio.course_figures import (
    DEFAULT_LIMITS,
    lesion_and_bed_page,
    projection_page,
    stacked_dose_page,
)
from theranode.dicomio.pdf_report import (
    FOOTER_POINTS,
    HEADER_POINTS,
    TABLE_ROWS_PER_PAGE,
    PaperSize,
    chunked,
    dominant_text,
    dose_with_uncertainty,
    dvh_page,
    encapsulate_pdf,
    fwhm_text,
    identification_lines,
    line_width_pt,
    map_lines,
    page,
    plain_number,
    render_pages,
    resolve_dvhs,
    settings_lines,
    sig_figs,
    table_page,
    text_pages,
    text_width_pt,
    uncertainty_footnote,
    wrap_to_page,
)
from theranode.dicomio.source import SourceContext
from theranode.dicomio.sr import partial_volume_method, require_kind, spect_resolutions
from theranode.dicomio.uids import OutputObject, ResultIdentity, ResultKind
from theranode.dosimetry.bed import FROM_FIT_SD, BedParameters, KidneyBed, kidney_beds
from theranode.dosimetry.course import KIDNEY_ORGANS, CourseLimits, projected_totals, projection
from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CycleResult,
    LesionIndices,
    VoiKind,
)
from theranode.dosimetry.roi import CumulativeDvh
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)


CUMULATIVE_COLUMNS_FIXED = (
    "VOI", "kind", "total AD ± u (Gy)", "dominant u", "projected ± u (Gy)"
)
BED_COLUMN = "kidney BED ± u (Gy)"
#: What the BED column says of a kidney VOI whose BED could not be computed.
BED_NOT_COMPUTED = "not computed"
#: Line height of the footer text, in multiples of its font size (with margin).
_LINE_SPACING = 1.25


# -- the summary table ----------------------------------------------------------------
def _bed_cell(bed: KidneyBed | None) -> str:
    if bed is None:
        return ""
    if bed.total_bed_gy is None:
        return BED_NOT_COMPUTED
    return dose_with_uncertainty(bed.total_bed_gy, bed.uncertainty, bed.standard_uncertainty_gy)


def _projection_cell(dose: CumulativeDose, planned_cycles: int) -> str:
    p = projection(dose, planned_cycles)
    return dose_with_uncertainty(p.projected_gy, None, p.standard_uncertainty_gy)


def _cumulative_row(
    dose: CumulativeDose,
    numbers: Sequence[int],
    course: CourseResult,
    beds: Mapping[str, KidneyBed] | None,
) -> list[str]:
    row = [
        dose.name[:22] + (" (excluded)" if dose.excluded else ""),
        dose.kind.value,
        *(plain_number(dose.per_cycle_gy.get(n)) for n in numbers),
        dose_with_uncertainty(dose.total_gy, dose.uncertainty, dose.total_gy_sd),
        dominant_text(dose.uncertainty),
        _projection_cell(dose, course.planned_cycles),
    ]
    if beds is not None:
        row.append(_bed_cell(beds.get(dose.name)))
    return row


def cumulative_table(
    course: CourseResult, beds: Mapping[str, KidneyBed] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Columns and rows of the summary table; the BED column only when ``beds`` is given."""
    numbers = sorted({n for d in course.cumulative for n in d.per_cycle_gy})
    columns = [
        *CUMULATIVE_COLUMNS_FIXED[:2],
        *(f"C{n} (Gy)" for n in numbers),
        *CUMULATIVE_COLUMNS_FIXED[2:],
        *([BED_COLUMN] if beds is not None else []),
    ]
    return columns, [_cumulative_row(d, numbers, course, beds) for d in course.cumulative]


# -- the summary lines ------------------------------------------------------------------
def lesion_index_line(indices: LesionIndices) -> str:
    """The lesion indices, each total with its standard uncertainty when stated."""
    return (
        f"Lesion indices ({indices.n_lesions} lesions), total AD ± u: "
        f"mean {dose_with_uncertainty(indices.mean_total_gy, indices.mean_uncertainty)} Gy, "
        f"min {dose_with_uncertainty(indices.min_total_gy, indices.min_uncertainty)} Gy, "
        f"max {dose_with_uncertainty(indices.max_total_gy, indices.max_uncertainty)} Gy"
    )


def _versus(value_gy: float, cut_gy: float) -> str:
    return f"> {cut_gy:g} Gy" if value_gy > cut_gy else f"≤ {cut_gy:g} Gy"


def cut_point_line(course: CourseResult, limits: CourseLimits) -> str:
    """The lesion indices against the paper's cut-points (projected while incomplete)."""
    indices = course.lesion_indices
    if indices is None:
        return "Lesion indices: no eligible lesion; the cut-points do not apply."
    text = (
        f"Against the cut-points (Hebert 2024, longer PFS above them): mean "
        f"{plain_number(indices.mean_total_gy)} Gy "
        f"{_versus(indices.mean_total_gy, limits.lesion_mean_cut_gy)}, "
        f"min {plain_number(indices.min_total_gy)} Gy "
        f"{_versus(indices.min_total_gy, limits.lesion_min_cut_gy)}"
    )
    lesions = [d for d in course.cumulative if d.kind is VoiKind.LESION and not d.excluded]
    if lesions and len(course.cycles) < course.planned_cycles:
        projected = list(projected_totals(lesions, course.planned_cycles).values())
        mean_gy, min_gy = math.fsum(projected) / len(projected), min(projected)
        text += (
            f"; projected after {course.planned_cycles} cycles (as the flags use): mean "
            f"{plain_number(mean_gy)} Gy {_versus(mean_gy, limits.lesion_mean_cut_gy)}, "
            f"min {plain_number(min_gy)} Gy {_versus(min_gy, limits.lesion_min_cut_gy)}"
        )
    return text + "."


def _status(value_gy: float, limit_gy: float, warning_fraction: float) -> str:
    share = f"{100.0 * value_gy / limit_gy:.0f} % of {plain_number(limit_gy)} Gy"
    if value_gy >= limit_gy:
        return f"{share}, AT OR ABOVE THE LIMIT"
    if value_gy >= warning_fraction * limit_gy:
        return f"{share}, above the {warning_fraction:.0%} warning level"
    return share


def _limit_line(
    dose: CumulativeDose,
    what: str,
    limit_gy: float,
    course: CourseResult,
    limits: CourseLimits,
    bed: KidneyBed | None,
) -> str:
    warn = limits.warning_fraction
    p = projection(dose, course.planned_cycles)
    total = dose_with_uncertainty(dose.total_gy, dose.uncertainty, dose.total_gy_sd)
    text = f"{what} {dose.name}: total {total} Gy ({_status(dose.total_gy, limit_gy, warn)})"
    if not p.complete:
        projected = dose_with_uncertainty(p.projected_gy, None, p.standard_uncertainty_gy)
        text += (
            f"; projected after {p.planned_cycles} cycles {projected} Gy "
            f"({_status(p.projected_gy, limit_gy, warn)})"
        )
    if bed is not None:
        text += "; BED " + _bed_status(bed, warn)
    return text + "."


def _bed_status(bed: KidneyBed, warning_fraction: float) -> str:
    if bed.total_bed_gy is None:
        return BED_NOT_COMPUTED
    value = _bed_cell(bed)
    return f"{value} Gy ({_status(bed.total_bed_gy, bed.parameters.limit_gy, warning_fraction)})"


def _limits_header(limits: CourseLimits, bed: BedParameters | None) -> str:
    text = (
        f"Course limits: kidneys {plain_number(limits.kidney_limit_gy)} Gy, bone marrow "
        f"{plain_number(limits.marrow_limit_gy)} Gy mean absorbed dose (warning from "
        f"{limits.warning_fraction:.0%})"
    )
    if bed is not None:
        text += (
            f"; kidney BED {plain_number(bed.limit_gy)} Gy (linear-quadratic, α/β "
            f"{bed.alpha_beta_gy:g} Gy, repair half-time {bed.repair_half_time_h:g} h)"
        )
    return text + "."


def _bed_notes(beds: Sequence[KidneyBed]) -> list[str]:
    notes = []
    for bed in beds:
        if bed.reason is not None:
            notes.append(f"Kidney BED of {bed.name} not computed: {bed.reason}")
        if bed.notes:
            notes.append(f"Kidney BED of {bed.name}: " + "; ".join(bed.notes) + ".")
        if bed.total_bed_gy is not None and bed.uncertainty_basis == FROM_FIT_SD:
            notes.append(f"Kidney BED of {bed.name}: ± u from the kinetic fits' sd (no budget).")
    return notes


def limit_lines(
    course: CourseResult,
    limits: CourseLimits,
    bed: BedParameters | None,
    beds: Mapping[str, KidneyBed],
) -> list[str]:
    """Kidneys and bone marrow against their limits, and the kidney BED against its limit."""
    lines = [_limits_header(limits, bed)]
    for dose in course.cumulative:
        if dose.organ in KIDNEY_ORGANS:
            lines.append(_limit_line(dose, "Kidney", limits.kidney_limit_gy, course, limits,
                                     beds.get(dose.name) if bed is not None else None))
        elif dose.kind is VoiKind.MARROW:
            lines.append(_limit_line(dose, "Bone marrow", limits.marrow_limit_gy, course,
                                     limits, None))
    return [*lines, *_bed_notes(list(beds.values()))]


def _course_cycle_line(cycle: CycleResult) -> str:
    resolutions = spect_resolutions(cycle)
    fwhm = f", FWHM {fwhm_text(resolutions)}" if resolutions else ""
    return (
        f"Cycle {cycle.cycle_number}: {cycle.method.value}; "
        f"{sig_figs(cycle.administered_activity_mbq, 5)} MBq; partial volume "
        f"{partial_volume_method(cycle.settings).value}{fwhm}"
    )


def _course_partial_volume(course: CourseResult, paper: PaperSize) -> list[str]:
    """Each partial-volume method of the course's cycles, with its description."""
    methods = dict.fromkeys(partial_volume_method(c.settings) for c in course.cycles)
    return [
        line
        for method in methods
        for line in wrap_to_page(
            f"Partial-volume correction: {method.value}, {method.description}.",
            HEADER_POINTS,
            paper=paper,
        )
    ]


PROJECTION_NOTE = (
    "projected ± u: mean per-cycle AD × the planned cycles; u combines the total's "
    "uncertainty scaled to the planned cycles with the spread of the per-cycle doses "
    "(see the projection figure)."
)


def _footnotes(course: CourseResult, beds: Mapping[str, KidneyBed] | None,
               paper: PaperSize) -> list[str]:
    without_budget = any(d.uncertainty is None for d in course.cumulative)
    lines = [*uncertainty_footnote(without_budget, paper=paper)]
    lines += wrap_to_page(PROJECTION_NOTE, FOOTER_POINTS, paper=paper)
    if beds is not None:
        lines += wrap_to_page(
            "Kidney BED: Σ over cycles of D [1 + D T_rep / ((α/β)(T_rep + T_eff))] with each "
            "cycle's kidney T_eff (Dale 1985; Wessels et al. 2008); its u propagates the dose "
            "budget.",
            FOOTER_POINTS,
            paper=paper,
        )
    return lines


def _wrapped(text: str, paper: PaperSize) -> list[str]:
    """:func:`wrap_to_page` in the footer's font, measuring a line that fits only once."""
    if text_width_pt(text, FOOTER_POINTS) <= line_width_pt(paper):
        return [text]
    return wrap_to_page(text, FOOTER_POINTS, paper=paper)


def summary_lines(
    course: CourseResult,
    limits: CourseLimits,
    bed: BedParameters | None,
    beds: Mapping[str, KidneyBed],
    paper: PaperSize = PaperSize.A4,
) -> list[str]:
    """The lines below the summary table, each wrapped to the page."""
    texts = limit_lines(course, limits, bed, beds)
    if course.lesion_indices is not None:
        texts.append(lesion_index_line(course.lesion_indices))
    texts.append(cut_point_line(course, limits))
    texts.append("Flags:")
    texts += [f"• {flag}" for flag in course.flags or ("none",)]
    texts += [_course_cycle_line(c) for c in course.cycles]
    lines = [line for text in texts for line in _wrapped(text, paper)]
    return [*lines, *_footnotes(course, beds if bed is not None else None, paper)]


#: Lowest point of the summary text, as a fraction of the page height (above "page n/N").
_BOTTOM = 0.035


def _lines_between(top: float, paper: PaperSize) -> int:
    """How many footer-font lines fit from ``top`` down to :data:`_BOTTOM` (page fractions)."""
    return max(int((top - _BOTTOM) * paper.inches[1] * 72 / (FOOTER_POINTS * _LINE_SPACING)), 0)


def _table_bottom(fig: Figure) -> float:
    """The lower edge of the page's table as a fraction of the page height (0.9 without one)."""
    tables = [t for t in fig.findobj(Table) if isinstance(t, Table)]
    if not tables:
        return 0.9
    renderer = FigureCanvasAgg(fig).get_renderer()  # type: ignore[no-untyped-call]  # untyped upstream
    box = tables[0].get_window_extent(renderer)
    return float(box.y0 / fig.bbox.height)


def place_below_table(fig: Figure, lines: Sequence[str], paper: PaperSize) -> list[str]:
    """Write as many of ``lines`` as fit right below the page's table; return the rest."""
    top = _table_bottom(fig) - 0.02
    fits = _lines_between(top, paper)
    if fits:
        fig.text(0.06, top, "\n".join(lines[:fits]), fontsize=FOOTER_POINTS, va="top")
    return list(lines[fits:])


def continuation_pages(title: str, lines: Sequence[str], paper: PaperSize) -> list[Figure]:
    """``lines`` in the footer's font on as many pages as they need."""
    per_page = _lines_between(0.93, paper)
    pages = []
    for chunk in chunked(list(lines), per_page):
        if not chunk:
            break
        fig = page(paper=paper)
        fig.text(0.06, 0.965, title, fontsize=12, weight="bold", va="top")
        fig.text(0.06, 0.93, "\n".join(chunk), fontsize=FOOTER_POINTS, va="top")
        pages.append(fig)
    return pages


def _summary_pages(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    limits: CourseLimits,
    bed: BedParameters | None,
    paper: PaperSize,
) -> list[Figure]:
    beds = {b.name: b for b in kidney_beds(course.cycles, bed)} if bed is not None else {}
    columns, rows = cumulative_table(course, beds if bed is not None else None)
    header = [
        *identification_lines(source, identity),
        f"Planned cycles: {course.planned_cycles}; cycles done: {len(course.cycles)}",
        *_course_partial_volume(course, paper),
    ]
    title = "Lu-177 dosimetry report — course"
    without_budget = any(d.uncertainty is None for d in course.cumulative)
    pages = [
        table_page(
            title + (" (continued)" if i else ""),
            header,
            columns,
            chunk,
            footer=() if i == 0 else uncertainty_footnote(without_budget, paper=paper),
            paper=paper,
        )
        for i, chunk in enumerate(chunked(rows, TABLE_ROWS_PER_PAGE))
    ]
    rest = place_below_table(pages[0], summary_lines(course, limits, bed, beds, paper), paper)
    if rest:
        pages[1:1] = continuation_pages(f"{title}: summary (continued)", rest, paper)
    return pages


# -- the report -------------------------------------------------------------------------
def render_course_pdf(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    bed: BedParameters | None = None,
    paper: PaperSize = PaperSize.A4,
) -> bytes:
    """The PDF report of a course (module docstring); no kidney BED when ``bed`` is None."""
    return render_pages(
        course_report_pages(
            course, source, identity, dvhs=dvhs, masks=masks, limits=limits, bed=bed,
            paper=paper,
        )
    )


def _limits_settings(limits: CourseLimits, bed: BedParameters | None) -> list[str]:
    lines = [
        "Course limits and cut-points:",
        f"  kidney limit = {limits.kidney_limit_gy:g} Gy",
        f"  bone marrow limit = {limits.marrow_limit_gy:g} Gy",
        f"  warning fraction = {limits.warning_fraction:g}",
        f"  lesion mean cut-point = {limits.lesion_mean_cut_gy:g} Gy",
        f"  lesion min cut-point = {limits.lesion_min_cut_gy:g} Gy",
    ]
    if bed is not None:
        lines += [
            f"  kidney alpha/beta = {bed.alpha_beta_gy:g} Gy",
            f"  kidney repair half-time = {bed.repair_half_time_h:g} h",
            f"  kidney BED limit = {bed.limit_gy:g} Gy",
        ]
    return [*lines, ""]


def course_report_pages(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    bed: BedParameters | None = None,
    paper: PaperSize = PaperSize.A4,
) -> list[Figure]:
    """The pages of :func:`render_course_pdf`, not yet rendered (to check their layout)."""
    pages = _summary_pages(course, source, identity, limits, bed, paper)
    beds = kidney_beds(course.cycles, bed) if bed is not None else ()
    pages.append(stacked_dose_page(course, paper=paper))
    pages.append(projection_page(course, limits, paper=paper))
    pages.append(
        lesion_and_bed_page(
            course, beds, limits, bed.limit_gy if bed is not None else None, paper=paper
        )
    )
    resolved = resolve_dvhs(course.course_map, dvhs, masks)
    if resolved:
        pages.append(dvh_page(resolved, "Cumulative DVHs — course", paper=paper))
    warnings = [
        f"cycle {c.cycle_number}: {w}" for c in course.cycles for w in c.warnings
    ]
    warnings += course.course_map_notes
    settings = course.cycles[0].settings if course.cycles else {}
    lines = [
        *map_lines(course.course_map_method),
        "Warnings:",
        *(warnings or ["none"]),
        "",
        *_limits_settings(limits, bed),
        *settings_lines(settings, identity),
    ]
    pages += text_pages("Warnings, limits, software and settings — course", lines, paper=paper)
    return pages


def write_course_pdf(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
    limits: CourseLimits = DEFAULT_LIMITS,
    bed: BedParameters | None = None,
    paper: PaperSize = PaperSize.A4,
) -> Dataset:
    """Encapsulated PDF report of a course."""
    require_kind(identity, ResultKind.COURSE)
    pdf = render_course_pdf(
        course, source, identity, dvhs=dvhs, masks=masks, limits=limits, bed=bed, paper=paper
    )
    return encapsulate_pdf(
        pdf, source, identity, title=identity.series_description(OutputObject.PDF)
    )
