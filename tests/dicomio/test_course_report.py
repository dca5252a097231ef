"""Course report: kidney BED column, stacked doses, projection, limits, cut-points, layout."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.table import Table

from tests.dicomio.result_records import cycle_result, identity, source_for_cycle
from tests.dicomio.test_pdf_report import _outside_the_page, _page_text
from tests.pdf_text import pdf_text
from theranode.dicomio.course_figures import (
    lesion_and_bed_page,
    projection_page,
    stacked_dose_page,
)
from theranode.dicomio.course_report import (
    BED_COLUMN,
    BED_NOT_COMPUTED,
    course_report_pages,
    render_course_pdf,
)
from theranode.dicomio.pdf_report import PaperSize, dose_with_uncertainty
from theranode.dicomio.uids import ResultKind
from theranode.dosimetry.bed import BedParameters, kidney_beds
from theranode.dosimetry.course import KIDNEY_ORGANS, CourseLimits, projection, summarize_course
from theranode.dosimetry.results import (
    CourseResult,
    CycleResult,
    DoseMethod,
    VoiKind,
)

BED = BedParameters(alpha_beta_gy=2.6, repair_half_time_h=2.8, limit_gy=40.0)
#: 2.731 Gy per cycle with T_eff 50 h: 2.731 · (1 + 2.731 · 2.8 / (2.6 · 52.8)) = 2.883122 Gy
KIDNEY_CYCLE_BED_GY = 2.883122


def _cycle(number: int, kidney_half_life_h: float | None, method: DoseMethod) -> CycleResult:
    """The writers' test cycle (current engine, GTM) with the kidneys' T_eff set."""
    result = cycle_result(number, partial_volume="gtm")
    vois = tuple(
        dataclasses.replace(v, effective_half_life_h=kidney_half_life_h)
        if v.organ in KIDNEY_ORGANS else v
        for v in result.vois
    )
    return dataclasses.replace(result, vois=vois, method=method)


def _course(second: DoseMethod = DoseMethod.MULTI_TIME_POINT) -> CourseResult:
    second_half_life = 50.0 if second is DoseMethod.MULTI_TIME_POINT else None
    cycles = [
        _cycle(1, 50.0, DoseMethod.MULTI_TIME_POINT),
        _cycle(2, second_half_life, second),
    ]
    return summarize_course(cycles, planned_cycles=4)


@pytest.fixture(scope="module")
def course() -> CourseResult:
    return _course()


@pytest.fixture(scope="module")
def pages(course: CourseResult) -> list[Figure]:
    """The report's pages with the kidney BED, not yet drawn (read, never modified)."""
    source, _ = source_for_cycle()
    return course_report_pages(course, source, identity(ResultKind.COURSE), bed=BED)


def _table(fig: Figure) -> dict[tuple[int, int], str]:
    (table,) = [t for t in fig.findobj(Table) if isinstance(t, Table)]
    return {key: cell.get_text().get_text() for key, cell in table.get_celld().items()}


def _cell(fig: Figure, row_name: str, column: str) -> str:
    cells = _table(fig)
    col = next(c for (r, c), text in cells.items() if r == 0 and text == column)
    row = next(r for (r, c), text in cells.items() if c == 0 and text == row_name)
    return cells[(row, col)]


def _lines(fig: Figure, label_start: str) -> list[Line2D]:
    return [
        line for ax in fig.axes for line in ax.get_lines()
        if str(line.get_label()).startswith(label_start)
    ]


# -- kidney BED -------------------------------------------------------------------------
def test_the_summary_table_has_the_kidney_bed_that_dosimetry_computes(
    course: CourseResult, pages: list[Figure]
) -> None:
    beds = {b.name: b for b in kidney_beds(course.cycles, BED)}
    left = beds["kidney_left"]
    assert left.total_bed_gy == pytest.approx(2 * KIDNEY_CYCLE_BED_GY, rel=1e-6)
    assert left.standard_uncertainty_gy is not None
    expected = dose_with_uncertainty(left.total_bed_gy, left.uncertainty)
    assert expected.startswith("5.77 ± ")
    assert _cell(pages[0], "kidney_left", BED_COLUMN) == expected
    assert _cell(pages[0], "liver", BED_COLUMN) == ""
    text = _page_text(pages[0])
    assert f"BED {expected} Gy (14 % of 40.0 Gy)" in text
    assert "kidney BED 40.0 Gy (linear-quadratic, α/β 2.6 Gy, repair half-time 2.8 h)" in text


