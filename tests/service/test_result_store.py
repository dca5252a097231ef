"""Stored results and job payloads: exact round trips on disk, clear refusals of foreign files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dicomio.result_records import (
    course_result,
    cycle_result,
    dose_map,
    source_for_cycle,
)
from tests.dosimetry.records_strategies import (
    assert_identical,
    course_results,
    cycle_results,
    text,
    volumes,
)
from tests.service.nodes import make_settings, wait_job_ended
from theranode.dicomio.source import (
    InstanceReference,
    SourceContext,
    source_from_json,
    source_to_json,
)
from theranode.dosimetry.records_json import RecordFormatError
from theranode.dosimetry.results import CycleResult
from theranode.service.jobs.payload import JobPayloadError, decode_payload, encode_payload
from theranode.service.jobs.results import (
    FORMAT_VERSION,
    RESULT_JSON,
    StoredResultError,
    load_stored_result,
    write_result,
)
from theranode.service.jobs.runner import JobRunner
from theranode.service.jobs.spec import CourseJobInput, CycleJobInput, JobKind, TimePointInput
from theranode.service.store import open_database
from theranode.service.store.jobs import JobRecord, JobState, JobStore
from theranode.service.store.outbox import OutboxStore

NOW = "2024-05-01T10:00:00"
EXAMPLES = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

references = st.builds(InstanceReference, text, text, text, text, text)
sources = st.builds(
    SourceContext, patient_id=text, study_instance_uid=text, frame_of_reference_uid=text,
    reference_ct=st.lists(references, max_size=3).map(tuple), issuer_of_patient_id=text,
    patient_name=text, patient_birth_date=text, patient_sex=text, study_id=text,
    accession_number=text, study_date=text, study_time=text, referring_physician_name=text,
    study_description=text, structure_set=st.none() | references,
    roi_numbers=st.lists(st.tuples(text, st.integers()), max_size=3).map(tuple),
    source_images=st.lists(references, max_size=3).map(tuple),
)


@EXAMPLES
@given(source=sources)
def test_source_contexts_round_trip_exactly(source: SourceContext) -> None:
    assert source_from_json(json.loads(json.dumps(source_to_json(source)))) == source


@EXAMPLES
@given(result=cycle_results | course_results, source=sources, reference_ct=volumes)
def test_results_round_trip_exactly_through_the_folder(result, source, reference_ct) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as folder:
        write_result(Path(folder), result, source, reference_ct)
        stored = load_stored_result(Path(folder))
        json.loads((Path(folder) / RESULT_JSON).read_text(), parse_constant=pytest.fail)
    assert_identical(stored.result, result)
    assert stored.source == source
    assert_identical(stored.reference_ct, reference_ct)


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    source, _ = source_for_cycle()
    write_result(tmp_path, cycle_result(), source, dose_map())
    return tmp_path


def rewrite(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((folder / RESULT_JSON).read_text())
    change(doc)
    (folder / RESULT_JSON).write_text(json.dumps(doc))


def test_a_newer_result_json_is_refused_with_advice(stored: Path) -> None:
    rewrite(stored, lambda doc: doc.update(version=FORMAT_VERSION + 1))
    with pytest.raises(StoredResultError, match=rf"result.json format version {FORMAT_VERSION + 1} "
                       rf"is newer than this theranode understands \({FORMAT_VERSION}\); "
                       "upgrade theranode"):
        load_stored_result(stored)


#: The fields each record lacked in version 1 (written before #15).
VERSION_1_LACKS = {"vois": ("partial_volume_factor", "uncertainty"),
                   "cumulative": ("uncertainty",),
                   "lesion_indices": ("mean_uncertainty", "min_uncertainty", "max_uncertainty")}


def _as_version_1(doc: dict) -> None:  # type: ignore[type-arg]
    """``doc`` as theranode wrote it in version 1: without the fields versions 2 and 3 added."""
    doc["version"] = 1
    result = doc["result"]
    for cycle in [result, *result.get("cycles", [])]:
        for voi in cycle.get("vois", []):
            for key in VERSION_1_LACKS["vois"]:
                del voi[key]
    for total in result.get("cumulative", []):
        del total["uncertainty"]
    if result.get("lesion_indices"):
        for key in VERSION_1_LACKS["lesion_indices"]:
            del result["lesion_indices"][key]


@pytest.mark.parametrize("kind", ["cycle", "course"])
def test_a_result_stored_by_version_1_reads_with_the_fields_added_since(
    tmp_path: Path, kind: str,
) -> None:
    source, _ = source_for_cycle()
    written = cycle_result() if kind == "cycle" else course_result()
    write_result(tmp_path, written, source, dose_map())
    rewrite(tmp_path, _as_version_1)
    text = (tmp_path / RESULT_JSON).read_text()
    assert not any(f'"{key}"' in text for keys in VERSION_1_LACKS.values() for key in keys)
    read = load_stored_result(tmp_path).result
    vois = read.vois if isinstance(read, CycleResult) else [
        v for cycle in read.cycles for v in cycle.vois]
    assert vois and all(v.partial_volume_factor == 1.0 and v.uncertainty is None for v in vois)
    assert_identical(read, written)


def test_a_version_1_result_missing_another_field_is_still_refused(stored: Path) -> None:
    def damage(doc: dict) -> None:  # type: ignore[type-arg]
        _as_version_1(doc)
        del doc["result"]["vois"][0]["mean_gy"]

    rewrite(stored, damage)
    with pytest.raises(StoredResultError, match=r"missing \['mean_gy'\]"):
        load_stored_result(stored)


def test_an_array_file_of_another_shape_or_a_pickled_array_is_refused(stored: Path) -> None:
    np.save(stored / "result.dose_map.array.npy", np.zeros((2, 2, 2)), allow_pickle=False)
    with pytest.raises(StoredResultError, match="result.dose_map.array.npy holds float64"):
        load_stored_result(stored)
    np.save(stored / "result.dose_map.array.npy", np.array([[[{}]]], dtype=object))
    with pytest.raises(StoredResultError, match="cannot be read"):
        load_stored_result(stored)


def test_a_result_json_with_nan_literals_is_refused(stored: Path) -> None:
    (stored / RESULT_JSON).write_text('{"format": NaN}')
    with pytest.raises(StoredResultError, match="not valid JSON"):
        load_stored_result(stored)


def test_job_payloads_round_trip_and_refuse_other_versions_and_kinds() -> None:
    cycle = CycleJobInput(3, "2024-01-01T10:00:00", False,
                          (TimePointInput(24.0, 23.5, ("a.dcm",), ("b.dcm", "c.dcm")),),
                          "rt.dcm", reference_result="results/job-1")
    assert decode_payload(encode_payload(cycle), JobKind.CYCLE) == cycle
    course = CourseJobInput(("results/job-1", "results/job-2"))
    assert decode_payload(encode_payload(course), JobKind.COURSE) == course
    with pytest.raises(JobPayloadError, match="expected a course job"):
        decode_payload(encode_payload(cycle), JobKind.COURSE)
    newer = json.loads(encode_payload(course))
    newer["version"] = 3
    with pytest.raises(JobPayloadError, match=r"format version 3 is newer than this theranode "
                       r"understands \(2\); upgrade theranode"):
        decode_payload(json.dumps(newer).encode(), JobKind.COURSE)


#: A cycle job's payload as theranode wrote it before version 2 (byte for byte).
VERSION_1_CYCLE = (
    '{"format": "theranode-job", "version": 1, "kind": "cycle", "input": {"cycle_number": 3, '
    '"injection": "2024-01-01T10:00:00", "multi_time_point": false, "time_points": '
    '[{"nominal_h": 24.0, "elapsed_h": 23.5, "spect_files": ["a.dcm"], "ct_files": '
    '["b.dcm", "c.dcm"]}], "rtstruct_file": "rt.dcm", "reference_result": "results/job-1", '
    '"administered_activity_mbq": null}}'
).encode()


def test_a_cycle_job_queued_by_version_1_still_runs_after_the_upgrade() -> None:
    assert decode_payload(VERSION_1_CYCLE, JobKind.CYCLE) == CycleJobInput(
        3, "2024-01-01T10:00:00", False,
        (TimePointInput(24.0, 23.5, ("a.dcm",), ("b.dcm", "c.dcm")),),
        "rt.dcm", reference_result="results/job-1")
    edited = VERSION_1_CYCLE.replace(b'"administered_activity_mbq": null',
                                     b'"administered_activity_mbq": 7400.0')
    with pytest.raises(JobPayloadError, match="sets administered_activity_mbq"):
        decode_payload(edited, JobKind.CYCLE)


def run_until_ended(store: JobStore, runner: JobRunner, job_id: int) -> JobRecord:
    runner.start()
    try:
        return wait_job_ended(store, job_id, 60)
    finally:
        runner.stop()


def test_a_job_with_a_newer_payload_fails_with_the_reason_and_runs_nothing(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    store = JobStore(open_database(tmp_path / "data" / "theranode.db"))
    doc = json.loads(encode_payload(CourseJobInput(("results/job-404",))))
    doc["version"] = 3
    job = store.submit(kind="course", target="course|p|1", patient_key="p", label="1",
                       fingerprint="f", payload=json.dumps(doc).encode(), created_at=NOW)
    failed = run_until_ended(
        store, JobRunner(store, OutboxStore(store.db, store.lock), settings), job.id
    )
    assert failed.state is JobState.FAILED
    assert ("The job payload format version 3 is newer than this theranode understands (2); "
            "upgrade theranode") in failed.message
    assert "StoredResultError" not in failed.message  # it never looked for job-404's result
    assert not (settings.data_dir / "results" / f"job-{job.id}").exists()


def test_a_course_over_a_tampered_result_fails_with_the_reason_and_writes_nothing(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path / "data")
    folder = settings.data_dir / "results" / "job-0"
    source, _ = source_for_cycle()
    write_result(folder, cycle_result(), source, dose_map())
    rewrite(folder, lambda doc: doc.update(version=FORMAT_VERSION + 1))
    store = JobStore(open_database(tmp_path / "data" / "theranode.db"))
    job = store.submit(kind="course", target="course|p|1", patient_key="p", label="1",
                       fingerprint="f", payload=encode_payload(CourseJobInput(("results/job-0",))),
                       created_at=NOW)
    failed = run_until_ended(
        store, JobRunner(store, OutboxStore(store.db, store.lock), settings), job.id
    )
    assert failed.state is JobState.FAILED
    assert (f"result.json format version {FORMAT_VERSION + 1} is newer than this theranode "
            f"understands ({FORMAT_VERSION}); upgrade theranode") in failed.message
    assert not list((settings.data_dir / "results").glob(f"job-{job.id}/*"))


def test_record_format_errors_are_what_the_codec_raises() -> None:
    with pytest.raises(RecordFormatError):
        source_from_json({"patient_id": "x"})
