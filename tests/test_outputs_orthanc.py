"""Orthanc, a real PACS, accepts theranode's three result objects and files them with the inputs."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from tests.dicomio.result_records import (
    SHAPE,
    course_result,
    cycle_result,
    identity,
    reference_ct,
    source_for_cycle,
)
from tests.peers import OrthancPeer, require_tool
from theranode.dicomio.course_report import write_course_pdf
from theranode.dicomio.part10 import encode, file_meta
from theranode.dicomio.pdf_report import write_cycle_pdf
from theranode.dicomio.rtdose import course_rt_dose, cycle_rt_dose
from theranode.dicomio.sr import write_course_sr, write_cycle_sr
from theranode.dicomio.uids import ResultKind


def _upload(orthanc: OrthancPeer, ds: Dataset) -> dict[str, Any]:
    if "file_meta" not in ds.__dict__ or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    answer: dict[str, Any] = orthanc.post("/instances", encode(ds))
    return answer


@pytest.mark.peer
def test_orthanc_files_results_in_the_reference_ct_study(orthanc: OrthancPeer) -> None:
    require_tool("orthanc")
    source, rtss = source_for_cycle()
    inputs = [_upload(orthanc, ds) for ds in [*reference_ct(SHAPE[0]), rtss]]
    ct_study, ct_patient = inputs[0]["ParentStudy"], inputs[0]["ParentPatient"]
    cycle, course = cycle_result(1), course_result()
    course_id = identity(ResultKind.COURSE)
    objects = {
        "RTDOSE": cycle_rt_dose(cycle, source, identity()),
        "SR": write_cycle_sr(cycle, source, identity()),
        "DOC": write_cycle_pdf(cycle, source, identity()),
        "RTDOSE course": course_rt_dose(course, source, course_id),
        "SR course": write_course_sr(course, source, course_id),
        "DOC course": write_course_pdf(course, source, course_id),
    }
    stored = {}
    for name, ds in objects.items():
        answer = _upload(orthanc, ds)
        assert answer["Status"] == "Success", (name, answer)
        assert (answer["ParentStudy"], answer["ParentPatient"]) == (
            ct_study,
            ct_patient,
        ), name
        stored[name] = answer
    tags = orthanc.get(f"/instances/{stored['SR']['ID']}/simplified-tags")
    assert (tags["PatientID"], tags["StudyInstanceUID"]) == (
        source.patient_id,
        source.study_instance_uid,
    )
    study = orthanc.get(f"/studies/{ct_study}")
    assert len(study["Series"]) == 2 + len(
        objects
    )  # CT, RTSTRUCT and six result series
    modalities = {
        orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"]
        for s in study["Series"]
    }
    assert modalities == {"CT", "RTSTRUCT", "RTDOSE", "SR", "DOC"}
    # Sending the same result again is recognised as the same instance.
    again = _upload(orthanc, cycle_rt_dose(cycle, source, identity()))
    assert again["Status"] == "AlreadyStored" and again["ID"] == stored["RTDOSE"]["ID"]
