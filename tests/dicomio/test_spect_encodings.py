"""Conformance corpus: every quantitative SPECT encoding, read to Bq/mL or refused at ingest.

One small synthetic object (8×8×6 voxels) per encoding, all holding the same
known activity concentrations at the acquisition start (``TRUTH``, placed in
patient space). Each readable encoding must come back from
:func:`theranode.dicomio.nm.read_spect` within 0.1 % of the truth at the same patient
positions, whatever frame order, slice direction, pixel signedness, rescale
(per slice / per frame / shared) or decay reference it uses. Each unreadable
one must be refused at C-STORE time (:func:`theranode.service.receive.ingest.parse`) with its
documented status and an Error Comment that starts with the attribute to fix.

Property: an object that declares units (RWVM units code, Units) is never
read as counts, whatever counts calibration is configured.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.service.keys import TEST_KEYER
from theranode.config.schema import CalibrationSettings, CameraCalibration
from theranode.dicomio.errors import DicomInputError
from theranode.dicomio.nm import CountsCalibration, SpectEncoding, read_spect
from theranode.dicomio.spect_units import (
    ENHANCED_PET_IMAGE_STORAGE,
    NM_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
)
from theranode.dicomio.valuerep import format_ds
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.volume import Volume
from theranode.service.receive.archive import Archive
from theranode.service.receive.ingest import (
    SUCCESS,
    UNCALIBRATED_COUNTS,
    UNREADABLE_SPECT_VALUES,
    Ingest,
    Peer,
    Rejected,
    parse,
)
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

LAMBDA_PER_H = nuclear_data("Lu-177").decay_constant_per_h
INJECTED = datetime(2024, 3, 4, 9, 15, 0)
ACQUIRED = INJECTED + timedelta(hours=25)
ELAPSED_H = 25.0
DURATION_S = 960.0  # 64 views × 15 s
CPS_PER_MBQ = 12.5
SHAPE = (6, 8, 8)  # z, y, x
SPACING = (3.0, 4.0, 5.0)  # x, y, z mm
ORIGIN = (-10.0, 20.0, -30.0)
#: Known concentrations at the acquisition start, Bq/mL, indexed [z, y, x] on TRUTH's grid.
TRUTH = Volume(
    array=np.random.default_rng(11).uniform(2e4, 5e5, SHAPE),
    spacing_mm=SPACING,
    origin_mm=ORIGIN,
    unit="Bq/mL",
)
RTOL = 1e-3  # 0.1 %
#: Bq/mL per unit of the codes the builders write (UCUM; independent of the reader's table).
BQ_PER_ML = {"Bq/mL": 1.0, "Bq/ml": 1.0, "kBq/mL": 1e3, "kBq/ml": 1e3, "MBq/mL": 1e6}
#: (1 − e^(−λT))/(λT): the mean over the acquisition of activity that starts at 1.
MEAN_OVER_ACQUISITION = (1 - math.exp(-LAMBDA_PER_H * DURATION_S / 3600)) / (
    LAMBDA_PER_H * DURATION_S / 3600
)
TO_ADMIN = math.exp(LAMBDA_PER_H * ELAPSED_H)  # values decay corrected to the injection


# -- building blocks -----------------------------------------------------------------
def _round_trip(ds: Dataset) -> Dataset:
    """Through Part-10 bytes and back, as the node receives it."""
    return pydicom.dcmread(io.BytesIO(_encode(ds)))


def _encode(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _base(sop_class: str, modality: str, series: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "SPECTCORPUS"
    ds.Modality = modality
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "Gamma 1"
    ds.StationName = "NM1"
    ds.SeriesDate = ds.AcquisitionDate = ACQUIRED.strftime("%Y%m%d")
    ds.SeriesTime = ds.AcquisitionTime = ACQUIRED.strftime("%H%M%S")
    item = Dataset()
    item.RadiopharmaceuticalStartTime = INJECTED.strftime("%H%M%S")
    item.RadiopharmaceuticalStartDateTime = INJECTED.strftime("%Y%m%d%H%M%S")
    item.RadionuclideTotalDose = "7400" if modality == "NM" else "7.4E9"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "447553000", "SCT", "^177^Lutetium")
    item.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([item])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def _store(ds: Dataset, values: np.ndarray, signed: bool) -> float:
    """Quantise ``values`` into 16-bit pixels; returns the slope used (intercept 0)."""
    top = 32767 if signed else 65535
    slope = float(format_ds(float(np.abs(values).max()) / top))
    stored = np.rint(values / slope)
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = stored.astype(np.int16 if signed else np.uint16).tobytes()
    return slope


def _units_code(code: str, scheme: str | None = "UCUM") -> Sequence:
    unit = Dataset()
    unit.CodeValue = code
    if scheme is not None:
        unit.CodingSchemeDesignator = scheme
    unit.CodeMeaning = code
    return Sequence([unit])


def _rwvm_item(code: str, slope: float, intercept: float = 0.0, *, lut_label: bool = True,
               signed: bool = False, scheme: str | None = "UCUM") -> Dataset:
    item = Dataset()
    item.RealWorldValueFirstValueMapped = -32768 if signed else 0
    item.RealWorldValueLastValueMapped = 32767 if signed else 65535
    item.RealWorldValueSlope = slope
    item.RealWorldValueIntercept = intercept
    item.LUTExplanation = code
    if lut_label:
        item.LUTLabel = "QUANT"
    item.MeasurementUnitsCodeSequence = _units_code(code, scheme)
    return item


# -- NM -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class NmSpec:
    """How an NM object encodes TRUTH."""

    rwvm_code: str | None = "Bq/mL"  # None: no Real World Value Mapping
    extra_rwvm: tuple[str, ...] = ()  # further items (e.g. SUV) with another mapping
    units: str | None = None  # Units (0054,1001)
    signed: bool = False
    negative_spacing: bool = False
    shuffled_frames: bool = False
    decay_correction: str | None = None  # DecayCorrection (0054,1102) on NM
    lut_label: bool = True
    scheme: str | None = "UCUM"
    counts: bool = False  # pixels hold counts (calibrated with CPS_PER_MBQ)


def nm_object(spec: NmSpec) -> Dataset:
    ds = _base(NM_IMAGE_STORAGE, "NM", generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    nz, ny, nx = SHAPE
    truth = TRUTH.array
    slices = list(range(nz))[::-1] if spec.negative_spacing else list(range(nz))
    z0 = ORIGIN[2] + SPACING[2] * slices[0]
    frame_of = list(np.random.default_rng(3).permutation(nz)) if spec.shuffled_frames else list(
        range(nz))
    # frame f holds slice number frame_of[f] (1-based in SliceVector) of the stack ``slices``
    stack = np.stack([truth[slices[n]] for n in frame_of])
    ds.NumberOfFrames = ds.NumberOfSlices = nz
    ds.FrameIncrementPointer = [Tag("SliceVector")]
    ds.SliceVector = [int(n) + 1 for n in frame_of]
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [format_ds(SPACING[1]), format_ds(SPACING[0])]
    ds.SpacingBetweenSlices = format_ds(-SPACING[2] if spec.negative_spacing else SPACING[2])
    ds.SliceThickness = format_ds(SPACING[2])
    detector = Dataset()
    detector.ImagePositionPatient = [format_ds(ORIGIN[0]), format_ds(ORIGIN[1]), format_ds(z0)]
    detector.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.DetectorInformationSequence = Sequence([detector])
    rotation = Dataset()
    rotation.ActualFrameDuration = 15000
    rotation.NumberOfFramesInRotation = 64
    ds.RotationInformationSequence = Sequence([rotation])
    values = stack
    if spec.counts:
        voxel_ml = SPACING[0] * SPACING[1] * SPACING[2] / 1000
        values = stack * MEAN_OVER_ACQUISITION * voxel_ml / 1e6 * CPS_PER_MBQ * DURATION_S
    elif spec.decay_correction == "ADMIN":
        values = stack * TO_ADMIN
    elif spec.decay_correction == "NONE":
        values = stack * MEAN_OVER_ACQUISITION
    factor = BQ_PER_ML.get(spec.rwvm_code or "")
    stored_values = values / factor if factor else values
    slope = _store(ds, stored_values, spec.signed)
    items = [_rwvm_item(code, slope * 3.3e-5, signed=spec.signed) for code in spec.extra_rwvm]
    if spec.rwvm_code is not None:
        items.insert(0, _rwvm_item(spec.rwvm_code, slope, lut_label=spec.lut_label,
                                   signed=spec.signed, scheme=spec.scheme))
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"  # vendors keep rescale at identity
    else:
        ds.RescaleSlope, ds.RescaleIntercept = format_ds(slope), "0"
    if items:
        ds.RealWorldValueMappingSequence = Sequence(items)
    if spec.units is not None:
        ds.Units = spec.units
    if spec.decay_correction is not None:
        ds.DecayCorrection = spec.decay_correction
    return _round_trip(ds)


# -- PT (classic, one instance per slice) ----------------------------------------------------
@dataclass(frozen=True)
class PtSpec:
    units: str | None = "BQML"
    decay_correction: str | None = "START"
    series_after_acquisition: bool = False  # a post-processed / exported series
    descending: bool = True  # instance order and positions run head to foot


def pt_series(spec: PtSpec) -> list[Dataset]:
    nz, ny, nx = SHAPE
    series = generate_uid()
    values = TRUTH.array
    if spec.decay_correction == "ADMIN":
        values = values * TO_ADMIN
    elif spec.decay_correction == "NONE":
        values = values * MEAN_OVER_ACQUISITION
    out = []
    order = list(range(nz))[::-1] if spec.descending else list(range(nz))
    for k in order:
        ds = _base(PET_IMAGE_STORAGE, "PT", series)
        if spec.series_after_acquisition:
            later = ACQUIRED + timedelta(hours=3)
            ds.SeriesDate, ds.SeriesTime = later.strftime("%Y%m%d"), later.strftime("%H%M%S")
        if spec.units is not None:
            ds.Units = spec.units
        if spec.decay_correction is not None:
            ds.DecayCorrection = spec.decay_correction
        ds.ActualFrameDuration = int(DURATION_S * 1000)
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = [format_ds(ORIGIN[0]), format_ds(ORIGIN[1]),
                                   format_ds(ORIGIN[2] + SPACING[2] * k)]
        ds.PixelSpacing = [format_ds(SPACING[1]), format_ds(SPACING[0])]
        ds.SliceThickness = format_ds(SPACING[2])
        ds.Rows, ds.Columns = ny, nx
        slope = _store(ds, values[k], signed=True)  # its own slope per slice, as GE writes
        ds.RescaleSlope, ds.RescaleIntercept = format_ds(slope), "0"
        out.append(_round_trip(ds))
    return out


# -- Enhanced PET (one multi-frame object, functional groups) -------------------------------
@dataclass(frozen=True)
class EnhancedSpec:
    rwvm_code: str | None = "Bq/ml"
    per_frame_mapping: bool = False  # RWVM (and rescale) per frame instead of shared
    descending: bool = False
    signed: bool = False
    decay_corrected: str | None = "YES"
    decay_datetime: datetime | None = ACQUIRED
    units: str | None = None  # a non-standard top-level Units, for the no-RWVM fallback


def enhanced_pet(spec: EnhancedSpec) -> Dataset:
    nz, ny, nx = SHAPE
    ds = _base(ENHANCED_PET_IMAGE_STORAGE, "PT", generate_uid())
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = ACQUIRED.strftime("%Y%m%d%H%M%S")
    ds.AcquisitionDuration = DURATION_S
    if spec.decay_corrected is not None:
        ds.DecayCorrected = spec.decay_corrected
    if spec.decay_datetime is not None and spec.decay_corrected == "YES":
        ds.DecayCorrectionDateTime = spec.decay_datetime.strftime("%Y%m%d%H%M%S")
    values = TRUTH.array
    if spec.decay_corrected == "YES" and spec.decay_datetime is not None:
        values = values * math.exp(LAMBDA_PER_H * (ACQUIRED - spec.decay_datetime)
                                   / timedelta(hours=1))
    elif spec.decay_corrected == "NO":
        values = values * MEAN_OVER_ACQUISITION
    factor = BQ_PER_ML.get(spec.rwvm_code or "", 1.0)
    order = list(range(nz))[::-1] if spec.descending else list(range(nz))
    ds.NumberOfFrames = nz
    ds.Rows, ds.Columns = ny, nx
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if spec.signed else 0
    top = 32767 if spec.signed else 65535
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    shared.PlaneOrientationSequence = Sequence([orientation])
    measures = Dataset()
    measures.PixelSpacing = [format_ds(SPACING[1]), format_ds(SPACING[0])]
    measures.SliceThickness = format_ds(SPACING[2])
    shared.PixelMeasuresSequence = Sequence([measures])
    common_slope = float(format_ds(float(values.max()) / factor / top))
    frames, per_frame = [], []
    for k in order:
        slope = (float(format_ds(float(values[k].max()) / factor / top))
                 if spec.per_frame_mapping else common_slope)
        frames.append(np.rint(values[k] / factor / slope))
        group = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [format_ds(ORIGIN[0]), format_ds(ORIGIN[1]),
                                         format_ds(ORIGIN[2] + SPACING[2] * k)]
        group.PlanePositionSequence = Sequence([position])
        content = Dataset()
        content.FrameAcquisitionDateTime = ACQUIRED.strftime("%Y%m%d%H%M%S")
        content.FrameAcquisitionDuration = DURATION_S * 1000
        group.FrameContentSequence = Sequence([content])
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = format_ds(slope), "0"
        transform.RescaleType = "US"
        if spec.per_frame_mapping:
            group.PixelValueTransformationSequence = Sequence([transform])
            if spec.rwvm_code is not None:
                group.RealWorldValueMappingSequence = Sequence(
                    [_rwvm_item(spec.rwvm_code, slope, signed=spec.signed)])
        per_frame.append(group)
    if not spec.per_frame_mapping:
        transform = Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = format_ds(common_slope), "0"
        transform.RescaleType = "US"
        shared.PixelValueTransformationSequence = Sequence([transform])
        if spec.rwvm_code is not None:
            shared.RealWorldValueMappingSequence = Sequence(
                [_rwvm_item(spec.rwvm_code, common_slope, signed=spec.signed)])
    if spec.units is not None:
        ds.Units = spec.units
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = np.stack(frames).astype(np.int16 if spec.signed else np.uint16).tobytes()
    return _round_trip(ds)


# -- the corpus ------------------------------------------------------------------------------
Builder = Callable[[], "Dataset | list[Dataset]"]

#: Encodings that declare Bq/mL (in some unit, time reference and layout): always read as such.
DECLARED: dict[str, tuple[Builder, SpectEncoding]] = {
    "nm-rwvm-Bq/mL": (lambda: nm_object(NmSpec()), SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-Bq/ml-no-lut-label-no-scheme": (
        lambda: nm_object(NmSpec(rwvm_code="Bq/ml", lut_label=False, scheme=None)),
        SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-kBq/mL": (lambda: nm_object(NmSpec(rwvm_code="kBq/mL")),
                       SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-MBq/mL": (lambda: nm_object(NmSpec(rwvm_code="MBq/mL")),
                       SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-kBq/mL-and-SUV-item": (
        lambda: nm_object(NmSpec(rwvm_code="kBq/mL", extra_rwvm=("{SUVbw}g/ml",))),
        SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-signed": (lambda: nm_object(NmSpec(signed=True)),
                       SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-negative-spacing": (lambda: nm_object(NmSpec(negative_spacing=True)),
                                 SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-slice-vector-shuffled": (lambda: nm_object(NmSpec(shuffled_frames=True)),
                                      SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-units-CNTS-rescale-counts": (  # RWVM Bq/mL wins over Units CNTS
        lambda: nm_object(NmSpec(units="CNTS")), SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-decay-ADMIN": (lambda: nm_object(NmSpec(decay_correction="ADMIN")),
                            SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-rwvm-decay-NONE": (lambda: nm_object(NmSpec(decay_correction="NONE")),
                           SpectEncoding.NM_REAL_WORLD_VALUES),
    "nm-units-BQML-rescale": (lambda: nm_object(NmSpec(rwvm_code=None, units="BQML")),
                              SpectEncoding.NM_UNITS_BQML),
    "nm-units-BQML-rescale-signed-negative-spacing": (
        lambda: nm_object(NmSpec(rwvm_code=None, units="BQML", signed=True,
                                 negative_spacing=True)),
        SpectEncoding.NM_UNITS_BQML),
    "nm-units-BQML-rwvm-counts": (  # Hermes-style {counts} mapping, but Units says BQML
        lambda: nm_object(NmSpec(rwvm_code=None, units="BQML", extra_rwvm=("{counts}",))),
        SpectEncoding.NM_UNITS_BQML),
    "pt-BQML-START-per-slice-rescale": (lambda: pt_series(PtSpec()), SpectEncoding.PT_BQML),
    "pt-BQML-START-ascending": (lambda: pt_series(PtSpec(descending=False)),
                                SpectEncoding.PT_BQML),
    "pt-BQML-ADMIN": (lambda: pt_series(PtSpec(decay_correction="ADMIN")),
                      SpectEncoding.PT_BQML),
    "pt-BQML-NONE": (lambda: pt_series(PtSpec(decay_correction="NONE")), SpectEncoding.PT_BQML),
    "pt-BQML-START-series-dated-after-scan": (
        lambda: pt_series(PtSpec(series_after_acquisition=True)), SpectEncoding.PT_BQML),
    "enhanced-pet-shared-rwvm": (lambda: enhanced_pet(EnhancedSpec()),
                                 SpectEncoding.ENHANCED_PT_BQML),
    "enhanced-pet-per-frame-rwvm-descending-signed": (
        lambda: enhanced_pet(EnhancedSpec(per_frame_mapping=True, descending=True, signed=True)),
        SpectEncoding.ENHANCED_PT_BQML),
    "enhanced-pet-kBq/ml-decay-to-admin": (
        lambda: enhanced_pet(EnhancedSpec(rwvm_code="kBq/ml", decay_datetime=INJECTED)),
        SpectEncoding.ENHANCED_PT_BQML),
    "enhanced-pet-not-decay-corrected": (
        lambda: enhanced_pet(EnhancedSpec(decay_corrected="NO", decay_datetime=None)),
        SpectEncoding.ENHANCED_PT_BQML),
    "enhanced-pet-no-rwvm-units-BQML": (
        lambda: enhanced_pet(EnhancedSpec(rwvm_code=None, units="BQML", per_frame_mapping=True)),
        SpectEncoding.ENHANCED_PT_BQML),
}

#: Counts: nothing declares other units; read only with a camera calibration.
COUNTS: dict[str, Builder] = {
    "nm-counts-nothing-declared": lambda: nm_object(NmSpec(rwvm_code=None, counts=True)),
    "nm-counts-units-CNTS": lambda: nm_object(NmSpec(rwvm_code=None, units="CNTS", counts=True)),
    "nm-counts-rwvm-{counts}": lambda: nm_object(NmSpec(rwvm_code="{counts}", counts=True)),
}


def _with(ds: Dataset, change: Callable[[Dataset], None]) -> Dataset:
    change(ds)
    return ds


def _del_units_code(ds: Dataset) -> None:
    del ds.RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence


def _lut_instead_of_slope(ds: Dataset) -> None:
    item = ds.RealWorldValueMappingSequence[0]
    del item.RealWorldValueSlope
    item.RealWorldValueLUTData = [0.0, 1.0]


def _pt_without_start_datetime(series: list[Dataset]) -> list[Dataset]:
    for ds in series:
        del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
    return series


#: Encodings that declare units theranode cannot read: (builder, attribute the comment starts with).
REFUSED: dict[str, tuple[Builder, str]] = {
    "nm-rwvm-SUV-only": (lambda: nm_object(NmSpec(rwvm_code="{SUVbw}g/ml")),
                         "RealWorldValueMappingSequence"),
    "nm-rwvm-mBq/mL-milli": (lambda: nm_object(NmSpec(rwvm_code="mBq/mL")),
                             "RealWorldValueMappingSequence"),
    "nm-rwvm-counts-per-second": (lambda: nm_object(NmSpec(rwvm_code="{counts}/s")),
                                  "RealWorldValueMappingSequence"),
    "nm-rwvm-no-units-code": (lambda: _with(nm_object(NmSpec()), _del_units_code),
                              "RealWorldValueMappingSequence"),
    "nm-rwvm-lut-data": (lambda: _with(nm_object(NmSpec()), _lut_instead_of_slope),
                         "RealWorldValueSlope"),
    "nm-units-GML": (lambda: nm_object(NmSpec(rwvm_code=None, units="GML")),
                     "Units (0054,1001)"),
    "nm-decay-correction-unknown": (lambda: nm_object(NmSpec(decay_correction="DECAY")),
                                    "DecayCorrection (0054,1102)"),
    "pt-units-CNTS": (lambda: pt_series(PtSpec(units="CNTS")), "Units (0054,1001)"),
    "pt-units-GML": (lambda: pt_series(PtSpec(units="GML")), "Units (0054,1001)"),
    "pt-units-missing": (lambda: pt_series(PtSpec(units=None)), "Units (0054,1001)"),
    "pt-decay-correction-missing": (lambda: pt_series(PtSpec(decay_correction=None)),
                                    "DecayCorrection (0054,1102)"),
    "pt-decay-correction-unknown": (lambda: pt_series(PtSpec(decay_correction="SCAN")),
                                    "DecayCorrection (0054,1102)"),
    "pt-ADMIN-without-start-datetime": (
        lambda: _pt_without_start_datetime(pt_series(PtSpec(decay_correction="ADMIN"))),
        "RadiopharmaceuticalStartDateTime"),
    "enhanced-pet-no-rwvm": (lambda: enhanced_pet(EnhancedSpec(rwvm_code=None)),
                             "RealWorldValueMappingSequence"),
    "enhanced-pet-rwvm-counts": (lambda: enhanced_pet(EnhancedSpec(rwvm_code="{counts}")),
                                 "RealWorldValueMappingSequence"),
    "enhanced-pet-decay-corrected-missing": (
        lambda: enhanced_pet(EnhancedSpec(decay_corrected=None)), "DecayCorrected (0018,9758)"),
    "enhanced-pet-decay-datetime-missing": (
        lambda: enhanced_pet(EnhancedSpec(decay_datetime=None)),
        "DecayCorrectionDateTime (0018,9701)"),
}

#: Counts calibrations a site may configure; none may change how a declared object is read.
CALIBRATIONS = {
    "no-calibration": None,
    "calibration-12.5": CountsCalibration(CPS_PER_MBQ),
    "calibration-0.001": CountsCalibration(0.001, correct_decay_during_acquisition=False),
}
#: The same, as [calibration] settings (the default applies to any camera).
CALIBRATION_SETTINGS = {
    "no-calibration": CalibrationSettings(),
    "calibration-12.5": CalibrationSettings(default_cps_per_mbq=CPS_PER_MBQ),
    "calibration-0.001": CalibrationSettings(default_cps_per_mbq=0.001),
}


def _as_list(built: Dataset | list[Dataset]) -> list[Dataset]:
    return built if isinstance(built, list) else [built]


def assert_reads_truth(spect_volume: Volume) -> None:
    """Every voxel of the read volume holds TRUTH at its patient position (within 0.1 %)."""
    assert spect_volume.shape == SHAPE
    assert spect_volume.unit == "Bq/mL"
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE[::-1]), indexing="ij"), -1)
    ijk = ijk.reshape(-1, 3)  # (i, j, k) rows
    where = TRUTH.patient_to_index(spect_volume.index_to_patient(ijk))
    np.testing.assert_allclose(where, np.rint(where), atol=1e-6)
    i, j, k = np.rint(where).astype(int).T
    read = spect_volume.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]]
    np.testing.assert_allclose(read, TRUTH.array[k, j, i], rtol=RTOL)


# -- readable encodings ---------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(DECLARED))
@pytest.mark.parametrize("calibration", sorted(CALIBRATIONS))
def test_declared_encoding_is_read_to_bq_per_ml_whatever_the_calibration(name, calibration):
    build, encoding = DECLARED[name]
    datasets = _as_list(build())
    spect = read_spect(datasets if len(datasets) > 1 else datasets[0], CALIBRATIONS[calibration])
    assert spect.encoding is encoding
    assert spect.encoding is not SpectEncoding.NM_COUNTS_CALIBRATED
    assert_reads_truth(spect.volume)
    assert spect.acquisition_start == ACQUIRED
    assert spect.elapsed_h == pytest.approx(ELAPSED_H)
    assert spect.injected_activity_mbq == pytest.approx(7400.0)


@pytest.mark.parametrize("name", sorted(DECLARED))
@pytest.mark.parametrize("calibration", sorted(CALIBRATION_SETTINGS))
def test_declared_encoding_is_accepted_at_ingest(name, calibration):
    for ds in _as_list(DECLARED[name][0]()):
        parse(_encode(ds), ds.SOPClassUID, CALIBRATION_SETTINGS[calibration], keyer=TEST_KEYER)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_are_read_with_the_camera_calibration(name):
    spect = read_spect(COUNTS[name](), CountsCalibration(CPS_PER_MBQ))
    assert spect.encoding is SpectEncoding.NM_COUNTS_CALIBRATED
    assert_reads_truth(spect.volume)


# -- refused encodings ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("calibration", sorted(CALIBRATIONS))
def test_unreadable_declared_units_are_never_read_as_counts(name, calibration):
    datasets = _as_list(REFUSED[name][0]())
    with pytest.raises(DicomInputError) as raised:
        read_spect(datasets if len(datasets) > 1 else datasets[0], CALIBRATIONS[calibration])
    assert REFUSED[name][1].split(" ")[0] in str(raised.value)


@pytest.mark.parametrize("name", sorted(REFUSED))
@pytest.mark.parametrize("calibration", sorted(CALIBRATION_SETTINGS))
def test_unreadable_declared_units_are_refused_at_ingest(name, calibration):
    build, attribute = REFUSED[name]
    for ds in _as_list(build()):
        with pytest.raises(Rejected) as raised:
            parse(_encode(ds), ds.SOPClassUID, CALIBRATION_SETTINGS[calibration], keyer=TEST_KEYER)
        assert raised.value.status == UNREADABLE_SPECT_VALUES
        # the Error Comment (LO, 64 characters) names the attribute to fix
        assert raised.value.reason[:64].startswith(attribute), raised.value.reason


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_without_calibration_are_refused_by_reader_and_at_ingest(name):
    ds = COUNTS[name]()
    with pytest.raises(DicomInputError, match="calibration"):
        read_spect(ds)
    with pytest.raises(Rejected) as raised:
        parse(_encode(ds), ds.SOPClassUID, CalibrationSettings(), keyer=TEST_KEYER)
    assert raised.value.status == UNCALIBRATED_COUNTS
    assert raised.value.reason[:64] == (
        "Units/RealWorldValueMappingSequence: counts, camera uncalibrated")
    assert "'ACME'" in raised.value.reason and "'NM1'" in raised.value.reason


def test_counts_pass_ingest_when_their_camera_is_calibrated():
    ds = COUNTS["nm-counts-nothing-declared"]()
    camera = CameraCalibration(manufacturer="ACME", station_name="NM1", cps_per_mbq=CPS_PER_MBQ)
    parse(_encode(ds), ds.SOPClassUID, CalibrationSettings(cameras=[camera]),
          keyer=TEST_KEYER)
    other = CameraCalibration(manufacturer="ACME", station_name="NM2", cps_per_mbq=CPS_PER_MBQ)
    with pytest.raises(Rejected):
        parse(_encode(ds), ds.SOPClassUID, CalibrationSettings(cameras=[other]), keyer=TEST_KEYER)
    # a listener without settings leaves it to the job
    parse(_encode(ds), ds.SOPClassUID, None, keyer=TEST_KEYER)


def test_nm_projections_are_filed_whatever_their_units():
    ds = nm_object(NmSpec(rwvm_code="{SUVbw}g/ml"))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    parse(_encode(ds), ds.SOPClassUID, CalibrationSettings(), keyer=TEST_KEYER)


# -- at C-STORE time ------------------------------------------------------------------------
@pytest.fixture
def ingest(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    archive = Archive(data, 0)
    service = Ingest(archive, IndexStore(open_database(data / "index.db")), TEST_KEYER,
                     calibration=CalibrationSettings(default_cps_per_mbq=0.0))
    yield service
    service.close()


PEER = Peer("MODALITY", "127.0.0.1")


@pytest.mark.parametrize("name", ["nm-rwvm-SUV-only", "pt-units-GML", "enhanced-pet-no-rwvm"])
def test_unreadable_spect_is_answered_0xc130_and_quarantined(ingest, name):
    ds = _as_list(REFUSED[name][0]())[0]
    outcome = ingest.receive(_encode(ds), PEER, ExplicitVRLittleEndian, ds.SOPClassUID)
    assert outcome.status == UNREADABLE_SPECT_VALUES
    assert outcome.comment.startswith(REFUSED[name][1])
    assert ingest.index.counts()["instances"] == 0
    assert len(list(ingest.archive.quarantine.glob("*.dcm"))) == 1
    (row,) = ingest.index.recent_quarantine()
    assert row["status"] == UNREADABLE_SPECT_VALUES


def test_uncalibrated_counts_are_answered_0xc131_and_declared_bq_per_ml_is_stored(ingest):
    counts = COUNTS["nm-counts-nothing-declared"]()
    outcome = ingest.receive(_encode(counts), PEER, ExplicitVRLittleEndian, NM_IMAGE_STORAGE)
    assert outcome.status == UNCALIBRATED_COUNTS
    declared = nm_object(NmSpec(rwvm_code="kBq/mL"))
    stored = ingest.receive(_encode(declared), PEER, ExplicitVRLittleEndian, NM_IMAGE_STORAGE)
    assert stored.status == SUCCESS
    assert ingest.index.counts()["instances"] == 1
    assert ingest.index.counts()["quarantine"] == 1


# -- decay reference, at a finer tolerance than quantisation allows for one object ----------
def _read(built: Dataset | list[Dataset]) -> np.ndarray:
    datasets = _as_list(built)
    return read_spect(datasets if len(datasets) > 1 else datasets[0]).volume.array


@pytest.mark.parametrize(("corrected", "averaged"), [
    (lambda: pt_series(PtSpec()), lambda: pt_series(PtSpec(decay_correction="NONE"))),
    (lambda: nm_object(NmSpec()), lambda: nm_object(NmSpec(decay_correction="NONE"))),
    (lambda: enhanced_pet(EnhancedSpec()),
     lambda: enhanced_pet(EnhancedSpec(decay_corrected="NO", decay_datetime=None))),
], ids=["pt", "nm", "enhanced-pet"])
def test_values_not_decay_corrected_are_referred_to_the_acquisition_start(corrected, averaged):
    """A 16-min Lu-177 frame average is 0.057 % below the start value: the correction is
    checked against the same stored integers decay corrected to the start, at 1e-6."""
    np.testing.assert_allclose(_read(averaged()), _read(corrected()), rtol=1e-6)
    assert abs(MEAN_OVER_ACQUISITION - 1) > 5e-4


@pytest.mark.parametrize(("code", "bq_per_ml"), [
    ("Bq/mL", 1.0), ("Bq/ml", 1.0), ("kBq/mL", 1e3), ("kBq/ml", 1e3), ("MBq/mL", 1e6),
    ("MBq/ml", 1e6), ("GBq/mL", 1e9), ("Bq/cm3", 1.0), ("kBq/cm3", 1e3), ("Bq/L", 1e-3),
    ("uCi/mL", 3.7e4), ("mCi/mL", 3.7e7), ("BQML", 1.0), ("mBq/mL", None), ("Bq", None),
    ("{SUVbw}g/ml", None), ("{counts}", None), ("1", None), ("", None),
])
def test_ucum_concentration_codes(code, bq_per_ml):
    from theranode.dicomio.spect_units import concentration_factor

    assert concentration_factor(code) == bq_per_ml


def test_refusal_is_the_c_store_answer_on_a_real_association(tmp_path):
    """Over DICOM: the status and the Error Comment naming the attribute, nothing filed.

    The node passes its ``[calibration]`` to the listener, so counts from a camera
    it has no sensitivity for (none configured here) are refused at C-STORE time."""
    from tests.service.nodes import make_settings, running_node, scu

    objects = [REFUSED["nm-rwvm-SUV-only"][0](), REFUSED["pt-units-GML"][0]()[0],
               COUNTS["nm-counts-nothing-declared"](), DECLARED["nm-rwvm-kBq/mL"][0]()]
    with running_node(make_settings(tmp_path / "data")) as node:
        assoc = scu().associate("127.0.0.1", node.port, ae_title="THERANODE")
        assert assoc.is_established
        try:
            answers = [assoc.send_c_store(ds) for ds in objects]
        finally:
            assoc.release()
        assert [int(a.Status) for a in answers] == [
            UNREADABLE_SPECT_VALUES, UNREADABLE_SPECT_VALUES, UNCALIBRATED_COUNTS, SUCCESS]
        assert str(answers[0].ErrorComment).startswith("RealWorldValueMappingSequence units")
        assert str(answers[1].ErrorComment).startswith("Units (0054,1001)")
        counts = node.index.counts()
        assert (counts["instances"], counts["quarantine"]) == (1, 3)
