"""RT Dose objects of absorbed-dose maps (written with pydicom).

highdicom has no RT Dose class, so the object is assembled here module by
module. The dose is stored as unsigned integers times Dose Grid Scaling, with the
scaling chosen as ``max dose / (2^bits - 1)`` so that the largest dose uses
the full integer range and every voxel is stored to within half a scaling
step: 16 bits by default (within 7.6e-6 of the maximum; the depth dciodvfy
can check), 32 bits on request.

There is no RT Plan behind a radiopharmaceutical therapy, so Dose Summation
Type is ``PLAN_OVERVIEW`` with a Plan Overview Sequence describing the
cycle (or the course, its cycles counted as fractions) and referencing the
reference CT and the RTSTRUCT; ``PLAN`` and ``FRACTION`` would require a
Referenced RT Plan Sequence that cannot exist (see docs/conformance.md).

References
----------
DICOM PS3.3 A.18 (RT Dose IOD), C.8.8.3 (RT Dose module: Dose Grid Scaling,
Grid Frame Offset Vector C.8.8.3.2, Dose Comment LO), C.8.8.4 (RT DVH module),
C.7.6.1 (General Image module: Image Comments LT), C.7.6.2 (Image Plane module),
C.7.6.6 (Multi-frame module), C.12.2 (Common Instance Reference module).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from theranode.dicomio.dvh import dicom_bin_width_gy
from theranode.dicomio.errors import DicomInputError, UnsupportedObjectError
from theranode.dicomio.part10 import (
    common_instance_reference,
    file_meta,
    in_tag_order,
    set_creation,
    set_equipment,
    sop_reference,
)
from theranode.dicomio.source import SourceContext, patient_study_dataset
from theranode.dicomio.uids import OutputObject, ResultIdentity, ResultKind, output_uids
from theranode.dicomio.valuerep import format_ds, format_ds_values
from theranode.dosimetry.results import CourseResult, CycleResult
from theranode.dosimetry.roi import CumulativeDvh
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
GRID_FRAME_OFFSET_VECTOR_TAG = Tag(0x3004, 0x000C)
#: Longest Dose Comment (VR LO, PS3.5 6.2).
MAX_DOSE_COMMENT = 64
#: Longest Image Comments (VR LT, PS3.5 6.2).
MAX_IMAGE_COMMENTS = 10240
#: Bits per stored dose value that writers may choose (PS3.3 C.8.8.3.4.1: 16 or 32).
SUPPORTED_BITS = (16, 32)
DEFAULT_BITS = 16
DOSE_SUMMATION_TYPE = "PLAN_OVERVIEW"
ORTHOGONALITY_TOLERANCE = 1e-4
#: Purpose of reference of the input images (PS3.16 CID 7201).
IMAGE_USED_FOR_DOSE_CALCULATION = ("129202", "DCM", "Image used for Dose Calculation")


@dataclass(frozen=True, eq=False)
class DoseGrid:
    """A dose array laid out as DICOM expects it (slices along +normal)."""

    array_gy: npt.NDArray[np.float64]
    image_position_mm: tuple[float, float, float]
    image_orientation: tuple[float, float, float, float, float, float]
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    frame_offsets_mm: tuple[float, ...]


def dose_grid(dose: Volume) -> DoseGrid:
    """Lay ``dose`` out as RT Dose frames.

    The ITK direction's first two columns are the row and column direction
    cosines (Image Orientation (Patient)). The slice axis must be parallel
    to their cross product (the slice normal); when it points the other
    way, the slices are reversed so that Grid Frame Offset Vector increases
    from 0 along the normal, the convention GDCM and dicompyler-core read.

    Raises
    ------
    DicomInputError
        The index axes are not orthogonal (a sheared grid RT Dose cannot hold).
    """
    direction = dose.direction_matrix
    row, col, slice_axis = direction[:, 0], direction[:, 1], direction[:, 2]
    normal = np.cross(row, col)
    if (
        abs(float(row @ col)) > ORTHOGONALITY_TOLERANCE
        or abs(abs(float(slice_axis @ normal)) - 1.0) > ORTHOGONALITY_TOLERANCE
    ):
        raise DicomInputError(
            f"The dose grid's axes are not orthogonal (direction {dose.direction}); "
            "RT Dose needs a rectilinear grid. Resample the dose onto the reference CT grid."
        )
    array = np.asarray(dose.array, dtype=np.float64)
    origin = np.asarray(dose.origin_mm, dtype=float)
    spacing_x, spacing_y, spacing_z = dose.spacing_mm
    if float(slice_axis @ normal) < 0:
        array = array[::-1]
        origin = origin + slice_axis * spacing_z * (array.shape[0] - 1)
    offsets = tuple(float(k) * spacing_z for k in range(array.shape[0]))
    return DoseGrid(
        array_gy=array,
        image_position_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        image_orientation=(*map(float, row), *map(float, col)),  # type: ignore[arg-type]
        pixel_spacing_mm=(spacing_y, spacing_x),
        slice_spacing_mm=spacing_z,
        frame_offsets_mm=offsets,
    )


def max_pixel_value(bits: int) -> int:
    """Largest unsigned integer of ``bits`` bits."""
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"RT Dose pixels are 16 or 32 bits, got {bits}.")
    return int(2**bits - 1)


def dose_grid_scaling(max_dose_gy: float, bits: int = DEFAULT_BITS) -> str:
    """Dose Grid Scaling (as written, a DS) mapping ``max_dose_gy`` to ``2^bits - 1``.

    The scaling is rounded *up* in its 16-character decimal form so that the
    largest dose still fits in ``bits`` bits. The stored value of any voxel
    then differs from its dose by at most half the scaling.
    """
    if max_dose_gy <= 0.0:
        return "1"
    exact = max_dose_gy / max_pixel_value(bits)
    text = format_ds(exact * (1.0 + 1e-9))
    if float(text) < exact:  # pragma: no cover - 1e-9 margin exceeds DS rounding
        raise AssertionError(f"Dose Grid Scaling {text} rounds below {exact!r}")
    return text


def check_dose_values(
    array_gy: npt.NDArray[np.float64], tolerance_gy: float = 0.0
) -> None:
    """Refuse NaN, infinite and negative doses (below ``-tolerance_gy``).

    Raises
    ------
    DicomInputError
        The dose contains NaN/infinite values, or values below ``-tolerance_gy``
        (negative doses are physically impossible; tiny negative noise within
        the tolerance is clipped to 0 when quantized).
    """
    if not np.all(np.isfinite(array_gy)):
        raise DicomInputError(
            "The dose map contains NaN or infinite values; fix the dose computation "
            "(e.g. mask air voxels) before writing RT Dose."
        )
    lowest = float(array_gy.min()) if array_gy.size else 0.0
    if lowest < -tolerance_gy:
        raise DicomInputError(
            f"The dose map has negative values down to {lowest:g} Gy; absorbed dose "
            "cannot be negative. Check the background subtraction of the dose map."
        )


def quantize(
    array_gy: npt.NDArray[np.float64], scaling: float, bits: int = DEFAULT_BITS
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """Integer pixel values ``round(dose / scaling)`` as little-endian unsigned ints.

    Raises
    ------
    DicomInputError
        See :func:`check_dose_values` (tolerance: one scaling step).
    """
    check_dose_values(array_gy, tolerance_gy=scaling)
    pixels = np.rint(np.clip(array_gy, 0.0, None) / scaling)
    top = max_pixel_value(bits)
    return np.clip(pixels, 0, top).astype("<u2" if bits == 16 else "<u4")


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _rt_series(ds: Dataset, source: SourceContext, identity: ResultIdentity) -> None:
    uids = output_uids(source, identity, OutputObject.RT_DOSE)
    ds.Modality = OutputObject.RT_DOSE.modality
    ds.SeriesInstanceUID = uids.series_instance_uid
    ds.SOPInstanceUID = uids.sop_instance_uid
    ds.SeriesNumber = identity.series_number(OutputObject.RT_DOSE)
    ds.SeriesDescription = identity.series_description(OutputObject.RT_DOSE)
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = source.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def _image_modules(ds: Dataset, grid: DoseGrid, scaling_text: str, bits: int) -> None:
    nz, ny, nx = grid.array_gy.shape
    ds.InstanceNumber = 1
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PixelSpacing = format_ds_values(grid.pixel_spacing_mm)
    ds.ImageOrientationPatient = format_ds_values(grid.image_orientation)
    ds.ImagePositionPatient = format_ds_values(grid.image_position_mm)
    ds.SliceThickness = format_ds(grid.slice_spacing_mm)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ny
    ds.Columns = nx
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = GRID_FRAME_OFFSET_VECTOR_TAG
    ds.GridFrameOffsetVector = format_ds_values(grid.frame_offsets_mm)
    ds.DoseGridScaling = scaling_text
    pixels = quantize(grid.array_gy, float(scaling_text), bits)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OW"


def _plan_overview(
    source: SourceContext, identity: ResultIdentity, fractions_included: int
) -> Dataset:
    item = Dataset()
    item.PlanOverviewIndex = 1
    item.RTPlanLabel = _plan_label(identity)
    if source.reference_ct:
        item.ReferencedImageSequence = [
            sop_reference(ref) for ref in source.reference_ct
        ]
    if identity.kind is ResultKind.CYCLE:
        item.CurrentFractionNumber = int(identity.cycle_number or 0)
    if source.structure_set is not None:
        item.ReferencedStructureSetSequence = [sop_reference(source.structure_set)]
    item.PrescriptionOverviewSequence = []
    item.NumberOfFractionsIncluded = fractions_included
    item.TreatmentSite = ""
    item.TreatmentSiteCodeSequence = []
    return item


def _plan_label(identity: ResultIdentity) -> str:
    """RT Plan Label (SH, at most 16 characters)."""
    if identity.kind is ResultKind.CYCLE:
        return f"Lu177 cycle {identity.cycle_number}"[:16]
    return "Lu177 course"


def _rt_dose_module(
    ds: Dataset,
    source: SourceContext,
    identity: ResultIdentity,
    comment: str,
    fractions_included: int,
) -> None:
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseSummationType = DOSE_SUMMATION_TYPE
    ds.TissueHeterogeneityCorrection = "IMAGE"
    if comment:
        if len(comment) > MAX_DOSE_COMMENT:
            raise ValueError(
                f"Dose Comment is LO (at most {MAX_DOSE_COMMENT} characters), got "
                f"{len(comment)}: {comment!r}; put the long statement in Image Comments."
            )
        ds.DoseComment = comment
    ds.PlanOverviewSequence = [_plan_overview(source, identity, fractions_included)]
    references = []
    for ref in source.images:
        item = sop_reference(ref)
        item.PurposeOfReferenceCodeSequence = [
            _code_item(*IMAGE_USED_FOR_DOSE_CALCULATION)
        ]
        references.append(item)
    if references:
        ds.ReferencedInstanceSequence = references


def _dvh_module(
    ds: Dataset, source: SourceContext, dvhs: Mapping[str, CumulativeDvh]
) -> None:
    """RT DVH module for the VOIs that are ROIs of the referenced structure set."""
    if source.structure_set is None:
        logger.info("No RTSTRUCT referenced: DVHs are left out of the RT Dose.")
        return
    items = []
    for name, dvh in dvhs.items():
        roi_number = source.roi_number(name)
        if roi_number is None:
            logger.warning(
                "VOI %s is not an ROI of the RTSTRUCT; its DVH is left out.", name
            )
            continue
        width = dicom_bin_width_gy(dvh)
        if width is None:
            logger.warning(
                "The DVH of VOI %s does not start at 0 Gy in uniform bins; left out.",
                name,
            )
            continue
        items.append(_dvh_item(dvh, roi_number, width))
    if items:
        ds.ReferencedStructureSetSequence = [sop_reference(source.structure_set)]
        ds.DVHSequence = items


def _dvh_item(dvh: CumulativeDvh, roi_number: int, width_gy: float) -> Dataset:
    item = Dataset()
    roi = Dataset()
    roi.ReferencedROINumber = roi_number
    roi.DVHROIContributionType = "INCLUDED"
    item.DVHReferencedROISequence = [roi]
    item.DVHType = "CUMULATIVE"
    item.DoseUnits = "GY"
    item.DoseType = "PHYSICAL"
    item.DVHDoseScaling = "1"
    item.DVHVolumeUnits = "CM3"
    volumes_cm3 = np.asarray(dvh.volume_ml_at(), dtype=float)
    item.DVHNumberOfBins = int(volumes_cm3.size)
    pairs = np.column_stack([np.full(volumes_cm3.size, width_gy), volumes_cm3])
    item.DVHData = format_ds_values(pairs.ravel())
    statistics = {"DVHMinimumDose": dvh.minimum, "DVHMaximumDose": dvh.maximum,
                  "DVHMeanDose": dvh.mean}
    for keyword, value in statistics.items():  # RT DVH module, Type 3 (PS3.3 C.8.8.4)
        if value is not None:
            setattr(item, keyword, format_ds(value))
    return item


def write_rt_dose(
    dose: Volume,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
    comment: str = "",
    statement: str = "",
    fractions_included: int = 1,
    bits: int = DEFAULT_BITS,
) -> Dataset:
    """An RT Dose dataset of the absorbed-dose map ``dose`` (Gy).

    Parameters
    ----------
    dose:
        Absorbed dose in Gy on the dose grid, in the frame of reference of
        ``source`` (the cycle's reference CT; for a course the first cycle's).
    source:
        Identity and references copied from the inputs.
    identity:
        Which result (cycle/course, version, creation time) this is; the
        UIDs are derived from it and from the input UIDs.
    dvhs:
        Cumulative DVHs by VOI name, written in the RT DVH module for the
        VOIs that are ROIs of the referenced RTSTRUCT.
    comment:
        Dose Comment: how the map was made, at most 64 characters (LO).
    statement:
        The full statement of how the map was made, written as Image
        Comments (LT, General Image module).
    fractions_included:
        Number of cycles summed (1 for a cycle, the cycle count for a course).
    bits:
        16 (default) or 32 bits per voxel. 16 bits keep every voxel within
        max/131070 of its dose, far below dosimetric uncertainty, and are
        what dciodvfy 2022 can verify (it aborts on 32-bit pixel data); 32
        bits are offered for consumers that want the finer grid.

    Raises
    ------
    UnsupportedObjectError
        The volume is not in Gy.
    DicomInputError
        NaN or negative doses, or a non-rectilinear grid.
    """
    if dose.unit not in ("Gy", "GY", "gy"):
        raise UnsupportedObjectError(
            f"RT Dose stores absorbed dose in Gy; the volume's unit is {dose.unit!r}. "
            "Convert the map to Gy (or label it) before writing."
        )
    grid = dose_grid(dose)
    check_dose_values(
        grid.array_gy,
        tolerance_gy=float(np.max(np.abs(grid.array_gy), initial=0.0)) * 1e-6,
    )
    scaling_text = dose_grid_scaling(
        float(grid.array_gy.max()) if grid.array_gy.size else 0.0, bits
    )
    ds = patient_study_dataset(source)
    ds.SOPClassUID = RT_DOSE_STORAGE
    _rt_series(ds, source, identity)
    set_equipment(ds, identity)
    set_creation(ds, identity)
    _image_modules(ds, grid, scaling_text, bits)
    _rt_dose_module(ds, source, identity, comment, fractions_included)
    if statement:
        ds.ImageComments = statement[:MAX_IMAGE_COMMENTS]
    if dvhs:
        _dvh_module(ds, source, dvhs)
    for keyword, items in common_instance_reference(
        source, source.all_instances
    ).items():
        setattr(ds, keyword, items)
    ds.file_meta = file_meta(RT_DOSE_STORAGE, ds.SOPInstanceUID)
    ds.preamble = b"\x00" * 128
    logger.info(
        "RT Dose %s for %s: %s frames, max %.4g Gy, scaling %s",
        ds.SOPInstanceUID,
        identity.label,
        grid.array_gy.shape[0],
        float(grid.array_gy.max()) if grid.array_gy.size else 0.0,
        scaling_text,
    )
    return in_tag_order(ds)



def cycle_rt_dose(
    result: CycleResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
) -> Dataset:
    """RT Dose of a cycle's absorbed-dose map (``result.dose_map``).

    Raises
    ------
    DicomInputError
        The cycle result carries no dose map (e.g. a single-time-point cycle
        computed without one).
    """
    if result.dose_map is None:
        raise DicomInputError(
            f"Cycle {result.cycle_number} has no dose map; RT Dose can only be written "
            "for a cycle computed voxel-wise."
        )
    return write_rt_dose(
        result.dose_map,
        source,
        identity,
        dvhs=dvhs,
        comment=dose_comment(result.settings.get("dose_map_comment"), result.method.value),
        statement=map_statement(
            f"Lu-177 absorbed dose, cycle {result.cycle_number} ({result.method.value})",
            result.settings.get("dose_map"),
        ),
    )


def dose_comment(comment: object, fallback: str) -> str:
    """A Dose Comment of at most 64 characters: ``comment``, else ``fallback`` cut short."""
    text = comment if isinstance(comment, str) and comment else fallback
    if len(text) <= MAX_DOSE_COMMENT:
        return text
    return text[: MAX_DOSE_COMMENT - 3].rstrip() + "..."


def map_statement(what: str, method: object) -> str:
    """Image Comments: what the map is and how it was made."""
    if isinstance(method, str) and method:
        return f"{what}. Dose map: {method}."
    return f"{what}."


def course_rt_dose(
    course: CourseResult,
    source: SourceContext,
    identity: ResultIdentity,
    *,
    dvhs: Mapping[str, CumulativeDvh] | None = None,
) -> Dataset:
    """RT Dose of a course's cumulative map (``course.course_map``, first cycle's grid)."""
    if course.course_map is None:
        raise DicomInputError(
            "The course result carries no cumulative dose map; RT Dose for a course "
            "needs the cycle maps summed on the first cycle's reference CT."
        )
    numbers = ", ".join(str(c.cycle_number) for c in course.cycles)
    what = f"Lu-177 cumulative absorbed dose over cycles {numbers}"
    return write_rt_dose(
        course.course_map,
        source,
        identity,
        dvhs=dvhs,
        comment=dose_comment(course.course_map_comment, what),
        statement=map_statement(what, course.course_map_method),
        fractions_included=max(len(course.cycles), 1),
    )


def read_rt_dose(ds: Dataset) -> Volume:
    """The dose map (Gy) of an RT Dose dataset, as a :class:`Volume`.

    Reads back what :func:`write_rt_dose` writes (and any RT Dose with a
    uniform Grid Frame Offset Vector): used to check the writer. Course sums
    do not load doses from RT Dose objects (whose stored values are scaled
    integers): they read each cycle's exact dose map from the stored result
    (:mod:`theranode.service.jobs.results`).

    Raises
    ------
    UnsupportedObjectError
        Not an RT Dose in Gy, or non-uniform frame offsets.
    """
    if str(ds.get("SOPClassUID", "")) != RT_DOSE_STORAGE or ds.get("DoseUnits") != "GY":
        raise UnsupportedObjectError(
            f"Expected an RT Dose in GY, got SOP class {ds.get('SOPClassUID')} with "
            f"units {ds.get('DoseUnits')}."
        )
    frames = ds.pixel_array.astype(np.float64).reshape(
        int(ds.get("NumberOfFrames", 1)), int(ds.Rows), int(ds.Columns)
    )
    array = frames * float(ds.DoseGridScaling)
    offsets = np.asarray([float(v) for v in _as_list(ds.GridFrameOffsetVector)])
    spacing_z = _uniform_step(offsets)
    row = np.asarray([float(v) for v in ds.ImageOrientationPatient[:3]])
    col = np.asarray([float(v) for v in ds.ImageOrientationPatient[3:]])
    normal = np.cross(row, col)
    position = (
        np.asarray([float(v) for v in ds.ImagePositionPatient]) + normal * offsets[0]
    )
    direction = np.column_stack([row, col, normal]).ravel()
    return Volume(
        array=array,
        spacing_mm=(float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0]), spacing_z),
        origin_mm=(float(position[0]), float(position[1]), float(position[2])),
        direction=tuple(float(v) for v in direction),  # type: ignore[arg-type]
        unit="Gy",
    )


def _as_list(value: Any) -> list[Any]:
    """A multi-valued element's values; a single value as a one-item list."""
    return list(value) if isinstance(value, MultiValue) else [value]


def _uniform_step(offsets: npt.NDArray[np.float64]) -> float:
    if offsets.size < 2:
        return 1.0
    steps = np.diff(offsets)
    if not np.allclose(steps, steps[0], rtol=1e-4, atol=1e-4) or steps[0] <= 0:
        raise UnsupportedObjectError(
            f"Grid Frame Offset Vector is not uniformly increasing (steps {steps[:5]}...); "
            "theranode reads only regular dose grids."
        )
    return float(steps[0])
