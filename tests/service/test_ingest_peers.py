"""A whole synthetic course sent by real peers is stored completely and grouped right.

Senders: dcmtk ``storescu``, a pynetdicom SCU and Orthanc (``/modalities/…/store``);
``echoscu`` for C-ECHO. These tests need dcmtk and Orthanc; they fail under CI
when the tools are missing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.peers import require_tool, run_orthanc
from tests.service.nodes import make_settings, running_node, send
from theranode.service.cli.main import main
from theranode.service.cli.status_view import cycles_of

pytestmark = pytest.mark.peer


def course_files(manifest) -> list[Path]:
    files: list[Path] = []
    for tp in manifest.time_points:
        files += [*tp.ct_files, *tp.spect_files]
        if tp.rtstruct_file is not None:
            files.append(tp.rtstruct_file)
    return files


def assert_course_grouped(node, manifest) -> None:
    """Every file indexed, and cycles/time points as the truth says."""
    assert node.regrouper.wait_idle(60)
    files = course_files(manifest)
    counts = node.index.counts()
    assert counts["instances"] == len(files)
    assert counts["quarantine"] == 0 and counts["conflicts"] == 0
    (key,) = node.index.patient_keys()
    assert node.index.patient_id(key) == manifest.patient_id
    cycles, loose = cycles_of(node.index.grouping_of_patient(key))
    assert loose == []
    expected: dict[int, set[float]] = {}
    for tp in manifest.time_points:
        nominal = min((4.0, 24.0, 72.0, 192.0), key=lambda h: abs(h - tp.time_point.elapsed_h))
        expected.setdefault(tp.time_point.cycle_number, set()).add(nominal)
    assert {c.cycle: set(c.time_points) for c in cycles} == expected
    for cycle in cycles:
        assert all(c.course == 1 for c in cycles)
        for tp in cycle.time_points.values():
            assert len(tp.spect) == 1 and len(tp.ct) == 1
        assert sum(len(tp.structures) for tp in cycle.time_points.values()) == 1
        truth = manifest.truth["cycles"][cycle.cycle - 1]["injection_datetime"]
        assert cycle.injection.startswith(truth[:16])


def status_text(settings, capsys, config_path: Path) -> str:
    config_path.write_text(
        f'[node]\ndata_dir = "{settings.node.data_dir}"\n', encoding="utf-8")
    capsys.readouterr()
    assert main(["status", "--config", str(config_path)]) == 0
    return capsys.readouterr().out


def test_echoscu_is_answered(tmp_path):
    echoscu = require_tool("echoscu")
    with running_node(make_settings(tmp_path / "data")) as node:
        done = subprocess.run([echoscu, "-aec", "THERANODE", "127.0.0.1", str(node.port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_course_sent_by_storescu_is_stored_and_grouped(tmp_path, phantom_course, capsys):
    storescu = require_tool("storescu")
    settings = make_settings(tmp_path / "data")
    with running_node(settings) as node:
        done = subprocess.run(
            [storescu, "-aet", "MODALITY", "-aec", "THERANODE", "+sd", "+r", "+sp", "*.dcm",
             "127.0.0.1", str(node.port), str(phantom_course.out_dir)],
            capture_output=True, text=True, timeout=600,
            env=dict(os.environ, TCP_NODELAY="1"),
        )
        assert done.returncode == 0, done.stderr
        assert_course_grouped(node, phantom_course)
    out = status_text(settings, capsys, tmp_path / "status.toml")
    assert f"Patient {phantom_course.patient_id}" in out
    assert out.count("missing: nothing") == 4, out
    assert "Course 1 cycle 4" in out


def test_course_sent_by_pynetdicom_is_stored_and_grouped(tmp_path, phantom_course):
    with running_node(make_settings(tmp_path / "data")) as node:
        statuses = send(node.port, course_files(phantom_course))
        assert set(statuses) == {0}
        assert_course_grouped(node, phantom_course)


def test_course_sent_by_orthanc_is_stored_and_grouped(tmp_path, phantom_course):
    settings = make_settings(tmp_path / "data")
    with running_node(settings) as node, run_orthanc(
        tmp_path / "orthanc",
        modalities={"theranode": {"AET": "THERANODE", "Host": "127.0.0.1", "Port": node.port}},
    ) as orthanc:
        for path in course_files(phantom_course):
            orthanc.upload(path)
        studies = orthanc.get("/studies")
        job = orthanc.post("/modalities/theranode/store",
                           {"Resources": studies, "Synchronous": True})
        assert job is not None
        assert_course_grouped(node, phantom_course)


def test_storescu_with_unknown_calling_ae_is_refused(tmp_path, phantom_course):
    storescu = require_tool("storescu")
    settings = make_settings(tmp_path / "data",
                             security={"allowed_calling_ae_titles": ["MODALITY"]})
    one_file = phantom_course.time_points[0].spect_files[0]
    with running_node(settings) as node:
        done = subprocess.run(
            [storescu, "-aet", "INTRUDER", "-aec", "THERANODE", "127.0.0.1", str(node.port),
             str(one_file)], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        assert "Association Rejected" in done.stderr + done.stdout
        assert node.index.counts()["instances"] == 0
