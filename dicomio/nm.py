"""Reconstructed SPECT (NM, PT or Enhanced PET objects) → activity concentration volume.

What the stored values mean is decided from the header alone by
:func:`theranode.dicomio.spect_units.declared_values` (the same rules the listener
applies at C-STORE time, so an object it accepted is readable here). Every
quantitative encoding vendors ship is read to Bq/mL:

1. **NM with a Real World Value Mapping** in an activity concentration
   (UCUM ``Bq/mL``, ``kBq/mL``, ``MBq/mL`` …, with or without LUT Label):
   ``C = (stored × RealWorldValueSlope + RealWorldValueIntercept) × unit``.
2. **NM with Units (0054,1001) BQML** and Rescale Slope/Intercept (no RWVM):
   ``C = stored × RescaleSlope + RescaleIntercept``.
3. **PT with Units BQML**, one instance per slice, each with its own
   Rescale Slope/Intercept.
4. **Enhanced PET** (one multi-frame object): per frame, the Real World Value
   Mapping (per-frame or shared functional group) in Bq/mL; frames placed by
   their Plane Position and sorted along the normal, either order.
5. **NM in counts** — only when nothing declares other units — with a
   :class:`CountsCalibration` (camera sensitivity in cps/MBq for this camera,
   collimator and energy window)::

       C [Bq/mL] = counts / (S · T) × 1e6 / V_voxel × f_decay,
       f_decay   = λT / (1 − e^(−λT))   (when enabled)

   with ``T`` the acquisition duration in seconds, ``V_voxel`` in mL and
   λ the physical decay constant: the mean activity during the acquisition
   is A₀(1 − e^(−λT))/(λT), so ``f_decay`` refers the result to the
   acquisition start. ``T`` is Σ ActualFrameDuration × NumberOfFramesInRotation
   over the Rotation Information Sequence (total tomographic acquisition
   time), else the top-level ActualFrameDuration.

Declared units that are none of these (SUV, counts per second, unknown
codes, PT not in BQML) raise :class:`UnsupportedObjectError`: an object that
declares its units is never read as counts, whatever calibration is given.

The returned concentrations refer to the acquisition start. Decay reference
of the stored concentrations: DecayCorrection START (the PET series
reference time: Series Date/Time, or the earliest Acquisition Date/Time when
the series is dated later, as a post-processed series is; QIBA SUV
pseudo-code) needs nothing; ADMIN (values at the administration) is brought
forward × e^(−λ(t₀ − t_admin)); NONE (averages over the acquisition) ×
λT / (1 − e^(−λT)); Enhanced PET Decay Corrected YES with Decay Correction
DateTime t_dc × e^(−λ(t₀ − t_dc)). NM without DecayCorrection refers to the
acquisition start.

Geometry of NM multi-frame: Image Position/Orientation (Patient) of the
first frame from the Detector Information Sequence, frames stacked along
``row × column`` at SpacingBetweenSlices (a negative SpacingBetweenSlices, as
some vendors write, means frames run against the normal), ordered by the
Slice Vector. Signed and unsigned pixels are read as pydicom decodes them.

References
----------
DICOM PS3.3 C.8.4 (NM modules: C.8.4.9 NM Image, C.8.4.10 NM Isotope,
C.8.4.11 NM Detector, C.8.4.12 NM TOMO Acquisition), C.8.9 (PET modules:
Units, Decay Correction), C.8.22 (Enhanced PET), C.7.6.16.2.11 (Real World
Value Mapping), C.7.6.16.2.2/3 (Plane Position/Orientation functional groups).
Dewaraja YK, et al. MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325
(calibration of quantitative SPECT); EANM 2022 (decay during acquisition).
QIBA, Standardized Uptake Value (SUV) vendor-neutral pseudo-code,
http://qibawiki.rsna.org/index.php/Standardized_Uptake_Value_(SUV)
(PET reference time; per-slice rescale).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from theranode.dicomio.errors import (
    InconsistentSeriesError,
    MissingAttributeError,
    UnsupportedObjectError,
)
from theranode.dicomio.headers import acquisition_datetime, injection, parse_da, parse_dt, parse_tm
from theranode.dicomio.series import (
    direction_matrix,
    orientation_axes,
    pixel_spacing_xy,
    sort_slices,
)
from theranode.dicomio.spect_units import (
    ENHANCED_PET_IMAGE_STORAGE,
    NM_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    RECONSTRUCTED_NM,
    DecayReference,
    SpectEncoding,
    ValueDeclaration,
    declared_values,
    enhanced_frame_mapping,
    frame_group,
    number_of_frames,
)
from theranode.dicomio.spect_units import acquisition_duration_s as nm_acquisition_duration_s
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "ENHANCED_PET_IMAGE_STORAGE",
    "NM_IMAGE_STORAGE",
    "PET_IMAGE_STORAGE",
    "CountsCalibration",
    "SpectEncoding",
    "SpectImage",
    "counts_to_bq_per_ml",
    "nm_acquisition_duration_s",
    "read_spect",
]

#: Tag (0054,0080) Slice Vector as used in Frame Increment Pointer.
SLICE_VECTOR_TAG = 0x00540080


@dataclass(frozen=True)
class CountsCalibration:
    """Camera sensitivity to convert reconstructed counts to activity.

    Parameters
    ----------
    cps_per_mbq:
        Counts per second per MBq of the reconstructed image, for one
        camera, collimator, energy window and reconstruction.
    correct_decay_during_acquisition:
        Apply λT / (1 − e^(−λT)) so the result refers to acquisition start.
    """

    cps_per_mbq: float
    correct_decay_during_acquisition: bool = True

    def __post_init__(self) -> None:
        if not self.cps_per_mbq > 0:
            raise ValueError(
                "A counts calibration needs a positive sensitivity, "
                f"got {self.cps_per_mbq} cps/MBq."
            )


@dataclass(frozen=True)
class SpectImage:
    """A SPECT volume in Bq/mL with the facts needed for dosimetry.

    ``injection_datetime`` is ``None`` when the header holds only a time of
    day (``injection_time``): the caller must supply the date
    (PS3.3 C.8.4.10; docs/interoperability.md).
    """

    volume: Volume
    acquisition_start: datetime
    acquisition_duration_s: float | None
    injection_datetime: datetime | None
    injection_time: time | None
    injected_activity_mbq: float | None
    radionuclide: Radionuclide | None
    encoding: SpectEncoding
    series_instance_uid: str
    frame_of_reference_uid: str
    notes: tuple[str, ...] = field(default=())

    @property
    def elapsed_h(self) -> float | None:
        """Hours from injection to acquisition start, when the date is known."""
        if self.injection_datetime is None:
            return None
        return (self.acquisition_start - self.injection_datetime) / timedelta(hours=1)


def read_spect(
    datasets: Dataset | Sequence[Dataset], calibration: CountsCalibration | None = None
) -> SpectImage:
    """Read one reconstructed SPECT (NM or Enhanced PET multi-frame, or per-slice PT) as Bq/mL.

    Parameters
    ----------
    datasets:
        The NM or Enhanced PET multi-frame dataset, or every instance of a PT series.
    calibration:
        Used only for NM objects in counts (nothing declares other units);
        an object that declares Bq/mL is read in Bq/mL whatever is given here.

    Raises
    ------
    UnsupportedObjectError
        Not NM/PT, not reconstructed tomography, declared units theranode
        cannot read, or counts without calibration.
    MissingAttributeError, InconsistentSeriesError
        Geometry, timing or decay reference cannot be established.
    """
    items = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    if not items:
        raise InconsistentSeriesError("No instances were given; pass the SPECT object.")
    sop_class = str(items[0].get("SOPClassUID", ""))
    if sop_class in (NM_IMAGE_STORAGE, ENHANCED_PET_IMAGE_STORAGE):
        if len(items) != 1:
            raise InconsistentSeriesError(
                f"Expected one multi-frame object, got {len(items)} instances; pass each "
                "reconstruction on its own."
            )
        if sop_class == NM_IMAGE_STORAGE:
            return _read_nm(items[0], calibration)
        return _read_enhanced_pet(items[0])
    if sop_class == PET_IMAGE_STORAGE:
        return _read_pt(items)
    raise UnsupportedObjectError(
        f"Expected NM Image Storage ({NM_IMAGE_STORAGE}), PET Image Storage "
        f"({PET_IMAGE_STORAGE}) or Enhanced PET Image Storage ({ENHANCED_PET_IMAGE_STORAGE}), "
        f"found {sop_class!r}."
    )


# -- NM ------------------------------------------------------------------
def _read_nm(ds: Dataset, calibration: CountsCalibration | None) -> SpectImage:
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if len(image_type) < 3 or image_type[2] not in RECONSTRUCTED_NM:
        raise UnsupportedObjectError(
            f"Expected a reconstructed tomographic NM image (ImageType value 3 RECON TOMO), "
            f"found ImageType {image_type}; projections cannot be used for dosimetry."
        )
    declaration = declared_values(ds)
    if declaration.is_counts and calibration is None:
        raise UnsupportedObjectError(
            f"NM object {ds.get('SOPInstanceUID', '?')} holds counts (no Real World Value "
            "Mapping in Bq/mL, no Units BQML) and no camera calibration was given; configure "
            "the camera's sensitivity (cps/MBq) for this device."
        )
    stored = _nm_frames(ds)
    geometry = _nm_geometry(ds, stored.shape[0])
    radionuclide = _radionuclide(ds)
    start = _acquisition_start(ds)
    duration_s = nm_acquisition_duration_s(ds)
    scaled = stored * declaration.slope + declaration.intercept
    notes: list[str] = [f"values read from {declaration.source}"]
    if declaration.is_counts:
        assert calibration is not None
        values = counts_to_bq_per_ml(
            scaled, calibration, duration_s, geometry["voxel_ml"], radionuclide
        )
        notes.append(
            f"counts calibrated with {calibration.cps_per_mbq} cps/MBq over {duration_s} s"
        )
    else:
        values = _refer_to_start(
            scaled * declaration.to_bq_per_ml, declaration, start, duration_s,
            radionuclide, notes,
        )
    return _spect_image(
        ds, values, geometry, start, duration_s, radionuclide, declaration.encoding, notes
    )


def _nm_frames(ds: Dataset) -> npt.NDArray[np.float64]:
    pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    if pixels.ndim == 2:
        pixels = pixels[None]
    frames = pixels.shape[0]
    slice_vector = ds.get("SliceVector")
    if slice_vector is not None and SLICE_VECTOR_TAG in _frame_pointers(ds):
        order = np.asarray([int(v) for v in slice_vector])
        if sorted(order.tolist()) != list(range(1, frames + 1)):
            raise InconsistentSeriesError(
                f"SliceVector {order.tolist()} is not a permutation of 1..{frames}; the "
                "frames cannot be stacked."
            )
        pixels = pixels[np.argsort(order, kind="stable")]
    declared = ds.get("NumberOfSlices")
    if declared not in (None, "") and int(declared) != frames:
        raise InconsistentSeriesError(
            f"NumberOfSlices is {declared} but the object holds {frames} frames."
        )
    return pixels


def _frame_pointers(ds: Dataset) -> list[int]:
    """Tags of Frame Increment Pointer (single- or multi-valued AT)."""
    pointers = ds.get("FrameIncrementPointer")
    if pointers is None:
        return []
    if isinstance(pointers, int):
        return [int(pointers)]
    return [int(p) for p in pointers]


def _nm_geometry(ds: Dataset, frames: int) -> dict[str, Any]:
    detectors = ds.get("DetectorInformationSequence")
    if not detectors:
        raise MissingAttributeError(
            "DetectorInformationSequence is missing; a reconstructed NM image keeps its "
            "ImagePositionPatient/ImageOrientationPatient there (PS3.3 C.8.4.11)."
        )
    item = detectors[0]
    if "ImageOrientationPatient" not in item or "ImagePositionPatient" not in item:
        raise MissingAttributeError(
            "DetectorInformationSequence has no ImagePositionPatient/ImageOrientationPatient; "
            "the SPECT cannot be placed on the CT."
        )
    row, col, normal = orientation_axes(item.ImageOrientationPatient)
    gap = ds.get("SpacingBetweenSlices")
    if gap in (None, ""):
        gap = ds.get("SliceThickness")
    if gap in (None, "") or float(gap) == 0:
        raise MissingAttributeError(
            "Neither SpacingBetweenSlices nor SliceThickness is set; the slice spacing of the "
            "SPECT is unknown."
        )
    dz = float(gap)
    slice_dir = normal if dz > 0 else -normal
    dx, dy = pixel_spacing_xy(ds)
    spacing = (dx, dy, abs(dz))
    return {
        "spacing_mm": spacing,
        "origin_mm": tuple(float(v) for v in item.ImagePositionPatient),
        "direction": direction_matrix(row, col, slice_dir),
        "voxel_ml": spacing[0] * spacing[1] * spacing[2] / 1000.0,
    }


def counts_to_bq_per_ml(
    counts: npt.NDArray[np.float64],
    calibration: CountsCalibration,
    duration_s: float | None,
    voxel_ml: float,
    radionuclide: Radionuclide | None,
) -> npt.NDArray[np.float64]:
    """Counts per voxel → Bq/mL at acquisition start (see module docstring).

    References
    ----------
    MIRD Pamphlet 23 (sensitivity calibration); EANM 2022 (decay during
    acquisition: mean activity A₀(1 − e^(−λT))/(λT)).
    """
    if duration_s is None or duration_s <= 0:
        raise MissingAttributeError(
            "The acquisition duration (ActualFrameDuration, RotationInformationSequence) is "
            "missing; counts cannot be converted to activity."
        )
    values = counts / (calibration.cps_per_mbq * duration_s) * 1e6 / voxel_ml
    if calibration.correct_decay_during_acquisition:
        values = values * _mean_to_start(radionuclide, duration_s)
    return np.asarray(values, dtype=np.float64)


def _mean_to_start(radionuclide: Radionuclide | None, duration_s: float) -> float:
    """λT / (1 − e^(−λT)): mean activity over T → activity at its start."""
    nuclide = radionuclide or Radionuclide.LU177
    lam_t = nuclear_data(nuclide).decay_constant_per_h * duration_s / 3600.0
    return lam_t / (1.0 - math.exp(-lam_t)) if lam_t > 0 else 1.0


# -- decay reference -----------------------------------------------------------
def _refer_to_start(
    values: npt.NDArray[np.float64],
    declaration: ValueDeclaration,
    start: datetime,
    duration_s: float | None,
    radionuclide: Radionuclide | None,
    notes: list[str],
) -> npt.NDArray[np.float64]:
    """Concentrations at the decay reference of ``declaration`` → at ``start``."""
    decay = declaration.decay
    if decay is DecayReference.START:
        return values
    nuclide = radionuclide or Radionuclide.LU177
    if decay is DecayReference.NONE:
        if duration_s is None or duration_s <= 0:
            raise MissingAttributeError(
                "ActualFrameDuration is missing: values not decay corrected (NONE) cannot be "
                "referred to the acquisition start."
            )
        notes.append("values not decay corrected: mean over the acquisition referred to its start")
        return np.asarray(values * _mean_to_start(nuclide, duration_s), dtype=np.float64)
    reference = declaration.decay_datetime  # dated by declared_values for ADMIN and DATETIME
    assert reference is not None
    if decay is DecayReference.ADMIN:
        notes.append("ADMIN decay correction undone: values refer to acquisition start")
    else:
        notes.append(
            f"values decay corrected to {reference.isoformat()} referred to acquisition start"
        )
    elapsed_h = (start - reference) / timedelta(hours=1)
    lam = nuclear_data(nuclide).decay_constant_per_h
    return np.asarray(values * math.exp(-lam * elapsed_h), dtype=np.float64)


# -- PT ------------------------------------------------------------------
def _read_pt(datasets: Sequence[Dataset]) -> SpectImage:
    declarations = [declared_values(ds) for ds in datasets]
    decays = {d.decay for d in declarations}
    if len(decays) != 1:
        raise InconsistentSeriesError(
            f"The PT instances disagree on DecayCorrection ({sorted(d.value for d in decays)}); "
            "a series must have one decay reference."
        )
    ordered, stack = sort_slices(datasets)
    by_uid = {id(ds): d for ds, d in zip(datasets, declarations, strict=True)}
    values = np.stack([_pt_slice(ds, by_uid[id(ds)]) for ds in ordered])
    first = ordered[0]
    radionuclide = _radionuclide(first)
    declaration = by_uid[id(first)]
    start = _pt_reference_time(ordered, declaration.decay)
    duration = first.get("ActualFrameDuration")
    duration_s = None if duration in (None, "") else float(duration) / 1000.0
    notes: list[str] = [f"values read from {declaration.source}"]
    values = _refer_to_start(values, declaration, start, duration_s, radionuclide, notes)
    geometry = {
        "spacing_mm": stack.spacing_mm,
        "origin_mm": stack.origin_mm,
        "direction": stack.direction,
    }
    return _spect_image(
        first, values, geometry, start, duration_s, radionuclide, SpectEncoding.PT_BQML, notes
    )


def _pt_slice(ds: Dataset, declaration: ValueDeclaration) -> npt.NDArray[np.float64]:
    stored = np.asarray(ds.pixel_array, dtype=np.float64)
    return (stored * declaration.slope + declaration.intercept) * declaration.to_bq_per_ml


def _acquired(ds: Dataset) -> datetime | None:
    """Acquisition DateTime, else Acquisition Date + Time (no other fallback)."""
    direct = parse_dt(ds.get("AcquisitionDateTime"))
    if direct is not None:
        return direct
    day, tod = parse_da(ds.get("AcquisitionDate")), parse_tm(ds.get("AcquisitionTime"))
    return datetime.combine(day, tod) if day is not None and tod is not None else None


def _pt_reference_time(ordered: Sequence[Dataset], decay: DecayReference) -> datetime:
    """The time PT values refer to, taken as the acquisition start.

    Series Date/Time is the PET reference time (PS3.3 C.8.9.1.1.3); when it
    is later than the earliest Acquisition Date/Time, the series was made
    after the scan (post-processed, exported) and the acquisition time is used
    (QIBA SUV pseudo-code). Values not decay corrected (NONE) refer to the
    earliest acquisition start.
    """
    first = ordered[0]
    day, tod = parse_da(first.get("SeriesDate")), parse_tm(first.get("SeriesTime"))
    series = datetime.combine(day, tod) if day is not None and tod is not None else None
    times = [t for t in (_acquired(ds) for ds in ordered) if t is not None]
    acquired = min(times) if times else None
    if acquired is not None and (
        series is None or series > acquired or decay is DecayReference.NONE
    ):
        return acquired
    if series is not None:
        return series
    return _acquisition_start(first)


# -- Enhanced PET ------------------------------------------------------------
def _read_enhanced_pet(ds: Dataset) -> SpectImage:
    declaration = declared_values(ds)
    frames = number_of_frames(ds)
    stored = np.asarray(ds.pixel_array, dtype=np.float64)
    if stored.ndim == 2:
        stored = stored[None]
    if stored.shape[0] != frames:
        raise InconsistentSeriesError(
            f"NumberOfFrames is {frames} but the pixel data holds {stored.shape[0]} frames."
        )
    planes = [_enhanced_plane(ds, index) for index in range(frames)]
    index_of = {id(plane): index for index, plane in enumerate(planes)}
    ordered, stack = sort_slices(planes)
    order = [index_of[id(plane)] for plane in ordered]
    values = np.stack([_enhanced_frame_values(ds, stored[i], i) for i in order])
    radionuclide = _radionuclide(ds)
    start = _enhanced_start(ds)
    duration_s = _enhanced_duration_s(ds)
    notes: list[str] = [f"values read from {declaration.source} of every frame"]
    values = _refer_to_start(values, declaration, start, duration_s, radionuclide, notes)
    geometry = {"spacing_mm": stack.spacing_mm, "origin_mm": stack.origin_mm,
                "direction": stack.direction}
    return _spect_image(
        ds, values, geometry, start, duration_s, radionuclide, SpectEncoding.ENHANCED_PT_BQML,
        notes,
    )


def _enhanced_frame_values(
    ds: Dataset, stored: npt.NDArray[np.float64], index: int
) -> npt.NDArray[np.float64]:
    slope, intercept, factor, _ = enhanced_frame_mapping(ds, index)
    return (stored * slope + intercept) * factor


def _enhanced_plane(ds: Dataset, index: int) -> Dataset:
    """A stand-in single-slice header for frame ``index`` (for :func:`sort_slices`)."""
    position = frame_group(ds, index, "PlanePositionSequence")
    orientation = frame_group(ds, index, "PlaneOrientationSequence")
    measures = frame_group(ds, index, "PixelMeasuresSequence")
    missing = [
        name for name, group in (("PlanePositionSequence", position),
                                 ("PlaneOrientationSequence", orientation),
                                 ("PixelMeasuresSequence", measures)) if group is None
    ]
    if missing:
        raise MissingAttributeError(
            f"{', '.join(missing)} missing for frame {index + 1} of the Enhanced PET (per-frame "
            "and shared functional groups); the frame cannot be placed in space."
        )
    assert position is not None and orientation is not None and measures is not None
    plane = Dataset()
    plane.SOPInstanceUID = ds.get("SOPInstanceUID", "")
    plane.Rows, plane.Columns = ds.get("Rows"), ds.get("Columns")
    plane.ImagePositionPatient = position.get("ImagePositionPatient")
    plane.ImageOrientationPatient = orientation.get("ImageOrientationPatient")
    plane.PixelSpacing = measures.get("PixelSpacing")
    plane.SliceThickness = measures.get("SliceThickness")
    return plane


def _enhanced_start(ds: Dataset) -> datetime:
    direct = parse_dt(ds.get("AcquisitionDateTime"))
    if direct is not None:
        return direct
    times = [
        parse_dt(content.get("FrameAcquisitionDateTime"))
        for index in range(number_of_frames(ds))
        if (content := frame_group(ds, index, "FrameContentSequence")) is not None
    ]
    found = [t for t in times if t is not None]
    return min(found) if found else _acquisition_start(ds)


def _enhanced_duration_s(ds: Dataset) -> float | None:
    top = ds.get("AcquisitionDuration")
    if top not in (None, "") and float(top) > 0:
        return float(top)  # seconds (FD, PS3.3 C.7.6.16.2.2)
    content = frame_group(ds, 0, "FrameContentSequence")
    frame_ms = content.get("FrameAcquisitionDuration") if content is not None else None
    return None if frame_ms in (None, "") else float(frame_ms) / 1000.0


# -- shared --------------------------------------------------------------
def _acquisition_start(ds: Dataset) -> datetime:
    start = acquisition_datetime(ds)
    if start is None:
        raise MissingAttributeError(
            "No acquisition date and time (AcquisitionDate/Time, SeriesDate/Time) in the "
            "SPECT header; the time point after injection cannot be known."
        )
    return start


def _radionuclide(ds: Dataset) -> Radionuclide | None:
    shot = injection(ds)
    if shot is None or shot.radionuclide is None:
        return None
    try:
        return Radionuclide(shot.radionuclide)
    except ValueError:
        logger.warning(
            "Radionuclide %r is not one theranode has data for", shot.radionuclide
        )
        return None


def _spect_image(
    ds: Dataset,
    values: npt.NDArray[np.float64],
    geometry: dict[str, Any],
    start: datetime,
    duration_s: float | None,
    radionuclide: Radionuclide | None,
    encoding: SpectEncoding,
    notes: list[str],
) -> SpectImage:
    shot = injection(ds)
    volume = Volume(
        array=values.astype(np.float32),
        spacing_mm=geometry["spacing_mm"],
        origin_mm=geometry["origin_mm"],
        direction=geometry["direction"],
        unit="Bq/mL",
        metadata={
            "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
            "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
            "encoding": encoding.value,
        },
    )
    return SpectImage(
        volume=volume,
        acquisition_start=start,
        acquisition_duration_s=duration_s,
        injection_datetime=shot.start if shot else None,
        injection_time=shot.start_time if shot else None,
        injected_activity_mbq=shot.activity_mbq if shot else None,
        radionuclide=radionuclide,
        encoding=encoding,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
        notes=tuple(notes),
    )
