"""The cycle PDF of the synthetic demo course, as a reader sees it.

The node's pipeline computes cycle 1 of the synthetic course (US Letter, set in
``[reports] paper_size``) and writes its SR and PDF; the same result is rendered
again on A4 from the stored result. poppler-utils then draw and read both PDFs
as a viewer would: ``pdftotext -bbox`` for every word's box, ``pdftoppm`` for the
pixels of the dose images, ``pdffonts`` for the fonts.

References
----------
ISO 216 (A4), ANSI/ASME Y14.1 (Letter); PDF 32000-1:2008 9.6-9.9 (embedded fonts).
"""

from __future__ import annotations

import dataclasses
import html
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.dicomio.test_rrd_sr import ADMINISTRATION, only, organ_entries
from tests.peers import require_tool
from theranode.config.schema import Settings
from theranode.dicomio.pdf_report import PaperSize, extract_pdf, plain_number, render_cycle_pdf
from theranode.dicomio.report_figures import RegisteredCt, ReportImages
from theranode.dicomio.rrd_sr import RRD_SR_STORAGE
from theranode.dicomio.sr import ReportValues, read_sr_report
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course
from theranode.dicomio.uids import ResultIdentity, ResultKind
from theranode.dosimetry.course import CourseLimits
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import VoiKind
from theranode.dosimetry.synthetic.phantom import relative_affine
from theranode.service.deliver.sender import COMPREHENSIVE_3D_SR_STORAGE
from theranode.service.jobs.pipeline import dvh_masks, read_cycle, run_job
from theranode.service.jobs.results import load_stored_result
from theranode.service.jobs.spec import (
    CourseJobInput,
    CycleJobInput,
    JobKind,
    JobSpec,
    TimePointInput,
)

SEED = 5
CREATED = "2024-01-01T00:00:00"


@dataclass(frozen=True)
class Rendered:
    """One cycle's PDF on each paper size and the SR written beside it."""

    pdfs: dict[PaperSize, Path]
    sr: ReportValues
    folder: Path
    spec: JobSpec


def _spec(course: CourseManifest, settings: Settings) -> JobSpec:
    out = course.out_dir
    tps = course.time_points

    def rel(path: Path) -> str:
        return str(Path(path).relative_to(out))

    return JobSpec(
        job_id=0, kind=JobKind.CYCLE, version=1, created_at=CREATED, data_dir=str(out),
        settings=settings,
        cycle=CycleJobInput(
            1, tps[0].time_point.injection_datetime.isoformat(), True,
            tuple(TimePointInput(0, tp.time_point.elapsed_h, tuple(map(rel, tp.spect_files)),
                                 tuple(map(rel, tp.ct_files))) for tp in tps),
            rel(tps[0].rtstruct_file)))


def _true_registrations(course: CourseManifest, spec: JobSpec) -> ReportImages:
    """The reference CT and the later CTs with the phantom's true poses."""
    inputs = read_cycle(spec).inputs
    ordered = inputs.ordered()
    points = sorted((tp.time_point for tp in course.time_points), key=lambda tp: tp.elapsed_h)
    return ReportImages(ordered[0].ct, tuple(
        RegisteredCt(tp.elapsed_h, tp.ct,
                     RigidRegistration.known(relative_affine(points[0].transform, truth.transform)))
        for tp, truth in zip(ordered[1:], points[1:], strict=True)
    ))


POPPLER = ("pdftotext", "pdftoppm", "pdffonts")
pytestmark = pytest.mark.peer  # poppler-utils: an error rather than a skip under CI


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    for tool in POPPLER:  # skip (or, under CI, fail) before computing anything
        require_tool(tool)
    out = tmp_path_factory.mktemp("demo")
    course = write_course(out, CourseWriteSpec(cycles=(1,)), SEED)
    settings = Settings()
    settings = dataclasses.replace(
        settings, reports=dataclasses.replace(
            settings.reports, paper_size="Letter", radiopharmaceutical_dose_sr=True))
    spec = _spec(course, settings)
    folder = out / run_job(spec).result_dir
    letter = out / "letter.pdf"
    letter.write_bytes(extract_pdf(pydicom.dcmread(folder / "DOC.dcm")))
    stored = load_stored_result(folder)
    identity = ResultIdentity(ResultKind.CYCLE, 1, datetime.fromisoformat(CREATED),
                              cycle_number=1)
    a4 = out / "a4.pdf"
    a4.write_bytes(render_cycle_pdf(
        stored.result, stored.source, identity, masks=dvh_masks(stored.result, ()),
        images=_true_registrations(course, spec), paper=PaperSize.A4,
    ))
    sr = read_sr_report(pydicom.dcmread(folder / "SR.dcm"))
    return Rendered({PaperSize.LETTER: letter, PaperSize.A4: a4}, sr, folder, spec)


@dataclass(frozen=True)
class RenderedCourse:
    """The course PDF (US Letter) and SR the node writes from the cycle of :func:`rendered`."""

    pdf: Path
    sr: ReportValues


