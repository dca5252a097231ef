"""RT Structure Sets beyond the contour bounds: refused at C-STORE time (0xC102) from the
raw bytes, and by the reader, with the same counts (issue #12 item 5)."""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from tests.reliability.contour_bombs import plane_bomb, point_bomb
from tests.service import factory
from tests.service.keys import TEST_KEYER
from theranode.config.schema import SecuritySettings
from theranode.dicomio.integrity import ObjectTooLargeError
from theranode.dicomio.rtstruct import (
    MAX_CONTOUR_POINTS,
    MAX_CONTOURS_PER_ROI,
    ContourLimits,
    read_rois,
)
from theranode.service.receive.archive import Archive
from theranode.service.receive.ingest import LIMIT_EXCEEDED, SUCCESS, Ingest, Peer
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

PEER = Peer("CONTOURS", "127.0.0.1")
WHEN = datetime(2024, 3, 1, 10, 0)


def structure_set(contours_per_roi: tuple[int, ...], points: int, implicit: bool) -> bytes:
    """An RT Structure Set whose ROI ``r`` has ``contours_per_roi[r]`` contours of ``points``."""
    ds = factory.rtstruct("CONTOUR-TEST", WHEN, referenced_frame="1.2.826.0.1.3680043.8.498.1")
    ds.StructureSetROISequence = Sequence()
    ds.ROIContourSequence = Sequence()
    for number, count in enumerate(contours_per_roi, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
        roi.ROIName = f"Organ{number}"
        roi.ROIGenerationAlgorithm = "MANUAL"
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = Sequence()
        for z in range(count):
            contour = Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = points
            contour.ContourData = [
                str(v) for p in range(points) for v in (p % 7, p // 7, 0.5 * z)
            ]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return factory.encode(ds)


def receive(tmp_path: Path, wire: bytes, **security: int):
    archive = Archive(tmp_path / "data", min_free_disk_mb=0)
    ingest = Ingest(archive, IndexStore(open_database(tmp_path / "data" / "index.db")),
                    TEST_KEYER, security=SecuritySettings(**security))
    try:
        syntax = pydicom.dcmread(BytesIO(wire)).file_meta.TransferSyntaxUID
        outcome = ingest.receive(wire, PEER, syntax, factory.RTSTRUCT)
        quarantined = [((archive.root / r["path"]).read_bytes(), r["status"], r["reason"])
                       for r in ingest.index.recent_quarantine()]
    finally:
        ingest.close()
    return outcome, quarantined


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_more_contour_points_than_the_limit_are_refused_at_ingest(tmp_path: Path, implicit):
    wire = structure_set((3, 4), points=10, implicit=implicit)  # 70 points
    outcome, quarantined = receive(tmp_path, wire, max_contour_points=69)
    assert outcome.status == LIMIT_EXCEEDED
    assert outcome.comment.startswith("max_contour_points 69 exceeded")
    assert quarantined == [(wire, LIMIT_EXCEEDED, outcome.comment)]
    with pytest.raises(ObjectTooLargeError, match="^max_contour_points 69 exceeded"):
        read_rois(pydicom.dcmread(BytesIO(wire)), ContourLimits(max_points=69))


@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "implicit"])
def test_more_contours_in_one_roi_than_the_limit_are_refused_at_ingest(tmp_path: Path, implicit):
    wire = structure_set((3, 6, 2), points=4, implicit=implicit)
    outcome, quarantined = receive(tmp_path, wire, max_contours_per_roi=5)
    assert outcome.status == LIMIT_EXCEEDED
    assert outcome.comment.startswith("max_contours_per_roi 5 exceeded")
    assert quarantined == [(wire, LIMIT_EXCEEDED, outcome.comment)]
    with pytest.raises(ObjectTooLargeError, match="^max_contours_per_roi 5 exceeded"):
        read_rois(pydicom.dcmread(BytesIO(wire)),
                  ContourLimits(max_contours_per_roi=5))


def test_a_structure_set_at_the_limits_is_stored_and_read(tmp_path: Path) -> None:
    wire = structure_set((3, 6, 2), points=4, implicit=False)  # 44 points, at most 6 per ROI
    outcome, quarantined = receive(tmp_path, wire, max_contour_points=44, max_contours_per_roi=6)
    assert (outcome.status, quarantined) == (SUCCESS, []), outcome.comment
    rois = read_rois(pydicom.dcmread(BytesIO(wire)),
                     ContourLimits(max_points=44, max_contours_per_roi=6))
    assert [len(r.contours) for r in rois] == [3, 6, 2]


def test_ingest_and_reader_ship_the_same_bounds() -> None:
    security = SecuritySettings()
    assert (security.max_contour_points, security.max_contours_per_roi) == (
        MAX_CONTOUR_POINTS, MAX_CONTOURS_PER_ROI)
    assert ContourLimits() == ContourLimits(MAX_CONTOUR_POINTS, MAX_CONTOURS_PER_ROI)


def test_shipped_limits_refuse_a_million_points_and_store_the_issues_2000_planes(
    tmp_path: Path,
) -> None:
    """The issue's 2,000-plane structure set is stored (and rasterises cheaply, see
    tests/dicomio/test_rtstruct.py); one over the shipped point bound is refused."""
    wire = point_bomb()
    refused, quarantined = receive(tmp_path / "points", wire)
    assert refused.status == LIMIT_EXCEEDED
    assert refused.comment.startswith("max_contour_points 1000000 exceeded")
    assert quarantined == [(wire, LIMIT_EXCEEDED, refused.comment)]
    stored, _ = receive(tmp_path / "planes", plane_bomb())
    assert stored.status == SUCCESS, stored.comment


def test_a_job_reads_with_the_configured_bounds_not_the_shipped_ones() -> None:
    """A site that raises a bound gets structure sets ingest accepted read by its jobs."""
    from theranode.config.schema import settings_from_dict
    from theranode.service.jobs.pipeline import contour_limits

    raised = settings_from_dict({"security": {"max_contour_points": 2 * MAX_CONTOUR_POINTS,
                                              "max_contours_per_roi": 7}}, "test")
    assert contour_limits(raised) == ContourLimits(2 * MAX_CONTOUR_POINTS, 7)
    wire = structure_set((3, 7, 2), points=4, implicit=False)
    rois = read_rois(pydicom.dcmread(BytesIO(wire)), contour_limits(raised))
    assert [len(r.contours) for r in rois] == [3, 7, 2]
    lowered = settings_from_dict({"security": {"max_contours_per_roi": 6}}, "test")
    with pytest.raises(ObjectTooLargeError):
        read_rois(pydicom.dcmread(BytesIO(wire)), contour_limits(lowered))
