"""The PDF report of a treatment course and its Encapsulated PDF object.

The course report sums the cycles: cumulative absorbed dose per VOI and cycle,
the projection to the planned cycles, the lesion indices, the course flags and
each cycle's method. Layout, number formatting and encapsulation are shared
with the cycle report (:mod:`theranode.dicomio.pdf_report`).

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (cumulative doses, lesion indices
and their cut-points). DICOM PS3.3 A.45.1 (Encapsulated PDF IOD).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy.typing as npt
from matplotlib.figure import Figure
from pydicom.dataset import Dataset

from theranode.dicomio.pdf_report import (
    FOOTER_POINTS,
    HEADER_POINTS,
    TABLE_ROWS_PER_PAGE,
    chunked,
    dominant_text,
    dose_with_uncertainty,
    dvh_page,
    encapsulate_pdf,
    fwhm_text,
    identification_lines,
    map_lines,
    plain_number,
    render_pages,
    resolve_dvhs,
    settings_lines,
    sig_figs,
    table_page,
    text_pages,
    uncertainty_footnote,
    wrap_to_page,
)
from theranode.dicomio.source import SourceContext
from theranode.dicomio.sr import partial_volume_method, require_kind, spect_resolutions
from theranode.dicomio.uids import OutputObject, ResultIdentity, ResultKind
from theranode.dosimetry.results import CourseResult, CumulativeDose, CycleResult, LesionIndices
from theranode.dosimetry.roi import CumulativeDvh
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)


CUMULATIVE_COLUMNS_FIXED = (
    "VOI", "kind", "total AD ± u (Gy)", "dominant u", "projected (Gy)"
)


def _cumulative_row(
    dose: CumulativeDose, numbers: Sequence[int], course: CourseResult
) -> list[str]:
    return [
        dose.name[:22] + (" (excluded)" if dose.excluded else ""),
        dose.kind.value,
        *(plain_number(dose.per_cycle_gy.get(n)) for n in numbers),
        dose_with_uncertainty(dose.total_gy, dose.uncertainty, dose.total_gy_sd),
        dominant_text(dose.uncertainty),
        plain_number(course.projected_total_gy.get(dose.name)),
    ]


def _cumulative_rows(course: CourseResult) -> tuple[list[str], list[list[str]]]:
    numbers = sorted({n for d in course.cumulative for n in d.per_cycle_gy})
    columns = [
        *CUMULATIVE_COLUMNS_FIXED[:2],
        *(f"C{n} (Gy)" for n in numbers),
        *CUMULATIVE_COLUMNS_FIXED[2:],
    ]
    return columns, [_cumulative_row(d, numbers, course) for d in course.cumulative]


def lesion_index_line(indices: LesionIndices) -> str:
    """The lesion indices, each total with its standard uncertainty when stated."""
    return (
        f"Lesion indices ({indices.n_lesions} lesions), total AD ± u: "
        f"mean {dose_with_uncertainty(indices.mean_total_gy, indices.mean_uncertainty)} Gy, "
        f"min {dose_with_uncertainty(indices.min_total_gy, indices.min_uncertainty)} Gy, "
        f"max {dose_with_uncertainty(indices.max_total_gy, indices.max_uncertainty)} Gy"
    )


def _course_cycle_line(cycle: CycleResult) -> str:
    resolutions = spect_resolutions(cycle)
    fwhm = f", FWHM {fwhm_text(resolutions)}" if resolutions else ""
    return (
        f"Cycle {cycle.cycle_number}: {cycle.method.value}; "
        f"{sig_figs(cycle.administered_activity_mbq, 5)} MBq; partial volume "
        f"{partial_volume_method(cycle.settings).value}{fwhm}"
    )


def _course_partial_volume(course: CourseResult) -> list[str]:
    """Each partial-volume method of the course's cycles, with its description."""
    methods = dict.fromkeys(partial_volume_method(c.settings) for c in course.cycles)
    return [
        line
        for method in methods
        for line in wrap_to_page(
            f"Partial-volume correction: {method.value}, {method.description}.", HEADER_POINTS
        )
    ]


def _course_footer(course: CourseResult) -> list[str]:
    lines = []
    if course.lesion_indices is not None:
        lines.append(lesion_index_line(course.lesion_indices))
    lines.append("Flags:")
    lines.extend(f"• {flag}" for flag in course.flags or ("none",))
    for cycle in course.cycles:
        lines.extend(wrap_to_page(_course_cycle_line(cycle), FOOTER_POINTS))
    without_budget = any(d.uncertainty is None for d in course.cumulative)
    return [*lines, *uncertainty_footnote(without_budget)]


def render_course_pdf(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
) -> bytes:
    """The PDF report of a course: cumulative doses, lesion indices, flags, per-cycle summary."""
    return render_pages(course_report_pages(course, source, identity, dvhs=dvhs, masks=masks))


def course_report_pages(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
) -> list[Figure]:
    """The pages of :func:`render_course_pdf`, not yet rendered (to check their layout)."""
    columns, rows = _cumulative_rows(course)
    header = [
        *identification_lines(source, identity),
        f"Planned cycles: {course.planned_cycles}",
        *_course_partial_volume(course),
    ]
    pages = [
        table_page(
            "Lu-177 dosimetry report — course" + (" (continued)" if i else ""),
            header,
            columns,
            chunk,
            footer=_course_footer(course) if i == 0 else uncertainty_footnote(
                any(d.uncertainty is None for d in course.cumulative)
            ),
        )
        for i, chunk in enumerate(chunked(rows, TABLE_ROWS_PER_PAGE))
    ]
    resolved = resolve_dvhs(course.course_map, dvhs, masks)
    if resolved:
        pages.append(dvh_page(resolved, "Cumulative DVHs — course"))
    warnings = [
        f"cycle {c.cycle_number}: {w}" for c in course.cycles for w in c.warnings
    ]
    warnings += getattr(course, "course_map_notes", ())
    settings = course.cycles[0].settings if course.cycles else {}
    lines = [
        *map_lines(getattr(course, "course_map_method", "")),
        "Warnings:",
        *(warnings or ["none"]),
        "",
        *settings_lines(settings, identity),
    ]
    pages += text_pages("Warnings, software and settings — course", lines)
    return pages


def write_course_pdf(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    masks: Mapping[str, npt.NDArray[Any] | Volume] | None = None,
) -> Dataset:
    """Encapsulated PDF report of a course."""
    require_kind(identity, ResultKind.COURSE)
    pdf = render_course_pdf(course, source, identity, dvhs=dvhs, masks=masks)
    return encapsulate_pdf(
        pdf, source, identity, title=identity.series_description(OutputObject.PDF)
    )
