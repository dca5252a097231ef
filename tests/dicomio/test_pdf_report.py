"""PDF dose report: content, determinism, encapsulation and validity."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.table import Table
from matplotlib.text import Text

from tests.dicomio.result_records import (
    LESION_BOX,
    LIVER_BOX,
    box_mask,
    course_result,
    cycle_result,
    identity,
    source_for_cycle,
)
from tests.part10_bytes import read_back
from tests.peers import require_tool
from theranode.dicomio.course_report import (
    course_report_pages,
    render_course_pdf,
    write_course_pdf,
)
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import (
    PaperSize,
    cycle_report_pages,
    extract_pdf,
    flatten_settings,
    model_curve,
    person_name_text,
    plain_number,
    render_cycle_pdf,
    summary_page,
    write_cycle_pdf,
)
from theranode.dicomio.uids import ResultKind
from theranode.dosimetry.results import (
    DoseMethod,
    DoseUncertainty,
    KineticFit,
    KineticModel,
    UncertaintyComponent,
)

METHODS = ["paper", "paper-contrast", "gtm"]


def _page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b", pdf))


@pytest.fixture(scope="module")
def older_pdf() -> bytes:
    """The PDF of a cycle computed before budgets, with the liver and lesion 1 masks."""
    source, _ = source_for_cycle()
    masks = {"liver": box_mask(LIVER_BOX), "lesion 1": box_mask(LESION_BOX)}
    return render_cycle_pdf(cycle_result(1), source, identity(), masks=masks)


def test_cycle_report_has_every_section_and_is_reproducible(older_pdf: bytes) -> None:
    source, _ = source_for_cycle()
    masks = {"liver": box_mask(LIVER_BOX), "lesion 1": box_mask(LESION_BOX)}
    pdf = older_pdf
    assert pdf.startswith(b"%PDF")
    # summary, dose images, curves (2 VOIs with curves: one page), DVH, registration, settings
    assert _page_count(pdf) == 6
    assert b"CreationDate" not in pdf
    assert render_cycle_pdf(cycle_result(1), source, identity(), masks=masks) == pdf


def test_course_report_renders_and_encapsulates() -> None:
    source, _ = source_for_cycle()
    ds = read_back(
        encode(write_course_pdf(course_result(), source, identity(ResultKind.COURSE)))
    )
    pdf = extract_pdf(ds)
    assert pdf == render_course_pdf(
        course_result(), source, identity(ResultKind.COURSE)
    )
    assert ds.SeriesDescription == "theranode Lu-177 cumulative AD report PDF course v1"
    assert ds.DocumentTitle == ds.SeriesDescription


def test_encapsulated_pdf_identity_and_references() -> None:
    source, rtss = source_for_cycle()
    ds = read_back(encode(write_cycle_pdf(cycle_result(1), source, identity())))
    assert (ds.PatientID, ds.PatientName, ds.StudyInstanceUID) == (
        source.patient_id,
        source.patient_name,
        source.study_instance_uid,
    )
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.EncapsulatedDocumentLength == len(extract_pdf(ds))
    assert len(ds.EncapsulatedDocument) % 2 == 0
    referenced = {item.ReferencedSOPInstanceUID for item in ds.SourceInstanceSequence}
    assert rtss.SOPInstanceUID in referenced
    assert ds.Modality == "DOC" and ds.BurnedInAnnotation == "YES"


def test_monoexponential_curve_integrates_to_the_fit_integral() -> None:
    lam, d0 = math.log(2) / 70.0, 0.02
    fit = KineticFit(
        KineticModel.MONOEXPONENTIAL,
        {"initial_value": d0, "lambda_per_h": lam},
        d0 / lam,
        0.0,
        70.0,
    )
    t = np.linspace(0.0, 5000.0, 200001)
    curve = model_curve(fit, t, [])
    assert curve is not None
    assert np.trapezoid(curve, t) == pytest.approx(d0 / lam, rel=1e-4)
    biexp = KineticFit(
        KineticModel.BIEXPONENTIAL_UPTAKE,
        {"amplitude": 1.0, "lambda_washout_per_h": 0.01, "lambda_uptake_per_h": 0.5},
        1 / 0.01 - 1 / 0.5,
        0.0,
        math.log(2) / 0.01,
    )
    values = model_curve(biexp, t, [])
    assert values is not None and values[0] == 0.0
    assert np.trapezoid(values, t) == pytest.approx(biexp.integral, rel=1e-3)


def test_helpers() -> None:
    assert person_name_text("Doe^Jane^Q") == "Doe, Jane Q"
    assert person_name_text("") == "–"
    assert flatten_settings({"b": 1, "a": {"y": "x", "x": 2.5}}) == [
        "a.x = 2.5",
        "a.y = 'x'",
        "b = 1",
    ]


@pytest.mark.peer
@pytest.mark.parametrize("kind", ["cycle", "course"])
def test_dciodvfy_finds_nothing(tmp_path: Path, kind: str) -> None:
    source, _ = source_for_cycle()
    if kind == "cycle":
        ds = write_cycle_pdf(cycle_result(1), source, identity())
    else:
        ds = write_course_pdf(course_result(), source, identity(ResultKind.COURSE))
    path = tmp_path / "report.dcm"
    path.write_bytes(encode(ds))
    run = subprocess.run(
        [require_tool("dciodvfy"), str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = run.stdout + run.stderr
    assert "Error" not in report and "Warning" not in report, report


def _pdf_objects(pdf: bytes) -> dict[int, bytes]:
    return {int(n): body for n, body in re.findall(rb"(\d+) 0 obj(.*?)endobj", pdf, re.DOTALL)}


def _stream_of(body: bytes) -> bytes | None:
    found = re.search(rb"stream\r?\n(.*?)\r?\nendstream", body, re.DOTALL)
    if found is None:
        return None
    try:
        return zlib.decompress(found.group(1))
    except zlib.error:
        return found.group(1)


def _to_unicode(cmap: bytes) -> dict[int, str]:
    """The code → text map of a ToUnicode CMap (PDF 32000-1:2008 9.10.3)."""
    def text(hex_digits: bytes) -> str:
        return bytes.fromhex(hex_digits.decode()).decode("utf-16-be")

    codes: dict[int, str] = {}
    for block in re.findall(rb"beginbfchar(.*?)endbfchar", cmap, re.DOTALL):
        for src, dst in re.findall(rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>", block):
            codes[int(src, 16)] = text(dst)
    for block in re.findall(rb"beginbfrange(.*?)endbfrange", cmap, re.DOTALL):
        for lo, hi, dst in re.findall(
            rb"<([0-9a-fA-F]+)>\s*<([0-9a-fA-F]+)>\s*(\[[^\]]*\]|<[0-9a-fA-F]+>)", block
        ):
            first, last = int(lo, 16), int(hi, 16)
            if dst.startswith(b"["):
                for code, item in zip(range(first, last + 1), re.findall(rb"<([0-9a-fA-F]+)>",
                                                                          dst), strict=False):
                    codes[code] = text(item)
            else:
                start = int(dst[1:-1], 16)
                for offset in range(last - first + 1):
                    codes[first + offset] = chr(start + offset)
    return codes


def _pdf_fonts(objects: dict[int, bytes]) -> dict[bytes, tuple[int, dict[int, str]]]:
    """Per font resource name (``F1``): bytes per code and its ToUnicode map."""
    fonts: dict[bytes, tuple[int, dict[int, str]]] = {}
    for body in objects.values():
        entries = re.findall(rb"/(F\d+) (\d+) 0 R", body)
        if not entries or b"/Type" in body:
            continue
        for name, number in entries:
            font = objects.get(int(number), b"")
            width = 2 if b"/Type0" in font else 1
            ref = re.search(rb"/ToUnicode (\d+) 0 R", font)
            stream = _stream_of(objects.get(int(ref.group(1)), b"")) if ref else None
            fonts[name] = (width, _to_unicode(stream) if stream else {})
    return fonts


def _pdf_strings(pdf: bytes) -> list[str]:
    """The text of each BT … ET block of the PDF's content streams, decoded.

    matplotlib writes text as literal strings in ``TJ`` arrays, kerning
    numbers between them: one byte per character for Type 3 fonts, two
    (glyph codes) for the embedded TrueType (Type 42) fonts; each font's
    ToUnicode map gives the characters. The strings of one block are joined.
    PDF 32000-1:2008 7.3.4.2 (literal strings), 9.4 (text objects), 9.10.3
    (ToUnicode).
    """
    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}

    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8)])
        return escapes.get(code, code)

    objects = _pdf_objects(pdf)
    fonts = _pdf_fonts(objects)
    blocks = []
    for body in objects.values():
        content = _stream_of(body) if b"stream" in body else None
        if not content or b"BT" not in content:
            continue
        for block in re.findall(rb"\bBT\b(.*?)\bET\b", content, re.DOTALL):
            width, codes = 1, {}
            text = []
            for font, string in re.findall(
                rb"/(F\d+)\s+[\d.]+\s+Tf|\(((?:\\.|[^\\)])*)\)", block, re.DOTALL
            ):
                if font:
                    width, codes = fonts.get(font, (1, {}))
                    continue
                raw = re.sub(rb"\\([0-7]{1,3}|.)", unescape, string, flags=re.DOTALL)
                for i in range(0, len(raw) - width + 1, width):
                    code = int.from_bytes(raw[i : i + width], "big")
                    text.append(codes.get(code, chr(code) if width == 1 else ""))
            blocks.append("".join(text))
    return blocks


MATH_ROI = "$\\foo$ liver"
#: PN Family^Given (a backslash would split the value, PS3.5 6.2); as mathtext "$x_{$" fails
MATH_NAME = "Doe$x_{$^Jane"


def test_dollar_signs_in_roi_and_patient_names_are_drawn_as_written() -> None:
    """mathtext is not parsed in input text: the job does not fail (issue 12 item 9)."""
    source, _ = source_for_cycle()
    source = dataclasses.replace(source, patient_name=MATH_NAME)
    result = cycle_result(1)
    result = dataclasses.replace(
        result, vois=(dataclasses.replace(result.vois[0], name=MATH_ROI), *result.vois[1:])
    )
    masks = {MATH_ROI: box_mask(LIVER_BOX), "lesion 1": box_mask(LESION_BOX)}
    ds = read_back(encode(write_cycle_pdf(result, source, identity(), masks=masks)))
    text = _pdf_strings(extract_pdf(ds))
    assert any(line.startswith("Patient: Doe$x_{$, Jane    ID: TN-0001") for line in text)
    assert MATH_ROI in text  # the dose table's cell and the DVH legend
    assert f"{MATH_ROI} (organ)" in text  # the curve's title
    course = dataclasses.replace(
        course_result(),
        cumulative=tuple(
            dataclasses.replace(d, name=MATH_ROI) if d.name == "liver" else d
            for d in course_result().cumulative
        ),
    )
    pdf = render_course_pdf(course, source, identity(ResultKind.COURSE))
    assert MATH_ROI in _pdf_strings(pdf)


# -- uncertainty and partial volume ---------------------------------------------------
def test_plain_number_has_three_significant_figures_and_no_exponent() -> None:
    assert plain_number(1532.25) == "1530"
    assert plain_number(123456.0) == "123000"
    assert plain_number(0.07342) == "0.0734"
    assert plain_number(9.996) == "10.0"
    assert plain_number(52.52) == "52.5"
    assert plain_number(0.0) == "0"
    assert plain_number(4.777, 2) == "4.8"
    assert plain_number(None) == "–" and plain_number(math.nan) == "–"


@given(st.floats(min_value=1e-5, max_value=1e7))
def test_plain_number_never_writes_an_exponent_and_rounds_to_three_figures(value: float) -> None:
    text = plain_number(value)
    assert "e" not in text.lower()
    assert float(text) == pytest.approx(value, rel=5e-3)


def _text(pdf: bytes) -> str:
    """The PDF's text as one line: wrapped lines joined by a single space."""
    return re.sub(r"\s+", " ", " ".join(_pdf_strings(pdf)))


