"""PS3.10 encoding of the objects theranode writes, and what they share.

Every written object gets the same File Meta Information (Explicit VR
Little Endian, theranode's implementation UID), the same SOP Common and
General Equipment values and Content/Instance Creation date-times taken
from the result's creation record — never from the clock — so that
identical inputs give identical bytes.

:func:`encode` is the one place where result objects become bytes, and it
refuses to encode an object with an element that breaks PS3.5: every
element, in every sequence item, is checked for its VR's character
repertoire and maximum length, its value multiplicity, the character set
the object declares and the 16-bit length field of Explicit VR
(:func:`value_problems`). An invalid object raises
:class:`InvalidOutputError` instead of being written.

References
----------
DICOM PS3.10 7.1 (File Meta Information), PS3.3 C.12.1 (SOP Common),
C.7.5.1 (General Equipment), C.12.2 (Common Instance Reference);
PS3.5 6.1 (character repertoires), 6.2 (value representations: character
repertoire and length of each VR), 6.4 (value multiplicity), 7.1.2 (Data
Element structure with Explicit VR: 16-bit value lengths).
"""

from __future__ import annotations

import re
import struct
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import date, datetime, time
from io import BytesIO
from typing import Any

import pydicom
import pydicom.config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_description, dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from theranode.dicomio.errors import InvalidOutputError
from theranode.dicomio.source import InstanceReference, SourceContext
from theranode.dicomio.uids import MANUFACTURER, MODEL_NAME, ResultIdentity, derive_uid

#: Implementation Class UID of theranode's DICOM writer (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID = derive_uid("implementation", MANUFACTURER)
IMPLEMENTATION_VERSION_NAME = "THERANODE"


def dicom_date(moment: datetime) -> str:
    """``YYYYMMDD`` (DA) of ``moment``."""
    return moment.strftime("%Y%m%d")


def dicom_time(moment: datetime) -> str:
    """``HHMMSS.FFFFFF`` (TM) of ``moment``."""
    return moment.strftime("%H%M%S.%f")


