"""The node computes complete cycles by itself: incomplete cycles, late scans, and a kill
mid-job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.peers import free_port, wait_for_port
from tests.service.nodes import make_settings, running_node, send
from tests.waiting import wait_for
from theranode.config.schema import Settings
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course
from theranode.dosimetry.results import CycleResult, Organ, VoiKind
from theranode.dosimetry.voi_names import classify_roi
from theranode.service.cli.jobs_view import render_dosimetry_status
from theranode.service.jobs.pipeline import run_job
from theranode.service.jobs.results import load_stored_result
from theranode.service.jobs.spec import CycleJobInput, JobKind, JobSpec, TimePointInput
from theranode.service.store import open_database
from theranode.service.store.jobs import JobRecord, JobState, JobStore

SEED = 5


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseManifest:
    return write_course(tmp_path_factory.mktemp("course"), CourseWriteSpec(cycles=(1,)), SEED)


def files_of(course: CourseManifest, *hours: float) -> list[Path]:
    files: list[Path] = []
    for tp in course.time_points:
        if tp.time_point.elapsed_h in hours or round(tp.time_point.elapsed_h) in hours:
            files += [*tp.ct_files, *tp.spect_files]
            files += [tp.rtstruct_file] if tp.rtstruct_file else []
    return files


def nominal_hours(course: CourseManifest) -> list[float]:
    return [tp.time_point.elapsed_h for tp in course.time_points]


@pytest.fixture(scope="module")
def reference(
    course: CourseManifest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[CycleResult, bytes]:
    """The cycle computed directly by the pipeline, without a node: the expected result."""
    out = course.out_dir
    rel = lambda p: str(Path(p).relative_to(out))
    tps = course.time_points
    spec = JobSpec(
        job_id=0, kind=JobKind.CYCLE, version=1, created_at="2024-01-01T00:00:00",
        data_dir=str(out), settings=Settings(),
        cycle=CycleJobInput(
            1, tps[0].time_point.injection_datetime.isoformat(), True,
            tuple(TimePointInput(0, tp.time_point.elapsed_h, tuple(map(rel, tp.spect_files)),
                                 tuple(map(rel, tp.ct_files))) for tp in tps),
            rel(tps[0].rtstruct_file)))
    outcome = run_job(spec)
    result = load_stored_result(out / outcome.result_dir).result
    rtdose = pydicom.dcmread(out / outcome.result_dir / "RTDOSE.dcm")
    return result, rtdose.PixelData


def cycle_jobs(store: JobStore) -> list[JobRecord]:
    return [j for j in store.all() if j.kind == "cycle"]



def assert_same_doses(found: CycleResult, expected: CycleResult) -> None:
    assert [v.name for v in found.vois] == [v.name for v in expected.vois]
    for got, want in zip(found.vois, expected.vois, strict=True):
        assert got.mean_gy == pytest.approx(want.mean_gy, rel=1e-9), got.name


def stored_result(data_dir: Path, job: JobRecord) -> CycleResult:
    return load_stored_result(data_dir / str(job.result_dir)).result


def test_cycle_missing_its_192h_scan_is_incomplete_then_runs_when_it_arrives(
    course: CourseManifest, reference: tuple[CycleResult, bytes], tmp_path: Path
) -> None:
    hours = nominal_hours(course)
    settings = make_settings(
        tmp_path / "data",
        protocol={"quiet_period_s": 1.0, "forced_timeout_h": 3.0 / 3600, "min_time_points": 4},
        jobs={"poll_interval_s": 0.5})
    with running_node(settings) as node:
        assert set(send(node.port, files_of(course, *hours[:3]))) == {0}
        incomplete = wait_for(lambda: [j for j in cycle_jobs(node.jobs)
                                       if j.state is JobState.INCOMPLETE], 60, "incomplete")
        assert "192 h" in incomplete[0].message
        status = "\n".join(render_dosimetry_status(node.jobs.db, settings))
        assert "ALERT" in status and "192 h" in status

        assert set(send(node.port, files_of(course, hours[3]))) == {0}
        done = wait_for(lambda: [j for j in cycle_jobs(node.jobs) if j.state is JobState.DONE],
                        120, "the cycle computed after the late scan")
        assert done[0].version == 1
        states = [j.state for j in cycle_jobs(node.jobs)]
        assert states.count(JobState.DONE) == 1 and JobState.INCOMPLETE not in states[:1]
        assert_same_doses(stored_result(settings.data_dir, done[0]), reference[0])
        course_job = wait_for(lambda: [j for j in node.jobs.all() if j.kind == "course"
                                       and j.state is JobState.DONE], 60, "the course job")
        assert course_job


def start_node(config: Path) -> subprocess.Popen[bytes]:
    log = open(config.with_suffix(".log"), "ab")
    return subprocess.Popen([sys.executable, "-m", "theranode", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=log)


def test_node_killed_during_a_job_finishes_it_after_restart_with_identical_results(
    course: CourseManifest, reference: tuple[CycleResult, bytes], tmp_path: Path
) -> None:
    port, data_dir = free_port(), tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nbind = "127.0.0.1"\nport = {port}\ndata_dir = "{data_dir}"\n'
        "[security]\nmin_free_disk_mb = 0\n"
        "[protocol]\nquiet_period_s = 1.0\n[jobs]\npoll_interval_s = 0.5\n")
    node = start_node(config)
    try:
        wait_for_port(port)
        assert set(send(port, files_of(course, *nominal_hours(course)))) == {0}
        store = JobStore(open_database(data_dir / "theranode.db"))
        (job,) = wait_for(lambda: [j for j in cycle_jobs(store) if j.state is JobState.RUNNING],
                          60, "the job to start")
        job_log = data_dir / "jobs" / f"job-{job.id}.log"
        # kill once the first time point is registered: mid-computation, seconds from the end
        wait_for(lambda: job_log.exists() and "Rigid registration" in job_log.read_text(), 60,
                 "the job's first registration")
        assert not [j for j in cycle_jobs(store) if j.state is JobState.DONE]
        node.send_signal(signal.SIGKILL)
        node.wait()
    finally:
        if node.poll() is None:
            node.kill()
    restarted = start_node(config)
    try:
        wait_for_port(port)
        done = wait_for(lambda: [j for j in cycle_jobs(store) if j.state is JobState.DONE],
                        120, "the interrupted job to finish")
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=30) == 0
    finally:
        if restarted.poll() is None:
            restarted.kill()
    jobs = cycle_jobs(store)
    assert len(jobs) == 1, "the same inputs are computed by one job"
    assert (done[0].version, done[0].attempts) == (1, 2)
    assert_same_doses(stored_result(data_dir, done[0]), reference[0])
    rtdose = pydicom.dcmread(data_dir / str(done[0].result_dir) / "RTDOSE.dcm")
    assert rtdose.PixelData == reference[1]
    assert "interrupted" in config.with_suffix(".log").read_text()


@pytest.mark.parametrize(("name", "interpreted", "expected"), [
    ("Liver", "ORGAN", (VoiKind.ORGAN, Organ.LIVER)),
    ("Kidney_L", "ORGAN", (VoiKind.ORGAN, Organ.KIDNEY_LEFT)),
    ("Right kidney", None, (VoiKind.ORGAN, Organ.KIDNEY_RIGHT)),
    ("kidneys", None, (VoiKind.ORGAN, Organ.KIDNEYS)),
    ("BoneMarrow_L2-L4", "ORGAN", (VoiKind.MARROW, Organ.BONE_MARROW)),
    ("Lesion_03", "GTV", (VoiKind.LESION, None)),
    ("liver met 2", None, (VoiKind.LESION, None)),
    ("Spleen", None, (VoiKind.ORGAN, Organ.SPLEEN)),
    ("Left Kidney", None, (VoiKind.ORGAN, Organ.KIDNEY_LEFT)),
    ("Kidney.L", None, (VoiKind.ORGAN, Organ.KIDNEY_LEFT)),
    ("Kidney (R)", None, (VoiKind.ORGAN, Organ.KIDNEY_RIGHT)),
    ("L2-L4", "ORGAN", (VoiKind.MARROW, Organ.BONE_MARROW)),
    ("BODY", "EXTERNAL", None),
    ("Aorta", "ORGAN", None),
])
def test_rois_are_classified_by_name_and_type(name: str, interpreted: str | None,
                                              expected: object) -> None:
    assert classify_roi(name, interpreted) == expected


def test_reference_result_matches_the_phantom_within_partial_volume(
    course: CourseManifest, reference: tuple[CycleResult, bytes]
) -> None:
    """Sanity of what the node is compared with: organs within the 8 mm grid's partial volume."""
    truth = course.truth["cycles"][0]["vois"]
    for name in ("Liver", "Kidney_L", "Kidney_R", "Spleen"):
        found = reference[0].voi(name).mean_gy
        assert found == pytest.approx(truth[name]["mean_dose_gy"], rel=0.12), name
    assert np.frombuffer(reference[1], dtype=np.uint16).max() == 65535


