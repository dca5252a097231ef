"""Objects that are small on the wire and expensive to decode: compression and element bombs.

Built byte by byte (pydicom would need the whole inflated object, or one
Dataset per item, in memory to write them). Each builder returns PS3.10 bytes
(preamble, File Meta Information, data set). :func:`bomb_cases` and
:func:`send_bombs` are for ``benchmarks/reliability.py``'s hostile-peer
section as much as for ``tests/reliability/test_bombs.py``.

References
----------
DICOM PS3.5 7.1 (element encoding), 7.5 (items and delimitation), A.5
(Deflated Explicit VR Little Endian); PS3.10 7.1 (File Meta Information).
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from io import BytesIO
from itertools import chain
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import _config

from tests.service import factory
from theranode.service.deliver.requestor import SenderAE

WHEN = datetime(2024, 5, 7, 9, 0)
_ITEM_EMPTY = b"\xfe\xff\x00\xe0" + struct.pack("<L", 0)
_SEQUENCE_END = b"\xfe\xff\xdd\xe0" + struct.pack("<L", 0)
_UNDEFINED = 0xFFFFFFFF
_CHUNK = 1 << 20


def _part10(ds: Dataset, syntax: str, body: Iterable[bytes]) -> bytes:
    """Preamble and meta of ``ds`` in ``syntax``, then the data set chunks (deflated if asked)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    if syntax == DeflatedExplicitVRLittleEndian:
        deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        for chunk in body:
            out.write(deflater.compress(chunk))
        out.write(deflater.flush())
    else:
        for chunk in body:
            out.write(chunk)
    return out.getvalue()


def _explicit_le(ds: Dataset) -> bytes:
    """The data set of ``ds`` encoded Explicit VR Little Endian (no meta)."""
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _zeros(count: int) -> Iterator[bytes]:
    block = bytes(_CHUNK)
    while count > 0:
        yield block[:count]
        count -= len(block)


def deflate_bomb(inflated_mb: int, patient_id: str = "BOMB") -> bytes:
    """A CT that is a valid object once inflated: 2 frames of zeros, ``inflated_mb`` MB in all.

    About 1 kB per MB on the wire (deflate's best ratio is about 1000:1).
    """
    side = 1024
    frames = max(1, inflated_mb * 2**20 // (side * side * 2))
    ds = factory.ct(patient_id, WHEN, frame=factory.generate_uid())
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = frames
    del ds.PixelData
    pixel_bytes = side * side * 2 * frames
    header = _explicit_le(ds) + b"\xe0\x7f\x10\x00OW\0\0" + struct.pack("<L", pixel_bytes)
    return _part10(ds, DeflatedExplicitVRLittleEndian, chain([header], _zeros(pixel_bytes)))


def item_bomb(items: int, *, deflated: bool, patient_id: str = "BOMB") -> bytes:
    """An RTSTRUCT whose Structure Set ROI Sequence (3006,0020) holds ``items`` empty items.

    8 bytes per item uncompressed (undefined-length sequence); a few bytes
    per thousand items deflated.
    """
    ds = factory.rtstruct(patient_id, WHEN, referenced_frame=factory.generate_uid())
    sequence = b"\x06\x30\x20\x00SQ\0\0" + struct.pack("<L", _UNDEFINED)
    syntax = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    per_chunk = _CHUNK // len(_ITEM_EMPTY)
    chunks = (_ITEM_EMPTY * min(per_chunk, items - n) for n in range(0, items, per_chunk))
    return _part10(ds, syntax, chain([_explicit_le(ds), sequence], chunks, [_SEQUENCE_END]))


def element_bomb(elements: int, patient_id: str = "BOMB") -> bytes:
    """An RTSTRUCT carrying ``elements`` short private elements in one item (one sequence item).

    Private creator (0009,0010) then (0009,1001) repeated inside an item of a
    private sequence (0009,1000): every element is parsed when the item is.
    """
    ds = factory.rtstruct(patient_id, WHEN, referenced_frame=factory.generate_uid())
    creator = b"\x09\x00\x10\x00LO\x08\x00THERANOD"
    element = b"\x09\x00\x01\x10LO\x02\x00AB"
    inner = creator + element * elements
    sequence = (b"\x09\x00\x00\x10SQ\0\0" + struct.pack("<L", _UNDEFINED)
                + b"\xfe\xff\x00\xe0" + struct.pack("<L", len(inner)) + inner + _SEQUENCE_END)
    body = _explicit_le(ds)
    # the private group 0009 belongs between (0008,xxxx) and (0010,xxxx): insert it there
    split = body.index(b"\x10\x00\x10\x00")  # (0010,0010) PatientName, first of group 0010
    return _part10(ds, ExplicitVRLittleEndian, [body[:split], creator, sequence, body[split:]])


@dataclass(frozen=True)
class BombCase:
    """One hostile object and the syntax it is sent in."""

    name: str
    data: bytes
    syntax: str
    sop_class: str


@dataclass(frozen=True)
class BombAnswer:
    """What the node answered to one bomb, and what the answer cost the sender in time."""

    name: str
    wire_bytes: int
    status: int
    comment: str
    seconds: float


def bomb_cases(inflated_mb: int = 1024) -> list[BombCase]:
    """The issue's bombs at full size: each refused by the shipped default limits.

    A Deflated CT inflating to ``inflated_mb`` MB (about 1 MB on the wire at
    1024), 400,000 empty items deflated (about 5 kB), 200,000 items
    uncompressed (1.6 MB) and 600,000 elements in one item (6 MB).
    """
    return [
        BombCase("deflate", deflate_bomb(inflated_mb), DeflatedExplicitVRLittleEndian, factory.CT),
        BombCase("deflated items", item_bomb(400_000, deflated=True),
                 DeflatedExplicitVRLittleEndian, factory.RTSTRUCT),
        BombCase("items", item_bomb(200_000, deflated=False), ExplicitVRLittleEndian,
                 factory.RTSTRUCT),
        BombCase("elements", element_bomb(600_000), ExplicitVRLittleEndian, factory.RTSTRUCT),
    ]


def send_bombs(port: int, cases: Iterable[BombCase], folder: Path) -> list[BombAnswer]:
    """C-STORE each case as its raw bytes, each in its own transfer syntax, on one association.

    The files are written to ``folder`` and sent from there: pynetdicom then
    sends the data set bytes unchanged (``STORE_SEND_CHUNKED_DATASET``).
    """
    cases = list(cases)
    _config.STORE_SEND_CHUNKED_DATASET = True  # else pynetdicom decodes (inflates) and re-encodes
    ae = SenderAE(ae_title="BOMBER")
    for case in cases:
        ae.add_requested_context(case.sop_class, case.syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE")
    if not assoc.is_established:
        raise ConnectionError("the node did not accept the association")
    answers = []
    try:
        for n, case in enumerate(cases):
            path = folder / f"bomb-{n}.dcm"
            path.write_bytes(case.data)
            started = time.monotonic()
            status = assoc.send_c_store(path)
            answers.append(BombAnswer(
                case.name, len(case.data), int(status.get("Status", -1)),
                str(status.get("ErrorComment", "")), time.monotonic() - started,
            ))
    finally:
        assoc.release()
    return answers
