"""PDF dose report: content, determinism, encapsulation and validity."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dicomio.part10 import decode, encode
from dicomio.pdf_report import (
    extract_pdf,
    flatten_settings,
    model_curve,
    person_name_text,
    render_course_pdf,
    render_cycle_pdf,
    write_course_pdf,
    write_cycle_pdf,
)
from dicomio.uids import ResultKind
from dosimetry.results import KineticFit, KineticModel
from tests.dicomio.result_records import (
    LESION_BOX,
    LIVER_BOX,
    box_mask,
    course_result,
    cycle_result,
    identity,
    source_for_cycle,
)
from tests.peers import require_tool


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
    ds = decode(
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
    ds = decode(encode(write_cycle_pdf(cycle_result(1), source, identity())))
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