def test_a_node_set_to_gtm_corrects_with_its_cameras_resolution_and_states_the_budget(
    course: CourseManifest, reference: tuple[CycleResult, bytes], tmp_path: Path,
) -> None:
    """Wiring from the configuration to the stored result (the images here are unblurred,
    so the correction's size is not the point: tests/dosimetry/test_partial_volume.py is)."""
    from theranode.config.schema import settings_from_dict
    from theranode.dosimetry.results import UncertaintyComponent

    settings = settings_from_dict({
        "dosimetry": {"partial_volume": "gtm"},
        "calibration": {"default_spect_fwhm_mm": 15.0, "cameras": [
            {"manufacturer": "theranode phantom", "spect_fwhm_mm": 11.0}]},
        "uncertainty": {"calibration_percent": 3.0},
    })
    out = course.out_dir
    rel = lambda p: str(Path(p).relative_to(out))
    tps = course.time_points
    spec = JobSpec(
        job_id=1, kind=JobKind.CYCLE, version=1, created_at="2024-01-01T00:00:00",
        data_dir=str(out), settings=settings,
        cycle=CycleJobInput(
            1, tps[0].time_point.injection_datetime.isoformat(), True,
            tuple(TimePointInput(0, tp.time_point.elapsed_h, tuple(map(rel, tp.spect_files)),
                                 tuple(map(rel, tp.ct_files))) for tp in tps),
            rel(tps[0].rtstruct_file)))
    result = load_stored_result(out / run_job(spec).result_dir).result
    assert isinstance(result, CycleResult)
    assert result.settings["partial_volume"] == "gtm"
    assert result.settings["time_point_spect_fwhm_mm"] == [11.0] * len(tps), "the camera's"
    kidney, before = result.voi("Kidney_L"), reference[0].voi("Kidney_L")
    assert kidney.partial_volume_factor != 1.0 and before.partial_volume_factor == 1.0
    assert kidney.uncertainty is not None and before.uncertainty is not None
    assert kidney.uncertainty.components[UncertaintyComponent.CALIBRATION] == 0.03
    assert before.uncertainty.components[UncertaintyComponent.CALIBRATION] == 0.05
