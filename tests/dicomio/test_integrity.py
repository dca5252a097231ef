"""Completeness checks on received bytes (pydicom alone reads short files silently)."""

from __future__ import annotations

import zlib
from datetime import datetime

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from tests.service import factory
from theranode.dicomio.errors import (
    DicomInputError,
    InconsistentPixelDataError,
    TruncatedObjectError,
)
from theranode.dicomio.headers import SeriesKind
from theranode.dicomio.integrity import (
    DecodeLimits,
    ObjectTooLargeError,
    check_limits,
    check_pixel_data,
    decode,
    inflate_bounded,
)


def nm_bytes() -> bytes:
    return factory.encode(factory.nm("P1", None, datetime(2024, 1, 1, 9)))


def test_whole_object_decodes():
    assert decode(nm_bytes()).Modality == "NM"


def test_object_cut_inside_an_element_is_truncated():
    with pytest.raises(TruncatedObjectError, match="7FE0,0010"):
        decode(nm_bytes()[:-10])


def test_garbage_is_not_decodable():
    with pytest.raises(DicomInputError, match="not a decodable"):
        decode(b"this is not DICOM at all" * 10)


def test_pixel_data_must_fill_its_dimensions():
    ds = decode(nm_bytes())
    check_pixel_data(ds, SeriesKind.SPECT)
    ds.Rows = 16
    with pytest.raises(TruncatedObjectError, match="needs"):
        check_pixel_data(ds, SeriesKind.SPECT)
    ds.Rows = 4
    with pytest.raises(InconsistentPixelDataError, match="do not describe"):
        check_pixel_data(ds, SeriesKind.SPECT)
    ds.Rows = 0
    with pytest.raises(InconsistentPixelDataError, match="impossible"):
        check_pixel_data(ds, SeriesKind.SPECT)


def test_image_without_pixel_data_is_truncated_but_a_structure_set_is_not_an_image():
    ds = decode(nm_bytes())
    del ds.PixelData
    with pytest.raises(TruncatedObjectError, match="without Pixel Data"):
        check_pixel_data(ds, SeriesKind.SPECT)
    check_pixel_data(ds, SeriesKind.RTSTRUCT)


# -- limits on the work of decoding (check_limits) ---------------------------------


def _nested(undefined: bool) -> Dataset:
    """An NM with a 3-level sequence: 2 items, each with a 3-item sequence inside."""
    ds = factory.nm("P1", datetime(2024, 1, 1, 8), datetime(2024, 1, 1, 9))
    outer = Sequence()
    for _ in range(2):
        item = Dataset()
        item.CodeValue = "1"
        item.ConceptCodeSequence = Sequence([Dataset() for _ in range(3)])
        for leaf in item.ConceptCodeSequence:
            leaf.CodeMeaning = "x"
            leaf.is_undefined_length_sequence_item = undefined
        item.ConceptCodeSequence.is_undefined_length = undefined
        item.is_undefined_length_sequence_item = undefined
        outer.append(item)
    ds.ContentSequence = outer
    ds["ContentSequence"].is_undefined_length = undefined
    return ds


def _limits(elements: int = 10**6, items: int = 10**6, inflated: int = 2**30) -> DecodeLimits:
    return DecodeLimits(max_inflated_bytes=inflated, max_elements=elements,
                        max_sequence_items=items)


def _items_counted(data: bytes) -> int:
    """The sequence item count check_limits finds: the smallest limit it accepts."""
    for items in range(100):
        try:
            check_limits(data, _limits(items=items))
            return items
        except ObjectTooLargeError:
            continue
    raise AssertionError("more than 100 items")


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_every_sequence_item_is_counted_at_every_level(syntax: str, undefined: bool):
    ds = _nested(undefined)
    ds.file_meta.TransferSyntaxUID = syntax
    data = factory.encode(ds)
    # 1 RadiopharmaceuticalInformation + 1 RadionuclideCode + 2 Content + 2 × 3 ConceptCode
    assert _items_counted(data) == 10
    assert decode(data, _limits(items=10)).ContentSequence[1].ConceptCodeSequence[2].CodeMeaning


def test_elements_are_counted_with_nested_ones():
    data = factory.encode(_nested(False))
    flat = len(decode(data))
    with pytest.raises(ObjectTooLargeError, match="^max_elements 40 exceeded"):
        check_limits(data, _limits(elements=40))
    assert flat < 40, "the limit is over the top level alone: nested elements were counted"
    check_limits(data, _limits(elements=60))


def test_pixel_data_fragments_are_not_sequence_items():
    ds = factory.nm("P1", None, datetime(2024, 1, 1, 9))
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.PixelData = encapsulate([b"\x00\x01" * 8] * 30)
    ds["PixelData"].VR = "OB"
    data = factory.encode(ds)
    check_limits(data, _limits(items=2))  # the radiopharmaceutical items, not 31 fragments
    with pytest.raises(ObjectTooLargeError, match="max_elements"):
        check_limits(data, _limits(elements=40))


def test_inflation_stops_at_the_limit():
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflater.compress(bytes(8 * 2**20)) + deflater.flush()
    assert len(inflate_bounded(stream, 8 * 2**20)) == 8 * 2**20
    with pytest.raises(ObjectTooLargeError, match="^max_inflated_mb 4 exceeded"):
        inflate_bounded(stream, 4 * 2**20)
    cut = inflate_bounded(stream[: len(stream) // 2], 8 * 2**20)  # truncated: left to pydicom
    assert 0 < len(cut) < 8 * 2**20 and not any(cut)
    with pytest.raises(DicomInputError, match="cannot be inflated"):
        inflate_bounded(b"\xff" * 100, 2**20)


def test_bytes_the_walk_cannot_follow_are_left_to_pydicom():
    data = factory.encode(_nested(True))
    for cut in (200, 400, len(data) - 30):
        check_limits(data[:cut], _limits(elements=1000, items=100))  # no error of its own
    check_limits(b"not DICOM at all" * 20, _limits(elements=1, items=0))