def test_the_rendered_pdf_states_the_bed_and_the_limits(
    course: CourseResult, tmp_path: Path
) -> None:
    source, _ = source_for_cycle()
    (left, _) = kidney_beds(course.cycles, BED)
    pdf = render_course_pdf(course, source, identity(ResultKind.COURSE), bed=BED,
                            limits=CourseLimits(kidney_limit_gy=18.0))
    text = pdf_text(pdf)
    assert dose_with_uncertainty(left.total_bed_gy or 0.0, left.uncertainty) in text
    assert "Course limits: kidneys 18.0 Gy, bone marrow 2.00 Gy" in text
    assert "kidney limit 18.0 Gy" in text and "cut-point mean 91.36 Gy" in text
    assert "kidney BED limit 40.0 Gy" in text


def test_a_single_time_point_cycle_without_its_own_half_life_uses_the_first_cycles() -> None:
    course = _course(second=DoseMethod.HANSCHEID)
    source, _ = source_for_cycle()
    pages = course_report_pages(course, source, identity(ResultKind.COURSE), bed=BED)
    cell = _cell(pages[0], "kidney_left", BED_COLUMN)
    assert cell.startswith("5.77 ± ")  # cycle 2 at cycle 1's 50 h: the same BED per cycle
    text = _page_text(pages[0])
    assert "Kidney BED of kidney_left: cycle 2: T_eff 50 h of multi-time-point cycle 1." in text


def test_without_any_half_life_the_bed_says_not_computed_and_why() -> None:
    cycles = [_cycle(1, None, DoseMethod.MULTI_TIME_POINT),
              _cycle(2, None, DoseMethod.HANSCHEID)]
    course = summarize_course(cycles, planned_cycles=4)
    source, _ = source_for_cycle()
    pages = course_report_pages(course, source, identity(ResultKind.COURSE), bed=BED)
    assert _cell(pages[0], "kidney_left", BED_COLUMN) == BED_NOT_COMPUTED
    text = _page_text(pages[0])
    assert "Kidney BED of kidney_left not computed: cycle 1 (multi-time-point) has no" in text
    assert "not computed: no effective half-life" in _page_text(pages[3])


def test_without_bed_parameters_there_is_no_bed_column() -> None:
    source, _ = source_for_cycle()
    pages = course_report_pages(_course(), source, identity(ResultKind.COURSE))
    assert BED_COLUMN not in _table(pages[0]).values()
    assert "BED not requested" in _page_text(pages[3])


# -- figures -----------------------------------------------------------------------------
def _bars(ax: object) -> dict[str, list[tuple[float, float]]]:
    """Per legend label, each bar's (bottom, height) as the artists hold them."""
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]  # type: ignore[attr-defined]
    return {
        str(c.get_label()): [(p.get_y(), p.get_height()) for p in c.patches] for c in containers
    }


def test_the_stacked_bars_are_the_per_cycle_doses(course: CourseResult) -> None:
    fig = stacked_dose_page(course)
    organs = [d for d in course.cumulative if d.kind is not VoiKind.LESION]
    lesions = [d for d in course.cumulative if d.kind is VoiKind.LESION]
    for ax, doses in ((fig.axes[0], organs), (fig.axes[1], lesions)):
        bars = _bars(ax)
        assert list(bars) == ["cycle 1", "cycle 2"]
        # matplotlib keeps a bar as its corners: heights come back to within rounding
        for number in (1, 2):
            heights = [h for _, h in bars[f"cycle {number}"]]
            assert heights == pytest.approx([d.per_cycle_gy[number] for d in doses], rel=1e-12)
        bottoms = [b for b, _ in bars["cycle 2"]]
        assert bottoms == pytest.approx([d.per_cycle_gy[1] for d in doses], rel=1e-12)
        tops = [b + h for b, h in bars["cycle 2"]]
        assert tops == pytest.approx([d.total_gy for d in doses], rel=1e-12)
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["lesion 1", "lesion 2 (excl.)"]


def test_limits_are_drawn_at_the_configured_values(course: CourseResult) -> None:
    limits = CourseLimits(kidney_limit_gy=18.0, marrow_limit_gy=1.5, warning_fraction=0.7)
    fig = projection_page(course, limits)
    (kidney,) = _lines(fig, "kidney limit")
    (marrow,) = _lines(fig, "marrow limit")
    assert list(kidney.get_ydata()) == [18.0, 18.0] and list(marrow.get_ydata()) == [1.5, 1.5]
    assert sorted(line.get_ydata()[0] for line in _lines(fig, "warning 70%")) == pytest.approx(
        [1.05, 12.6]
    )
    assert kidney.get_label() == "kidney limit 18.0 Gy"


