"""Figures of the course report: doses per cycle, projection, lesion indices, kidney BED.

Each function returns one page (a matplotlib :class:`~matplotlib.figure.Figure`
of the report's paper size) with a short reading guide under its panels.

* **Cumulative absorbed dose per VOI** — one bar per VOI, one stack segment
  per cycle (the cycle's mean AD), organs and bone marrow on one panel and
  lesions on another, each on its own scale in Gy; the course total is
  written above each bar.
* **Projection to the planned cycles** — per VOI the total so far (bar) and
  the projected total after the planned cycles with its standard uncertainty
  (point and error bar, k = 1); kidneys and bone marrow on their own panels
  with their course limit (solid line) and the warning level (dashed).
* **Lesion indices** — the mean, minimum and maximum of the lesions' total AD
  ± u (k = 1) against the paper's cut-points (mean 91.36 Gy, minimum
  52.52 Gy by default); while the course is incomplete, also the indices of
  the projected lesion totals, which the course flags use.
* **Kidney BED** — per kidney VOI the BED of each cycle stacked, with the
  total ± u and the BED limit (:mod:`theranode.dosimetry.bed`).

The projection and its uncertainty are
:func:`theranode.dosimetry.course.projection`'s.

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (cumulative AD, lesion index
cut-points). Gear JI et al., Eur J Nucl Med Mol Imaging 2018;45:2456-2474
(uncertainty budget). JCGM 100:2008 (GUM) 5.1.2 (combined standard
uncertainty). Bodei L et al., Eur J Nucl Med Mol Imaging 2008;35:1847-1856
(kidney BED limits).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from theranode.dicomio.pdf_report import (
    FOOTER_POINTS,
    PaperSize,
    page,
    plain_number,
    wrap_to_page,
)
from theranode.dosimetry.bed import KidneyBed
from theranode.dosimetry.course import KIDNEY_ORGANS, CourseLimits, projected_totals, projection
from theranode.dosimetry.results import CourseResult, CumulativeDose, VoiKind

logger = logging.getLogger(__name__)

#: The course limits and cut-points of Hebert 2024 (:class:`CourseLimits` defaults).
DEFAULT_LIMITS = CourseLimits()

#: matplotlib's qualitative palette, one colour per cycle.
CYCLE_COLOURS = (
    "tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown",
    "tab:pink", "tab:olive", "tab:cyan", "tab:gray", "tab:red",
)
LABEL_POINTS = 7.0
NAME_CHARACTERS = 18


def _short(name: str) -> str:
    """``name`` in at most :data:`NAME_CHARACTERS`, cut in the middle: names of one
    organ's lesions differ at their end (``liver seg…lesion 03``)."""
    if len(name) <= NAME_CHARACTERS:
        return name
    head = (NAME_CHARACTERS - 1) // 2
    return name[:head] + "…" + name[len(name) - (NAME_CHARACTERS - 1 - head):]


def _voi_label(dose: CumulativeDose) -> str:
    return _short(dose.name) + (" (excl.)" if dose.excluded else "")


def _guide(fig: Figure, text: str, paper: PaperSize, top: float = 0.085) -> None:
    lines = wrap_to_page(text, FOOTER_POINTS, paper=paper)
    fig.text(0.06, top, "\n".join(lines), fontsize=FOOTER_POINTS, va="top")


def _empty(ax: Axes, text: str) -> None:
    ax.set_ylabel("")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _style(ax: Axes, title: str, ylabel: str = "absorbed dose (Gy)") -> None:
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(axis="y", labelsize=LABEL_POINTS)
    ax.grid(axis="y", alpha=0.3)


def _x_names(ax: Axes, labels: Sequence[str]) -> None:
    """VOI names under the bars: steeper and smaller as the bars get more."""
    crowded = len(labels) > 8
    ax.set_xticks(range(len(labels)))
    # names come from the RTSTRUCT: drawn as written, never as mathtext (literal_texts
    # leaves tick labels to their formatter)
    ax.set_xticklabels(labels, rotation=60 if crowded else 30, ha="right",
                       rotation_mode="anchor", fontsize=6.0 if crowded else LABEL_POINTS,
                       parse_math=False, usetex=False)
    ax.set_xlim(-0.6, len(labels) - 0.4)


