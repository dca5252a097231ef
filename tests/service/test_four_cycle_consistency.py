"""One truth per cycle, end to end: a four-cycle course through the pipeline.

Cycles 1-2 are imaged at four time points, cycles 3-4 once (scaled from
cycle 2, Hebert 2024). For cycles 3-4 and the course, the written RT Dose is
read back, the VOIs of the written RTSTRUCT are rasterised on the reference
CT (:func:`theranode.dicomio.rtstruct.roi_mask`) and carried to the dose grid at 50 %
occupancy — the VOI masks the reported means average over (docs/conformance.md)
— and the map's mean in each VOI must be within 1 % of the SR's value read
back from the written SR. Every written object must pass dciodvfy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from tests.peers import require_tool
from theranode.config.schema import Settings
from theranode.dicomio.ct import read_ct_series
from theranode.dicomio.rtdose import read_rt_dose
from theranode.dicomio.rtstruct import read_rois, roi_mask
from theranode.dicomio.sr import read_sr_report
from theranode.dicomio.synthetic_course import CourseManifest
from theranode.dosimetry.registration import resample_mask
from theranode.service.jobs.pipeline import run_job
from theranode.service.jobs.spec import (
    CourseJobInput,
    CycleJobInput,
    JobKind,
    JobSpec,
    TimePointInput,
)

TOLERANCE = 0.01
MASK_THRESHOLD = 0.5  # the engine's default (EngineSettings.mask_threshold)
CREATED = "2024-06-01T12:00:00"


def _spec(data_dir: Path, job_id: int, **kind: object) -> JobSpec:
    job_kind = JobKind.CYCLE if "cycle" in kind else JobKind.COURSE
    return JobSpec(job_id=job_id, kind=job_kind, version=1, created_at=CREATED,
                   data_dir=str(data_dir), settings=Settings(), **kind)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def computed(phantom_course: CourseManifest, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, dict[object, Path], dict[int, list[Path]]]:
    """Cycles 1-4 and the course computed by the pipeline: result folders by cycle/'course'."""
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "in").symlink_to(phantom_course.out_dir, target_is_directory=True)
    rel = lambda p: str(Path("in") / Path(p).relative_to(phantom_course.out_dir))  # noqa: E731
    by_cycle: dict[int, list] = {}
    for tp in phantom_course.time_points:
        by_cycle.setdefault(tp.time_point.cycle_number, []).append(tp)
    folders: dict[object, Path] = {}
    ct_files: dict[int, list[Path]] = {}
    for number in sorted(by_cycle):
        tps = sorted(by_cycle[number], key=lambda t: t.time_point.elapsed_h)
        ct_files[number] = list(tps[0].ct_files)
        structure = next(t.rtstruct_file for t in tps if t.rtstruct_file is not None)
        job = CycleJobInput(
            number, tps[0].time_point.injection_datetime.isoformat(), len(tps) > 1,
            tuple(TimePointInput(round(t.time_point.elapsed_h), t.time_point.elapsed_h,
                                 tuple(map(rel, t.spect_files)), tuple(map(rel, t.ct_files)))
                  for t in tps),
            rel(structure),
            reference_result=None if len(tps) > 1 else str(folders[2].relative_to(data_dir)))
        outcome = run_job(_spec(data_dir, number, cycle=job))
        folders[number] = data_dir / outcome.result_dir
    course = CourseJobInput(tuple(str(folders[n].relative_to(data_dir)) for n in sorted(by_cycle)))
    folders["course"] = data_dir / run_job(_spec(data_dir, 9, course=course)).result_dir
    return data_dir, folders, ct_files


def _sr_means(folder: Path, time_point: str, key: str) -> dict[str, float]:
    report = read_sr_report(pydicom.dcmread(folder / "SR.dcm"))
    return {g.tracking_identifier: g.values[key] for g in report.groups
            if g.time_point == time_point and key in g.values}


def _sr_map_method(folder: Path) -> str:
    """The SR's 'Method of the RT Dose map' text (private code DOSEMAP)."""
    ds = pydicom.dcmread(folder / "SR.dcm")
    stack, found = list(ds.ContentSequence), []
    while stack:
        item = stack.pop()
        stack.extend(item.get("ContentSequence", []))
        code = item.get("ConceptNameCodeSequence")
        if item.ValueType == "TEXT" and code and code[0].CodeValue == "DOSEMAP":
            found.append(str(item.TextValue))
    assert len(found) == 1, found
    return found[0]


