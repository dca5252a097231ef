"""Completeness checks on received bytes (pydicom alone reads short files silently)."""

from __future__ import annotations

from datetime import datetime

import pytest

from dicomio.errors import DicomInputError, InconsistentPixelDataError, TruncatedObjectError
from dicomio.headers import SeriesKind
from dicomio.integrity import check_pixel_data, decode
from tests.service import factory


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