def test_cycle_pdf_states_each_dose_with_its_standard_uncertainty_and_dominant_component() -> None:
    source, _ = source_for_cycle()
    blocks = _pdf_strings(render_cycle_pdf(cycle_result(1, partial_volume="gtm"), source,
                                           identity()))
    # liver 1.0812 Gy, u = 1.0812 · √(5² + 1.2² + 1² + 0.4² + 0.3²) % = 0.0569 Gy
    assert "1.08 ± 0.057" in blocks and "calibration 5.0 %" in blocks
    # lesion 1 31.99 Gy, u = 31.99 · √(5² + 8² + 11² + 2² + 3²) % = 4.78 Gy
    assert "32.0 ± 4.8" in blocks and "volume 11 %" in blocks
    # kidneys 2.731 Gy, u = 2.731 · √(5² + 6² + 4² + 1² + 2²) % = 0.247 Gy
    assert blocks.count("2.73 ± 0.25") == 2 and "partial vol. 6.0 %" in blocks
    assert "1.17" in blocks  # the kidneys' GTM factor
    text = re.sub(r"\s+", " ", " ".join(blocks))
    assert "standard uncertainty (coverage factor k = 1) of the EANM uncertainty budget" in text
    assert "(k = 2) covers about 95 %" in text
    assert "no budget" not in text
    assert "Partial-volume correction: gtm, geometric transfer matrix for every VOI" in text
    assert "10 mm (4, 24, 72 h); 12.5 mm (192 h)" in text
    assert "Excluded: lesion 2 (volume 1.4 mL below the 2 mL minimum)." in text


