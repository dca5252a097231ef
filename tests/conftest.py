"""Shared fixtures: strict pydicom validation and real peers.

The suite runs on pytest-xdist workers with ``--dist loadfile`` (pyproject.toml): each
test module runs whole on one worker, so its module-scoped fixtures (a rendered phantom,
a computed course, an Orthanc round trip) are made once. ``loadgroup`` with groups set
here was tried: with pytest 9.2 and pytest-xdist 3.8 the groups are silently ignored
(pytest-xdist issue 1386), and every module was spread over the workers.

The workers take modules in collection order, so the longest ones are collected first
(:data:`LONGEST_FIRST`): a kill test started last would be the suite's tail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom.config
import pytest

from tests.peers import OrthancPeer, run_orthanc
from tests.postgres import PostgresServer, run_postgres
from tests.reliability.shared_runs import shared

#: Test modules of a minute or more on CI (clean-clone runs, ``--durations``), about longest
#: first; the kill tests, whose kills are aimed at phases on a clock, are spread out so that
#: the first three modules to start (one per worker) hold one of them. test_outage makes the
#: clean two-cycle run the job-kill and graceful-stop tests compare with (once per session:
#: tests/reliability/shared_runs.py), so it starts early, beside the first of them.
LONGEST_FIRST = (
    "tests/reliability/test_combined_kills.py",
    "tests/service/test_accuracy_orthanc.py",
    "tests/service/test_pipeline.py",
    "tests/reliability/test_scale_out.py",
    "tests/reliability/test_jobs_under_kills.py",
    "tests/reliability/test_outage.py",
    "tests/service/test_crash.py",
    "tests/service/test_end_to_end_orthanc.py",
    "tests/reliability/test_hostile_course.py",
    "tests/reliability/test_hostile_processing.py",
    "tests/reliability/test_graceful_shutdown.py",
    "tests/reliability/test_kills.py",
    "tests/dosimetry/test_cycle.py",
    "tests/service/test_demo_one_command.py",
    "tests/dosimetry/test_partial_volume.py",
    "tests/service/test_four_cycle_consistency.py",
    "tests/service/test_pipeline_course.py",
    "tests/service/test_pickle_migration.py",
    "tests/dicomio/test_every_output.py",
    "tests/dicomio/test_pdf_render.py",
    "tests/reliability/test_access.py",
    "tests/service/test_administered_activity.py",
    "tests/test_typing.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the modules of :data:`LONGEST_FIRST` first, in that order (a stable sort:
    the tests of a module keep their order)."""
    root = config.rootpath
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))


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
    """The default 4-cycle synthetic Lu-177 course on small grids, written once per session
    (not once per worker: :func:`tests.reliability.shared_runs.shared`); tests only read it."""
    from theranode.dicomio.synthetic_course import write_course

    return shared(tmp_path_factory, "phantom-course-seed7",
                  lambda folder: write_course(folder, seed=7))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL server for this test process (tests/postgres.py): skipped
    without Debian's postgresql, failed under CI."""
    with run_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new empty database on :func:`postgres_server`, dropped after the test."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database by URL, once on SQLite (a file in ``tmp_path``) and once on
    PostgreSQL (:func:`postgres_url`), so that a store test runs on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'theranode.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
