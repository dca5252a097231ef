"""End to end with a real PACS: Orthanc routes a course to theranode and gets the results back."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.peers import OrthancPeer, require_tool, run_orthanc
from tests.service.nodes import make_settings, running_node
from theranode.dicomio.sr import read_sr_report
from theranode.dicomio.synthetic_course import CourseWriteSpec, write_course

ORGANS = ("Liver", "Kidney_L", "Kidney_R", "Spleen")
# Orthanc 1.10's Lua SendToModality() takes an instance; a study goes through the REST API.
#: The routing script shipped for PACS administrators, tested here as they would use it.
ROUTE = (Path(__file__).parents[2] / "config" / "orthanc-route-to-theranode.lua").read_text()


def result_series(orthanc: OrthancPeer) -> dict[str, dict[str, Any]]:
    """Series Description → Orthanc series, for theranode's results."""
    found = {}
    for series_id in orthanc.get("/series"):
        series = orthanc.get(f"/series/{series_id}")
        description = series["MainDicomTags"].get("SeriesDescription", "")
        if description.startswith("theranode"):
            found[description] = series
    return found


@pytest.mark.peer
def test_orthanc_routes_a_course_and_receives_rt_dose_sr_and_pdf(tmp_path: Path) -> None:
    require_tool("orthanc")
    course = write_course(tmp_path / "course", CourseWriteSpec(cycles=(1, 2)), seed=8)
    node_settings = make_settings(tmp_path / "node")
    modalities = {"theranode": {"AET": "THERANODE", "Host": "127.0.0.1",
                                "Port": node_settings.node.port}}
    with run_orthanc(tmp_path / "orthanc", modalities=modalities, lua_script=ROUTE) as orthanc:
        destination = {"name": "orthanc", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}
        settings = make_settings(tmp_path / "node", node={"port": node_settings.node.port},
                                 protocol={"quiet_period_s": 3.0}, jobs={"poll_interval_s": 1.0},
                                 destinations=[destination])
        with running_node(settings) as node:
            for path in sorted(course.out_dir.rglob("*.dcm")):
                orthanc.upload(path)
            wanted = {f"theranode Lu-177 AD report cycle {n} v1" for n in (1, 2)}
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline:
                series = result_series(orthanc)
                if wanted <= set(series) and any("cumulative AD report course" in d
                                                 for d in series):
                    break
                time.sleep(2)
            else:
                pytest.fail(f"results missing in Orthanc: {sorted(result_series(orthanc))}\n"
                            f"{[ (j.id, j.kind, j.state, j.message) for j in node.jobs.all()]}")
            series = result_series(orthanc)
            modalities_found = {s["MainDicomTags"]["Modality"] for s in series.values()}
            assert modalities_found == {"RTDOSE", "SR", "DOC"}
            reports = {n: sr_of(orthanc, series[f"theranode Lu-177 AD report cycle {n} v1"])
                       for n in (1, 2)}
            # filed in the patient and study of each cycle's reference CT
            first_ct = course.time_points[0]
            assert reports[1].StudyInstanceUID == first_ct.study_instance_uid
            assert reports[1].PatientID == course.patient_id
            computed = {j.label: j for j in node.jobs.all() if j.kind == "cycle"}
            assert "Lua: Error" not in orthanc.log(), "the routing script failed in Orthanc"
    truth = {c["number"]: c["vois"] for c in course.truth["cycles"]}
    for number, ds in reports.items():
        values = read_sr_report(ds)
        # the SR carries exactly what the engine computed …
        engine = dict(part.split(": ")[0:2] for part in computed[f"1.{number}"].message.split("; "))
        for name in (*ORGANS, "Lesion_01", "Lesion_04"):
            found = values.group(name, f"cycle {number}").values["mean_gy"]
            assert f"{found:.3f} Gy" == engine[name].split(" (")[0], name
        # … and matches the analytic truth within the partial volume of 8 mm SPECT voxels
        for name in ORGANS:
            found = values.group(name, f"cycle {number}").values["mean_gy"]
            assert found == pytest.approx(truth[number][name]["mean_dose_gy"], rel=0.12), name


def sr_of(orthanc: OrthancPeer, series: dict[str, Any]) -> pydicom.Dataset:
    instance = series["Instances"][0]
    return pydicom.dcmread(BytesIO(orthanc.get_bytes(f"/instances/{instance}/file")))