@pytest.fixture(scope="module")
def rendered_course(rendered: Rendered) -> RenderedCourse:
    cycle = rendered.spec
    spec = dataclasses.replace(
        cycle, job_id=1, kind=JobKind.COURSE, cycle=None,
        course=CourseJobInput((cycle.result_folder,)))
    folder = spec.result_dir
    assert run_job(spec).result_dir == spec.result_folder
    pdf = folder.parent / "course.pdf"
    pdf.write_bytes(extract_pdf(pydicom.dcmread(folder / "DOC.dcm")))
    return RenderedCourse(pdf, read_sr_report(pydicom.dcmread(folder / "SR.dcm")))


@dataclass(frozen=True)
class Word:
    text: str
    x0: float
    y0: float
    x1: float
    y1: float


@dataclass(frozen=True)
class PageText:
    width: float
    height: float
    words: tuple[Word, ...]

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


def _pages(pdf: Path) -> list[PageText]:
    """Every page's size and words with their boxes (``pdftotext -bbox``, points)."""
    run = subprocess.run([require_tool("pdftotext"), "-bbox", str(pdf), "-"], check=True,
                         capture_output=True, text=True, timeout=60)
    pages = []
    for attrs, body in re.findall(r"<page ([^>]*)>(.*?)</page>", run.stdout, re.DOTALL):
        size = dict(re.findall(r'(\w+)="([\d.]+)"', attrs))
        words = tuple(
            Word(html.unescape(text), *(float(v) for v in box))
            for *box, text in re.findall(
                r'<word xMin="([\d.-]+)" yMin="([\d.-]+)" xMax="([\d.-]+)" yMax="([\d.-]+)">'
                r"(.*?)</word>", body)
        )
        pages.append(PageText(float(size["width"]), float(size["height"]), words))
    return pages


def _pixels(pdf: Path, page: int, dpi: int = 50) -> np.ndarray:
    """Page ``page`` drawn by ``pdftoppm`` as an RGB array (rows from the top)."""
    run = subprocess.run(
        [require_tool("pdftoppm"), "-r", str(dpi), "-f", str(page), "-l", str(page), str(pdf)],
        check=True, capture_output=True, timeout=60,
    )
    header = re.match(rb"P6\s+(\d+)\s+(\d+)\s+255\s", run.stdout)
    assert header is not None
    width, height = int(header.group(1)), int(header.group(2))
    data = np.frombuffer(run.stdout[header.end():], dtype=np.uint8)
    return data[: width * height * 3].reshape(height, width, 3)


def _dose_coloured(rgb: np.ndarray) -> np.ndarray:
    """Pixels coloured by the dose wash: saturated, and neither the yellow orientation
    letters nor the cyan organ contours."""
    r, g, b = (rgb[..., n].astype(int) for n in range(3))
    saturated = rgb.max(axis=-1).astype(int) - rgb.min(axis=-1) > 60
    letters = (r > 200) & (g > 200) & (b < 60)
    contours = (r < 60) & (g > 190) & (b > 200)
    return np.asarray(saturated & ~letters & ~contours)


@pytest.mark.parametrize("paper", list(PaperSize), ids=lambda p: p.value)
def test_every_word_of_every_page_lies_inside_the_page(rendered: Rendered,
                                                      paper: PaperSize) -> None:
    pages = _pages(rendered.pdfs[paper])
    width_pt, height_pt = (72 * v for v in paper.inches)
    assert len(pages) >= 6
    for number, page in enumerate(pages, start=1):
        assert (page.width, page.height) == pytest.approx((width_pt, height_pt), abs=0.5)
        outside = [w.text for w in page.words
                   if w.x0 < 0 or w.y0 < 0 or w.x1 > page.width or w.y1 > page.height]
        assert outside == [], f"page {number}"


@pytest.mark.parametrize("paper", list(PaperSize), ids=lambda p: p.value)
def test_page_one_prints_the_srs_mean_doses_and_the_kidney_and_marrow_shares(
    rendered: Rendered, paper: PaperSize
) -> None:
    page_one = _pages(rendered.pdfs[paper])[0].text
    groups = [g for g in rendered.sr.groups if g.time_point == "cycle 1"]
    assert len(groups) == 10
    limits = CourseLimits()
    for group in groups:
        mean, u = group.values["mean_gy"], group.uncertainties["mean_gy"]
        assert f"{plain_number(mean)} ± {plain_number(u, 2)}" in page_one, group.tracking_identifier
    for name, limit in (("Kidney_L", limits.kidney_limit_gy), ("Kidney_R", limits.kidney_limit_gy),
                        ("BoneMarrow_L2-L4", limits.marrow_limit_gy)):
        share = plain_number(100 * rendered.sr.group(name, "cycle 1").values["mean_gy"] / limit)
        assert f"{share} % of the {plain_number(limit)} Gy course limit" in page_one, name
    assert "administered 7400 MBq Lu-177 DOTATATE" in page_one
    assert "Checked by:" in page_one


