"""File Meta Information encoded directly is what pydicom writes."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID

from dicomio.part10 import file_header

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLEMENTATION = "1.2.826.0.1.3680043.9.3811.3.0.4"


def _pydicom_header(sop_class: str, sop_instance: str, syntax: str, version: str) -> bytes:
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION)
    meta.ImplementationVersionName = version
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta)
    return b"\x00" * 128 + b"DICM" + buffer.getvalue()


@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "2.25." + "9" * 38])
@pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1",
                                    "1.2.840.10008.1.2.4.70"])
@pytest.mark.parametrize("version", ["PYNETDICOM_304", "ODD", ""])
def test_bytes_are_pydicoms(sop_instance: str, syntax: str, version: str) -> None:
    ours = file_header(CT_STORAGE, sop_instance, syntax, IMPLEMENTATION, version)
    assert ours == _pydicom_header(CT_STORAGE, sop_instance, syntax, version)


def test_pydicom_reads_the_header_back() -> None:
    header = file_header(CT_STORAGE, "1.2.3.4", "1.2.840.10008.1.2.1", IMPLEMENTATION, "X")
    assert header is not None
    meta = dcmread(BytesIO(header), force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.FileMetaInformationGroupLength == len(header) - 128 - 4 - 12


@pytest.mark.parametrize("sop_instance", ["", "1.2.3 ", "../../etc", "1.2.é", "1." * 40])
def test_anything_but_a_plain_uid_is_left_to_pydicom(sop_instance: str) -> None:
    assert file_header(CT_STORAGE, sop_instance, "1.2.840.10008.1.2", IMPLEMENTATION, "X") is None


def test_a_version_name_that_is_not_a_short_string_is_left_to_pydicom() -> None:
    for version in ("A" * 17, "back\\slash", "tab\t"):
        assert file_header(CT_STORAGE, "1.2.3", "1.2.840.10008.1.2", IMPLEMENTATION,
                           version) is None
