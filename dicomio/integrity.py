"""Is a received object whole? Decoding and integrity checks of raw bytes.

pydicom reads a short file without complaint (an element's value is simply
shorter than its declared length), so completeness is checked here
explicitly before anything is filed.

pydicom also inflates a Deflated Explicit VR Little Endian data set whole
and parses every sequence item into a Dataset object, so a small hostile
object can cost gigabytes or seconds of CPU. :func:`decode` given
:class:`DecodeLimits` first inflates incrementally with a cap and counts the
elements and sequence items with a byte-level walk (no objects built), and
refuses an object beyond the limits before pydicom parses it.

References
----------
DICOM PS3.5 7.1 (data element encoding), 7.5 (nesting of data sets: items,
item and sequence delimitation), 8.1.1 (native pixel data size), A.4
(encapsulated pixel data fragments), A.5 (Deflated Explicit VR Little Endian).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)

from theranode.dicomio.errors import (
    DicomInputError,
    InconsistentPixelDataError,
    TruncatedObjectError,
)
from theranode.dicomio.headers import SeriesKind

_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PREAMBLE_LENGTH = 128
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: Explicit VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 Table 7.1-1).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_INFLATE_CHUNK = 1 << 20
#: ContourSequence (3006,0040) and Contour Data (3006,0050) of an RT Structure Set (PS3.3 C.8.8.6).
_CONTOUR_SEQUENCE, _CONTOUR_DATA = 0x30060040, 0x30060050


class ObjectTooLargeError(DicomInputError):
    """Decoding the object would exceed a configured limit (inflated size, elements, items)."""


@dataclass(frozen=True)
class DecodeLimits:
    """The most work :func:`decode` accepts for one object.

    Attributes
    ----------
    max_inflated_bytes
        Largest data set after inflating a Deflated transfer syntax (PS3.5 A.5).
    max_elements
        Most data elements at every nesting level; items, delimiters and pixel
        data fragments count as elements too.
    max_sequence_items
        Most sequence items, summed over every sequence at every nesting level.
    max_contour_points
        Most contour points of an RT Structure Set: Contour Data values
        (backslashes in the raw DS bytes, no conversion) ÷ 3, every ROI summed.
    max_contours_per_roi
        Most items of one Contour Sequence (the contours of one ROI).
    """

    max_inflated_bytes: int
    max_elements: int
    max_sequence_items: int
    max_contour_points: int | None = None
    max_contours_per_roi: int | None = None


def decode(data: bytes, limits: DecodeLimits | None = None) -> Dataset:
    """Decode Part-10 bytes (preamble, file meta, data set); values stay raw.

    With ``limits``, the data set is inflated (when deflated) and its
    elements and sequence items counted before pydicom parses it
    (:func:`check_limits`).

    Raises
    ------
    DicomInputError
        The bytes are not a decodable DICOM data set.
    ObjectTooLargeError
        The object exceeds one of ``limits``.
    TruncatedObjectError
        An element value is shorter than its declared length.
    """
    if limits is not None:
        try:
            check_limits(data, limits)
        except DicomInputError:
            raise
        except Exception as exc:  # a walk over hostile bytes must not escape as anything else
            raise DicomInputError(f"not a decodable DICOM data set: {exc!r}") from exc
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


def check_limits(data: bytes, limits: DecodeLimits) -> None:
    """Refuse Part-10 bytes whose decoding would exceed ``limits``.

    The work done here is bounded by the limits themselves: a deflated data
    set is inflated in chunks and abandoned once it passes
    ``max_inflated_bytes``; the element walk stops at the first count past
    its limit. Bytes this walk cannot follow (not Part 10, a length running
    past the end) are left for pydicom to judge.

    Raises
    ------
    ObjectTooLargeError
        Starting with the setting and its value (the Error Comment of a
        C-STORE response holds 64 characters), then what was found and what
        to do.
    """
    located = _data_set_start(data)
    if located is None:
        return
    start, syntax = located
    body = memoryview(data)[start:]
    if syntax == DeflatedExplicitVRLittleEndian:
        body = memoryview(inflate_bounded(bytes(body), limits.max_inflated_bytes))
    implicit = syntax in ("", ImplicitVRLittleEndian)
    endian = ">" if syntax == ExplicitVRBigEndian else "<"
    _walk(body, implicit, endian, limits)


def inflate_bounded(deflated: bytes, max_bytes: int) -> bytearray:
    """Inflate a raw deflate stream (PS3.5 A.5), refusing more than ``max_bytes`` of output.

    Memory stays below ``max_bytes`` plus one chunk whatever the ratio:
    :meth:`zlib.Decompress.decompress` is given ``max_length``, and the
    output grows in place (no copy at the end).

    Raises
    ------
    ObjectTooLargeError
        The stream inflates to more than ``max_bytes``.
    DicomInputError
        The stream is not valid deflate data.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    pending = deflated
    try:
        while not inflater.eof:
            part = inflater.decompress(pending, _INFLATE_CHUNK)
            pending = inflater.unconsumed_tail
            if len(inflated) + len(part) > max_bytes:
                raise ObjectTooLargeError(
                    f"max_inflated_mb {max_bytes // 2**20} exceeded: a deflated data set of "
                    f"{len(deflated)} bytes inflates to more than {max_bytes // 2**20} MB; "
                    "send it uncompressed or raise security.max_inflated_mb"
                )
            inflated += part
            if not part and not pending:
                break  # truncated stream: pydicom reports it
    except zlib.error as exc:
        raise DicomInputError(f"deflated data set cannot be inflated: {exc}") from exc
    return inflated


