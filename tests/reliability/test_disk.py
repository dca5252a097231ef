"""Disk: the disk fills mid-transfer; 0xA700, nothing corrupt indexed, service resumes.

The data folder lives on a real size-limited filesystem: an 8 MiB ``tmpfs``
mounted for the test (root, as in the CI container). Where mounting is not
permitted the test falls back to a simulated full disk — ``Archive.stage``
raising ``ENOSPC`` once a byte budget is spent — and says so in a warning.
Space "returns" by remounting the filesystem larger, with the node running.
"""

from __future__ import annotations

import errno
import logging
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.service import factory
from tests.service.nodes import make_settings, running_node, send
from theranode.service.receive.archive import Archive, ArchiveError
from theranode.service.receive.ingest import OUT_OF_RESOURCES

ACQUIRED = datetime(2024, 5, 7, 9, 15)
SIZE = 256  # 128 KiB per CT slice: an 8 MiB disk holds about 60


class SmallDisk:
    """A size-limited folder: a tmpfs mount, or a simulated byte budget."""

    def __init__(self, folder: Path, size_mb: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.mounted = shutil.which("mount") is not None and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)],
            check=False, capture_output=True).returncode == 0
        self.budget_bytes = size_mb * 1024 * 1024
        if not self.mounted:
            warnings.warn("mounting a tmpfs is not permitted here: simulating ENOSPC instead",
                          stacklevel=2)
            self._simulate(monkeypatch)

    def _simulate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real_stage = Archive.stage
        disk = self

        def stage(archive: Archive, data: bytes):  # type: ignore[no-untyped-def]
            if len(data) > disk.budget_bytes:
                raise ArchiveError(f"Could not write: {OSError(errno.ENOSPC, 'No space left')}")
            disk.budget_bytes -= len(data)
            return real_stage(archive, data)

        monkeypatch.setattr(Archive, "stage", stage)
        monkeypatch.setattr(Archive, "free_bytes", lambda archive: disk.budget_bytes)

    def grow(self, size_mb: int) -> None:
        """Space returns (the filesystem is enlarged while the node runs)."""
        if self.mounted:
            subprocess.run(["mount", "-o", f"remount,size={size_mb}m", str(self.folder)],
                           check=True)
        else:
            self.budget_bytes += size_mb * 1024 * 1024

    def release(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.folder)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small", 8, monkeypatch)
    try:
        yield disk
    finally:
        disk.release()


def slices(n: int) -> list:
    study, series, frame = (factory.generate_uid() for _ in range(3))
    out = []
    for i in range(n):
        ds = factory.ct("DISK", ACQUIRED + timedelta(seconds=i), frame=frame, study=study,
                        series=series)
        ds.Rows = ds.Columns = SIZE
        ds.PixelData = np.full(SIZE * SIZE, i, dtype=np.uint16).tobytes()
        out.append(ds)
    return out


def assert_index_sound(node, acknowledged: list) -> None:
    """Every acknowledged instance archived whole; every indexed file whole; no debris."""
    for ds in acknowledged:
        assert node.index.instance(ds.SOPInstanceUID) is not None
    for path in node.index.archived_paths():
        stored = dcmread(BytesIO((node.archive.root / path).read_bytes()))
        assert len(stored.PixelData) == SIZE * SIZE * 2
    assert list(node.archive.incoming.iterdir()) == [], "no staged file left behind"


def send_each(port: int, datasets: list) -> list[int]:
    return send(port, datasets)


def test_disk_full_mid_transfer_answers_a700_and_service_resumes(small_disk: SmallDisk):
    settings = make_settings(small_disk.folder / "data")  # min_free_disk_mb = 0: real ENOSPC
    datasets = slices(100)
    with running_node(settings) as node:
        statuses = send_each(node.port, datasets)
        first_failure = statuses.index(OUT_OF_RESOURCES)
        assert 10 < first_failure < 100, statuses
        assert set(statuses) == {0, OUT_OF_RESOURCES}, statuses
        acknowledged = [ds for ds, s in zip(datasets, statuses) if s == 0]
        assert_index_sound(node, acknowledged)
        assert node.index.counts()["quarantine"] == 0
        small_disk.grow(64)
        refused = [ds for ds, s in zip(datasets, statuses) if s != 0]
        assert set(send_each(node.port, refused)) == {0}, "the refused ones are stored on retry"
        assert send_each(node.port, acknowledged[:3]) == [0, 0, 0], "identical duplicates"
        node.regrouper.wait_idle()
        assert node.index.counts()["instances"] == len(datasets)
        assert_index_sound(node, datasets)


def test_free_space_below_the_minimum_answers_a700_before_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    disk = SmallDisk(tmp_path / "small", 16, monkeypatch)
    try:
        settings = make_settings(disk.folder / "data", security={"min_free_disk_mb": 8})
        datasets = slices(100)
        with running_node(settings) as node, caplog.at_level(logging.ERROR):
            statuses = send_each(node.port, datasets)
            assert OUT_OF_RESOURCES in statuses and statuses[0] == 0
            assert set(statuses) == {0, OUT_OF_RESOURCES}
            assert "the configured minimum is 8 MB" in caplog.text
            assert node.archive.free_bytes() >= 8 * 1024 * 1024 - SIZE * SIZE * 4
            assert "write error" not in caplog.text, "refused before any write failed"
            acknowledged = [ds for ds, s in zip(datasets, statuses) if s == 0]
            assert_index_sound(node, acknowledged)
            disk.grow(64)
            refused = [ds for ds, s in zip(datasets, statuses) if s != 0]
            assert set(send_each(node.port, refused)) == {0}
            assert node.index.counts()["instances"] == len(datasets)
    finally:
        disk.release()