# -- stacked bars --------------------------------------------------------------------
def cycle_numbers(course: CourseResult) -> list[int]:
    """Every cycle number with a dose, ascending."""
    return sorted({n for d in course.cumulative for n in d.per_cycle_gy})


def _stack_by_cycle(
    ax: Axes, per_cycle: Sequence[Mapping[int, float]], numbers: Sequence[int], width: float
) -> list[float]:
    """One bar per entry of ``per_cycle``, a segment per cycle of ``numbers`` (0 when the
    entry has none), coloured and labelled by cycle; returns the bars' tops."""
    tops = [0.0] * len(per_cycle)
    for i, number in enumerate(numbers):
        heights = [values.get(number, 0.0) for values in per_cycle]
        ax.bar(range(len(per_cycle)), heights, bottom=tops, width=width,
               color=CYCLE_COLOURS[i % len(CYCLE_COLOURS)], label=f"cycle {number}")
        tops = [t + h for t, h in zip(tops, heights, strict=True)]
    return tops


def _stacked_panel(
    ax: Axes, doses: Sequence[CumulativeDose], numbers: Sequence[int], title: str
) -> None:
    _style(ax, title)
    if not doses:
        _empty(ax, "none in this course")
        return
    bottoms = _stack_by_cycle(ax, [d.per_cycle_gy for d in doses], numbers, width=0.6)
    for x, dose in enumerate(doses):
        ax.text(x, bottoms[x], plain_number(dose.total_gy), ha="center", va="bottom",
                fontsize=LABEL_POINTS)
    ax.set_ylim(0.0, max(max(bottoms) * 1.12, 1e-3))
    _x_names(ax, [_voi_label(d) for d in doses])


def stacked_dose_page(course: CourseResult, *, paper: PaperSize = PaperSize.A4) -> Figure:
    """Cumulative AD per VOI, one stack segment per cycle; organs and lesions apart."""
    fig = page(paper=paper)
    fig.suptitle("Cumulative absorbed dose per VOI and cycle — course", fontsize=12)
    numbers = cycle_numbers(course)
    organs = [d for d in course.cumulative if d.kind is not VoiKind.LESION]
    lesions = [d for d in course.cumulative if d.kind is VoiKind.LESION]
    top, bottom = fig.add_axes((0.1, 0.58, 0.85, 0.31)), fig.add_axes((0.1, 0.2, 0.85, 0.29))
    _stacked_panel(top, organs, numbers, "Organs and bone marrow")
    _stacked_panel(bottom, lesions, numbers, "Lesions")
    handles, labels = (top if organs else bottom).get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.945),
                   ncol=min(len(handles), 6), fontsize=LABEL_POINTS,
                   title="mean absorbed dose of each cycle", title_fontsize=LABEL_POINTS)
    _guide(
        fig,
        "Each bar is a VOI's cumulative mean absorbed dose over the course; each coloured "
        "segment is one cycle's mean absorbed dose (Gy), the number above the bar the total. "
        "Organs and lesions have separate scales. VOIs are matched across cycles by name; "
        "'excl.' marks a lesion left out of the lesion indices.",
        paper,
    )
    return fig


# -- projection ----------------------------------------------------------------------
def _limit_lines(ax: Axes, what: str, limit_gy: float, warning_fraction: float) -> None:
    ax.axhline(limit_gy, color="tab:red", lw=1.2, label=f"{what} limit {plain_number(limit_gy)} Gy")
    ax.axhline(
        warning_fraction * limit_gy, color="tab:orange", lw=1.0, ls="--",
        label=f"warning {warning_fraction:.0%} = {plain_number(warning_fraction * limit_gy)} Gy",
    )


