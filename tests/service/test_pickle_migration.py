"""Upgrading a data folder of the pickle era: queued jobs and stored results survive, once.

Until result.json format version 1, job payloads were pickled into
``jobs.payload`` and results into ``results/job-<id>/result.pkl``. The
pickles here are made exactly as that code made them (``pickle.dumps`` of
the job input; ``pickle.dumps({"result", "source", "reference_ct"},
protocol=5)`` with VOI masks reduced to packed bits by
``dosimetry.results._unpacked_map_voi``; the types named by the module paths of
that time, before the ``theranode`` package), from results the pipeline computes on a
small phantom.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import theranode.dicomio.source
import theranode.dosimetry.results
import theranode.dosimetry.volume
import theranode.service.jobs.spec
from tests.service.nodes import make_settings, running_node, wait_job_ended
from theranode.config.schema import Settings
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course
from theranode.dosimetry.results import CycleResult, MapVoi
from theranode.service.app import DATABASE_NAME
from theranode.service.jobs.pipeline import run_job
from theranode.service.jobs.results import (
    FIELDS_ADDED,
    RESULT_JSON,
    load_stored_result,
    write_result,
)
from theranode.service.jobs.runner import JobRunner
from theranode.service.jobs.spec import (
    CourseJobInput,
    CycleJobInput,
    JobKind,
    JobSpec,
    TimePointInput,
)
from theranode.service.store import open_database
from theranode.service.store.jobs import JobState, JobStore
from theranode.service.store.outbox import OutboxStore

NOW = "2024-05-01T10:00:00"
SEED = 11
CYCLE1, CYCLE3, COURSE = "results/job-1", "results/job-2", "results/job-3"


def _old_unpacked_map_voi(
    name: str, packed: npt.NDArray[np.uint8], shape: tuple[int, ...], factor: float
) -> MapVoi:
    count = int(np.prod(shape))
    return MapVoi(name, np.unpackbits(packed, count=count).astype(bool).reshape(shape), factor)


def _old_reduce(self: MapVoi) -> tuple[object, tuple[object, ...]]:
    packed = np.packbits(np.asarray(self.mask, dtype=bool), axis=None)
    return (_old_unpacked_map_voi, (self.name, packed, tuple(self.mask.shape), self.factor))


#: Where the pickled types lived before the one ``theranode`` package: old pickles
#: name them by these module paths.
OLD_MODULES = {
    "dosimetry.results": theranode.dosimetry.results,
    "dosimetry.volume": theranode.dosimetry.volume,
    "dicomio.source": theranode.dicomio.source,
    "service.pipeline": theranode.service.jobs.spec,
}


def old_pickle(obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> bytes:
    """``obj`` pickled exactly as the pickle era pickled it.

    Types are named by their old module paths (``dosimetry.results.CycleResult``,
    ``service.pipeline.CycleJobInput``…), a cycle input carries the
    ``administered_activity_mbq`` field it had then (always ``None``), and
    ``MapVoi`` pickles by ``dosimetry.results._unpacked_map_voi``. The
    patches last only while pickling: the node under test runs unpatched.
    """
    with pytest.MonkeyPatch.context() as patch:
        for old_name, module in OLD_MODULES.items():
            patch.setitem(sys.modules, old_name, module)
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    patch.setattr(value, "__module__", old_name)
        patch.setattr(CycleJobInput, "__getstate__",
                      lambda self: {**self.__dict__, "administered_activity_mbq": None},
                      raising=False)
        for record, added in ADDED_SINCE_PICKLES.items():  # fields the pickle era lacked
            patch.setattr(record, "__getstate__",
                          lambda self, added=added: {k: v for k, v in self.__dict__.items()
                                                     if k not in added}, raising=False)
        _old_unpacked_map_voi.__module__ = "dosimetry.results"
        _old_unpacked_map_voi.__qualname__ = "_unpacked_map_voi"
        patch.setattr(theranode.dosimetry.results, "_unpacked_map_voi", _old_unpacked_map_voi,
                      raising=False)
        patch.setattr(MapVoi, "__reduce__", _old_reduce, raising=False)
        return pickle.dumps(obj, protocol=protocol)


#: Result fields added after the pickle era (result.json versions 2 and up), per record type.
ADDED_SINCE_PICKLES: dict[type, set[str]] = {}
for _version_fields in FIELDS_ADDED.values():
    for _record, _fields in _version_fields.items():
        ADDED_SINCE_PICKLES.setdefault(_record, set()).update(_fields)


def as_the_pickle_era_computed(folder: Path) -> None:
    """Rewrite a cycle's stored result without what the pickle era could not hold (budgets)."""
    stored = load_stored_result(folder)
    result = stored.result
    assert isinstance(result, CycleResult)
    vois = tuple(dataclasses.replace(v, uncertainty=None) for v in result.vois)
    write_result(folder, dataclasses.replace(result, vois=vois), stored.source,
                 stored.reference_ct)


def cycle_inputs(course: CourseManifest, data_dir: Path) -> dict[int, CycleJobInput]:
    rel = lambda p: str(Path(p).relative_to(data_dir))  # noqa: E731
    by_cycle: dict[int, list] = {}
    for tp in course.time_points:
        by_cycle.setdefault(tp.time_point.cycle_number, []).append(tp)
    inputs = {}
    for number, points in by_cycle.items():
        structure = next(tp.rtstruct_file for tp in points if tp.rtstruct_file)
        inputs[number] = CycleJobInput(
            number, points[0].time_point.injection_datetime.isoformat(), len(points) > 1,
            tuple(TimePointInput(round(tp.time_point.elapsed_h), tp.time_point.elapsed_h,
                                 tuple(map(rel, tp.spect_files)), tuple(map(rel, tp.ct_files)))
                  for tp in points),
            rel(structure), reference_result=None if len(points) > 1 else CYCLE1)
    return inputs


