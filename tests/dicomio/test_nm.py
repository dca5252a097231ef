"""SPECT reading: NM multi-frame (Bq/mL mapping or calibrated counts) and PT."""

from __future__ import annotations

import io
import math
from datetime import datetime, time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from theranode.dicomio.errors import MissingAttributeError, UnsupportedObjectError
from theranode.dicomio.nm import (
    NM_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    CountsCalibration,
    SpectEncoding,
    read_spect,
)
from theranode.dicomio.valuerep import format_ds
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data

LAMBDA_PER_H = nuclear_data("Lu-177").decay_constant_per_h
INJECTED = datetime(2024, 3, 4, 9, 15, 0)
ACQUIRED = datetime(2024, 3, 5, 10, 15, 0)  # 25 h later


def round_trip(ds: Dataset) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)


def radiopharmaceutical(dose: str, with_datetime: bool = True) -> Sequence:
    item = Dataset()
    item.RadiopharmaceuticalStartTime = INJECTED.strftime("%H%M%S")
    if with_datetime:
        item.RadiopharmaceuticalStartDateTime = INJECTED.strftime("%Y%m%d%H%M%S")
    item.RadionuclideTotalDose = dose
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "447553000",
        "SCT",
        "^177^Lutetium",
    )
    item.RadionuclideCodeSequence = Sequence([code])
    return Sequence([item])


