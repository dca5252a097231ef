"""RT Structure Sets that are cheap to send and were expensive to rasterise (issue #12 item 5).

:func:`plane_bomb` is the issue's case: one ROI with thousands of contour
planes, which took the linear plane search 49 s on a small grid.
:func:`point_bomb` holds more contour points than the shipped
``security.max_contour_points``. Contour Data are written as raw DS bytes
(pydicom would build and validate one value object per coordinate), so a
million points take a fraction of a second to build. For
``benchmarks/reliability.py``'s hostile-peer section as much as for the tests.

References
----------
DICOM PS3.3 C.8.8.6 (ROI Contour Module), PS3.5 6.2 (DS value representation).
"""

from __future__ import annotations

import struct
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.service import factory

WHEN = datetime(2024, 5, 7, 9, 0)
FRAME = "1.2.826.0.1.3680043.8.498.77"
_UNDEFINED = 0xFFFFFFFF
_ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
_SEQUENCE_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def _element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element with a 2-byte length (PS3.5 7.1.2)."""
    value += b" " * (len(value) % 2)
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def _sequence(group: int, element: int, items: list[bytes]) -> bytes:
    """A sequence of undefined length whose items have undefined length (PS3.5 7.5)."""
    body = b"".join(struct.pack("<HHL", 0xFFFE, 0xE000, _UNDEFINED) + item + _ITEM_END
                    for item in items)
    return (struct.pack("<HH2sHL", group, element, b"SQ", 0, _UNDEFINED) + body
            + _SEQUENCE_END)


def _at_height(xy: list[str], z_mm: float) -> bytes:
    """Contour Data (DS bytes) of the in-plane points ``xy`` at height ``z_mm``."""
    z = f"{z_mm:.3f}"
    return "\\".join(f"{point}\\{z}" for point in xy).encode()


def _square_xy(half_mm: float, points: int) -> list[str]:
    """The x\\y strings of a square of ``points`` vertices (a multiple of 4)."""
    side = points // 4
    corners = ((-1, -1, 1, 0), (1, -1, 0, 1), (1, 1, -1, 0), (-1, 1, 0, -1))
    return [
        f"{x0 * half_mm + dx * t:.3f}\\{y0 * half_mm + dy * t:.3f}"
        for x0, y0, dx, dy in corners
        for t in (2 * half_mm * step / side for step in range(side))
    ]


def structure_set(planes: int, points_per_contour: int, spacing_mm: float,
                  patient_id: str = "CONTOURBOMB") -> bytes:
    """One ROI of ``planes`` square contours ``spacing_mm`` apart, as PS3.10 bytes.

    The ROI Contour Sequence (3006,0039) is appended as bytes after the rest
    of the data set, which pydicom writes (its tags all sort before it).
    """
    ds = factory.rtstruct(patient_id, WHEN, referenced_frame=FRAME)
    roi = Dataset()
    roi.ROINumber = 1
    roi.ReferencedFrameOfReferenceUID = FRAME
    roi.ROIName = "Liver"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    assert max(ds.keys()) < 0x30060039
    xy = _square_xy(20.0, points_per_contour)
    contours = [
        _element(0x3006, 0x0042, b"CS", b"CLOSED_PLANAR")
        + _element(0x3006, 0x0046, b"IS", str(points_per_contour).encode())
        + _element(0x3006, 0x0050, b"DS", _at_height(xy, plane * spacing_mm))
        for plane in range(planes)
    ]
    roi_contour = _sequence(0x3006, 0x0040, contours) + _element(0x3006, 0x0084, b"IS", b"1")
    return factory.encode(ds) + _sequence(0x3006, 0x0039, [roi_contour])


def plane_bomb(planes: int = 2000, points_per_contour: int = 64) -> bytes:
    """The issue's structure set: ``planes`` contour planes 0.02 mm apart (40 mm in all)."""
    return structure_set(planes, points_per_contour, spacing_mm=0.02)


def point_bomb(points: int = 1_000_001, contours: int = 500) -> bytes:
    """More than ``points`` contour points over ``contours`` planes 2 mm apart."""
    per_contour = -(-points // contours)
    per_contour += -per_contour % 4
    return structure_set(contours, per_contour, spacing_mm=2.0)