def _page_text(fig: Figure) -> str:
    """Every text of a page as drawn, wrapped lines joined by a single space."""
    texts = [t.get_text() for t in fig.findobj(Text) if isinstance(t, Text)]
    return re.sub(r"\s+", " ", " ".join(texts))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_is_named_with_its_description(method: str) -> None:
    from theranode.dosimetry.partial_volume import PartialVolumeMethod

    source, _ = source_for_cycle()
    result = cycle_result(1, partial_volume=method)
    text = _page_text(summary_page(result, source, identity()))
    description = PartialVolumeMethod(method).description
    assert f"Partial-volume correction: {method}, {description}." in text
    if method == "paper":
        assert "none needed by this method" in text
    else:
        assert "12.5 mm (192 h)" in text


def test_an_older_cycle_result_prints_the_fit_sd_and_says_so(older_pdf: bytes) -> None:
    blocks = _pdf_strings(older_pdf)
    assert "1.08 ± 0.073" in blocks  # the fit's sd, 0.0734 Gy
    assert "32.0 ± 2.4" in blocks
    assert blocks.count("no budget") == len(cycle_result(1).vois)
    text = re.sub(r"\s+", " ", " ".join(blocks))
    assert "no budget: computed without an uncertainty budget" in text
    assert "Partial-volume correction: paper, recovery coe" in text  # ffi: a ligature


