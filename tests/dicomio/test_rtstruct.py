"""RT Structure Set: contours ⇄ masks on any grid, holes, islands, boundaries."""

from __future__ import annotations

import io
import math
import tracemalloc
from datetime import datetime

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from tests.dicomio.rtstruct_reference import reference_roi_mask
from theranode.dicomio.ct import read_ct_series
from theranode.dicomio.errors import UnsupportedObjectError
from theranode.dicomio.integrity import ObjectTooLargeError
from theranode.dicomio.rtstruct import (
    ContourLimits,
    RoiContours,
    RoiDefinition,
    build_rtstruct,
    read_rois,
    roi_mask,
)
from theranode.dicomio.valuerep import format_ds
from theranode.dosimetry.volume import Volume

FRAME = generate_uid(entropy_srcs=["test-rtstruct-frame"])


def circle(cx: float, cy: float, z: float, r: float, n: int = 96) -> np.ndarray:
    """Equal-area polygon of a circle (counter-clockwise)."""
    theta = 2 * math.pi / n
    scale = math.sqrt(theta / math.sin(theta))
    a = np.arange(n) * theta
    return np.column_stack(
        [cx + r * scale * np.cos(a), cy + r * scale * np.sin(a), np.full(n, z)]
    )


def square(cx: float, cy: float, z: float, half: float) -> np.ndarray:
    return np.array(
        [
            [cx - half, cy - half, z],
            [cx + half, cy - half, z],
            [cx + half, cy + half, z],
            [cx - half, cy + half, z],
        ]
    )


def sphere_roi(
    radius: float = 30.0, centre=(1.0, 2.0, 3.0), spacing: float = 2.0
) -> RoiContours:
    cx, cy, cz = centre
    planes = np.arange(cz - radius + spacing / 2, cz + radius, spacing)
    contours = tuple(
        circle(cx, cy, z, math.sqrt(radius**2 - (z - cz) ** 2))
        for z in planes
        if abs(z - cz) < radius
    )
    return RoiContours(1, "Sphere", FRAME, "GTV", contours)