def file_meta(sop_class_uid: str, sop_instance_uid: str) -> FileMetaDataset:
    """File Meta Information for an Explicit VR Little Endian file."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return meta


_PLAIN_UID = re.compile(r"[0-9.]{1,64}")
_PLAIN_SH = re.compile(r"[ -\[\]-~]{0,16}")  # printable ASCII without backslash


def _short_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element with a 2-byte length (UI, SH, UL)."""
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def file_header(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes | None:
    """Preamble, ``DICM`` and File Meta Information, encoded directly (PS3.10 7.1).

    The same bytes pydicom writes for these five values, in a few
    microseconds rather than the third of a millisecond a FileMetaDataset
    takes to build and write (that cost was paid for every received
    instance). Returns ``None`` when a value is not a plain UID or short
    string; the caller then uses pydicom, which knows what to do with it.
    """
    uids = (sop_class_uid, sop_instance_uid, transfer_syntax_uid, implementation_class_uid)
    if not all(_PLAIN_UID.fullmatch(uid) for uid in uids):
        return None
    if not _PLAIN_SH.fullmatch(implementation_version_name):
        return None

    def padded(text: str, pad: bytes) -> bytes:
        raw = text.encode("ascii")
        return raw + pad if len(raw) % 2 else raw

    elements = b"".join((
        struct.pack("<HH2s2xI", 0x0002, 0x0001, b"OB", 2) + b"\x00\x01",
        _short_element(0x0002, 0x0002, b"UI", padded(sop_class_uid, b"\x00")),
        _short_element(0x0002, 0x0003, b"UI", padded(sop_instance_uid, b"\x00")),
        _short_element(0x0002, 0x0010, b"UI", padded(transfer_syntax_uid, b"\x00")),
        _short_element(0x0002, 0x0012, b"UI", padded(implementation_class_uid, b"\x00")),
        _short_element(0x0002, 0x0013, b"SH", padded(implementation_version_name, b" ")),
    ))
    group_length = _short_element(0x0002, 0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements


def in_tag_order(ds: Dataset) -> Dataset:
    """``ds`` with its top-level elements in tag order (pydicom keeps insertion order in memory)."""
    ordered = Dataset()
    for element in sorted(ds, key=lambda e: e.tag):
        ordered.add(element)
    ordered.file_meta = ds.file_meta
    ordered.preamble = ds.preamble
    return ordered


def set_equipment(ds: Dataset, identity: ResultIdentity) -> None:
    """General Equipment module: theranode and the version that computed the result."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = MODEL_NAME
    ds.SoftwareVersions = identity.software_version


def set_creation(ds: Dataset, identity: ResultIdentity) -> None:
    """Instance Creation and Content date/time from the result's creation record."""
    ds.InstanceCreationDate = dicom_date(identity.created_at)
    ds.InstanceCreationTime = dicom_time(identity.created_at)
    ds.ContentDate = dicom_date(identity.created_at)
    ds.ContentTime = dicom_time(identity.created_at)


def common_instance_reference(
    source: SourceContext, refs: Iterable[InstanceReference]
) -> dict[str, list[Dataset]]:
    """Common Instance Reference module items for ``refs``, by keyword.

    Instances in the output's own study go to Referenced Series Sequence,
    the others to Studies Containing Other Referenced Instances Sequence.
    """
    by_study: dict[str, dict[str, list[InstanceReference]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for ref in refs:
        by_study[ref.study_instance_uid][ref.series_instance_uid].append(ref)
    own = by_study.pop(source.study_instance_uid, {})
    module: dict[str, list[Dataset]] = {}
    if own:
        module["ReferencedSeriesSequence"] = _series_items(own)
    if by_study:
        studies = []
        for study_uid, series in by_study.items():
            study = Dataset()
            study.StudyInstanceUID = study_uid
            study.ReferencedSeriesSequence = _series_items(series)
            studies.append(study)
        module["StudiesContainingOtherReferencedInstancesSequence"] = studies
    return module


def _series_items(series: dict[str, list[InstanceReference]]) -> list[Dataset]:
    items = []
    for series_uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedInstanceSequence = [sop_reference(ref) for ref in refs]
        items.append(item)
    return items


def sop_reference(ref: InstanceReference) -> Dataset:
    """An item with Referenced SOP Class UID and Referenced SOP Instance UID."""
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


#: Maximum value lengths (characters) PS3.5 Table 6.2-1 sets that pydicom's
#: validators do not check; DA, DT and TM at their non-query lengths.
_EXTRA_MAX_CHARS = {"AS": 4, "DA": 8, "DT": 26, "TM": 14}
#: VRs whose values may hold a backslash (they are single-valued, PS3.5 6.2).
_BACKSLASH_ALLOWED = frozenset({"LT", "ST", "UT", "UR"})
#: VRs that may hold CR, LF, FF and TAB besides printable characters (PS3.5 6.1.3).
_FORMATTED_TEXT = frozenset({"LT", "ST", "UT"})
#: VRs in the character set of (0008,0005); all others use the default repertoire.
_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "PN", "UC", "UT"})
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM",
     "UC", "UI", "UR", "UT"}
)
#: Explicit VR Little Endian stores these VRs' value length in 16 bits (PS3.5 7.1.2).
_SHORT_LENGTH_VRS = frozenset(
    {"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FL", "FD", "IS", "LO", "LT", "PN",
     "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US"}
)
_BINARY_SIZE = {"AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "UL": 4, "US": 2}
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_FORMATTED_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


def value_problems(ds: Dataset) -> list[str]:
    """What in ``ds`` (file meta, elements, every sequence item) breaks PS3.5.

    Each problem names the attribute (PS3.6 name and tag, after the
    sequence items that lead to it), its VR and what is wrong with it, e.g. a value
    longer than its VR allows (with both lengths). Checks, per element:
    pydicom's validation of the VR (:func:`pydicom.valuerep.validate_value`
    in RAISE mode: repertoire, maximum length, numeric range), the lengths
    pydicom does not check (AS, DA, DT, TM), control characters and
    backslashes inside a value, characters outside the declared Specific
    Character Set (the default repertoire, ASCII, when none is declared),
    the value multiplicity of the data dictionary and the 16-bit length
    field of Explicit VR.

    References
    ----------
    DICOM PS3.5 6.1 (character repertoires), 6.2 and Table 6.2-1 (VRs),
    6.4 (value multiplicity), 7.1.2 (Explicit VR value lengths).
    """
    problems: list[str] = []
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        problems.extend(_dataset_problems(meta, ("ascii",), ""))
    problems.extend(_dataset_problems(ds, _encodings(ds, ("ascii",)), ""))
    return problems


def check_values(ds: Dataset) -> None:
    """Raise :class:`InvalidOutputError` listing :func:`value_problems`, if any."""
    problems = value_problems(ds)
    if not problems:
        return
    what = f"{ds.get('Modality', 'DICOM')} object {ds.get('SOPInstanceUID', '')}".strip()
    raise InvalidOutputError(
        f"The {what} was not written: {len(problems)} element(s) break DICOM PS3.5 "
        "(value representations, 6.2): " + "; ".join(problems) + ". This is a defect "
        "of theranode's writer for this object, not of the input data; report it "
        "with this message."
    )


def _encodings(ds: Dataset, inherited: Sequence[str]) -> Sequence[str]:
    """Python codecs of the item's Specific Character Set (ASCII when absent)."""
    charset = ds.get("SpecificCharacterSet")
    if not charset:
        return inherited
    return tuple(convert_encodings(charset))


def _dataset_problems(ds: Dataset, encodings: Sequence[str], path: str) -> Iterator[str]:
    for elem in ds:
        name = f"{path}{_element_name(elem)}"
        if elem.VR == "SQ":
            for number, item in enumerate(elem.value, start=1):
                yield from _dataset_problems(
                    item, _encodings(item, encodings), f"{name} item {number} > "
                )
            continue
        yield from (f"{name} {elem.VR}: {p}" for p in _element_problems(elem, encodings))


def _element_name(elem: DataElement) -> str:
    """``Dose Comment (3004,0006)``: the attribute's name in PS3.6 and its tag."""
    try:
        name = dictionary_description(elem.tag)
    except KeyError:
        name = "Private attribute" if elem.tag.is_private else "Unknown attribute"
    return f"{name} ({elem.tag.group:04X},{elem.tag.element:04X})"


def _element_problems(elem: DataElement, encodings: Sequence[str]) -> list[str]:
    vr = str(elem.VR)
    if " or " in vr or elem.value is None or elem.value == "":
        return []  # ambiguous VRs are resolved by pydicom while writing
    values = list(elem.value) if isinstance(elem.value, (MultiValue, list, tuple)) else [
        elem.value
    ]
    problems = _vm_problems(elem, len(values))
    for number, value in enumerate(values, start=1):
        where = f"value {number} " if len(values) > 1 else ""
        problems.extend(where + p for p in _value_problems(vr, value, encodings))
    problems.extend(_length_field_problems(vr, values, encodings))
    return problems


def _text(value: Any) -> Any:
    """What pydicom writes for a text-VR value: DS, IS and PN objects as their text.

    Strings, bytes and date/time objects (which pydicom's validators accept
    as such) are returned unchanged.
    """
    if isinstance(value, (str, bytes, date, time)):
        return value
    return str(value)


def _value_problems(vr: str, value: Any, encodings: Sequence[str]) -> list[str]:
    text = _text(value) if vr in _TEXT_VRS else value
    try:
        validate_value(vr, text, pydicom.config.RAISE)
    except ValueError as error:
        return [str(error).split(" Please see ")[0].rstrip(".")]
    if not isinstance(text, str):
        return []
    return _text_problems(vr, text, encodings)


def _text_problems(vr: str, text: str, encodings: Sequence[str]) -> list[str]:
    problems = []
    limit = _EXTRA_MAX_CHARS.get(vr)
    if limit is not None and len(text) > limit:
        problems.append(
            f"{len(text)} characters, {vr} allows at most {limit} (PS3.5 Table 6.2-1)"
        )
    control = _FORMATTED_CONTROL if vr in _FORMATTED_TEXT else _CONTROL
    found = control.search(text)
    if found:
        problems.append(
            f"control character {found.group()!r} at position {found.start()}, "
            f"not allowed in {vr} (PS3.5 6.1.3, 6.2)"
        )
    if "\\" in text and vr not in _BACKSLASH_ALLOWED:
        problems.append(
            f"a backslash inside the value {text[:40]!r}: in {vr} it separates values "
            "(PS3.5 6.2)"
        )
    codecs = encodings if vr in _CHARSET_VRS else ("ascii",)
    if not _encodable(text, codecs):
        problems.append(
            f"{text[:40]!r} has characters outside the character set "
            f"{'/'.join(codecs)} (Specific Character Set, PS3.5 6.1)"
        )
    return problems


def _encodable(text: str, codecs: Sequence[str]) -> bool:
    if len(codecs) > 1:
        return True  # code extension: pydicom switches encodings within the value
    codec = "ascii" if codecs[0] in ("iso8859", "iso_ir_6") else codecs[0]
    try:
        text.encode(codec)
    except UnicodeError:
        return False
    return True


def _vm_problems(elem: DataElement, count: int) -> list[str]:
    if elem.tag.is_private or elem.tag.element == 0:
        return []
    try:
        spec = dictionary_VM(elem.tag)
    except KeyError:
        return []
    if any(_vm_allows(option.strip(), count) for option in spec.split(" or ")):
        return []
    return [f"{count} values where the data dictionary allows VM {spec} (PS3.5 6.4)"]


def _vm_allows(spec: str, count: int) -> bool:
    low_text, _, high_text = spec.partition("-")
    low = int(low_text)
    if not high_text:
        return count == low
    if high_text == "n":
        return count >= low
    if high_text.endswith("n"):
        step = int(high_text[:-1])
        return count >= low and count % step == 0
    return low <= count <= int(high_text)


def _length_field_problems(
    vr: str, values: Sequence[Any], encodings: Sequence[str]
) -> list[str]:
    if vr not in _SHORT_LENGTH_VRS:
        return []
    if vr in _BINARY_SIZE:
        length = _BINARY_SIZE[vr] * len(values)
    else:
        joined = "\\".join(str(_text(v)) for v in values)
        codec = encodings[0] if vr in _CHARSET_VRS and len(encodings) == 1 else "utf-8"
        length = len(joined.encode(_python_codec(codec), errors="replace"))
    if length + length % 2 <= 0xFFFE:
        return []
    return [
        f"{len(values)} values of {length} bytes in all; Explicit VR stores the length "
        f"of {vr} in 16 bits (at most 65534 bytes, PS3.5 7.1.2)"
    ]


def _python_codec(codec: str) -> str:
    return "ascii" if codec in ("iso8859", "iso_ir_6") else codec


def encode(ds: Dataset) -> bytes:
    """The PS3.10 file bytes of ``ds`` (preamble, meta, Explicit VR Little Endian).

    Raises
    ------
    InvalidOutputError
        An element of ``ds`` breaks PS3.5 (:func:`value_problems`); nothing
        is encoded, so no invalid object ever reaches a file or a peer.
    """
    check_values(ds)
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
