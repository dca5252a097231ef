"""Reconstructed SPECT (NM or PT objects) → activity concentration volume.

Three encodings are read, in this order of preference:

1. **NM with a Real World Value Mapping in Bq/mL** — quantitative SPECT:
   ``C = stored × RealWorldValueSlope + RealWorldValueIntercept``.
2. **PT with Units BQML** (vendors exporting SPECT as PET, per-slice classic
   PT): ``C = stored × RescaleSlope + RescaleIntercept``; with
   DecayCorrection ``ADMIN`` the values are brought back to the acquisition
   start (× e^(−λ_phys Δt)).
3. **NM in counts** with a :class:`CountsCalibration` (camera sensitivity in
   cps/MBq for this camera, collimator and energy window)::

       C [Bq/mL] = counts / (S · T) × 1e6 / V_voxel × f_decay,
       f_decay   = λT / (1 − e^(−λT))   (when enabled)

   with ``T`` the acquisition duration in seconds, ``V_voxel`` in mL and
   λ the physical decay constant: the mean activity during the acquisition
   is A₀(1 − e^(−λT))/(λT), so ``f_decay`` refers the result to the
   acquisition start. ``T`` is Σ ActualFrameDuration × NumberOfFramesInRotation
   over the Rotation Information Sequence (total tomographic acquisition
   time), else the top-level ActualFrameDuration.

The returned concentrations refer to the acquisition start.

Geometry of NM multi-frame: Image Position/Orientation (Patient) of the
first frame from the Detector Information Sequence, frames stacked along
``row × column`` at SpacingBetweenSlices (a negative SpacingBetweenSlices, as
some vendors write, means frames run against the normal), ordered by the
Slice Vector.

References
----------
DICOM PS3.3 C.8.4 (NM modules: C.8.4.9 NM Image, C.8.4.10 NM Isotope,
C.8.4.11 NM Detector, C.8.4.12 NM TOMO Acquisition), C.8.9 (PET modules:
Units, Decay Correction), C.7.6.16.2.11 (Real World Value Mapping).
Dewaraja YK, et al. MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325
(calibration of quantitative SPECT); EANM 2022 (decay during acquisition).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomio.errors import (
    InconsistentSeriesError,
    MissingAttributeError,
    UnsupportedObjectError,
)
from dicomio.headers import acquisition_datetime, injection, parse_da, parse_tm
from dicomio.series import (
    direction_matrix,
    orientation_axes,
    pixel_spacing_xy,
    sort_slices,
)
from dosimetry.radionuclides import Radionuclide, nuclear_data
from dosimetry.volume import Volume

logger = logging.getLogger(__name__)

NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
#: UCUM codes accepted as "Bq/mL" in a Real World Value Mapping.
BQ_PER_ML_CODES = frozenset({"bq/ml"})
#: Tag (0054,0080) Slice Vector as used in Frame Increment Pointer.
SLICE_VECTOR_TAG = 0x00540080


class SpectEncoding(str, Enum):
    """How the voxel values of a SPECT object were turned into Bq/mL."""

    NM_REAL_WORLD_VALUES = "NM real world value mapping (Bq/mL)"
    PT_BQML = "PT Units BQML"
    NM_COUNTS_CALIBRATED = "NM counts with camera calibration"


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
                f"A counts calibration needs a positive sensitivity, got {self.cps_per_mbq} cps/MBq."
            )


@dataclass(frozen=True)
class SpectImage:
    """A SPECT volume in Bq/mL with the facts needed for dosimetry.

    ``injection_datetime`` is ``None`` when the header holds only a time of
    day (``injection_time``): the caller must supply the date (INTEROP.md).
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
    """Read one reconstructed SPECT (NM multi-frame or per-slice PT) as Bq/mL.

    Parameters
    ----------
    datasets:
        The NM multi-frame dataset, or every instance of a PT series.
    calibration:
        Needed only for NM objects in counts (no Bq/mL mapping).

    Raises
    ------
    UnsupportedObjectError
        Not NM/PT, not reconstructed tomography, or counts without calibration.
    MissingAttributeError, InconsistentSeriesError
        Geometry or timing cannot be established.
    """
    items = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    if not items:
        raise InconsistentSeriesError("No instances were given; pass the SPECT object.")
    sop_class = str(items[0].get("SOPClassUID", ""))
    if sop_class == NM_IMAGE_STORAGE:
        if len(items) != 1:
            raise InconsistentSeriesError(
                f"Expected one multi-frame NM object, got {len(items)} instances; pass each "
                "reconstruction on its own."
            )
        return _read_nm(items[0], calibration)
    if sop_class == PET_IMAGE_STORAGE:
        return _read_pt(items)
    raise UnsupportedObjectError(
        f"Expected NM Image Storage ({NM_IMAGE_STORAGE}) or PET Image Storage "
        f"({PET_IMAGE_STORAGE}), found {sop_class!r}."
    )