def test_a_trapezoid_fit_without_sd_prints_the_dose_alone() -> None:
    result = cycle_result(1)
    voi = dataclasses.replace(result.vois[3], mean_gy_sd=math.nan)
    result = dataclasses.replace(result, vois=(*result.vois[:3], voi, *result.vois[4:]))
    source, _ = source_for_cycle()
    assert "0.291" in _pdf_strings(render_cycle_pdf(result, source, identity()))


@pytest.mark.parametrize("method", [None, "gtm"])
def test_course_pdf_states_totals_and_lesion_indices_with_their_uncertainty(
    method: str | None,
) -> None:
    source, _ = source_for_cycle()
    course = course_result(partial_volume=method)
    text = _text(render_course_pdf(course, source, identity(ResultKind.COURSE)))
    if method is None:
        assert "57.6 ± 3.3" in text and "2.20 ± 0.11" in text  # the summed fits' sd
        assert "mean 57.6 Gy, min 57.6 Gy, max 57.6 Gy" in text
        assert "Cycle 1: multi-time-point; 7400 MBq; partial volume paper" in text
        return
    # lesion 1: 57.63 Gy · 14.9 % = 8.61 Gy; liver 2.2 Gy · 5.26 % = 0.116 Gy
    assert "57.6 ± 8.6" in text and "2.20 ± 0.12" in text and "volume 11 %" in text
    assert "mean 57.6 ± 8.6 Gy, min 57.6 ± 8.6 Gy, max 57.6 ± 8.6 Gy" in text
    assert "partial volume gtm, FWHM 10 mm (4, 24, 72 h); 12.5 mm (192 h)" in text
    assert "Partial-volume correction: gtm, geometric transfer matrix" in text
    assert "(k = 2) covers about 95 %" in text


