"""Shared fixtures: strict pydicom validation and real peers.

The suite runs on pytest-xdist workers with ``--dist loadfile`` (pyproject.toml): each
test module runs whole on one worker, so its module-scoped fixtures (a rendered phantom,
a computed course, an Orthanc round trip) are made once. ``loadgroup`` with groups set
here was tried: with pytest 9.2 and pytest-xdist 3.8 the groups are silently ignored
(pytest-xdist issue 1386), and every module was spread over the workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest

from tests.peers import OrthancPeer, run_orthanc


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
