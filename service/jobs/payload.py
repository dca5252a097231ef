"""A job's inputs as stored in the ``jobs.payload`` column: versioned JSON.

The planner stores what a job computes from
(:class:`~theranode.service.jobs.spec.CycleJobInput`: file paths of each time
point and the RTSTRUCT; :class:`~theranode.service.jobs.spec.CourseJobInput`:
the result folders of the course's cycles) as UTF-8 JSON::

    {"format": "theranode-job", "version": 2, "kind": "cycle" | "course", "input": {…}}

encoded field by field by :class:`theranode.dosimetry.records_json.RecordCodec` with an
explicit registry of the three input types. Reading refuses any other format
or version with a message that says what to do (:class:`JobPayloadError`);
nothing in a payload decides what code runs.

Version history: 1 had a cycle input field ``administered_activity_mbq`` that
no version of theranode ever set (the activity comes from the SPECT headers);
version 2 drops it. Payloads of version 1 are read by dropping the field when
it is null, so jobs queued before an upgrade still run.
"""

from __future__ import annotations

import json
from typing import Any

from theranode.dosimetry.records_json import RecordCodec, RecordFormatError, check_format
from theranode.service.errors import ServiceError
from theranode.service.jobs.spec import CourseJobInput, CycleJobInput, JobKind, TimePointInput

FORMAT = "theranode-job"
#: The payload version this theranode writes and reads.
FORMAT_VERSION = 2
_CODEC = RecordCodec((TimePointInput, CycleJobInput, CourseJobInput))
_TYPES: dict[JobKind, type] = {JobKind.CYCLE: CycleJobInput, JobKind.COURSE: CourseJobInput}


class JobPayloadError(ServiceError):
    """A job's stored inputs cannot be read (damaged, or from a newer theranode)."""


def _no_arrays(key: str, array: object) -> None:
    raise RecordFormatError(f"{key}: a job payload holds no arrays.")


def _no_load(key: str, dtype: object, shape: object) -> Any:
    raise RecordFormatError(f"{key}: a job payload holds no arrays.")


def encode_payload(job_input: CycleJobInput | CourseJobInput) -> bytes:
    """The ``jobs.payload`` bytes of a cycle or course job's inputs."""
    kind = JobKind.CYCLE if isinstance(job_input, CycleJobInput) else JobKind.COURSE
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind.value,
        "input": _CODEC.encode(job_input, _TYPES[kind], "input", _no_arrays),
    }
    return json.dumps(doc, allow_nan=False, ensure_ascii=False).encode("utf-8")


def _upgraded(doc: Any) -> Any:
    """A version-1 payload as version 2 (the never-set activity field dropped)."""
    if not (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == 1):
        return doc
    body = doc.get("input")
    if doc.get("kind") == JobKind.CYCLE.value and isinstance(body, dict):
        if body.get("administered_activity_mbq") is not None:
            raise RecordFormatError(
                "The version-1 job payload sets administered_activity_mbq, which no theranode "
                "wrote; the row was edited or damaged."
            )
        body = {k: v for k, v in body.items() if k != "administered_activity_mbq"}
    return {**doc, "version": 2, "input": body}


def decode_payload(payload: bytes, kind: JobKind) -> CycleJobInput | CourseJobInput:
    """The inputs :func:`encode_payload` stored for a job of ``kind``.

    Raises
    ------
    JobPayloadError
        The payload is not this theranode's JSON for a job of ``kind``.
    """
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise JobPayloadError(
            "The job's stored inputs are not a JSON job payload (one of an earlier version "
            "that the start-up migration could not convert, or a damaged row); nothing was run. "
            "Reprocess the patient (theranode reprocess) to queue the job again."
        ) from None
    try:
        body = check_format(_upgraded(doc), "The job payload", FORMAT, FORMAT_VERSION)
        if body.get("kind") != kind.value or set(body) != {"format", "version", "kind", "input"}:
            raise RecordFormatError(
                f"The job payload is for a {body.get('kind')!r:.20} job with the keys "
                f"{sorted(body)}; expected a {kind.value} job with format, version, kind and "
                "input."
            )
        job_input: CycleJobInput | CourseJobInput = _CODEC.decode(
            body["input"], _TYPES[kind], "input", _no_load
        )
    except RecordFormatError as exc:
        raise JobPayloadError(f"{exc} Nothing was run.") from None
    return job_input