def _projection_panel(
    ax: Axes,
    doses: Sequence[CumulativeDose],
    planned_cycles: int,
    title: str,
    limit: tuple[str, float, float] | None = None,
) -> None:
    _style(ax, title)
    if not doses:
        _empty(ax, "none in this course")
        return
    projections = [projection(d, planned_cycles) for d in doses]
    xs = range(len(doses))
    ax.bar(xs, [p.total_gy for p in projections], width=0.5, color="lightsteelblue",
           label="total so far")
    errors = [p.standard_uncertainty_gy or 0.0 for p in projections]
    label = f"projected after {projections[0].planned_cycles} cycles ± u"
    ax.errorbar(xs, [p.projected_gy for p in projections], yerr=errors, fmt="o", color="black",
                ms=4, capsize=3, label=label)
    highest = max(p.projected_gy + e for p, e in zip(projections, errors, strict=True))
    if limit is not None:
        _limit_lines(ax, *limit)
        highest = max(highest, limit[1])
    ax.set_ylim(0.0, max(highest * 1.25, 1e-3))
    _x_names(ax, [_voi_label(d) for d in doses])
    ax.legend(fontsize=6, loc="upper left")


def projection_page(
    course: CourseResult,
    limits: CourseLimits = DEFAULT_LIMITS,
    *,
    paper: PaperSize = PaperSize.A4,
) -> Figure:
    """Totals so far and projected totals ± u, kidneys and marrow against their limits."""
    fig = page(paper=paper)
    done = len(course.cycles)
    fig.suptitle(
        f"Projection to the {course.planned_cycles} planned cycles ({done} done) — course",
        fontsize=12,
    )
    kidneys = [d for d in course.cumulative if d.organ in KIDNEY_ORGANS]
    marrow = [d for d in course.cumulative if d.kind is VoiKind.MARROW]
    organs = [d for d in course.cumulative
              if d.kind is VoiKind.ORGAN and d.organ not in KIDNEY_ORGANS]
    lesions = [d for d in course.cumulative if d.kind is VoiKind.LESION]
    planned = course.planned_cycles
    axes = [fig.add_axes(box) for box in (
        (0.09, 0.58, 0.38, 0.32), (0.58, 0.58, 0.38, 0.32),
        (0.09, 0.19, 0.38, 0.29), (0.58, 0.19, 0.38, 0.29),
    )]
    warn = limits.warning_fraction
    _projection_panel(axes[0], kidneys, planned, "Kidneys",
                      ("kidney", limits.kidney_limit_gy, warn))
    _projection_panel(axes[1], marrow, planned, "Bone marrow",
                      ("marrow", limits.marrow_limit_gy, warn))
    _projection_panel(axes[2], organs, planned, "Other organs")
    _projection_panel(axes[3], lesions, planned, "Lesions")
    spread = "" if done >= 2 else (
        " With one cycle done the variation between cycles is unknown: the error bar is the "
        "measurement part alone."
    )
    _guide(
        fig,
        "Bar: cumulative absorbed dose so far. Point: projected total after the planned "
        "cycles, the mean per-cycle dose × the planned cycles. Error bar: its standard "
        "uncertainty (k = 1): the total's uncertainty scaled to the planned cycles, combined "
        "in quadrature with the spread of the per-cycle doses (√(m(1 + m/n)) × their sd for "
        f"m cycles to come after n).{spread} Red line: course limit; dashed: warning level. "
        "Lesion doses often fall over the cycles, so lesion projections tend to be high.",
        paper,
        top=0.10,
    )
    return fig


# -- lesion indices and kidney BED ---------------------------------------------------
INDEX_NAMES = ("mean", "min", "max")


def _projected_indices(course: CourseResult) -> tuple[float, float, float] | None:
    lesions = [d for d in course.cumulative if d.kind is VoiKind.LESION and not d.excluded]
    if not lesions or len(course.cycles) >= course.planned_cycles:
        return None
    projected = projected_totals(lesions, course.planned_cycles)
    values = [projected[d.name] for d in lesions]
    return math.fsum(values) / len(values), min(values), max(values)


