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

from theranode.dicomio.errors import MissingAttributeError, UnsupportedObjectError
from theranode.dicomio.integrity import ObjectTooLargeError
from theranode.dicomio.valuerep import format_ds
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Contour planes closer than this along the normal are one plane (mm).
PLANE_TOLERANCE_MM = 1e-3
#: Contour Data (3006,0050): x\\y\\z triplets, VR DS (PS3.3 C.8.8.6.1).
CONTOUR_DATA_TAG = 0x30060050
#: Defaults of :class:`ContourLimits` (and of ``security.max_contour_points``
#: and ``security.max_contours_per_roi``).
MAX_CONTOUR_POINTS = 1_000_000
MAX_CONTOURS_PER_ROI = 10_000


@dataclass(frozen=True)
class ContourLimits:
    """The most contour data :func:`read_rois` reads from one structure set.

    Attributes
    ----------
    max_points
        Contour points (x, y, z triplets of Contour Data) summed over every
        contour of every ROI.
    max_contours_per_roi
        Contours (each on one plane, so also an upper bound of the planes)
        of any one ROI.
    """

    max_points: int = MAX_CONTOUR_POINTS
    max_contours_per_roi: int = MAX_CONTOURS_PER_ROI


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


def read_rois(ds: Dataset, limits: ContourLimits | None = None) -> list[RoiContours]:
    """Every ROI of an RT Structure Set, with its CLOSED_PLANAR contours.

    ROIs without contours are returned with an empty ``contours``; POINT and
    OPEN contours are skipped and mentioned in ``notes``. The contour counts
    are checked against ``limits`` (the defaults when None) before any
    Contour Data value is converted.

    Raises
    ------
    ObjectTooLargeError
        More contour points, or more contours in one ROI, than ``limits``.
    UnsupportedObjectError
        Not an RT Structure Set, or Contour Data that are not numbers.
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
    check_contour_counts(contours, limits or ContourLimits())
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
        data = _contour_data(contour)
        if kind != "CLOSED_PLANAR" or data.size < 9 or data.size % 3:
            skipped[kind or "empty"] = skipped.get(kind or "empty", 0) + 1
            continue
        polygons.append(data.reshape(-1, 3))
    notes = tuple(f"skipped {n} {kind} contour(s)" for kind, n in skipped.items())
    return tuple(polygons), notes


def check_contour_counts(contours: dict[int, Dataset], limits: ContourLimits) -> None:
    """Refuse ROI contours beyond ``limits``, counted without converting a value.

    Raises
    ------
    ObjectTooLargeError
        Starting with the setting and its value (as the C-STORE Error
        Comment of the same check at ingest), then what was found.
    """
    points = 0
    for number, item in contours.items():
        sequence = item.get("ContourSequence", []) or []
        if len(sequence) > limits.max_contours_per_roi:
            raise ObjectTooLargeError(
                f"max_contours_per_roi {limits.max_contours_per_roi} exceeded: ROI {number} "
                f"has {len(sequence)} contours; resample its contours or raise "
                "security.max_contours_per_roi"
            )
        points += sum(_value_count(contour) for contour in sequence) // 3
        if points > limits.max_points:
            raise ObjectTooLargeError(
                f"max_contour_points {limits.max_points} exceeded: the structure set holds "
                f"more contour points than that; resample its contours or raise "
                "security.max_contour_points"
            )


def _value_count(contour: Dataset) -> int:
    """How many values Contour Data holds, from the raw bytes when not yet converted."""
    if CONTOUR_DATA_TAG not in contour:
        return 0
    value = contour.get_item(CONTOUR_DATA_TAG).value
    if value is None:
        return 0
    if isinstance(value, bytes | bytearray):
        text = bytes(value).strip(b" \0")
        return text.count(b"\\") + 1 if text else 0
    return len(value) if isinstance(value, Sequence) and not isinstance(value, str) else 1


def _contour_data(contour: Dataset) -> FloatArray:
    """Contour Data as floats; raw DS bytes are converted at once (no DSfloat objects).

    Converting each value through pydicom's DS type costs about 10 µs; a
    structure set of a million points would take half a minute.
    """
    if CONTOUR_DATA_TAG not in contour:
        return np.empty(0, dtype=np.float64)
    value = contour.get_item(CONTOUR_DATA_TAG).value
    if value is None:
        return np.empty(0, dtype=np.float64)
    try:
        if isinstance(value, bytes | bytearray):
            text = bytes(value).strip(b" \0")
            if not text:
                return np.empty(0, dtype=np.float64)
            return np.array(text.split(b"\\"), dtype=np.float64)
        values = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        return np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UnsupportedObjectError(
            f"Contour Data (3006,0050) holds a value that is not a number ({exc}); "
            "export the structure set again."
        ) from exc


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

    The grid is walked one slice at a time along the index axis closest to
    the normal, within the ROI's bounding box; each voxel centre finds its
    nearest plane by binary search in the sorted plane positions. The work
    is O(voxels × log planes) plus the point-in-polygon tests of the voxels
    in a slab, and only planes nearest to some voxel centre are visited:
    thousands of planes on a small grid cost no more than the grid's slices.
    """
    mask = np.zeros(grid.shape, dtype=bool)
    if not roi.contours:
        logger.warning(
            "ROI %s (%d) has no contours; its mask is empty", roi.name, roi.number
        )
        return grid.with_array(mask, unit="mask")
    normal = contour_normal(roi.contours)
    planes = _group_by_plane(roi.contours, normal)
    positions = np.array([position for position, _ in planes])
    half = 0.5 * (contour_spacing_mm or _default_spacing(positions, grid, normal))
    box = _slab_index_box(grid, list(roi.contours), normal, half)
    if box is None:
        return grid.with_array(mask, unit="mask")
    slab = _Slabs(grid, normal, *_plane_basis(normal), planes, positions, half)
    axis = _walk_axis(grid, normal)  # 0, 1, 2 for the i, j, k index axis
    walked = box[2 - axis]
    for index in range(walked.start, walked.stop):
        chunk = list(box)
        chunk[2 - axis] = slice(index, index + 1)
        _fill_chunk(mask, slab, (chunk[0], chunk[1], chunk[2]))
    return grid.with_array(mask, unit="mask")


