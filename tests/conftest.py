"""Shared fixtures: strict pydicom validation and real peers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest

from tests.peers import OrthancPeer, run_orthanc

ROOT = Path(__file__).resolve().parents[1]

#: Tests that start nodes, kill them and wait for their jobs. The suite runs on two
#: pytest-xdist workers (pyproject.toml); these run one after another on one of them,
#: so two never share the machine's two cores, while the other worker takes the rest.
HEAVY = ("tests/reliability/", "tests/service/test_crash.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.relative_to(ROOT).as_posix().startswith(HEAVY):
            item.add_marker(pytest.mark.xdist_group("heavy"))


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