def _lesion_panel(ax: Axes, course: CourseResult, limits: CourseLimits) -> None:
    _style(ax, "Lesion indices (total AD over the eligible lesions)")
    indices = course.lesion_indices
    if indices is None:
        _empty(ax, "no eligible lesion")
        return
    values = (indices.mean_total_gy, indices.min_total_gy, indices.max_total_gy)
    budgets = (indices.mean_uncertainty, indices.min_uncertainty, indices.max_uncertainty)
    errors = [0.0 if b is None else b.standard_gy for b in budgets]
    ax.errorbar(range(3), values, yerr=errors, fmt="o", color="black", capsize=4, ms=5,
                label=f"total so far ± u ({indices.n_lesions} lesions)")
    highest = max(v + e for v, e in zip(values, errors, strict=True))
    projected = _projected_indices(course)
    if projected is not None:
        ax.plot([x + 0.15 for x in range(3)], projected, "D", mfc="white", color="tab:blue",
                label=f"projected after {course.planned_cycles} cycles (as the flags use)")
        highest = max(highest, *projected)
    for x, cut, what, style in ((0, limits.lesion_mean_cut_gy, "mean", "-"),
                                (1, limits.lesion_min_cut_gy, "min", "--")):
        ax.plot([x - 0.35, x + 0.35], [cut, cut], color="tab:red", lw=1.5, ls=style,
                label=f"cut-point {what} {cut:g} Gy")
    highest = max(highest, limits.lesion_mean_cut_gy, limits.lesion_min_cut_gy)
    ax.set_ylim(0.0, highest * 1.3)
    ax.set_xticks(range(3))
    ax.set_xticklabels(INDEX_NAMES, fontsize=8)
    ax.set_xlim(-0.6, 2.6)
    ax.legend(fontsize=6, loc="upper left")


def _bed_panel(ax: Axes, beds: Sequence[KidneyBed], limit_gy: float | None) -> None:
    _style(ax, "Kidney biologically effective dose (BED)", "BED (Gy)")
    computed = [b for b in beds if b.total_bed_gy is not None]
    if not computed:
        if limit_gy is None:
            _empty(ax, "BED not requested")
        elif not beds:
            _empty(ax, "no kidney VOI in this course")
        else:
            _empty(ax, "not computed: no effective half-life (see the summary)")
        return
    numbers = sorted({c.cycle_number for b in computed for c in b.cycles})
    bottoms = _stack_by_cycle(ax, [b.per_cycle_bed_gy for b in computed], numbers, width=0.5)
    errors = [b.standard_uncertainty_gy or 0.0 for b in computed]
    ax.errorbar(range(len(computed)), bottoms, yerr=errors, fmt="none", color="black",
                capsize=3)
    highest = max(s + e for s, e in zip(bottoms, errors, strict=True))
    if limit_gy is not None:
        ax.axhline(limit_gy, color="tab:red", lw=1.2,
                   label=f"kidney BED limit {plain_number(limit_gy)} Gy")
        highest = max(highest, limit_gy)
    ax.set_ylim(0.0, highest * 1.25)
    _x_names(ax, [_short(b.name) for b in computed])
    ax.legend(fontsize=6, loc="upper left", ncol=2)


def lesion_and_bed_page(
    course: CourseResult,
    beds: Sequence[KidneyBed],
    limits: CourseLimits = DEFAULT_LIMITS,
    bed_limit_gy: float | None = None,
    *,
    paper: PaperSize = PaperSize.A4,
) -> Figure:
    """The lesion indices against their cut-points and the kidney BED against its limit."""
    fig = page(paper=paper)
    fig.suptitle("Lesion indices and kidney BED — course", fontsize=12)
    top, bottom = fig.add_axes((0.1, 0.57, 0.85, 0.33)), fig.add_axes((0.1, 0.2, 0.85, 0.28))
    _lesion_panel(top, course, limits)
    _bed_panel(bottom, beds, bed_limit_gy)
    _guide(
        fig,
        "Top: mean, minimum and maximum total absorbed dose of the lesions not excluded, "
        "± standard uncertainty (k = 1), with the prognostic cut-points of Hebert et al. 2024 "
        f"(mean > {limits.lesion_mean_cut_gy:g} Gy and minimum > {limits.lesion_min_cut_gy:g} "
        "Gy went with longer progression-free survival). Bottom: kidney BED per cycle "
        "(stacked), linear-quadratic with mono-exponential clearance and full repair "
        "between cycles, total ± u (k = 1), against the configured BED limit (Bodei et al. "
        "2008: 40 Gy without risk factors, 28 Gy with them).",
        paper,
        top=0.10,
    )
    return fig