@dataclass(frozen=True)
class _Slabs:
    """The contour planes of one ROI and their slabs, as :func:`roi_mask` fills them."""

    grid: Volume
    normal: FloatArray
    u: FloatArray
    v: FloatArray
    planes: list[tuple[float, list[FloatArray]]]
    positions: FloatArray
    half_mm: float


def _group_by_plane(
    contours: Sequence[FloatArray], normal: FloatArray
) -> list[tuple[float, list[FloatArray]]]:
    """Contours grouped by plane, in increasing position along ``normal``.

    Contours are sorted by position; a plane starts at a contour more than
    :data:`PLANE_TOLERANCE_MM` beyond the first of the current plane. A
    plane's position is that of its first contour in the structure set's
    order. O(n log n) in the number of contours.
    """
    depths = np.array([float(np.mean(contour @ normal)) for contour in contours])
    groups: list[list[int]] = []
    start = -np.inf
    for index in np.argsort(depths, kind="stable"):
        if depths[index] - start > PLANE_TOLERANCE_MM:
            groups.append([])
            start = depths[index]
        groups[-1].append(int(index))
    return [
        (float(depths[min(group)]), [contours[i] for i in sorted(group)])
        for group in groups
    ]


def _default_spacing(positions: FloatArray, grid: Volume, normal: FloatArray) -> float:
    if positions.size > 1:
        return float(np.min(np.diff(positions)))
    steps = grid.direction_matrix * np.asarray(grid.spacing_mm)
    return float(np.max(np.abs(normal @ steps)))


def _walk_axis(grid: Volume, normal: FloatArray) -> int:
    """The index axis (0 = i, 1 = j, 2 = k) whose direction is closest to ``normal``."""
    return int(np.argmax(np.abs(normal @ grid.direction_matrix)))


def nearest_plane(depths: FloatArray, positions: FloatArray) -> npt.NDArray[np.intp]:
    """Index of the nearest of the sorted, distinct ``positions`` to each depth.

    A binary search (O(log planes) per depth, no depths × planes array);
    halfway between two planes the lower one is chosen.
    """
    if positions.size == 1:
        return np.zeros(depths.shape, dtype=np.intp)
    above = np.clip(np.searchsorted(positions, depths), 1, positions.size - 1)
    below = above - 1
    closer_below = np.abs(depths - positions[below]) <= np.abs(depths - positions[above])
    return np.where(closer_below, below, above)


def _fill_chunk(
    mask: npt.NDArray[np.bool_], slabs: _Slabs, box: tuple[slice, slice, slice]
) -> None:
    """Fill the voxels of ``box`` (one slice of the ROI's box) that are inside their plane."""
    zs, ys, xs = box
    k, j, i = np.meshgrid(
        np.arange(zs.start, zs.stop),
        np.arange(ys.start, ys.stop),
        np.arange(xs.start, xs.stop),
        indexing="ij",
    )
    points = slabs.grid.index_to_patient(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    d = points @ slabs.normal
    nearest = nearest_plane(d, slabs.positions)
    in_slab = np.abs(d - slabs.positions[nearest]) <= slabs.half_mm + 1e-6
    selected = np.flatnonzero(in_slab)
    if selected.size == 0:
        return
    hit = np.zeros(d.size, dtype=bool)
    order = selected[np.argsort(nearest[selected], kind="stable")]
    plane_of = nearest[order]
    starts = np.flatnonzero(np.r_[True, plane_of[1:] != plane_of[:-1]])
    for members in np.split(order, starts[1:]):
        contours = slabs.planes[int(nearest[members[0]])][1]
        hit[members] = _inside(points[members], contours, slabs.u, slabs.v)
    mask[zs, ys, xs] |= hit.reshape(k.shape)


def _inside(
    points: FloatArray, contours: list[FloatArray], u: FloatArray, v: FloatArray
) -> npt.NDArray[np.bool_]:
    """Even-odd rule: inside an odd number of ``contours`` (holes, islands)."""
    uv = np.column_stack([points @ u, points @ v])
    inside = np.zeros(uv.shape[0], dtype=bool)
    for contour in contours:
        polygon = np.column_stack([contour @ u, contour @ v])
        near = np.flatnonzero(
            np.all((uv >= polygon.min(axis=0)) & (uv <= polygon.max(axis=0)), axis=1)
        )
        if near.size:
            inside[near] ^= PolygonPath(polygon).contains_points(uv[near])
    return inside


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
