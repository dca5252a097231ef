"""A seeded corpus of malformed and adversarial DICOM objects for the node.

Each :class:`HostileCase` holds the exact Part-10 bytes to send (file meta
intact, so a pynetdicom sender can pick the presentation context; the data
set after it is what is hostile) and what the node must do with it
(:class:`Expect`). The families follow the ways real archives are attacked
or fed garbage: truncation at many offsets, corrupted value representations,
enormous declared lengths, deeply nested sequences, pixel data of the wrong
size, path-like, overlong or non-UID "UIDs", frames of reference that match
nothing, other radionuclides, absurd dates, times and activities, empty or
huge patient attributes, non-ASCII text, random bit flips and UIDs that
collide with another patient's.

Run ``python -m tests.reliability.corpus DIR`` to write the corpus as files.

References
----------
DICOM PS3.5 section 7.1 (data element encoding: explicit VR lengths),
section 7.5 (nesting of sequences), section 9.1 (UID encoding rules);
PS3.10 section 7.1 (Part-10 file meta); PS3.4 Annex B.2.3 (C-STORE statuses).
"""

from __future__ import annotations

import enum
import random
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from tests.service import factory

#: Explicit-VR VRs whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())

INJECTION = datetime(2024, 5, 6, 9, 15)
UNDEFINED_LENGTH = 0xFFFFFFFF


class Expect(str, enum.Enum):
    """What the node must do with a case."""

    REJECTED = "rejected"  # a failure status with a reason, bytes in quarantine/
    FLAGGED = "flagged"  # stored (0x0000); grouping says held/ungrouped/ignored with a note
    STORED = "stored"  # stored (0x0000) and indexed from a valid header
    CONFLICT = "conflict"  # same SOP Instance UID as another's: kept aside, original untouched
    HANDLED = "handled"  # either REJECTED or STORED: the bytes decide (fuzzing)


@dataclass(frozen=True)
class HostileCase:
    """One adversarial object and the node's expected answer."""

    name: str
    family: str
    data: bytes
    expect: Expect


@dataclass(frozen=True)
class Victim:
    """UIDs of the innocent patient the corpus tries to disturb."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame_uid: str


# -- byte-level helpers ------------------------------------------------------
def data_set_offset(data: bytes) -> int:
    """Offset of the data set after the 128-byte preamble, 'DICM' and the file meta."""
    offset = 132
    while data[offset : offset + 2] == b"\x02\x00":
        offset = _next_element(data, offset)[1]
    return offset


def _next_element(data: bytes, offset: int) -> tuple[int, int]:
    """(value offset, end offset) of the explicit-VR LE element at ``offset``."""
    vr = data[offset + 4 : offset + 6]
    if vr in LONG_VRS:
        (length,) = struct.unpack_from("<I", data, offset + 8)
        start = offset + 12
    else:
        (length,) = struct.unpack_from("<H", data, offset + 6)
        start = offset + 8
    if length == UNDEFINED_LENGTH:
        raise ValueError("undefined length: the top-level walker does not descend")
    return start, start + length


def elements(data: bytes) -> list[tuple[int, int, int, int]]:
    """Top-level data set elements as (tag, header offset, value offset, end)."""
    found = []
    offset = data_set_offset(data)
    while offset + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, offset)
        start, end = _next_element(data, offset)
        found.append(((group << 16) | element, offset, start, end))
        offset = end
    return found


def element_at(data: bytes, tag: int) -> tuple[int, int, int]:
    for found_tag, header, start, end in elements(data):
        if found_tag == tag:
            return header, start, end
    raise KeyError(f"tag {tag:08X} not at the top level")


def with_length(data: bytes, header: int, length: int) -> bytes:
    """``data`` with the declared length of the element at ``header`` replaced."""
    vr = data[header + 4 : header + 6]
    if vr in LONG_VRS:
        return data[: header + 8] + struct.pack("<I", length) + data[header + 12 :]
    return data[: header + 6] + struct.pack("<H", length & 0xFFFF) + data[header + 8 :]


# -- well-formed bases ---------------------------------------------------------
def _nm(patient_id: str, **kwargs: object) -> Dataset:
    return factory.nm(patient_id, INJECTION, INJECTION + timedelta(hours=24), **kwargs)  # type: ignore[arg-type]


def _ct(patient_id: str) -> Dataset:
    return factory.ct(patient_id, INJECTION + timedelta(hours=24), frame=factory.generate_uid())


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    """Part-10 bytes without pydicom's write validation (the values are hostile)."""
    import pydicom.config

    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()
    finally:
        pydicom.config.settings.writing_validation_mode = previous


