"""Known-answer self-check: the written phantom course reads back as rendered."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from tests.peers import require_tool
from theranode.dicomio.ct import read_ct_series
from theranode.dicomio.nm import CountsCalibration, SpectEncoding, read_spect
from theranode.dicomio.rtstruct import read_rois, roi_mask
from theranode.dicomio.synthetic_course import (
    CourseManifest,
    CourseWriteSpec,
    PhantomGrids,
    SpectStorage,
    TimePointFiles,
    clean_margin_course,
    write_course,
)
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.synthetic.phantom import (
    CountingStatistics,
    ImageGrid,
    default_course,
    render_activity,
    render_ct,
    voi_contour_mask,
    voxelise,
)

ROI_NAMES = [
    "Liver",
    "Kidney_L",
    "Kidney_R",
    "Spleen",
    "BoneMarrow_L2-L4",
    "Lesion_01",
    "Lesion_02",
    "Lesion_03",
    "Lesion_04",
    "Lesion_05",
]
TINY = PhantomGrids(
    ImageGrid.centred((48, 40, 20), (8.0, 8.0, 8.0)),
    ImageGrid.centred((40, 32, 16), (10.0, 10.0, 10.0)),
)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> CourseManifest:
    import pydicom.config

    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    try:
        spec = CourseWriteSpec(cycles=(1, 3))
        return write_course(tmp_path_factory.mktemp("course"), spec, seed=5)
    finally:
        pydicom.config.settings.writing_validation_mode = previous


def read_ct(tp: TimePointFiles):
    return read_ct_series([pydicom.dcmread(p) for p in tp.ct_files])


def read_nm(tp: TimePointFiles, calibration: CountsCalibration | None = None):
    return read_spect([pydicom.dcmread(p) for p in tp.spect_files], calibration)


def test_one_study_per_time_point_sharing_a_frame_of_reference(
    course: CourseManifest,
) -> None:
    labels = [tp.time_point.label for tp in course.time_points]
    assert labels == ["c1_t4h", "c1_t24h", "c1_t72h", "c1_t192h", "c3_t26h"]
    studies = set()
    for tp in course.time_points:
        ct = pydicom.dcmread(tp.ct_files[0])
        nm = pydicom.dcmread(tp.spect_files[0])
        assert ct.StudyInstanceUID == nm.StudyInstanceUID == tp.study_instance_uid
        assert (
            ct.FrameOfReferenceUID
            == nm.FrameOfReferenceUID
            == tp.frame_of_reference_uid
        )
        assert ct.PatientID == nm.PatientID == course.patient_id
        studies.add(tp.study_instance_uid)
    assert len(studies) == len(course.time_points)
    with_rtstruct = [
        tp.time_point.label for tp in course.time_points if tp.rtstruct_file
    ]
    assert with_rtstruct == ["c1_t4h", "c3_t26h"]


def test_ct_reads_back_as_rendered(course: CourseManifest) -> None:
    model = course.spec.course.model
    for label in ("c1_t4h", "c1_t72h"):
        tp = course.time_point(label)
        volume = read_ct(tp)
        expected = render_ct(model, course.spec.grids.ct, tp.time_point.transform)
        assert volume.same_grid(expected.with_array(expected.array))
        np.testing.assert_allclose(volume.array, expected.array, atol=0.5 + 1e-4)


def test_spect_reads_back_as_rendered_with_its_timing(course: CourseManifest) -> None:
    tp = course.time_point("c1_t72h")
    spect = read_nm(tp)
    model = course.spec.course.model
    cycle = course.spec.course.cycle(1)
    expected = render_activity(
        model, course.spec.grids.spect, 72.0, tp.time_point.transform, cycle=cycle
    )
    assert spect.encoding is SpectEncoding.NM_REAL_WORLD_VALUES
    assert spect.volume.same_grid(expected)
    quantum = float(expected.array.max()) / 60000
    np.testing.assert_allclose(spect.volume.array, expected.array, atol=quantum)
    assert spect.elapsed_h == pytest.approx(72.0)
    assert spect.injected_activity_mbq == pytest.approx(cycle.injected_activity_mbq)
    assert spect.injection_datetime == cycle.injection_datetime
    assert spect.acquisition_duration_s == pytest.approx(
        course.spec.counting.duration_s
    )


def test_contours_rasterise_to_the_analytic_voxels(course: CourseManifest) -> None:
    tp = course.time_point("c3_t26h")
    ct = read_ct(tp)
    rois = read_rois(pydicom.dcmread(tp.rtstruct_file))
    assert [r.name for r in rois] == ROI_NAMES
    assert {r.frame_of_reference_uid for r in rois} == {tp.frame_of_reference_uid}
    assert rois[0].interpreted_type == "ORGAN" and rois[-1].interpreted_type == "GTV"
    model = course.spec.course.model
    vox = voxelise(model, course.spec.grids.ct, tp.time_point.transform)
    for roi in rois:
        mask = roi_mask(roi, ct).array
        truth = vox.centre_mask(model.voi_labels(roi.name))
        dice = 2 * np.sum(mask & truth) / (mask.sum() + truth.sum())
        assert dice > 0.95, (roi.name, dice)
        if model.voi_volume_ml(roi.name) > 20:
            assert mask.sum() * ct.voxel_volume_ml == pytest.approx(
                model.voi_volume_ml(roi.name), rel=0.03
            ), roi.name


def test_liver_contours_have_holes_and_two_lobes(course: CourseManifest) -> None:
    liver = read_rois(pydicom.dcmread(course.time_point("c1_t4h").rtstruct_file))[0]
    by_plane: dict[float, int] = {}
    for contour in liver.contours:
        z = round(float(contour[0, 2]), 3)
        by_plane[z] = by_plane.get(z, 0) + 1
    assert max(by_plane.values()) >= 3  # two lobes and a lesion hole on one plane


def test_spect_concentration_inside_an_organ_is_the_truth(
    course: CourseManifest,
) -> None:
    tp = course.time_point("c1_t4h")
    spect = read_nm(tp)
    rois = {r.name: r for r in read_rois(pydicom.dcmread(tp.rtstruct_file))}
    truth = course.truth["time_points"][0]["concentration_mbq_per_ml"]
    for name in ("Spleen", "Liver", "Kidney_R"):
        mask = roi_mask(rois[name], spect.volume).array
        core = ndimage.binary_erosion(mask, iterations=1)
        assert core.sum() > 10, name
        mean_bq_per_ml = float(spect.volume.array[core].mean())
        assert mean_bq_per_ml == pytest.approx(truth[name] * 1e6, rel=1e-3), name


def test_truth_json_matches_the_model(course: CourseManifest) -> None:
    truth = json.loads(course.truth_path.read_text())
    assert truth == json.loads(json.dumps(course.truth))
    lu = nuclear_data("Lu-177")
    assert truth["led_gy_per_h_per_mbq_per_ml"] == lu.led_gy_per_h_per_mbq_per_ml
    model = course.spec.course.model
    for cycle in truth["cycles"]:
        for name, entry in cycle["vois"].items():
            rho = truth["vois"][name]["density_g_per_ml"]
            expected = (
                lu.led_gy_per_h_per_mbq_per_ml
                * entry["c0_mbq_per_ml"]
                / (rho * entry["lambda_eff_per_h"])
            )
            assert entry["mean_dose_gy"] == pytest.approx(expected, rel=1e-12)
            assert truth["vois"][name]["volume_ml"] == pytest.approx(
                model.voi_volume_ml(name)
            )
    c3 = next(c for c in truth["cycles"] if c["number"] == 3)
    assert c3["stp_reference"] == {"cycle": 2, "elapsed_h": 24.0}
    assert c3["vois"]["Kidney_L"]["stp_formula_dose_gy"] == pytest.approx(
        c3["vois"]["Kidney_L"]["mean_dose_gy"]
    )
    written = {tp["label"]: tp for tp in truth["time_points"]}
    for tp in course.time_points:
        entry = written[tp.time_point.label]
        assert entry["transform"]["rotation_deg"] == list(
            tp.time_point.transform.rotation_deg
        )
        assert entry["frame_of_reference_uid"] == tp.frame_of_reference_uid
        assert (course.out_dir / entry["files"]["spect"][0]) == tp.spect_files[0]
        vol = entry["ct_voxelised_volume_ml"]["Spleen"]["partial_volume"]
        assert vol == pytest.approx(model.voi_volume_ml("Spleen"), rel=0.01)


def test_same_seed_gives_identical_objects(
    course: CourseManifest, tmp_path: Path
) -> None:
    again = write_course(
        tmp_path, CourseWriteSpec(cycles=(3,), write_rtstruct=False), seed=5
    )
    original = course.time_point("c3_t26h")
    assert (
        again.time_points[0].spect_files[0].read_bytes()
        == original.spect_files[0].read_bytes()
    )
    assert (
        again.time_points[0].ct_files[7].read_bytes()
        == original.ct_files[7].read_bytes()
    )
    other = write_course(
        tmp_path / "other", CourseWriteSpec(cycles=(3,), grids=TINY), seed=6
    )
    assert other.time_points[0].study_instance_uid != original.study_instance_uid


def test_counts_variant_reads_back_with_the_stated_calibration(tmp_path: Path) -> None:
    counting = CountingStatistics(cps_per_mbq=8.0, duration_s=900.0)
    spec = CourseWriteSpec(
        grids=TINY,
        spect_storage=SpectStorage.NM_COUNTS,
        counting=counting,
        cycles=(4,),
        views=45,
    )
    manifest = write_course(tmp_path, spec, seed=2)
    tp = manifest.time_points[0]
    assert manifest.truth["counts_calibration"]["cps_per_mbq"] == 8.0
    spect = read_nm(tp, CountsCalibration(cps_per_mbq=8.0))
    assert spect.encoding is SpectEncoding.NM_COUNTS_CALIBRATED
    course = default_course()
    expected = render_activity(
        course.model, TINY.spect, 24.0, tp.time_point.transform, cycle=course.cycle(4)
    )
    per_count = 1e6 / (8.0 * 900.0) / TINY.spect.voxel_volume_ml
    lam_t = nuclear_data("Lu-177").decay_constant_per_h * 900.0 / 3600.0
    per_count *= lam_t / (1 - math.exp(-lam_t))
    np.testing.assert_allclose(
        spect.volume.array, expected.array, atol=0.5 * per_count + 1e-3
    )


def test_pt_variant_with_noise_reads_back(tmp_path: Path) -> None:
    spec = CourseWriteSpec(
        grids=TINY,
        spect_storage=SpectStorage.PT_BQML,
        cycles=(4,),
        poisson_noise=True,
        spect_fwhm_mm=15.0,
    )
    manifest = write_course(tmp_path, spec, seed=4)
    tp = manifest.time_points[0]
    spect = read_nm(tp)
    assert spect.encoding is SpectEncoding.PT_BQML
    assert spect.elapsed_h == pytest.approx(24.0)
    assert spect.injected_activity_mbq == pytest.approx(7400.0)
    course = default_course()
    clean = render_activity(
        course.model, TINY.spect, 24.0, tp.time_point.transform, cycle=course.cycle(4)
    )
    total_clean = float(clean.array.sum())
    assert float(spect.volume.array.sum()) == pytest.approx(total_clean, rel=0.02)
    assert not np.allclose(spect.volume.array, clean.array, rtol=0.01)
    again = write_course(tmp_path / "again", spec, seed=4)
    assert (
        again.time_points[0].spect_files[3].read_bytes()
        == tp.spect_files[3].read_bytes()
    )


@pytest.mark.peer
def test_every_object_passes_dciodvfy(course: CourseManifest, tmp_path: Path) -> None:
    dciodvfy = require_tool("dciodvfy")
    counts = write_course(
        tmp_path / "counts",
        CourseWriteSpec(grids=TINY, spect_storage=SpectStorage.NM_COUNTS, cycles=(4,)),
        seed=1,
    ).time_points[0]
    pt = write_course(
        tmp_path / "pt",
        CourseWriteSpec(grids=TINY, spect_storage=SpectStorage.PT_BQML, cycles=(4,)),
        seed=1,
    ).time_points[0]
    first = course.time_point("c1_t4h")
    files = [
        first.ct_files[0],
        first.spect_files[0],
        first.rtstruct_file,
        counts.spect_files[0],
        pt.spect_files[0],
    ]
    for path in files:
        result = subprocess.run(
            [dciodvfy, str(path)], capture_output=True, text=True, check=False
        )
        report = result.stdout + result.stderr
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert not errors, (path.name, errors)


# -- clean margins (the restated accuracy criterion) ----------------------------
@pytest.fixture(scope="module")
def clean_course(tmp_path_factory: pytest.TempPathFactory) -> CourseManifest:
    spec = CourseWriteSpec(course=clean_margin_course(), cycles=(3,), supersampling=2)
    return write_course(tmp_path_factory.mktemp("clean"), spec, seed=11)


def test_clean_margin_rtstruct_rasterises_to_the_inset_contours(
    clean_course: CourseManifest,
) -> None:
    tp = clean_course.time_points[0]
    ct = read_ct(tp)
    model = clean_course.spec.course.model
    assert clean_course.truth["contour_margin_mm"] == model.contour_margin_mm > 8.0
    for roi in read_rois(pydicom.dcmread(tp.rtstruct_file)):
        mask = roi_mask(roi, ct).array
        truth = voi_contour_mask(model, roi.name, clean_course.spec.grids.ct,
                                 tp.time_point.transform)
        dice = 2 * np.sum(mask & truth) / (mask.sum() + truth.sum())
        assert dice > 0.95, (roi.name, dice)


def test_every_spect_voxel_of_a_clean_margin_voi_holds_the_uniform_truth(
    clean_course: CourseManifest,
) -> None:
    """No VOI voxel straddles an activity edge: each holds its compartment's value."""
    tp = clean_course.time_points[0]
    spect = read_nm(tp)
    truth = clean_course.truth["time_points"][0]["concentration_mbq_per_ml"]
    quantum = float(spect.volume.array.max()) / 60000
    for roi in read_rois(pydicom.dcmread(tp.rtstruct_file)):
        values = spect.volume.array[roi_mask(roi, spect.volume).array]
        assert values.size >= 8, roi.name
        np.testing.assert_allclose(values, truth[roi.name] * 1e6, atol=quantum, rtol=0,
                                   err_msg=roi.name)
