"""PDF dose report: content, determinism, encapsulation and validity."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

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
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import (
    extract_pdf,
    flatten_settings,
    model_curve,
    person_name_text,
    render_course_pdf,
    render_cycle_pdf,
    write_course_pdf,
    write_cycle_pdf,
)
from theranode.dicomio.uids import ResultKind
from theranode.dosimetry.results import KineticFit, KineticModel


def _page_count(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page\b", pdf))


def test_cycle_report_has_every_section_and_is_reproducible() -> None:
    source, _ = source_for_cycle()
    masks = {"liver": box_mask(LIVER_BOX), "lesion 1": box_mask(LESION_BOX)}
    pdf = render_cycle_pdf(cycle_result(1), source, identity(), masks=masks)
    assert pdf.startswith(b"%PDF")
    # identification + table, curves (2 VOIs with curves: one page), DVH, registration, settings
    assert _page_count(pdf) == 5
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


def _pdf_strings(pdf: bytes) -> list[str]:
    """The text of each BT … ET block of the PDF's content streams, decoded.

    matplotlib writes text as literal strings in ``TJ`` arrays (Type 3 fonts,
    Latin-1 codes), kerning numbers between them; the strings of one block
    are joined. PDF 32000-1:2008 7.3.4.2 (literal strings), 9.4 (text objects).
    """
    escapes = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}

    def unescape(match: re.Match[bytes]) -> bytes:
        code = match.group(1)
        if code[:1].isdigit():
            return bytes([int(code, 8)])
        return escapes.get(code, code)

    blocks = []
    for stream in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            content = zlib.decompress(stream)
        except zlib.error:
            continue
        for block in re.findall(rb"\bBT\b(.*?)\bET\b", content, re.S):
            parts = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block, re.S)
            text = b"".join(re.sub(rb"\\([0-7]{1,3}|.)", unescape, p, flags=re.S) for p in parts)
            blocks.append(text.decode("latin-1"))
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
