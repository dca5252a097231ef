"""Shared fixtures: strict pydicom validation and real peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest

from tests.peers import OrthancPeer, run_orthanc

ROOT = Path(__file__).resolve().parents[1]

#: Tests that start nodes and load them for minutes, in two groups. The suite runs on
#: two pytest-xdist workers (pyproject.toml); each group runs one test after another on
#: one worker, so two kill tests (whose nodes are killed and restarted on a clock) never
#: share the machine's two cores, nor two hostile-peer tests, while the rest spreads over
#: both workers. Together the groups are about 15 minutes of a 2-core machine: one group
#: would be the whole suite's critical path.
HEAVY_GROUPS = {
    "kills": ("tests/reliability/test_combined_kills.py", "tests/reliability/test_kills.py",
              "tests/reliability/test_jobs_under_kills.py", "tests/service/test_crash.py"),
    "hostile": ("tests/reliability/",),  # the rest of tests/reliability
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every other test module runs whole on one worker: its module-scoped fixtures (a
    rendered phantom, a computed course, an Orthanc round trip) are then made once, not
    once per worker."""
    for item in items:
        path = item.path.relative_to(ROOT).as_posix()
        group = next((g for g, prefixes in HEAVY_GROUPS.items() if path.startswith(prefixes)),
                     path)
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(autouse=True)
def strict_dicom_writing() -> Iterator[None]:
    """Every test that writes DICOM does so under pydicom's strict validation."""
    previous = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = previous


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPeer]:
    """A fresh Orthanc PACS with no modalities configured."""
    with run_orthanc(tmp_path / "orthanc") as peer:
        yield peer


@pytest.fixture(scope="session")
def phantom_course(tmp_path_factory: pytest.TempPathFactory):
    """The default 4-cycle synthetic Lu-177 course on small grids, written once."""
    from theranode.dicomio.synthetic_course import write_course

    return write_course(tmp_path_factory.mktemp("course"), seed=7)