# -- NM ------------------------------------------------------------------
def _read_nm(ds: Dataset, calibration: CountsCalibration | None) -> SpectImage:
    image_type = [str(v).upper() for v in ds.get("ImageType", [])]
    if len(image_type) < 3 or image_type[2] not in ("RECON TOMO", "RECON GATED TOMO"):
        raise UnsupportedObjectError(
            f"Expected a reconstructed tomographic NM image (ImageType value 3 RECON TOMO), "
            f"found ImageType {image_type}; projections cannot be used for dosimetry."
        )
    stored = _nm_frames(ds)
    geometry = _nm_geometry(ds, stored.shape[0])
    radionuclide = _radionuclide(ds)
    start = _acquisition_start(ds)
    duration_s = nm_acquisition_duration_s(ds)
    mapping = _bq_per_ml_mapping(ds)
    notes: list[str] = []
    if mapping is not None:
        slope, intercept = mapping
        values = stored * slope + intercept
        encoding = SpectEncoding.NM_REAL_WORLD_VALUES
    elif calibration is not None:
        values = counts_to_bq_per_ml(
            stored * _rescale(ds)[0],
            calibration,
            duration_s,
            geometry["voxel_ml"],
            radionuclide,
        )
        encoding = SpectEncoding.NM_COUNTS_CALIBRATED
        notes.append(
            f"counts calibrated with {calibration.cps_per_mbq} cps/MBq over {duration_s} s"
        )
    else:
        raise UnsupportedObjectError(
            f"NM object {ds.get('SOPInstanceUID', '?')} holds counts (no Real World Value "
            "Mapping in Bq/mL) and no camera calibration was given; configure the camera's "
            "sensitivity (cps/MBq) for this device."
        )
    return _spect_image(
        ds, values, geometry, start, duration_s, radionuclide, encoding, notes
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


def nm_acquisition_duration_s(ds: Dataset) -> float | None:
    """Total acquisition time of an NM object, in seconds (None when unknown)."""
    total_ms = 0.0
    for item in ds.get("RotationInformationSequence", []) or []:
        per_frame = item.get("ActualFrameDuration")
        frames = item.get("NumberOfFramesInRotation")
        if per_frame not in (None, "") and frames not in (None, ""):
            total_ms += float(per_frame) * int(frames)
    if total_ms > 0:
        return total_ms / 1000.0
    top = ds.get("ActualFrameDuration")
    return None if top in (None, "") else float(top) / 1000.0


def _bq_per_ml_mapping(ds: Dataset) -> tuple[float, float] | None:
    for item in ds.get("RealWorldValueMappingSequence", []) or []:
        units = item.get("MeasurementUnitsCodeSequence")
        code = str(units[0].get("CodeValue", "")).strip().lower() if units else ""
        if code in BQ_PER_ML_CODES and "RealWorldValueSlope" in item:
            return float(item.RealWorldValueSlope), float(
                item.get("RealWorldValueIntercept", 0.0)
            )
    return None


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
        nuclide = radionuclide or Radionuclide.LU177
        lam_t = nuclear_data(nuclide).decay_constant_per_h * duration_s / 3600.0
        values = values * (lam_t / (1.0 - math.exp(-lam_t)))
    return np.asarray(values, dtype=np.float64)


# -- PT ------------------------------------------------------------------
def _read_pt(datasets: Sequence[Dataset]) -> SpectImage:
    units = {str(ds.get("Units", "")).upper() for ds in datasets}
    if units != {"BQML"}:
        raise UnsupportedObjectError(
            f"Expected PT images in Units BQML, found {sorted(units)}; only activity "
            "concentration images can be used for dosimetry."
        )
    ordered, stack = sort_slices(datasets)
    values = np.stack([_pt_slice(ds) for ds in ordered])
    first = ordered[0]
    radionuclide = _radionuclide(first)
    start = _pt_start(ordered)
    notes: list[str] = []
    correction = str(first.get("DecayCorrection", "START")).upper()
    if correction == "ADMIN":
        values = _undo_admin_decay_correction(values, first, start, radionuclide)
        notes.append("ADMIN decay correction undone: values refer to acquisition start")
    elif correction not in ("START", "NONE"):
        raise UnsupportedObjectError(
            f"DecayCorrection {correction!r} is not understood; expected START, ADMIN or NONE."
        )
    duration = first.get("ActualFrameDuration")
    geometry = {
        "spacing_mm": stack.spacing_mm,
        "origin_mm": stack.origin_mm,
        "direction": stack.direction,
    }
    return _spect_image(
        first,
        values,
        geometry,
        start,
        None if duration in (None, "") else float(duration) / 1000.0,
        radionuclide,
        SpectEncoding.PT_BQML,
        notes,
    )


def _pt_slice(ds: Dataset) -> npt.NDArray[np.float64]:
    slope, intercept = _rescale(ds)
    return np.asarray(ds.pixel_array, dtype=np.float64) * slope + intercept


def _pt_start(ordered: Sequence[Dataset]) -> datetime:
    """PET reference time: Series Date/Time (PS3.3 C.8.9.1.1.3), else earliest acquisition."""
    first = ordered[0]
    day, tod = parse_da(first.get("SeriesDate")), parse_tm(first.get("SeriesTime"))
    if day is not None and tod is not None:
        return datetime.combine(day, tod)
    return _acquisition_start(first)


def _undo_admin_decay_correction(
    values: npt.NDArray[np.float64],
    ds: Dataset,
    start: datetime,
    radionuclide: Radionuclide | None,
) -> npt.NDArray[np.float64]:
    shot = injection(ds)
    if shot is None or shot.start is None:
        raise MissingAttributeError(
            "DecayCorrection is ADMIN but RadiopharmaceuticalStartDateTime is missing; the "
            "values cannot be referred to the acquisition time."
        )
    elapsed_h = (start - shot.start) / timedelta(hours=1)
    lam = nuclear_data(radionuclide or Radionuclide.LU177).decay_constant_per_h
    return np.asarray(values * math.exp(-lam * elapsed_h), dtype=np.float64)


# -- shared --------------------------------------------------------------
def _rescale(ds: Dataset) -> tuple[float, float]:
    slope = ds.get("RescaleSlope")
    intercept = ds.get("RescaleIntercept")
    return (
        1.0 if slope in (None, "") else float(slope),
        0.0 if intercept in (None, "") else float(intercept),
    )


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