@pytest.mark.parametrize("paper", list(PaperSize), ids=lambda p: p.value)
def test_the_dose_images_are_drawn_on_pages_one_and_two(rendered: Rendered,
                                                        paper: PaperSize) -> None:
    """Page 1 holds the dose thumbnail in its lower right quarter; page 2 the slices
    through the kidneys (top third) and the hottest lesion (middle third)."""
    one = _dose_coloured(_pixels(rendered.pdfs[paper], 1))
    height, width = one.shape
    assert one[height // 2 :, width // 2 :].sum() > 100
    assert one[: height // 2].sum() < 0.01 * one.sum() + 5  # the table has no colour
    two = _dose_coloured(_pixels(rendered.pdfs[paper], 2))
    height = two.shape[0]
    assert two[: height // 3].sum() > 300 and two[height // 3 : 2 * height // 3].sum() > 300
    assert "axial" in _pages(rendered.pdfs[paper])[1].text


@pytest.mark.parametrize("paper", list(PaperSize), ids=lambda p: p.value)
def test_every_font_is_embedded(rendered: Rendered, paper: PaperSize) -> None:
    run = subprocess.run([require_tool("pdffonts"), str(rendered.pdfs[paper])], check=True,
                         capture_output=True, text=True, timeout=60)
    rows = run.stdout.splitlines()[2:]
    assert rows, run.stdout
    for row in rows:
        emb, _sub, uni = row.split()[-5:-2]
        assert (emb, uni) == ("yes", "yes"), row
        assert "CID TrueType" in row, row


def test_the_pdf_stays_small(rendered: Rendered) -> None:
    for path in rendered.pdfs.values():
        assert path.stat().st_size < 1_500_000


def test_the_pipeline_draws_a_checkerboard_per_later_time_point(rendered: Rendered) -> None:
    """The node's PDF: axial and coronal checkerboards for each of the 3 later CTs, moved
    by the registrations the pipeline found, below the registration table."""
    pages = _pages(rendered.pdfs[PaperSize.LETTER])
    registration = [p for p in pages if "Registration" in p.text and "Checkerboards:" in p.text]
    assert len(registration) == 1
    text = registration[0].text
    assert text.count(" h moved") == 6  # each image's title: "axial: reference | 24 h moved"
    assert text.count("axial: reference |") == 3 and text.count("coronal: reference |") == 3


def test_the_node_writes_the_dose_registry_sr_beside_the_dose_report_when_asked(
    rendered: Rendered,
) -> None:
    """``[reports] radiopharmaceutical_dose_sr``: RRDSR.dcm next to SR.dcm, same organ doses."""
    report = pydicom.dcmread(rendered.folder / "SR.dcm")
    registry = pydicom.dcmread(rendered.folder / "RRDSR.dcm")
    assert report.SOPClassUID == COMPREHENSIVE_3D_SR_STORAGE
    assert registry.SOPClassUID == RRD_SR_STORAGE
    entries = organ_entries(only(registry, ADMINISTRATION))
    result = load_stored_result(rendered.folder).result
    organs = [v for v in result.vois if v.kind is not VoiKind.LESION and not v.excluded]
    assert len(entries) == len(organs) > 0
    assert sorted(e.dose_mgy for e in entries) == pytest.approx(
        sorted(1000.0 * rendered.sr.group(v.name, "cycle 1").values["mean_gy"] for v in organs),
        rel=1e-9)


def test_every_word_of_the_course_report_lies_inside_the_page(
    rendered_course: RenderedCourse,
) -> None:
    pages = _pages(rendered_course.pdf)
    width_pt, height_pt = (72 * v for v in PaperSize.LETTER.inches)
    assert len(pages) >= 4  # summary, dose per cycle, projection, lesions and BED, settings
    for number, page in enumerate(pages, start=1):
        assert (page.width, page.height) == pytest.approx((width_pt, height_pt), abs=0.5)
        outside = [w.text for w in page.words
                   if w.x0 < 0 or w.y0 < 0 or w.x1 > page.width or w.y1 > page.height]
        assert outside == [], f"page {number}"


def test_course_page_one_prints_the_srs_totals(rendered_course: RenderedCourse) -> None:
    page_one = _pages(rendered_course.pdf)[0].text
    groups = [g for g in rendered_course.sr.groups
              if g.time_point == "course" and "total_gy" in g.values]
    assert len(groups) == 10
    for group in groups:
        total, u = group.values["total_gy"], group.uncertainties["total_gy"]
        assert f"{plain_number(total)} ± {plain_number(u, 2)}" in page_one, (
            group.tracking_identifier)
    assert "kidney BED" in page_one


def test_every_font_of_the_course_report_is_embedded(rendered_course: RenderedCourse) -> None:
    run = subprocess.run([require_tool("pdffonts"), str(rendered_course.pdf)], check=True,
                         capture_output=True, text=True, timeout=60)
    rows = run.stdout.splitlines()[2:]
    assert rows and all(row.split()[-5] == "yes" for row in rows), run.stdout
