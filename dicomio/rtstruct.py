"""RT Structure Set contours ⇄ masks on any grid.

Reading: :func:`read_rois` returns every ROI's closed planar contours in
patient millimetres. Rasterising: :func:`roi_mask` fills a boolean mask on
*any* target grid (the CT the contours were drawn on, or a coarser SPECT):
each voxel centre is projected onto the contour-plane normal, assigned to
the nearest contour plane when it lies within half the contour spacing of
it, and tested against all contours of that plane with the even-odd rule,
so holes (a contour inside another) and several islands per plane work.

Writing: :func:`build_rtstruct` makes a Structure Set referencing a CT series
from contours (used by the synthetic phantom).

References
----------
DICOM PS3.3 A.19 (RT Structure Set IOD), C.8.8.5 (Structure Set), C.8.8.6
(ROI Contour: CLOSED_PLANAR contours; C.8.8.6.3 on inner contours), C.8.8.8
(RT ROI Observations).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt
from matplotlib.path import Path as PolygonPath
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicomio.errors import MissingAttributeError, UnsupportedObjectError
from dicomio.valuerep import format_ds
from dosimetry.volume import Volume

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Contour planes closer than this along the normal are one plane (mm).
PLANE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class RoiContours:
    """One ROI of a structure set with its closed planar contours (patient mm)."""

    number: int
    name: str
    frame_of_reference_uid: str
    interpreted_type: str | None
    contours: tuple[FloatArray, ...]
    color_rgb: tuple[int, int, int] | None = None
    notes: tuple[str, ...] = field(default=())


def read_rois(ds: Dataset) -> list[RoiContours]:
    """Every ROI of an RT Structure Set, with its CLOSED_PLANAR contours.

    ROIs without contours are returned with an empty ``contours``; POINT and
    OPEN contours are skipped and mentioned in ``notes``.
    """
    if str(ds.get("SOPClassUID", "")) != RT_STRUCTURE_SET_STORAGE:
        raise UnsupportedObjectError(
            f"Expected an RT Structure Set ({RT_STRUCTURE_SET_STORAGE}), found "
            f"{ds.get('SOPClassUID', '?')!r}."
        )
    if "StructureSetROISequence" not in ds:
        raise MissingAttributeError(
            "StructureSetROISequence is missing; the ROIs have no names."
        )
    types = {
        int(item.ReferencedROINumber): str(item.get("RTROIInterpretedType", "") or "")
        or None
        for item in ds.get("RTROIObservationsSequence", []) or []
    }
    contours = {
        int(item.ReferencedROINumber): item
        for item in ds.get("ROIContourSequence", []) or []
    }
    rois = []
    for item in ds.StructureSetROISequence:
        number = int(item.ROINumber)
        polygons, notes = _contours_of(contours.get(number))
        color = contours[number].get("ROIDisplayColor") if number in contours else None
        rois.append(
            RoiContours(
                number=number,
                name=str(item.get("ROIName", "")).strip(),
                frame_of_reference_uid=str(
                    item.get("ReferencedFrameOfReferenceUID", "")
                ),
                interpreted_type=types.get(number),
                contours=polygons,
                color_rgb=tuple(int(c) for c in color) if color else None,  # type: ignore[arg-type]
                notes=notes,
            )
        )
    return rois


def _contours_of(
    item: Dataset | None,
) -> tuple[tuple[FloatArray, ...], tuple[str, ...]]:
    if item is None:
        return (), ()
    polygons: list[FloatArray] = []
    skipped: dict[str, int] = {}
    for contour in item.get("ContourSequence", []) or []:
        kind = str(contour.get("ContourGeometricType", "")).upper()
        data = np.asarray(
            [float(v) for v in contour.get("ContourData", [])], dtype=np.float64
        )
        if kind != "CLOSED_PLANAR" or data.size < 9:
            skipped[kind or "empty"] = skipped.get(kind or "empty", 0) + 1
            continue
        polygons.append(data.reshape(-1, 3))
    notes = tuple(f"skipped {n} {kind} contour(s)" for kind, n in skipped.items())
    return tuple(polygons), notes


# -- rasterisation ----------------------------------------------------------
def contour_normal(contours: Sequence[FloatArray]) -> FloatArray:
    """Unit normal of the contour planes (Newell's method on the largest contour)."""
    largest = max(contours, key=len)
    shifted = np.roll(largest, -1, axis=0)
    normal = np.array(
        [
            np.sum((largest[:, 1] - shifted[:, 1]) * (largest[:, 2] + shifted[:, 2])),
            np.sum((largest[:, 2] - shifted[:, 2]) * (largest[:, 0] + shifted[:, 0])),
            np.sum((largest[:, 0] - shifted[:, 0]) * (largest[:, 1] + shifted[:, 1])),
        ]
    )
    norm = float(np.linalg.norm(normal))
    if norm == 0:
        raise UnsupportedObjectError(
            "A contour is degenerate (zero area); its plane is unknown."
        )
    normal = normal / norm
    # Orient it towards +z (or +x/+y for sagittal/coronal planes) for stable plane order.
    axis = int(np.argmax(np.abs(normal)))
    return normal if normal[axis] > 0 else -normal


def _plane_basis(normal: FloatArray) -> tuple[FloatArray, FloatArray]:
    helper = (
        np.array([1.0, 0.0, 0.0]) if abs(normal[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    )
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(normal, u)


def roi_mask(
    roi: RoiContours, grid: Volume, contour_spacing_mm: float | None = None
) -> Volume:
    """Boolean mask of ``roi`` on the grid of ``grid`` (unit ``"mask"``).

    A voxel is inside when its centre lies within half the contour spacing
    of a contour plane (the nearest one) and inside an odd number of that
    plane's contours. ``contour_spacing_mm`` defaults to the smallest gap
    between distinct planes (the slice spacing of the CT they were drawn
    on); for a single-plane ROI, to the grid's extent along the normal.
    """
    mask = np.zeros(grid.shape, dtype=bool)
    if not roi.contours:
        logger.warning(
            "ROI %s (%d) has no contours; its mask is empty", roi.name, roi.number
        )
        return grid.with_array(mask, unit="mask")
    normal = contour_normal(roi.contours)
    u, v = _plane_basis(normal)
    planes = _group_by_plane(roi.contours, normal)
    positions = np.array(sorted(planes))
    half = 0.5 * (contour_spacing_mm or _default_spacing(positions, grid, normal))
    for position in positions:
        _fill_plane(
            mask, grid, planes[float(position)], normal, u, v, position, positions, half
        )
    return grid.with_array(mask, unit="mask")


def _group_by_plane(
    contours: Sequence[FloatArray], normal: FloatArray
) -> dict[float, list[FloatArray]]:
    planes: dict[float, list[FloatArray]] = {}
    keys: list[float] = []
    for contour in contours:
        d = float(np.mean(contour @ normal))
        match = next((k for k in keys if abs(k - d) <= PLANE_TOLERANCE_MM), None)
        if match is None:
            keys.append(d)
            match = d
        planes.setdefault(match, []).append(contour)
    return planes


def _default_spacing(positions: FloatArray, grid: Volume, normal: FloatArray) -> float:
    if positions.size > 1:
        return float(np.min(np.diff(positions)))
    steps = grid.direction_matrix * np.asarray(grid.spacing_mm)
    return float(np.max(np.abs(normal @ steps)))


def _fill_plane(
    mask: npt.NDArray[np.bool_],
    grid: Volume,
    contours: list[FloatArray],
    normal: FloatArray,
    u: FloatArray,
    v: FloatArray,
    position: float,
    positions: FloatArray,
    half_mm: float,
) -> None:
    box = _slab_index_box(grid, contours, normal, half_mm)
    if box is None:
        return
    zs, ys, xs = box
    k, j, i = np.meshgrid(
        np.arange(zs.start, zs.stop),
        np.arange(ys.start, ys.stop),
        np.arange(xs.start, xs.stop),
        indexing="ij",
    )
    points = grid.index_to_patient(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    d = points @ normal
    nearest = positions[np.argmin(np.abs(d[:, None] - positions[None, :]), axis=1)]
    in_slab = (nearest == position) & (np.abs(d - position) <= half_mm + 1e-6)
    if not in_slab.any():
        return
    uv = np.column_stack([points[in_slab] @ u, points[in_slab] @ v])
    inside = np.zeros(uv.shape[0], dtype=bool)
    for contour in contours:
        path = PolygonPath(np.column_stack([contour @ u, contour @ v]))
        inside ^= path.contains_points(uv)
    hit = np.zeros(in_slab.size, dtype=bool)
    hit[np.flatnonzero(in_slab)[inside]] = True
    mask[zs, ys, xs] |= hit.reshape(k.shape)


def _slab_index_box(
    grid: Volume, contours: list[FloatArray], normal: FloatArray, half_mm: float
) -> tuple[slice, slice, slice] | None:
    points = np.concatenate(contours)
    corners = np.concatenate([points + normal * half_mm, points - normal * half_mm])
    index = grid.patient_to_index(corners)
    nz, ny, nx = grid.shape
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, (nx, ny, nz))
    if np.any(hi <= lo):
        return None
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


# -- writing ------------------------------------------------------------------
@dataclass(frozen=True)
class RoiDefinition:
    """An ROI to write: name, RTROIInterpretedType, colour and contours (patient mm)."""

    name: str
    interpreted_type: str
    contours: tuple[FloatArray, ...]
    color_rgb: tuple[int, int, int] = (255, 0, 0)


def build_rtstruct(
    rois: Sequence[RoiDefinition],
    reference_ct: Sequence[Dataset],
    sop_instance_uid: str,
    series_instance_uid: str,
    created: datetime,
    label: str = "VOIs",
    series_number: int = 100,
) -> Dataset:
    """An RT Structure Set on the CT series ``reference_ct``.

    Every contour references the CT slice whose position along the normal
    matches its plane (within half the slice spacing).
    """
    first = reference_ct[0]
    ds = Dataset()
    ds.file_meta = _file_meta(sop_instance_uid)
    _copy_patient_study(ds, first)
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = label
    ds.Manufacturer = "theranode"
    ds.OperatorsName = ""
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = first.FrameOfReferenceUID
    ds.PositionReferenceIndicator = ""
    ds.StructureSetLabel = label[:16]
    ds.StructureSetDate = created.strftime("%Y%m%d")
    ds.StructureSetTime = created.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.StructureSetDate
    ds.InstanceCreationTime = ds.StructureSetTime
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [_frame_reference(reference_ct)]
    )
    slices = _slice_lookup(reference_ct)
    normal = _slice_normal(reference_ct)
    ds.StructureSetROISequence = DicomSequence()
    ds.ROIContourSequence = DicomSequence()
    ds.RTROIObservationsSequence = DicomSequence()
    for number, roi in enumerate(rois, start=1):
        ds.StructureSetROISequence.append(
            _roi_item(number, roi, str(first.FrameOfReferenceUID))
        )
        ds.ROIContourSequence.append(_contour_item(number, roi, slices, normal))
        ds.RTROIObservationsSequence.append(_observation_item(number, roi))
    return ds


def _file_meta(sop_instance_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RT_STRUCTURE_SET_STORAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _copy_patient_study(ds: Dataset, source: Dataset) -> None:
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "StudyID",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
    ):
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]


def _frame_reference(reference_ct: Sequence[Dataset]) -> Dataset:
    first = reference_ct[0]
    images = DicomSequence()
    for ct in reference_ct:
        ref = Dataset()
        ref.ReferencedSOPClassUID = ct.SOPClassUID
        ref.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        images.append(ref)
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = images
    study = Dataset()
    study.ReferencedSOPClassUID = (
        "1.2.840.10008.3.1.2.3.1"  # Detached Study Management (retired, as used)
    )
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = first.FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _slice_normal(reference_ct: Sequence[Dataset]) -> FloatArray:
    iop = [float(v) for v in reference_ct[0].ImageOrientationPatient]
    return np.asarray(np.cross(iop[:3], iop[3:]), dtype=np.float64)


def _slice_lookup(reference_ct: Sequence[Dataset]) -> list[tuple[float, Dataset]]:
    normal = _slice_normal(reference_ct)
    return sorted(
        (
            (float(np.dot(normal, [float(v) for v in ct.ImagePositionPatient])), ct)
            for ct in reference_ct
        ),
        key=lambda item: item[0],
    )


def _roi_item(number: int, roi: RoiDefinition, frame_uid: str) -> Dataset:
    item = Dataset()
    item.ROINumber = number
    item.ReferencedFrameOfReferenceUID = frame_uid
    item.ROIName = roi.name
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    return item


def _contour_item(
    number: int,
    roi: RoiDefinition,
    slices: list[tuple[float, Dataset]],
    normal: FloatArray,
) -> Dataset:
    item = Dataset()
    item.ROIDisplayColor = list(roi.color_rgb)
    item.ReferencedROINumber = number
    item.ContourSequence = DicomSequence()
    positions = np.array([p for p, _ in slices])
    for contour in roi.contours:
        ct = slices[
            int(np.argmin(np.abs(positions - float(np.mean(contour @ normal)))))
        ][1]
        ref = Dataset()
        ref.ReferencedSOPClassUID = ct.SOPClassUID
        ref.ReferencedSOPInstanceUID = ct.SOPInstanceUID
        entry = Dataset()
        entry.ContourImageSequence = DicomSequence([ref])
        entry.ContourGeometricType = "CLOSED_PLANAR"
        entry.NumberOfContourPoints = len(contour)
        entry.ContourData = [format_ds(round(float(v), 4)) for v in contour.reshape(-1)]
        item.ContourSequence.append(entry)
    return item


def _observation_item(number: int, roi: RoiDefinition) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = number
    item.RTROIInterpretedType = roi.interpreted_type
    item.ROIInterpreter = ""
    return item
