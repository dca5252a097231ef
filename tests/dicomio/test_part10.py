"""File Meta Information encoded directly is what pydicom writes; invalid objects are refused."""

from __future__ import annotations

from io import BytesIO

import pydicom.config
import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import Tag
from pydicom.uid import UID

from tests.part10_bytes import read_back
from theranode.dicomio.errors import DicomInputError
from theranode.dicomio.part10 import (
    InvalidOutputError,
    encode,
    file_header,
    file_meta,
    value_problems,
)

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


# -- every written object is checked against PS3.5 ------------------------------
def _result_like(**elements: tuple[str, object]) -> Dataset:
    """A small RT Dose-like dataset; ``elements`` are added without pydicom's checks."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.2"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.9.3811.1.2.3"
    ds.Modality = "RTDOSE"
    for keyword, (vr, value) in elements.items():
        ds.add(DataElement(keyword, vr, value, validation_mode=pydicom.config.IGNORE))
    ds.file_meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID)
    return ds


def test_a_valid_object_is_encoded_and_reads_back() -> None:
    ds = _result_like(DoseComment=("LO", "x" * 64), PatientName=("PN", "Doe^Jane"))
    assert value_problems(ds) == []
    assert read_back(encode(ds)).DoseComment == "x" * 64


def test_an_overlong_value_is_refused_with_attribute_vr_length_and_limit() -> None:
    ds = _result_like(DoseComment=("LO", "x" * 107))
    with pytest.raises(InvalidOutputError) as caught:
        encode(ds)
    message = str(caught.value)
    for part in ("Dose Comment (3004,0006)", "LO", "107", "64", "was not written"):
        assert part in message, message
    assert isinstance(caught.value, DicomInputError)


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "expected"),
    [
        ("Modality", "CS", "rt dose", "Invalid value for VR CS"),
        ("SeriesDescription", "LO", "tab\there", "control character"),
        ("PatientName", "PN", "Dö^Jane", "character set"),
        ("ImagePositionPatient", "DS", ["1", "2"], "VM 3"),
        ("SliceThickness", "DS", "14.399999999999999", "16"),
        ("StudyDate", "DA", "20240301-20240302", "at most 8"),
        ("ContentTime", "TM", "143005.123456789", "Invalid value for VR TM"),
        ("Rows", "US", 70000, "between 0 and 65535"),
        ("ReferencedFrameNumber", "IS", [str(i) for i in range(20000)], "16 bits"),
    ],
)
def test_each_kind_of_violation_is_named(
    keyword: str, vr: str, value: object, expected: str
) -> None:
    problems = value_problems(_result_like(**{keyword: (vr, value)}))
    assert len(problems) == 1, problems
    assert f"({Tag(keyword).group:04X},{Tag(keyword).element:04X}) {vr}:" in problems[0]
    assert expected in problems[0], problems[0]


def test_elements_inside_sequence_items_are_checked_with_their_path() -> None:
    item = Dataset()
    item.add(DataElement("ReferencedSOPInstanceUID", "UI", "1.2.03",
                         validation_mode=pydicom.config.IGNORE))
    ds = _result_like()
    ds.ReferencedInstanceSequence = [Dataset(), item]
    (problem,) = value_problems(ds)
    assert problem.startswith(
        "Referenced Instance Sequence (0008,114A) item 2 > "
        "Referenced SOP Instance UID (0008,1155) UI:"
    ), problem


def test_the_declared_character_set_is_the_one_checked() -> None:
    latin = _result_like(PatientName=("PN", "Dö^Jane"), SpecificCharacterSet=("CS", "ISO_IR 100"))
    assert value_problems(latin) == []
    greek = _result_like(PatientName=("PN", "Δ^Jane"), SpecificCharacterSet=("CS", "ISO_IR 100"))
    assert "character set" in value_problems(greek)[0]
    utf8 = _result_like(PatientName=("PN", "Δ^Jane"), SpecificCharacterSet=("CS", "ISO_IR 192"))
    assert value_problems(utf8) == []
    # Formatted text may hold line breaks and a backslash; a UID never other characters.
    text = _result_like(TextValue=("UT", "line 1\r\nline 2 C:\\x"))
    assert value_problems(text) == []