def _raw_uid_value(value: bytes) -> bytes:
    return value + (b"\0" if len(value) % 2 else b"")


def replace_value(data: bytes, tag: int, value: bytes) -> bytes:
    """Replace a short-VR element's value with raw ``value`` (length fixed up)."""
    header, start, end = element_at(data, tag)
    vr = data[header + 4 : header + 6]
    if vr in LONG_VRS:
        return data[: header + 8] + struct.pack("<I", len(value)) + value + data[end:]
    return data[: header + 6] + struct.pack("<H", len(value)) + value + data[end:]


# -- families ------------------------------------------------------------------
Family = Callable[[random.Random, int], Iterator[HostileCase]]

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
FRAME_UID = 0x00200052
PATIENT_ID = 0x00100020
PIXEL_DATA = 0x7FE00010
RADIOPHARMACEUTICAL_SEQUENCE = 0x00540016


def truncated(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Cut NM/CT objects at many offsets inside the data set (and at element boundaries)."""
    for i in range(count):
        data = encode(_nm(f"TRUNC{i}") if i % 2 else _ct(f"TRUNC{i}"))
        start = data_set_offset(data)
        if i % 5 == 0:  # exactly at an element boundary: a "valid" but shorter data set
            cut = rng.choice([h for _, h, _, _ in elements(data)][1:])
        else:
            cut = rng.randrange(start + 1, len(data) - 1)
        yield HostileCase(f"truncated-{i}-at-{cut}", "truncated", data[:cut], Expect.REJECTED)


_BAD_VRS = (b"ZZ", b"\x00\x00", b"\xff\xfe", b"SQ", b"OB", b"UN", b"US", b"sq", b"  ")


def bad_vrs(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Replace the VR of one element with garbage or a wrong VR."""
    for i in range(count):
        data = encode(_nm(f"BADVR{i}"))
        tag, header, _, _ = rng.choice(elements(data))
        vr = rng.choice(_BAD_VRS)
        hostile = data[: header + 4] + vr + data[header + 6 :]
        yield HostileCase(f"bad-vr-{i}-{tag:08X}-{vr!r}", "bad VR", hostile, Expect.HANDLED)


def enormous_lengths(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Declare lengths far beyond the object (up to 4 GiB − 2) or undefined on a non-SQ."""
    lengths = (0xFFFFFFFE, 0x7FFFFFFF, 0x10000000, 0xFFFFFFF0, UNDEFINED_LENGTH, 0xFFFF)
    for i in range(count):
        data = encode(_nm(f"HUGE{i}"))
        tag, header, _, _ = rng.choice(elements(data))
        length = rng.choice(lengths)
        hostile = with_length(data, header, length)
        expect = Expect.HANDLED if length == UNDEFINED_LENGTH else Expect.REJECTED
        if data[header + 4 : header + 6] not in LONG_VRS and length > 0xFFFF:
            expect = Expect.HANDLED  # a 2-byte length field keeps only the low 16 bits
        yield HostileCase(f"enormous-length-{i}-{tag:08X}-{length:X}", "enormous length",
                          hostile, expect)


def _nested_sequence(depth: int, defined: bool) -> bytes:
    """A private SQ (creator 0009,0010 + 0009,1001) nested ``depth`` items deep."""
    tag = b"\x09\x00\x01\x10SQ\x00\x00"
    item_tag = b"\xfe\xff\x00\xe0"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    sequence_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    content = b""
    for _ in range(depth):
        if defined:
            item = item_tag + struct.pack("<I", len(content)) + content
            content = tag + struct.pack("<I", len(item)) + item
        else:
            item = item_tag + b"\xff\xff\xff\xff" + content + item_end
            content = tag + b"\xff\xff\xff\xff" + item + sequence_end
    return b"\x09\x00\x10\x00LO\x08\x00THERANOD" + content


def deep_sequences(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Private sequences nested 10 to 20,000 levels, of defined and undefined length."""
    depths = (10, 100, 500, 1000, 3000, 20000)
    for i in range(count):
        data = encode(_nm(f"DEEP{i}"))
        depth, defined = depths[i % len(depths)], bool(i // len(depths) % 2)
        _, header, _, _ = next(e for e in elements(data) if e[0] > 0x00091001)
        hostile = data[:header] + _nested_sequence(depth, defined) + data[header:]
        yield HostileCase(f"deep-sequence-{i}-depth-{depth}-{'defined' if defined else 'undef'}",
                          "deep sequence", hostile, Expect.HANDLED)


def wrong_pixel_sizes(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Pixel data shorter or longer than Rows × Columns × frames, or absurd dimensions."""
    variants: list[tuple[str, Callable[[Dataset], None]]] = [
        ("short", lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2])),
        ("one-byte", lambda ds: setattr(ds, "PixelData", b"\0\0")),
        ("long", lambda ds: setattr(ds, "PixelData", ds.PixelData * 9)),
        ("rows-65535", lambda ds: setattr(ds, "Rows", 65535)),
        ("columns-0", lambda ds: setattr(ds, "Columns", 0)),
        ("frames-1e9", lambda ds: setattr(ds, "NumberOfFrames", "999999999")),
        ("frames-negative", lambda ds: setattr(ds, "NumberOfFrames", "-4")),
        ("frames-text", lambda ds: setattr(ds, "NumberOfFrames", "7777")),  # → "many"
        ("bits-0", lambda ds: setattr(ds, "BitsAllocated", 0)),
        ("no-rows", lambda ds: delattr(ds, "Rows")),
        ("no-pixel-data", lambda ds: delattr(ds, "PixelData")),
    ]
    for i in range(count):
        label, mutate = variants[i % len(variants)]
        ds = _nm(f"PIXELS{i}") if i % 2 else _ct(f"PIXELS{i}")
        mutate(ds)
        data = encode(ds)
        if label == "frames-text":  # pydicom will not hold a non-number in an IS
            data = replace_value(data, 0x00280008, b"many")
        yield HostileCase(f"pixel-data-{label}-{i}", "wrong pixel data size", data,
                          Expect.REJECTED)


_BAD_UIDS = (
    "../../etc/passwd", "..", "/etc", "1.2.3/../../../../tmp/x", "1.2.3\\4", "C:\\Windows",
    "1.2.abc", "1.02.3", "1..2", "1.2.", ".1.2", "1 .2", "1.2.3\x00../x", "1." + "9" * 70,
    "1." + ".".join(["123456789"] * 30), "１.２", "1.2.3;rm -rf /", "%2e%2e%2fetc", "~/x", "*",
)


def bad_uids(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Path-like, overlong and non-UID characters in the UIDs that name archive paths."""
    tags = (SOP_INSTANCE_UID, STUDY_UID, SERIES_UID, FRAME_UID)
    for i in range(count):
        data = encode(_nm(f"UID{i}"))
        tag = tags[i % len(tags)]
        value = rng.choice(_BAD_UIDS).encode("utf-8")
        hostile = replace_value(data, tag, _raw_uid_value(value))
        yield HostileCase(f"bad-uid-{i}-{tag:08X}", "path-like or overlong UID", hostile,
                          Expect.REJECTED)


def patient_attributes(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Empty/blank PatientID (rejected), huge PatientName/ID, path-like and non-ASCII IDs."""
    for i in range(count):
        kind = i % 8
        ds = _nm(f"PAT{i}")
        implicit = False
        expect = Expect.STORED
        if kind == 0:
            ds.PatientID = ""
            expect = Expect.REJECTED
        elif kind == 1:
            ds.PatientID = "   "
            expect = Expect.REJECTED
        elif kind == 2:
            del ds.PatientID
            expect = Expect.REJECTED
        elif kind == 3:
            ds.PatientName = "A" * rng.choice((70_000, 1_000_000)) + "^B"
            implicit = True  # a 4-byte length: explicit VR PN is limited to 64 KiB
        elif kind == 4:
            ds.PatientID = f"../../etc/passwd{i}"
        elif kind == 5:
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.PatientName = "Müller^Jörg=山田^太郎"
            ds.PatientID = f"患者{i}"
            ds.SeriesDescription = "Лечение Lu-177 ✓"
        elif kind == 6:  # bytes that are not valid in any declared character set
            hostile = replace_value(encode(ds), PATIENT_ID, b"\xff\xfe\xc3(" + f"{i:04d}".encode())
            yield HostileCase(f"patient-invalid-bytes-{i}", "patient attributes", hostile,
                              Expect.STORED)
            continue
        else:
            ds.PatientID = "X" * 60_000 + str(i)
            implicit = True
        yield HostileCase(f"patient-{kind}-{i}", "patient attributes", encode(ds, implicit), expect)


def unmatched_frames(rng: random.Random, count: int, victim: Victim) -> Iterator[HostileCase]:
    """RTSTRUCT/CT whose frame of reference matches nothing (or the victim's) of its patient."""
    for i in range(count):
        frame = victim.frame_uid if i % 3 == 0 else factory.generate_uid()
        if i % 2:
            ds = factory.rtstruct(f"FRAME{i}", INJECTION, referenced_frame=frame)
        else:
            ds = factory.ct(f"FRAME{i}", INJECTION + timedelta(hours=24), frame=frame)
        yield HostileCase(f"unmatched-frame-{i}", "mismatched frame of reference", encode(ds),
                          Expect.FLAGGED)


_OTHER_RADIONUCLIDES = (("C-B1036", "^99m^Technetium"), ("C-111A1", "^131^Iodine"),
                        ("C-162A3", "^90^Yttrium"), ("C-152A1", "^68^Gallium"),
                        ("41874000", "^111^Indium"), ("", ""), ("XYZ", "not a nuclide"))


def other_radionuclides(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """NM with a radionuclide other than Lu-177: stored, ignored for Lu-177 dosimetry."""
    for i in range(count):
        code, meaning = _OTHER_RADIONUCLIDES[i % len(_OTHER_RADIONUCLIDES)]
        ds = _nm(f"NUCLIDE{i}")
        item = ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0]
        item.CodeValue, item.CodeMeaning = code or "0", meaning or "unknown"
        yield HostileCase(f"radionuclide-{code or 'empty'}-{i}", "non-Lu-177 radionuclide",
                          encode(ds), Expect.FLAGGED)


def absurd_times(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Injections in 1800 or 2999, after the scan, or not a date at all."""
    acquired = INJECTION + timedelta(hours=24)
    variants: list[tuple[str, str | None, str]] = [
        ("injection-1800", "18000506091500", acquired.strftime("%Y%m%d")),
        ("injection-2999", "29990506091500", acquired.strftime("%Y%m%d")),
        ("after-acquisition", (acquired + timedelta(hours=2)).strftime("%Y%m%d%H%M%S"),
         acquired.strftime("%Y%m%d")),
        ("acquired-1800", INJECTION.strftime("%Y%m%d%H%M%S"), "18000507"),
        ("acquired-2999", INJECTION.strftime("%Y%m%d%H%M%S"), "29990507"),
        ("injection-not-a-date", "20241345996199", acquired.strftime("%Y%m%d")),
        ("injection-garbage", "yesterday", acquired.strftime("%Y%m%d")),
    ]
    for i in range(count):
        label, start, acquisition_date = variants[i % len(variants)]
        ds = _nm(f"TIME{i}")
        item = ds.RadiopharmaceuticalInformationSequence[0]
        item.RadiopharmaceuticalStartDateTime = start
        del item.RadiopharmaceuticalStartTime
        for keyword in ("AcquisitionDate", "StudyDate"):
            setattr(ds, keyword, acquisition_date)
        yield HostileCase(f"time-{label}-{i}", "absurd time", encode(ds), Expect.FLAGGED)


_PLACEHOLDER = "1234567.89"
_ACTIVITIES = ("-7400", "0", "1e12", "NaN", "inf", "-inf", "7400 MBq", "1e308", "")


def absurd_activities(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Negative, zero, astronomical or non-numeric administered activities."""
    for i in range(count):
        value = _ACTIVITIES[i % len(_ACTIVITIES)]
        ds = _nm(f"ACTIVITY{i}")
        ds.RadiopharmaceuticalInformationSequence[0].RadionuclideTotalDose = _PLACEHOLDER
        # pydicom will not hold "NaN" or "7400 MBq" in a DS: swap the encoded bytes in place
        data = encode(ds).replace(_PLACEHOLDER.encode(), value.ljust(len(_PLACEHOLDER)).encode())
        yield HostileCase(f"activity-{value or 'empty'}-{i}", "absurd activity", data,
                          Expect.STORED)


def bit_flips(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """Random byte corruption inside the data set, or a data set of random bytes."""
    for i in range(count):
        data = bytearray(encode(_nm(f"FLIP{i}") if i % 2 else _ct(f"FLIP{i}")))
        start = data_set_offset(bytes(data))
        if i % 7 == 0:
            data[start:] = rng.randbytes(rng.randrange(1, 4096))
        else:
            for _ in range(rng.randrange(1, 9)):
                position = rng.randrange(start, min(len(data), start + 600))
                data[position] = rng.randrange(256)
        yield HostileCase(f"bit-flips-{i}", "random corruption", bytes(data), Expect.HANDLED)


def wrong_sop_classes(rng: random.Random, count: int) -> Iterator[HostileCase]:
    """A data set whose SOP class differs from its file meta, or is not stored at all."""
    for i in range(count):
        sop_class = (factory.NM, factory.SECONDARY_CAPTURE, "1.2.3.4")[i % 3]
        # in the data set only: pydicom would copy it to the file meta, which picks the context
        data = replace_value(encode(_ct(f"SOPCLASS{i}")), SOP_CLASS_UID,
                             _raw_uid_value(sop_class.encode()))
        yield HostileCase(f"sop-class-{i}", "wrong SOP class", data, Expect.REJECTED)


def collisions(rng: random.Random, count: int, victim: Victim) -> Iterator[HostileCase]:
    """Another patient's objects reusing the victim's series, study or SOP Instance UIDs."""
    for i in range(count):
        ds = factory.nm(f"COLLIDE{i}", INJECTION, INJECTION + timedelta(hours=24),
                        frame=victim.frame_uid, study=victim.study_uid)
        kind = i % 3
        expect = Expect.FLAGGED if kind == 2 else Expect.REJECTED
        if kind == 0:  # a series UID that already belongs to the victim
            ds.SeriesInstanceUID = victim.series_uid
        elif kind == 1:  # the victim's series UID and the victim's SOP Instance UID
            ds.SeriesInstanceUID = victim.series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = victim.sop_instance_uid
            expect = Expect.CONFLICT
        else:  # study and frame of reference of the victim: another patient's own series
            code = ds.RadiopharmaceuticalInformationSequence[0].RadionuclideCodeSequence[0]
            code.CodeValue, code.CodeMeaning = "C-B1036", "^99m^Technetium"
        yield HostileCase(f"collision-{kind}-{i}", "UID collision with another patient",
                          encode(ds), expect)


# -- the corpus --------------------------------------------------------------
#: family generator → share of the corpus (they add up to 1).
SHARES: tuple[tuple[str, float], ...] = (
    ("truncated", 0.18), ("bad_vrs", 0.08), ("enormous_lengths", 0.08), ("deep_sequences", 0.04),
    ("wrong_pixel_sizes", 0.08), ("bad_uids", 0.1), ("patient_attributes", 0.08),
    ("unmatched_frames", 0.04), ("other_radionuclides", 0.04), ("absurd_times", 0.06),
    ("absurd_activities", 0.05), ("bit_flips", 0.1), ("wrong_sop_classes", 0.03),
    ("collisions", 0.04),
)


def hostile_corpus(victim: Victim, size: int = 520, seed: int = 177) -> list[HostileCase]:
    """``size`` hostile cases (at least one per family), seeded and reproducible in kind."""
    rng = random.Random(seed)
    module = sys.modules[__name__]
    cases: list[HostileCase] = []
    for name, share in SHARES:
        count = max(1, round(size * share))
        family = getattr(module, name)
        generated = family(rng, count, victim) if name in ("unmatched_frames", "collisions") \
            else family(rng, count)
        cases.extend(generated)
    return cases


def write_corpus(cases: list[HostileCase], folder: Path) -> list[Path]:
    """Write each case as ``NNNN-name.dcm`` in ``folder``; returns the paths in order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, case in enumerate(cases):
        path = folder / f"{number:04d}.dcm"
        path.write_bytes(case.data)
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path("hostile-corpus")
    victim = Victim("VICTIM", *(factory.generate_uid() for _ in range(4)))
    cases = hostile_corpus(victim)
    write_corpus(cases, folder)
    for number, case in enumerate(cases):
        print(f"{number:04d}.dcm\t{case.family}\t{case.expect.value}\t{case.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