def test_the_projection_points_and_error_bars_are_the_projection(course: CourseResult) -> None:
    fig = projection_page(course)
    kidneys = [d for d in course.cumulative if d.organ in KIDNEY_ORGANS]
    (points,) = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    assert list(points.get_ydata()) == pytest.approx([projection(d, 4).projected_gy
                                                      for d in kidneys])
    assert list(points.get_ydata()) == pytest.approx([4 * 2.731, 4 * 2.731])


def test_the_lesion_indices_face_the_cut_points(course: CourseResult) -> None:
    beds = kidney_beds(course.cycles, BED)
    default = lesion_and_bed_page(course, beds, bed_limit_gy=BED.limit_gy)
    assert list(_lines(default, "cut-point mean")[0].get_ydata()) == [91.36, 91.36]
    assert list(_lines(default, "cut-point min")[0].get_ydata()) == [52.52, 52.52]
    (bed_limit,) = _lines(default, "kidney BED limit")
    assert list(bed_limit.get_ydata()) == [40.0, 40.0]
    bars = _bars(default.axes[1])
    assert [h for _, h in bars["cycle 1"]] == pytest.approx([KIDNEY_CYCLE_BED_GY] * 2, rel=1e-6)
    custom = lesion_and_bed_page(
        course, beds, CourseLimits(lesion_mean_cut_gy=80.0, lesion_min_cut_gy=40.0)
    )
    assert list(_lines(custom, "cut-point mean")[0].get_ydata()) == [80.0, 80.0]
    assert list(_lines(custom, "cut-point min")[0].get_ydata()) == [40.0, 40.0]
    (indices,) = [line for line in default.axes[0].get_lines() if line.get_marker() == "o"]
    lesion = course.lesion_indices
    assert lesion is not None
    assert list(indices.get_ydata()) == [lesion.mean_total_gy, lesion.min_total_gy,
                                         lesion.max_total_gy]


# -- projection uncertainty ---------------------------------------------------------------
# -- layout --------------------------------------------------------------------------------
def _busy_course() -> CourseResult:
    """More flags than page 1 holds, some longer than a line."""
    course = _course(second=DoseMethod.HANSCHEID)
    long_flags = tuple(
        f"KIDNEY_LIMIT_PROJECTED: kidney VOI 'kidney_{i}' projected AD after 4 cycles "
        f"{20 + i:.2f} Gy ≥ the 23 Gy limit, which is a long flag that must wrap onto the "
        "next line instead of running off the right edge of the page."
        for i in range(3)
    )
    short_flags = tuple(
        f"VOI_MISSING_IN_CYCLE: VOI 'node {i}' has no dose in cycle 2." for i in range(40)
    )
    return dataclasses.replace(course, flags=long_flags + short_flags)


@pytest.mark.parametrize("paper", list(PaperSize))
def test_every_text_stays_inside_the_page_and_long_flags_continue(paper: PaperSize) -> None:
    course = _busy_course()
    source, _ = source_for_cycle()
    pages = course_report_pages(course, source, identity(ResultKind.COURSE), bed=BED,
                                paper=paper)
    assert {tuple(p.get_size_inches()) for p in pages} == {paper.inches}
    assert [_outside_the_page(p) for p in pages] == [[] for _ in pages]
    assert "summary (continued)" in _page_text(pages[1])
    text = " ".join(_page_text(p) for p in pages[:2])
    for flag in course.flags:
        assert flag[:60] in text


def test_long_voi_names_are_cut_in_the_middle_so_lesions_stay_apart(course: CourseResult) -> None:
    lesion = next(d for d in course.cumulative if d.name == "lesion 1")
    lesions = tuple(
        dataclasses.replace(lesion, name=f"liver segment VIII lesion {i:02d}") for i in range(3)
    )
    fig = stacked_dose_page(dataclasses.replace(course, cumulative=lesions))
    labels = [t.get_text() for t in fig.axes[1].get_xticklabels()]
    assert labels == ["liver se…lesion 00", "liver se…lesion 01", "liver se…lesion 02"]


def test_dollar_signs_in_voi_names_on_the_figures_are_drawn_as_written(
    course: CourseResult,
) -> None:
    """VOI names under the bars are not parsed as mathtext: the course job does not fail."""
    names = {"lesion 1": "$\\foo$ lesion", "kidney_left": "$x_{$ kidney"}
    cycles = tuple(
        dataclasses.replace(c, vois=tuple(
            dataclasses.replace(v, name=names.get(v.name, v.name)) for v in c.vois))
        for c in course.cycles
    )
    renamed = summarize_course(cycles, planned_cycles=4)
    source, _ = source_for_cycle()
    assert render_course_pdf(renamed, source, identity(ResultKind.COURSE), bed=BED)
    labels = [t.get_text() for t in stacked_dose_page(renamed).axes[1].get_xticklabels()]
    assert "$\\foo$ lesion" in labels