def grid(shape_zyx, spacing, origin, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Volume:
    return Volume(np.zeros(shape_zyx, dtype=np.float32), spacing, origin, direction)


def test_sphere_on_its_own_ct_grid_has_the_analytic_volume() -> None:
    roi = sphere_roi()
    ct = grid((40, 40, 40), (2.0, 2.0, 2.0), (-38.0, -37.0, -36.0))
    mask = roi_mask(roi, ct)
    assert mask.unit == "mask" and mask.array.dtype == bool
    expected_ml = 4 / 3 * math.pi * 30.0**3 / 1000
    assert mask.array.sum() * ct.voxel_volume_ml == pytest.approx(expected_ml, rel=0.02)


def test_sphere_on_a_coarser_offset_spect_grid() -> None:
    roi = sphere_roi()
    spect = grid((20, 20, 20), (4.8, 4.8, 4.8), (-44.3, -43.1, -42.7))
    mask = roi_mask(roi, spect)
    expected_ml = 4 / 3 * math.pi * 30.0**3 / 1000
    assert mask.array.sum() * spect.voxel_volume_ml == pytest.approx(
        expected_ml, rel=0.04
    )


def test_sphere_on_a_rotated_grid() -> None:
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotated = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    target = grid((30, 40, 40), (2.5, 2.5, 2.5), (0.0, -50.0, -35.0), rotated)
    mask = roi_mask(sphere_roi(), target)
    expected_ml = 4 / 3 * math.pi * 30.0**3 / 1000
    assert mask.array.sum() * target.voxel_volume_ml == pytest.approx(
        expected_ml, rel=0.04
    )
    centre_index = np.rint(target.patient_to_index([1.0, 2.0, 3.0])).astype(int)
    assert mask.array[centre_index[2], centre_index[1], centre_index[0]]


def test_inner_contour_is_a_hole() -> None:
    contours = tuple(
        c
        for z in (0.0, 2.0, 4.0)
        for c in (square(0, 0, z, 20), square(0, 0, z, 10)[::-1])
    )
    roi = RoiContours(1, "Ring", FRAME, "ORGAN", contours)
    target = grid((3, 60, 60), (1.0, 1.0, 2.0), (-29.5, -29.5, 0.0))
    mask = roi_mask(roi, target).array
    assert mask.sum() == 3 * (40 * 40 - 20 * 20)
    assert not mask[1, 30, 30]  # centre of the hole
    assert mask[1, 30, 14]  # in the ring


def test_two_islands_on_one_plane() -> None:
    contours = (square(-15, 0, 0.0, 5), square(15, 0, 0.0, 5))
    roi = RoiContours(1, "Islands", FRAME, "ORGAN", contours)
    target = grid((1, 20, 60), (1.0, 1.0, 2.0), (-29.5, -9.5, 0.0))
    mask = roi_mask(roi, target).array
    assert mask.sum() == 2 * 10 * 10
    assert mask[0, 10, 14] and mask[0, 10, 44] and not mask[0, 10, 30]


def test_boundary_slices_extend_half_the_contour_spacing() -> None:
    contours = tuple(
        square(0, 0, z, 5) for z in np.arange(0.0, 9.0, 2.0)
    )  # planes 0..8
    roi = RoiContours(1, "Box", FRAME, "ORGAN", contours)
    target = grid((29, 12, 12), (1.0, 1.0, 0.5), (-5.5, -5.5, -3.0))  # z = -3 .. 11
    mask = roi_mask(roi, target).array
    z = -3.0 + 0.5 * np.flatnonzero(mask.any(axis=(1, 2)))
    assert z.min() == pytest.approx(-1.0) and z.max() == pytest.approx(9.0)
    assert len(z) == 21


def test_gaps_between_contour_planes_stay_empty() -> None:
    contours = tuple(square(0, 0, z, 5) for z in (0.0, 2.0, 4.0, 12.0, 14.0))
    roi = RoiContours(1, "TwoBlocks", FRAME, "ORGAN", contours)
    target = grid((17, 12, 12), (1.0, 1.0, 1.0), (-5.5, -5.5, -1.0))
    filled = roi_mask(roi, target).array.any(axis=(1, 2))
    z = -1.0 + np.flatnonzero(filled)
    assert 8.0 not in z and 5.0 in z and 11.0 in z


def test_empty_roi_gives_an_empty_mask() -> None:
    roi = RoiContours(3, "Empty", FRAME, "ORGAN", ())
    assert not roi_mask(
        roi, grid((2, 3, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    ).array.any()


def ct_stack(n: int = 10, dz: float = 2.0) -> list[Dataset]:
    out = []
    for k in range(n):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["rt-ct", str(k)])
        ds.StudyInstanceUID = generate_uid(entropy_srcs=["rt-study"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["rt-series"])
        ds.FrameOfReferenceUID = FRAME
        ds.PatientID = "RT-TEST"
        ds.PatientName = "Test^Rt"
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = ["-50", "-50", format_ds(k * dz)]
        out.append(ds)
    return out


def test_written_structure_set_reads_back() -> None:
    cts = ct_stack()
    liver = tuple(
        c
        for z in (2.0, 4.0, 6.0)
        for c in (square(0, 0, z, 20), square(3, 3, z, 4)[::-1])
    )
    lesion = (circle(3, 3, 4.0, 4.0),)
    ds = build_rtstruct(
        [
            RoiDefinition("Liver", "ORGAN", liver, (200, 100, 0)),
            RoiDefinition("Lesion_01", "GTV", lesion),
        ],
        cts,
        sop_instance_uid=generate_uid(entropy_srcs=["rt-sop"]),
        series_instance_uid=generate_uid(entropy_srcs=["rt-series-out"]),
        created=datetime(2024, 1, 8, 12, 0),
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buffer.getvalue()))
    rois = read_rois(back)
    assert [r.name for r in rois] == ["Liver", "Lesion_01"]
    assert [r.interpreted_type for r in rois] == ["ORGAN", "GTV"]
    assert rois[0].frame_of_reference_uid == FRAME
    assert rois[0].color_rgb == (200, 100, 0)
    assert len(rois[0].contours) == 6
    np.testing.assert_allclose(rois[0].contours[1], liver[1], atol=1e-4)
    # Each contour references the CT slice of its plane.
    refs = [
        item.ContourImageSequence[0].ReferencedSOPInstanceUID
        for item in back.ROIContourSequence[0].ContourSequence
    ]
    assert refs[0] == cts[1].SOPInstanceUID and refs[-1] == cts[3].SOPInstanceUID
    frame_ref = back.ReferencedFrameOfReferenceSequence[0]
    series_ref = frame_ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert len(series_ref.ContourImageSequence) == len(cts)


def test_non_structure_set_is_refused() -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    with pytest.raises(UnsupportedObjectError, match="RT Structure Set"):
        read_rois(ds)


def test_open_and_point_contours_are_skipped_with_a_note() -> None:
    cts = ct_stack(3)
    ds = build_rtstruct(
        [RoiDefinition("Box", "ORGAN", (square(0, 0, 2.0, 5),))],
        cts,
        sop_instance_uid=generate_uid(entropy_srcs=["rt-sop-2"]),
        series_instance_uid=generate_uid(entropy_srcs=["rt-series-2"]),
        created=datetime(2024, 1, 8, 12, 0),
    )
    point = Dataset()
    point.ContourGeometricType = "POINT"
    point.NumberOfContourPoints = 1
    point.ContourData = ["0", "0", "2"]
    ds.ROIContourSequence[0].ContourSequence.append(point)
    roi = read_rois(ds)[0]
    assert len(roi.contours) == 1
    assert roi.notes == ("skipped 1 POINT contour(s)",)


# -- rasterisation cost, bounds, and the reference algorithm (issue #12 item 5) --------------
ROTATED_30 = (
    math.cos(math.radians(30)), -math.sin(math.radians(30)), 0.0,
    math.sin(math.radians(30)), math.cos(math.radians(30)), 0.0,
    0.0, 0.0, 1.0,
)  # fmt: skip


def test_masks_equal_the_reference_algorithm_on_the_test_structures() -> None:
    ring = tuple(
        c for z in (0.0, 2.0, 4.0) for c in (square(0, 0, z, 20), square(0, 0, z, 10)[::-1])
    )
    cases = [
        (sphere_roi(), grid((40, 40, 40), (2.0, 2.0, 2.0), (-38.0, -37.0, -36.0))),
        (sphere_roi(), grid((20, 20, 20), (4.8, 4.8, 4.8), (-44.3, -43.1, -42.7))),
        (sphere_roi(), grid((30, 40, 40), (2.5, 2.5, 2.5), (0.0, -50.0, -35.0), ROTATED_30)),
        (RoiContours(1, "Ring", FRAME, "ORGAN", ring),
         grid((7, 60, 60), (1.0, 1.0, 1.0), (-29.5, -29.5, -1.0))),
        (RoiContours(1, "Blocks", FRAME, "ORGAN",
                     tuple(square(0, 0, z, 5) for z in (0.0, 2.0, 4.0, 12.0, 14.0))),
         grid((33, 12, 12), (1.0, 1.0, 0.5), (-5.5, -5.5, -1.0))),
    ]
    for roi, target in cases:
        mask = roi_mask(roi, target).array
        assert mask.any()
        np.testing.assert_array_equal(mask, reference_roi_mask(roi, target), err_msg=roi.name)


def test_masks_equal_the_reference_algorithm_on_the_phantom_structures(phantom_course) -> None:
    """The phantom's RTSTRUCT on its CT, on a coarser offset grid and on a rotated one."""
    tp = phantom_course.time_point("c1_t4h")
    ct = read_ct_series([pydicom.dcmread(p) for p in tp.ct_files])
    nz, ny, nx = ct.shape
    coarse = grid((nz // 2, ny // 2, nx // 2), tuple(2.3 * s for s in ct.spacing_mm),
                  tuple(o - 1.7 for o in ct.origin_mm))
    rotated = grid((nz, ny, nx), ct.spacing_mm, ct.origin_mm, ROTATED_30)
    rois = read_rois(pydicom.dcmread(tp.rtstruct_file))
    assert len(rois) >= 5
    for roi in rois:
        for target in (ct, coarse, rotated):
            np.testing.assert_array_equal(
                roi_mask(roi, target).array, reference_roi_mask(roi, target), err_msg=roi.name
            )


def test_two_thousand_contour_planes_cost_no_more_than_the_grid_slices(monkeypatch) -> None:
    """Before: every plane searched every other one (a voxels × planes array per plane)."""
    contours = tuple(square(0, 0, z, 20) for z in np.linspace(0.0, 40.0, 2000))
    roi = RoiContours(1, "ManyPlanes", FRAME, "ORGAN", contours)
    target = grid((20, 64, 64), (2.0, 2.0, 2.0), (-63.0, -63.0, 0.0))
    calls = []
    original = Volume.index_to_patient

    def counted(self: Volume, ijk):
        calls.append(np.shape(ijk)[0])
        return original(self, ijk)

    monkeypatch.setattr(Volume, "index_to_patient", counted)
    tracemalloc.start()
    try:
        mask = roi_mask(roi, target).array
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mask.sum() == 20 * 20 * 20  # 40 × 40 mm on 2 mm voxels, slices z = 0 … 38
    assert len(calls) <= target.shape[0], "more chunks than grid slices: planes walked one by one"
    assert peak_bytes < 4 * 2**20, f"{peak_bytes} bytes: a voxels × planes array"


def structure_set(planes: int, points_per_contour: int, rois: int = 1) -> Dataset:
    """An RT Structure Set through bytes: its Contour Data still raw, as received."""
    cts = ct_stack(3)
    ds = build_rtstruct(
        [
            RoiDefinition(f"Organ{r}", "ORGAN", tuple(
                circle(0, 0, 2.0 + 1e-3 * z, 10 + r, points_per_contour) for z in range(planes)))
            for r in range(rois)
        ],
        cts,
        sop_instance_uid=generate_uid(entropy_srcs=["rt-limits", str(planes)]),
        series_instance_uid=generate_uid(entropy_srcs=["rt-limits-series"]),
        created=datetime(2024, 1, 8, 12, 0),
    )
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_reader_refuses_more_contour_points_than_the_limit() -> None:
    ds = structure_set(planes=4, points_per_contour=50, rois=2)  # 400 points
    assert sum(len(c) for r in read_rois(ds, ContourLimits(max_points=400))
               for c in r.contours) == 400
    with pytest.raises(ObjectTooLargeError, match=r"^max_contour_points 399 exceeded"):
        read_rois(structure_set(4, 50, 2), ContourLimits(max_points=399))


def test_reader_refuses_more_contours_in_one_roi_than_the_limit() -> None:
    ds = structure_set(planes=6, points_per_contour=8)
    with pytest.raises(ObjectTooLargeError, match=r"^max_contours_per_roi 5 exceeded: ROI 1 "):
        read_rois(ds, ContourLimits(max_contours_per_roi=5))
    (roi,) = read_rois(structure_set(6, 8), ContourLimits(max_contours_per_roi=6))
    assert len(roi.contours) == 6


def test_raw_contour_data_reads_as_pydicom_converts_it() -> None:
    raw = read_rois(structure_set(planes=3, points_per_contour=17))
    converted = structure_set(planes=3, points_per_contour=17)
    for item in converted.ROIContourSequence[0].ContourSequence:
        assert len(item.ContourData) == 51  # converted by pydicom (DSfloat values)
    for a, b in zip(raw[0].contours, read_rois(converted)[0].contours, strict=True):
        np.testing.assert_array_equal(a, b)


def test_contour_data_that_are_not_numbers_are_refused() -> None:
    ds = structure_set(planes=1, points_per_contour=4)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    value = b"1\\2\\x3 "
    contour._dict[0x30060050] = RawDataElement(
        Tag(0x30060050), "DS", len(value), value, 0, False, True)
    with pytest.raises(UnsupportedObjectError, match="not a number"):
        read_rois(ds)