def nm_dataset(
    stored: np.ndarray,
    rwv_slope: float | None = 2.5,
    spacing_between_slices: str = "4.5",
    slice_vector: list[int] | None = None,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"),
    with_datetime: bool = True,
) -> Dataset:
    nz, ny, nx = stored.shape
    ds = Dataset()
    ds.SOPClassUID = NM_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["nm-test"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["nm-test-series"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["nm-test-frame"])
    ds.Modality = "NM"
    ds.ImageType = list(image_type)
    ds.AcquisitionDate = ACQUIRED.strftime("%Y%m%d")
    ds.AcquisitionTime = ACQUIRED.strftime("%H%M%S")
    ds.NumberOfFrames = nz
    ds.NumberOfSlices = nz
    ds.FrameIncrementPointer = [Tag("SliceVector")]
    ds.SliceVector = slice_vector or list(range(1, nz + 1))
    ds.PixelSpacing = ["4", "3"]  # row spacing 4 (y), column spacing 3 (x)
    ds.SpacingBetweenSlices = spacing_between_slices
    detector = Dataset()
    detector.ImagePositionPatient = ["-10", "20", "-30"]
    detector.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.DetectorInformationSequence = Sequence([detector])
    rotation = Dataset()
    rotation.ActualFrameDuration = 15000
    rotation.NumberOfFramesInRotation = 64
    ds.RotationInformationSequence = Sequence([rotation])  # 960 s in total
    ds.RadiopharmaceuticalInformationSequence = radiopharmaceutical(
        "7400", with_datetime
    )
    ds.Rows, ds.Columns = ny, nx
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = stored.astype(np.uint16).tobytes()
    if rwv_slope is not None:
        mapping = Dataset()
        mapping.RealWorldValueFirstValueMapped = 0
        mapping.RealWorldValueLastValueMapped = 65535
        mapping.RealWorldValueSlope = rwv_slope
        mapping.RealWorldValueIntercept = 1.0
        mapping.LUTExplanation = "Bq/mL"
        mapping.LUTLabel = "BQML"
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = (
            "Bq/mL",
            "UCUM",
            "Bq/mL",
        )
        mapping.MeasurementUnitsCodeSequence = Sequence([unit])
        ds.RealWorldValueMappingSequence = Sequence([mapping])
    return round_trip(ds)


def frames(nz: int = 4, ny: int = 3, nx: int = 5) -> np.ndarray:
    return np.arange(nz * ny * nx, dtype=np.uint16).reshape(nz, ny, nx) * 10


def test_real_world_value_mapping_gives_bq_per_ml_and_geometry() -> None:
    stored = frames()
    spect = read_spect(nm_dataset(stored))
    assert spect.encoding is SpectEncoding.NM_REAL_WORLD_VALUES
    np.testing.assert_allclose(spect.volume.array, stored * 2.5 + 1.0)
    assert spect.volume.unit == "Bq/mL"
    assert spect.volume.spacing_mm == (3.0, 4.0, 4.5)
    assert spect.volume.origin_mm == (-10.0, 20.0, -30.0)
    np.testing.assert_allclose(
        spect.volume.index_to_patient([1, 1, 2]), (-7.0, 24.0, -21.0)
    )
    assert spect.acquisition_start == ACQUIRED
    assert spect.injection_datetime == INJECTED
    assert spect.elapsed_h == pytest.approx(25.0)
    assert spect.injected_activity_mbq == pytest.approx(7400.0)
    assert spect.radionuclide is Radionuclide.LU177
    assert spect.acquisition_duration_s == pytest.approx(960.0)


def test_counts_are_calibrated_with_decay_during_acquisition() -> None:
    stored = np.full((2, 2, 2), 1234, dtype=np.uint16)
    ds = nm_dataset(stored, rwv_slope=None)
    plain = read_spect(
        ds, CountsCalibration(12.5, correct_decay_during_acquisition=False)
    )
    voxel_ml = 3 * 4 * 4.5 / 1000
    expected = 1234 / (12.5 * 960.0) * 1e6 / voxel_ml
    np.testing.assert_allclose(plain.volume.array, expected, rtol=1e-6)
    assert plain.encoding is SpectEncoding.NM_COUNTS_CALIBRATED
    corrected = read_spect(ds, CountsCalibration(12.5))
    lam_t = LAMBDA_PER_H * 960.0 / 3600.0
    np.testing.assert_allclose(
        corrected.volume.array, expected * lam_t / (1 - math.exp(-lam_t)), rtol=1e-6
    )


def test_counts_without_calibration_are_refused() -> None:
    with pytest.raises(UnsupportedObjectError, match="calibration"):
        read_spect(nm_dataset(frames(), rwv_slope=None))


def test_negative_spacing_runs_frames_against_the_normal() -> None:
    spect = read_spect(nm_dataset(frames(), spacing_between_slices="-4.5"))
    np.testing.assert_allclose(spect.volume.direction_matrix[:, 2], (0, 0, -1))
    assert spect.volume.spacing_mm[2] == 4.5


def test_slice_vector_orders_the_frames() -> None:
    stored = frames()
    spect = read_spect(nm_dataset(stored, slice_vector=[2, 1, 4, 3]))
    np.testing.assert_allclose(spect.volume.array[0], stored[1] * 2.5 + 1.0)
    np.testing.assert_allclose(spect.volume.array[3], stored[2] * 2.5 + 1.0)


def test_projections_are_refused() -> None:
    with pytest.raises(UnsupportedObjectError, match="RECON TOMO"):
        read_spect(
            nm_dataset(frames(), image_type=("ORIGINAL", "PRIMARY", "TOMO", "EMISSION"))
        )


def test_missing_detector_geometry_is_reported() -> None:
    ds = nm_dataset(frames())
    del ds.DetectorInformationSequence
    with pytest.raises(MissingAttributeError, match="DetectorInformationSequence"):
        read_spect(ds)


def test_injection_time_without_date_is_left_to_the_caller() -> None:
    spect = read_spect(nm_dataset(frames(), with_datetime=False))
    assert spect.injection_datetime is None
    assert spect.injection_time == time(9, 15)
    assert spect.elapsed_h is None


def pt_series(
    values: np.ndarray, correction: str = "START", units: str = "BQML"
) -> list[Dataset]:
    out = []
    nz = values.shape[0]
    for k in range(nz):
        ds = Dataset()
        ds.SOPClassUID = PET_IMAGE_STORAGE
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["pt-test", str(k)])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=["pt-series"])
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["pt-frame"])
        ds.Modality = "PT"
        ds.Units = units
        ds.DecayCorrection = correction
        ds.SeriesDate = ACQUIRED.strftime("%Y%m%d")
        ds.SeriesTime = ACQUIRED.strftime("%H%M%S")
        ds.ActualFrameDuration = 900000
        ds.RadiopharmaceuticalInformationSequence = radiopharmaceutical("7.4E9")
        ds.ImagePositionPatient = ["0", "0", format_ds(5.0 * (nz - 1 - k))]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["4", "4"]
        ds.Rows, ds.Columns = values.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        slope = float(values[nz - 1 - k].max()) / 30000 or 1.0
        ds.RescaleSlope = format_ds(slope)
        ds.RescaleIntercept = "0"
        ds.PixelData = (
            np.rint(values[nz - 1 - k] / float(ds.RescaleSlope))
            .astype(np.int16)
            .tobytes()
        )
        out.append(round_trip(ds))
    return out


def test_pt_bqml_series_is_read_per_slice() -> None:
    values = np.random.default_rng(5).uniform(1e3, 5e5, (3, 4, 4))
    spect = read_spect(pt_series(values))
    assert spect.encoding is SpectEncoding.PT_BQML
    quantum = float(values.max()) / 30000  # one stored step
    np.testing.assert_allclose(
        spect.volume.array, values, atol=quantum / 2 + 1e-3, rtol=1e-6
    )
    assert spect.volume.spacing_mm == (4.0, 4.0, 5.0)
    assert spect.injected_activity_mbq == pytest.approx(7400.0)  # PT doses are in Bq
    assert spect.acquisition_duration_s == pytest.approx(900.0)


def test_pt_admin_decay_correction_is_undone() -> None:
    values = np.full((2, 3, 3), 2e5)
    spect = read_spect(pt_series(values, correction="ADMIN"))
    np.testing.assert_allclose(
        spect.volume.array, 2e5 * math.exp(-LAMBDA_PER_H * 25.0), rtol=1e-4
    )
    assert spect.notes


def test_pt_in_counts_is_unsupported() -> None:
    with pytest.raises(UnsupportedObjectError, match="BQML"):
        read_spect(pt_series(np.ones((2, 2, 2)), units="CNTS"))
