"""Is a received object whole? Decoding and integrity checks of raw bytes.

pydicom reads a short file without complaint (an element's value is simply
shorter than its declared length), so completeness is checked here
explicitly before anything is filed.

References
----------
DICOM PS3.5 7.1 (data element encoding), 8.1.1 (native pixel data size).
"""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicomio.errors import DicomInputError, InconsistentPixelDataError, TruncatedObjectError
from dicomio.headers import SeriesKind

_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def decode(data: bytes) -> Dataset:
    """Decode Part-10 bytes (preamble, file meta, data set); values stay raw.

    Raises
    ------
    DicomInputError
        The bytes are not a decodable DICOM data set.
    TruncatedObjectError
        An element value is shorter than its declared length.
    """
    try:
        ds = dcmread(BytesIO(data), force=False)
    except Exception as exc:  # pydicom raises many kinds on hostile bytes
        raise DicomInputError(f"not a decodable DICOM data set: {exc!r}") from exc
    short = truncated_elements(ds)
    if short:
        raise TruncatedObjectError("truncated object: " + "; ".join(short[:3]))
    return ds


def truncated_elements(ds: Dataset) -> list[str]:
    """Top-level elements whose value is shorter than their declared length."""
    short = []
    for element in ds._dict.values():  # raw elements: no value conversion
        if (
            isinstance(element, RawDataElement)
            and element.value is not None
            and element.length != _UNDEFINED_LENGTH
            and len(element.value) < element.length
        ):
            short.append(f"{element.tag} ({len(element.value)} of {element.length} bytes)")
    return short


def check_pixel_data(ds: Dataset, kind: SeriesKind) -> None:
    """Raise when an image's pixel data is absent or not the declared size.

    Native pixel data must hold exactly Rows × Columns × frames × samples ×
    BitsAllocated / 8 bytes (PS3.5 8.1.1), padded to an even length; an image
    object without any pixel data was cut at an element boundary or is not an
    image at all. Encapsulated (compressed) pixel data is stored as received.

    Raises
    ------
    TruncatedObjectError
        Pixel data missing or shorter than its dimensions need.
    InconsistentPixelDataError
        Impossible dimensions, or more pixel data than they describe.
    """
    if kind not in (SeriesKind.SPECT, SeriesKind.CT):
        return
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise TruncatedObjectError(
            "an image object without Pixel Data (7FE0,0010): truncated at an element boundary "
            "or not an image; resend the complete object"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if "PixelData" not in ds or syntax is None or UID(syntax).is_compressed:
        return
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise TruncatedObjectError(
            "Rows, Columns or BitsAllocated missing or not numbers for the pixel data"
        ) from exc
    dimensions = f"{rows}×{columns}×{frames}×{samples}×{bits}"
    if min(rows, columns, frames, samples) < 1 or bits not in (1, 8, 16, 32, 64):
        raise InconsistentPixelDataError(
            f"impossible pixel dimensions Rows × Columns × frames × samples × bits = {dimensions}"
        )
    expected = -(-rows * columns * frames * samples * bits // 8)  # ceiling: 1-bit data
    actual = len(ds["PixelData"].value or b"")
    if actual < expected:
        raise TruncatedObjectError(
            f"pixel data has {actual} bytes but Rows × Columns × frames × samples × bits "
            f"({dimensions}) needs {expected}"
        )
    if actual > expected + expected % 2:
        raise InconsistentPixelDataError(
            f"pixel data has {actual} bytes but Rows × Columns × frames × samples × bits "
            f"({dimensions}) gives {expected}: the dimensions do not describe the pixels"
        )
