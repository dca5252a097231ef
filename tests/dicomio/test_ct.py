"""CT series reading: sorting, geometry, HU, and refusal of broken series."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from theranode.dicomio.ct import CT_IMAGE_STORAGE, read_ct_series
from theranode.dicomio.errors import InconsistentSeriesError, UnsupportedObjectError
from theranode.dicomio.valuerep import format_ds

SERIES = generate_uid(entropy_srcs=["test-ct-series"])
FRAME = generate_uid(entropy_srcs=["test-ct-frame"])


def ct_slice(
    k: int,
    position: tuple[float, float, float],
    pixels: np.ndarray,
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    spacing_xy: tuple[float, float] = (0.8, 0.6),
) -> Dataset:
    """A CT slice that went through bytes and back (strict writing)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["test-ct", str(k), str(position)])
    ds.SeriesInstanceUID = SERIES
    ds.FrameOfReferenceUID = FRAME
    ds.Modality = "CT"
    ds.ImagePositionPatient = [format_ds(v) for v in position]
    ds.ImageOrientationPatient = [format_ds(v) for v in orientation]
    ds.PixelSpacing = [format_ds(spacing_xy[1]), format_ds(spacing_xy[0])]
    ds.SliceThickness = "2"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = "2"
    ds.RescaleIntercept = "-1000"
    ds.PixelData = pixels.astype(np.int16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    buffer.seek(0)
    return pydicom.dcmread(buffer, force=True)


def axial_series(n: int = 5, dz: float = 2.5) -> tuple[list[Dataset], np.ndarray]:
    rng = np.random.default_rng(11)
    stored = rng.integers(0, 1500, size=(n, 4, 6))
    slices = [ct_slice(k, (-10.0, 20.0, 100.0 + k * dz), stored[k]) for k in range(n)]
    return slices, stored


def test_slices_are_sorted_and_rescaled_to_hu() -> None:
    slices, stored = axial_series()
    shuffled = [slices[i] for i in (3, 0, 4, 1, 2)]
    volume = read_ct_series(shuffled)
    assert volume.shape == (5, 4, 6)
    assert volume.unit == "HU"
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, stored * 2.0 - 1000.0)
    assert volume.spacing_mm == pytest.approx((0.8, 0.6, 2.5))
    assert volume.origin_mm == pytest.approx((-10.0, 20.0, 100.0))
    assert volume.metadata["sop_instance_uids"] == tuple(
        s.SOPInstanceUID for s in slices
    )
    assert volume.metadata["frame_of_reference_uid"] == FRAME


def test_orientation_comes_from_iop_and_slices_follow_the_normal() -> None:
    # Rows run along -x, columns along +y: normal = row × col = (0, 0, -1).
    orientation = (-1, 0, 0, 0, 1, 0)
    pixels = np.arange(12).reshape(3, 4)
    slices = [
        ct_slice(k, (0.0, 0.0, -2.0 * k), pixels + k, orientation) for k in range(4)
    ]
    volume = read_ct_series(list(reversed(slices)))
    np.testing.assert_allclose(volume.direction_matrix[:, 0], (-1, 0, 0))
    np.testing.assert_allclose(volume.direction_matrix[:, 2], (0, 0, -1))
    assert volume.origin_mm == pytest.approx((0.0, 0.0, 0.0))
    # Voxel (i=1, j=2, k=3) sits 0.8 mm towards -x, 1.2 mm +y, 6 mm below.
    np.testing.assert_allclose(volume.index_to_patient([1, 2, 3]), (-0.8, 1.2, -6.0))
    assert volume.array[3, 0, 0] == (0 + 3) * 2 - 1000


def test_missing_slice_is_an_inconsistent_series() -> None:
    slices, _ = axial_series()
    with pytest.raises(InconsistentSeriesError, match="slice is probably missing"):
        read_ct_series([s for i, s in enumerate(slices) if i != 2])


def test_duplicate_positions_are_refused() -> None:
    slices, _ = axial_series()
    duplicate = ct_slice(99, (-10.0, 20.0, 100.0), np.zeros((4, 6)))
    with pytest.raises(InconsistentSeriesError, match="share one slice position"):
        read_ct_series([*slices, duplicate])


def test_gantry_tilt_is_refused() -> None:
    pixels = np.zeros((4, 6))
    slices = [ct_slice(k, (0.0, 0.5 * k, 2.5 * k), pixels) for k in range(4)]
    with pytest.raises(InconsistentSeriesError, match="gantry-tilted"):
        read_ct_series(slices)


def test_mixed_orientation_is_refused() -> None:
    slices, _ = axial_series(3)
    odd = ct_slice(7, (-10.0, 20.0, 110.0), np.zeros((4, 6)), (0, 1, 0, 0, 0, -1))
    with pytest.raises(InconsistentSeriesError, match="orientation"):
        read_ct_series([*slices, odd])


def test_other_sop_class_is_unsupported() -> None:
    slices, _ = axial_series(2)
    slices[0].SOPClassUID = "1.2.840.10008.5.1.4.1.1.20"
    with pytest.raises(UnsupportedObjectError, match="CT Image Storage"):
        read_ct_series(slices)


def test_single_slice_uses_slice_thickness() -> None:
    volume = read_ct_series([ct_slice(0, (0.0, 0.0, 0.0), np.ones((4, 6)))])
    assert volume.spacing_mm[2] == pytest.approx(2.0)