def _map_means(folder: Path, ct_files: list[Path], structure: Path) -> dict[str, float]:
    dose = read_rt_dose(pydicom.dcmread(folder / "RTDOSE.dcm"))
    ct = read_ct_series([pydicom.dcmread(f) for f in ct_files])
    means = {}
    for roi in read_rois(pydicom.dcmread(structure)):
        on_ct = roi_mask(roi, ct)
        if not on_ct.array.any():
            continue
        mask = resample_mask(on_ct, dose, None, MASK_THRESHOLD).array.astype(bool)
        means[roi.name] = float(np.asarray(dose.array)[mask].mean())
    return means


def _structure(phantom_course: CourseManifest, number: int) -> Path:
    return next(tp.rtstruct_file for tp in phantom_course.time_points
                if tp.time_point.cycle_number == number and tp.rtstruct_file is not None)


@pytest.mark.parametrize("number", [3, 4])
def test_single_time_point_rt_dose_agrees_with_its_sr(
    number: int, computed, phantom_course: CourseManifest
) -> None:
    _, folders, ct_files = computed
    reported = _sr_means(folders[number], f"cycle {number}", "mean_gy")
    found = _map_means(folders[number], ct_files[number], _structure(phantom_course, number))
    assert set(reported) == set(found) and len(reported) >= 5
    for name, value in reported.items():
        assert found[name] == pytest.approx(value, rel=TOLERANCE), name
    ds = pydicom.dcmread(folders[number] / "RTDOSE.dcm")
    assert len(ds.DoseComment) <= 64 and "Hebert 2024" in ds.DoseComment
    assert "time-integration factor" in ds.ImageComments
    assert _sr_map_method(folders[number]) in ds.ImageComments


def test_course_rt_dose_agrees_with_the_course_totals(
    computed, phantom_course: CourseManifest
) -> None:
    _, folders, ct_files = computed
    reported = _sr_means(folders["course"], "course", "total_gy")
    found = _map_means(folders["course"], ct_files[1], _structure(phantom_course, 1))
    assert set(reported) <= set(found) and len(reported) >= 5
    for name, value in reported.items():
        assert found[name] == pytest.approx(value, rel=TOLERANCE), name
    comments = pydicom.dcmread(folders["course"] / "RTDOSE.dcm").ImageComments
    assert "course total" in comments
    assert _sr_map_method(folders["course"]) in comments


@pytest.mark.peer
def test_dciodvfy_finds_no_error_in_any_written_object(computed) -> None:
    tool = require_tool("dciodvfy")
    _, folders, _ = computed
    written = sorted(p for folder in folders.values() for p in folder.glob("*.dcm"))
    assert len(written) == 5 * 3
    for path in written:
        run = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True,
                             timeout=120)
        errors = [line for line in (run.stdout + run.stderr).splitlines()
                  if line.startswith("Error")]
        assert not errors, (path.relative_to(path.parents[2]), errors)


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_dvh_mean_doses_in_the_rt_dose_are_the_sr_means(
    number: int, computed, phantom_course: CourseManifest
) -> None:
    """A viewer showing the RT Dose's DVHs shows the SR's mean doses (RT DVH module)."""
    _, folders, _ = computed
    reported = _sr_means(folders[number], f"cycle {number}", "mean_gy")
    names = {roi.number: roi.name
             for roi in read_rois(pydicom.dcmread(_structure(phantom_course, number)))}
    dvhs = {names[int(item.DVHReferencedROISequence[0].ReferencedROINumber)]: item
            for item in pydicom.dcmread(folders[number] / "RTDOSE.dcm").DVHSequence}
    assert set(dvhs) == set(reported)
    for name, value in reported.items():
        assert float(dvhs[name].DVHMeanDose) == pytest.approx(value, rel=TOLERANCE), name
        low, high = float(dvhs[name].DVHMinimumDose), float(dvhs[name].DVHMaximumDose)
        assert low * (1 - 1e-6) <= value <= high * (1 + 1e-6), name  # DS keeps 16 characters
