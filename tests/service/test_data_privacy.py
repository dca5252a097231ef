"""Archive, database, logs and reports are the node's user's only (issue #12, item 12)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.service import factory
from tests.service.nodes import make_settings, running_node, send
from theranode.config.schema import LoggingSettings
from theranode.service.cohort.report import run_cohort
from theranode.service.logs import configure_logging
from theranode.service.store import open_database

WHEN = datetime(2024, 5, 7, 9, 0)


@pytest.fixture
def lax_umask() -> Iterator[None]:
    """The usual login umask (022), under which files were world-readable before."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.lstat().st_mode)
            for p in [root, *root.rglob("*")]}


def _open_to_others(modes: dict[str, int], root: Path) -> list[str]:
    wrong = []
    for name, mode in modes.items():
        expected = 0o700 if (root.parent / name).is_dir() else 0o600
        if mode != expected:
            wrong.append(f"{name} {mode:03o}")
    return wrong


def test_a_node_run_leaves_its_folder_0700_and_every_file_0600(tmp_path: Path, lax_umask: None):
    data = tmp_path / "data"
    no_patient_id = factory.ct("X", WHEN, frame="1.2.4")
    del no_patient_id.PatientID  # refused 0xC120 and kept in quarantine/
    copy = factory.ct("P1", WHEN, frame="1.2.3")
    other = factory.ct("P1", WHEN, frame="1.2.3")
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = copy.SOPInstanceUID
    other.SeriesInstanceUID = copy.SeriesInstanceUID
    other.InstanceNumber = 7  # same UID, other bytes: kept in conflicts/
    with running_node(make_settings(data)) as node:
        statuses = send(node.port, [copy, other, no_patient_id])
        assert statuses[:2] == [0, 0] and statuses[2] != 0
    modes = _modes(data)
    assert any(name.startswith("data/quarantine/") for name in modes)
    assert any(name.startswith("data/conflicts/") for name in modes)
    assert any(name.endswith(".dcm") and name.startswith("data/archive/") for name in modes)
    assert {"data/theranode.db", "data/site-secret"} <= set(modes)
    assert _open_to_others(modes, data) == []


def test_an_existing_world_readable_data_folder_is_tightened_with_a_warning(
    tmp_path: Path, lax_umask: None, caplog: pytest.LogCaptureFixture
):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    open_database(data / "theranode.db").conn.close()  # a database made as before: 0644
    assert stat.S_IMODE((data / "theranode.db").stat().st_mode) == 0o644
    caplog.set_level(logging.WARNING, logger="theranode.service.receive.archive")
    with running_node(make_settings(data)):
        pass
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "theranode.db").stat().st_mode) == 0o600
    assert "was open to other users (mode 755); made it 0700" in caplog.text


def test_the_log_file_is_0600(tmp_path: Path, lax_umask: None):
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    log_file = tmp_path / "theranode.log"
    try:
        configure_logging(LoggingSettings(level="INFO", file=str(log_file)))
        logging.getLogger("test").info("a line")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    assert "a line" in log_file.read_text()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


def test_the_cohort_report_folder_is_not_readable_by_others(tmp_path: Path, lax_umask: None):
    """Before: the report folder was made 0755 on purpose (patient-level tables inside)."""
    db = open_database()
    folder = run_cohort(db, tmp_path / "reports", now=datetime(2024, 5, 1, 12, tzinfo=UTC))
    assert (folder / "report.html").is_file()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