def spec(job_id: int, job_input: CycleJobInput | CourseJobInput, data_dir: Path) -> JobSpec:
    kind = JobKind.CYCLE if isinstance(job_input, CycleJobInput) else JobKind.COURSE
    return JobSpec(job_id=job_id, kind=kind, version=1, created_at=NOW, data_dir=str(data_dir),
                   settings=Settings(), cycle=job_input if kind is JobKind.CYCLE else None,
                   course=job_input if kind is JobKind.COURSE else None)


def objects(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.dcm"))}


def to_pickle_era(folder: Path) -> None:
    """Replace a folder's result.json and arrays by the result.pkl the old code wrote."""
    stored = load_stored_result(folder)
    payload = {"result": stored.result, "source": stored.source,
               "reference_ct": stored.reference_ct}
    (folder / "result.pkl").write_bytes(old_pickle(payload, protocol=5))
    for path in [folder / RESULT_JSON, *folder.glob("*.npy")]:
        path.unlink()


def forget_payload_migration(db_path: Path) -> None:
    """Make the database look as before the upgrade: m004 not applied yet."""
    db = open_database(db_path)
    db.execute("delete from schema_migrations where migration_set = 'theranode.jobs' "
                "and name = 'm004_job_payloads_as_json'")
    db.conn.close()


def test_queued_pickled_jobs_and_pickled_results_survive_the_upgrade(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data")
    data_dir = settings.data_dir
    course = write_course(data_dir / "inputs", CourseWriteSpec(cycles=(1, 3)), SEED)
    inputs = cycle_inputs(course, data_dir)
    course_input = CourseJobInput((CYCLE1, CYCLE3))

    # Today's outputs, computed with JSON all the way from a cycle 1 as the pickle era
    # computed it (no uncertainty budgets): the expected bytes.
    run_job(spec(1, inputs[1], data_dir))
    as_the_pickle_era_computed(data_dir / CYCLE1)
    for job_id, job_input in ((2, inputs[3]), (3, course_input)):
        run_job(spec(job_id, job_input, data_dir))
    expected = {2: objects(data_dir / CYCLE3), 3: objects(data_dir / COURSE)}
    assert all(len(found) == 3 for found in expected.values())  # RT Dose, SR, PDF
    cycle1_objects = objects(data_dir / CYCLE1)
    shutil.rmtree(data_dir / CYCLE3)
    shutil.rmtree(data_dir / COURSE)

    # The data folder as the pickle era left it: cycle 1 done with result.pkl,
    # cycle 3 and the course queued with pickled payloads.
    db_path = data_dir / DATABASE_NAME
    store = JobStore(open_database(db_path))
    common = dict(patient_key="p", created_at=NOW)
    done = store.submit(kind="cycle", target="cycle|p|1", label="1.1", fingerprint="c1",
                        payload=old_pickle(inputs[1]), **common)
    store.claim_next(NOW, str(tmp_path))
    store.finish(done.id, JobState.DONE, NOW, "ok", CYCLE1)
    queued = [
        store.submit(kind="cycle", target="cycle|p|3", label="1.3", fingerprint="c3",
                     payload=old_pickle(inputs[3]), **common),
        store.submit(kind="course", target="course|p|1", label="1", fingerprint="course",
                     payload=old_pickle(course_input), **common),
    ]
    assert [done.id, *(j.id for j in queued)] == [1, 2, 3]
    to_pickle_era(data_dir / CYCLE1)
    store.db.conn.close()
    forget_payload_migration(db_path)

    with running_node(settings) as node:  # start-up migrates, then the runner runs the jobs
        ended = [wait_job_ended(node.jobs, j.id) for j in queued]
    for job in ended:
        assert job.state is JobState.DONE, job.message
    assert objects(data_dir / CYCLE3) == expected[2]
    assert objects(data_dir / COURSE) == expected[3]
    assert objects(data_dir / CYCLE1) == cycle1_objects
    assert not list((data_dir / "results").glob("*/result.pkl"))
    assert (data_dir / CYCLE1 / RESULT_JSON).is_file()
    payloads = open_database(db_path).execute("select payload from jobs").fetchall()
    for (payload,) in payloads:
        assert json.loads(payload)["format"] == "theranode-job"


def test_a_payload_that_cannot_be_converted_fails_its_job_with_the_reason(
    tmp_path: Path,
) -> None:
    """A pickle naming a type no theranode stored is not unpickled: its job fails, runs nothing."""
    settings = make_settings(tmp_path / "data")
    db_path = settings.data_dir / DATABASE_NAME
    store = JobStore(open_database(db_path))
    planted = pickle.dumps(_Planted(str(tmp_path / "planted")))
    job = store.submit(kind="course", target="course|p|1", patient_key="p", label="1",
                       fingerprint="x", payload=planted, created_at=NOW)
    store.db.conn.close()
    forget_payload_migration(db_path)
    store = JobStore(open_database(db_path))  # m004 runs, refuses the planted pickle
    runner = JobRunner(store, OutboxStore(store.db, store.lock), settings)
    runner.start()
    try:
        failed = wait_job_ended(store, job.id, 60)
    finally:
        runner.stop()
    assert failed.state is JobState.FAILED
    assert "not a JSON job payload" in failed.message and "nothing was run" in failed.message
    assert not (tmp_path / "planted").exists()
    assert not (settings.data_dir / "results" / f"job-{job.id}").exists()


class _Planted:
    """What an attacker would store: unpickling it runs ``os.mkdir``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (os.mkdir, (self.path,))