def _data_set_start(data: bytes) -> tuple[int, str] | None:
    """Offset of the data set after the File Meta Information, and its transfer syntax.

    The meta group is always Explicit VR Little Endian (PS3.10 7.1).
    """
    if data[_PREAMBLE_LENGTH:_PREAMBLE_LENGTH + 4] != b"DICM":
        return None
    position, syntax = _PREAMBLE_LENGTH + 4, ""
    while position + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, position)
        if group != 0x0002:
            break
        vr = data[position + 4:position + 6]
        if vr in _LONG_VRS:
            if position + 12 > len(data):
                return None
            length, header = struct.unpack_from("<L", data, position + 8)[0], 12
        else:
            length, header = struct.unpack_from("<H", data, position + 6)[0], 8
        if element == 0x0010:
            raw = data[position + header:position + header + length]
            syntax = raw.rstrip(b"\0 ").decode("ascii", "replace")
        position += header + length
    return position, syntax


@lru_cache(maxsize=4096)
def _dictionary_sequence(tag: int) -> bool | None:
    """Whether the data dictionary gives ``tag`` the VR SQ; None for an unknown tag."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return None


_Header = tuple[int, bytes, int, int]  # tag, explicit VR (b"" if implicit), length, header size


def _element_at(body: memoryview, position: int, implicit: bool, endian: str) -> _Header | None:
    """Read the element header at ``position``; None when it runs past the end.

    Explicit VR bytes that are not two capital letters are read as implicit
    VR, as pydicom does for writers that switch encodings inside sequences.
    """
    group, element, vr = struct.unpack_from(endian + "HH2s", body, position)
    tag = group << 16 | element
    if implicit or group == 0xFFFE or not (b"AA" <= vr <= b"ZZ"):
        return tag, b"", struct.unpack_from(endian + "L", body, position + 4)[0], 8
    if vr in _LONG_VRS:
        if position + 12 > len(body):
            return None
        return tag, vr, struct.unpack_from(endian + "L", body, position + 8)[0], 12
    return tag, vr, struct.unpack_from(endian + "H", body, position + 6)[0], 8


def _opens_sequence(body: memoryview, found: _Header, position: int, endian: str) -> bool:
    """Whether the value of element ``found`` (starting at ``position``) holds sequence items.

    Mirrors pydicom: VR SQ, UN of undefined length (PS3.5 6.2.2), or for an
    implicit VR the data dictionary, else a first value tag that is an Item.
    """
    tag, vr, length, _ = found
    if vr == b"SQ" or (vr == b"UN" and length == _UNDEFINED_LENGTH):
        return True
    if vr:
        return False
    known = _dictionary_sequence(tag)
    if known is not None:
        return known
    if length != _UNDEFINED_LENGTH or position + 4 > len(body):
        return False
    group, element = struct.unpack_from(endian + "HH", body, position)
    return bool((group << 16 | element) == _ITEM)


def _walk(body: memoryview, implicit: bool, endian: str, limits: DecodeLimits) -> None:
    """Count elements and sequence items of an encoded data set, nested ones included.

    One pass over the bytes with a stack of open containers (PS3.5 7.5):
    sequences and items (defined or undefined length) are entered, the
    fragments of encapsulated pixel data (PS3.5 A.4) skipped; no value is
    converted and no object built.
    """
    stack: list[tuple[str, int | None]] = []  # open containers: kind, end offset if defined
    elements = items = 0
    contours = _ContourCount(limits)
    position = 0
    while position + 8 <= len(body):
        while stack and (end := stack[-1][1]) is not None and position >= end:
            stack.pop()
        found = _element_at(body, position, implicit, endian)
        if found is None:
            return
        tag, _, length, header = found
        position += header
        elements += 1
        undefined = length == _UNDEFINED_LENGTH
        if tag == _ITEM and stack and stack[-1][0] == "fragments":
            position += 0 if undefined else length
        elif tag == _ITEM:
            items += 1
            if stack and stack[-1][0] == "contours":
                contours.contour()
            stack.append(("item", None if undefined else position + length))
        elif tag in (_ITEM_END, _SEQUENCE_END):
            _close(stack, "item" if tag == _ITEM_END else "")
        elif _opens_sequence(body, found, position, endian):
            kind = "contours" if tag == _CONTOUR_SEQUENCE else "sequence"
            if kind == "contours":
                contours.roi()
            stack.append((kind, None if undefined else position + length))
        elif undefined:
            stack.append(("fragments", None))
        else:
            if tag == _CONTOUR_DATA:
                contours.values(body[position:position + length])
            position += length
        if items > limits.max_sequence_items or elements > limits.max_elements:
            _refuse_counts(elements, items, limits)


def _close(stack: list[tuple[str, int | None]], kind: str) -> None:
    """Pop the containers a delimitation item closes (an item, else a sequence or fragments)."""
    while stack:
        popped = stack.pop()[0]
        if popped == kind or (not kind and popped in ("sequence", "contours", "fragments")):
            return


class _ContourCount:
    """Contours per ROI and contour points of a structure set, as :func:`_walk` meets them."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.in_roi = 0
        self.values_count = 0

    def roi(self) -> None:
        """A Contour Sequence opens: the contours of the next ROI."""
        self.in_roi = 0

    def contour(self) -> None:
        self.in_roi += 1
        limit = self.limits.max_contours_per_roi
        if limit is not None and self.in_roi > limit:
            raise ObjectTooLargeError(
                f"max_contours_per_roi {limit} exceeded: an ROI of this structure set has "
                "more contours than that; resample it or raise security.max_contours_per_roi"
            )

    def values(self, raw: memoryview) -> None:
        """Contour Data: its values are the backslash-separated DS strings (PS3.5 6.4)."""
        text = bytes(raw).strip(b" \0")
        self.values_count += text.count(b"\\") + 1 if text else 0
        limit = self.limits.max_contour_points
        if limit is not None and self.values_count > 3 * limit:
            raise ObjectTooLargeError(
                f"max_contour_points {limit} exceeded: this structure set holds more contour "
                "points than that; resample its contours or raise security.max_contour_points"
            )


def _refuse_counts(elements: int, items: int, limits: DecodeLimits) -> None:
    if items > limits.max_sequence_items:
        raise ObjectTooLargeError(
            f"max_sequence_items {limits.max_sequence_items} exceeded: the object holds more "
            "sequence items than that; split it or raise security.max_sequence_items"
        )
    if elements > limits.max_elements:
        raise ObjectTooLargeError(
            f"max_elements {limits.max_elements} exceeded: the object holds more data "
            "elements than that; split it or raise security.max_elements"
        )