def _outside_the_page(fig: Figure) -> list[str]:
    """Texts and table cells of ``fig`` that reach beyond its edges once drawn."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    artists: list[tuple[str, Any]] = [
        (t.get_text(), t)
        for t in fig.findobj(Text)
        if isinstance(t, Text) and t.get_visible() and t.get_text()
    ]
    for table in fig.findobj(Table):
        if isinstance(table, Table):
            artists.extend((c.get_text().get_text(), c) for c in table.get_celld().values())
    outside = []
    for label, artist in artists:
        box = artist.get_window_extent(renderer)
        if box.x0 < 0 or box.y0 < 0 or box.x1 > fig.bbox.width or box.y1 > fig.bbox.height:
            outside.append(label)
    return outside


def _widest_result() -> object:
    """A cycle whose table cells are as wide as theranode writes them."""
    result = cycle_result(3, partial_volume="gtm")
    wide = DoseUncertainty(1234.5, {UncertaintyComponent.SINGLE_TIME_POINT_METHOD: 0.3})
    fit = dataclasses.replace(result.vois[0].fit, model=KineticModel.TRAPEZOID_TAIL)
    vois = tuple(
        dataclasses.replace(
            v, name=f"{'W' * 20}{i:02d}", method=DoseMethod.HANSCHEID, mean_gy=1234.5,
            uncertainty=wide, fit=fit, volume_ml=12345.6, min_gy=1234.5, max_gy=1234.5,
            d98_gy=1234.5, d2_gy=1234.5, time_integrated_activity_mbq_h=123456.7,
            effective_half_life_h=159.5, recovery_coefficient=0.123, partial_volume_factor=2.345,
            excluded=True, exclusion_reason="volume 1.4 mL below the 2 mL minimum",
        )
        for i, v in enumerate(result.vois * 3)  # 18 VOIs: the table continues on page 2
    )
    return dataclasses.replace(result, vois=vois)


@pytest.mark.parametrize("method", [None, "paper", "gtm"])
def test_every_text_stays_inside_the_page(method: str | None) -> None:
    source, _ = source_for_cycle()
    pages = cycle_report_pages(cycle_result(1, partial_volume=method), source, identity())
    pages += course_report_pages(course_result(partial_volume=method), source,
                                 identity(ResultKind.COURSE))
    assert [_outside_the_page(page) for page in pages] == [[] for _ in pages]


@pytest.mark.parametrize("paper", list(PaperSize))
def test_the_widest_table_stays_inside_the_page(paper: PaperSize) -> None:
    source, _ = source_for_cycle()
    pages = cycle_report_pages(
        _widest_result(), source, identity(), paper=paper  # type: ignore[arg-type]
    )
    assert "(continued)" in _page_text(pages[1])
    assert [_outside_the_page(page) for page in pages[:2]] == [[], []]


def test_paper_sizes_are_iso_a4_and_us_letter() -> None:
    assert PaperSize("A4").inches == pytest.approx((210 / 25.4, 297 / 25.4), abs=0.005)
    assert PaperSize("Letter").inches == (8.5, 11.0)
    source, _ = source_for_cycle()
    for paper in PaperSize:
        pages = cycle_report_pages(cycle_result(1), source, identity(), paper=paper)
        assert {tuple(p.get_size_inches()) for p in pages} == {paper.inches}


def test_fonts_are_embedded_truetype_subsets_with_a_text_map(older_pdf: bytes) -> None:
    """matplotlib's Type 42 output: each font a CID TrueType subset (FontFile2) with a
    ToUnicode map, no Type 3 font (PDF 32000-1:2008 9.7, 9.9, 9.10.3)."""
    pdf = older_pdf
    fonts = re.findall(rb"/Subtype /(\w+)", pdf)
    assert b"Type3" not in fonts and b"CIDFontType2" in fonts
    assert pdf.count(b"/FontFile2") == pdf.count(b"/CIDFontType2") > 0
    assert pdf.count(b"/ToUnicode") >= pdf.count(b"/CIDFontType2")



def test_the_summary_names_each_vois_method_and_compares_kidneys_and_marrow_with_the_limits(
) -> None:
    from theranode.dosimetry.course import CourseLimits

    source, _ = source_for_cycle()
    result = cycle_result(1, partial_volume="gtm")
    hanscheid = dataclasses.replace(result.vois[3], method=DoseMethod.HANSCHEID)
    result = dataclasses.replace(result, vois=(*result.vois[:3], hanscheid, *result.vois[4:]))
    limits = CourseLimits(kidney_limit_gy=20.0, marrow_limit_gy=2.5)
    summary = summary_page(result, source, identity(), limits=limits)
    text = _page_text(summary)
    assert (
        "Method per VOI: multi-time-point: liver, kidney_left, kidney_right, lesion 1, "
        "lesion 2; single-time-point Hänscheid 2018: marrow L2-L4" in text
    )
    # kidneys 2.731 Gy of 20 Gy = 13.7 %, marrow 0.291 Gy of 2.5 Gy = 11.6 %
    assert "kidney_left: 2.73 ± 0.25 Gy = 13.7 % of the 20.0 Gy course limit" in text
    assert "kidney_right: 2.73 ± 0.25 Gy = 13.7 % of the 20.0 Gy course limit" in text
    assert "marrow L2-L4: 0.291" in text and "= 11.6 % of the 2.50 Gy course limit" in text
    assert "• kidney_left: 2 voxels of gas clipped" in text
    assert "Checked by:" in text


def test_summary_blocks_start_below_the_table_and_long_warnings_wrap() -> None:
    source, _ = source_for_cycle()
    long = "registration of the 192 h CT did not converge " + "(stopped) " * 40
    result = dataclasses.replace(cycle_result(1), warnings=(long,) * 3)
    for paper in PaperSize:
        summary = summary_page(result, source, identity(), paper=paper)
        assert _outside_the_page(summary) == []
        canvas = FigureCanvasAgg(summary)
        canvas.draw()
        renderer = canvas.get_renderer()
        table = next(t for t in summary.findobj(Table) if isinstance(t, Table))
        table_bottom = table.get_window_extent(renderer).y0
        limits = next(t for t in summary.texts if t.get_text().startswith("Kidneys and marrow"))
        assert limits.get_window_extent(renderer).y1 < table_bottom
        assert sum(t.get_text().startswith("  ") for t in summary.texts) >= 3  # wrapped


def test_registration_table_writes_metric_values_without_exponent() -> None:
    source, _ = source_for_cycle()
    pages = cycle_report_pages(cycle_result(1), source, identity())
    registration = next(p for p in pages if "Registration quality" in _page_text(p))
    cells = [c.get_text().get_text() for t in registration.findobj(Table) if isinstance(t, Table)
             for c in t.get_celld().values()]
    assert "1520" in cells and "210.5" in cells
    assert not any("e+" in c or "e-" in c for c in cells)
