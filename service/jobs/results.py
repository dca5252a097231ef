"""A computed result on disk: ``result.json`` and its arrays as ``.npy`` files.

Every job writes, beside its RT Dose, SR and PDF in
``<data_dir>/results/job-<id>/``, the result record it computed, the source
context (patient, study, referenced inputs) and the reference CT; later
single-time-point cycles (scaled from a multi-time-point cycle) and course
sums read them back with :func:`load_stored_result`.

``result.json`` is a versioned document::

    {"format": "theranode-result", "version": 3, "kind": "cycle" | "course",
     "result": …, "source": …, "reference_ct": …}

whose records are encoded by :mod:`theranode.dosimetry.records_json` (result records,
volumes) and :func:`theranode.dicomio.source.source_to_json`. Each array (dose maps,
the reference CT, VOI masks as packed bits) is a ``<key>.npy`` file beside
it, written with ``numpy.save(..., allow_pickle=False)`` and read with
``numpy.load(..., allow_pickle=False)``, its dtype and shape checked against
the JSON. Arrays are written first and ``result.json`` last, each durably
(:func:`theranode.service.receive.archive.write_durably`): a folder with a ``result.json``
is complete. A version that added fields to the records lists them with
the value earlier results meant (:data:`FIELDS_ADDED`), so results stored by
an earlier theranode still read; they are filled in before the strict
reading, never guessed. Nothing here runs code named by a file: an unknown format
version, a missing or unknown field, an unknown enum value or an array of
another shape is refused with a :class:`StoredResultError` saying so.

References
----------
IETF RFC 8259 (JSON); NumPy NEP 1 (the ``.npy`` format).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from theranode.dicomio.source import SourceContext, source_from_json, source_to_json
from theranode.dosimetry.records_json import (
    ARRAY_KEY,
    RESULT_CODEC,
    RecordFormatError,
    check_format,
    record_from_json,
    record_to_json,
)
from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CycleResult,
    LesionIndices,
    VoiDose,
)
from theranode.dosimetry.volume import Volume
from theranode.service.errors import ServiceError
from theranode.service.receive.archive import write_durably

logger = logging.getLogger(__name__)

RESULT_JSON = "result.json"
FORMAT = "theranode-result"
#: The ``result.json`` version this theranode writes; every earlier one is read too.
FORMAT_VERSION = 3
#: Per version, the fields it added to the result records and the value they had
#: before (their default): version 2 added the per-time-point partial-volume factor,
#: version 3 the uncertainty budgets.
FIELDS_ADDED: dict[int, dict[type, dict[str, Any]]] = {
    2: {VoiDose: {"partial_volume_factor": 1.0}},
    3: {VoiDose: {"uncertainty": None}, CumulativeDose: {"uncertainty": None},
        LesionIndices: {"mean_uncertainty": None, "min_uncertainty": None,
                        "max_uncertainty": None}},
}
_KINDS: dict[str, type] = {"cycle": CycleResult, "course": CourseResult}


class StoredResultError(ServiceError):
    """A stored result cannot be read (missing, damaged, or from a newer theranode)."""


@dataclass(frozen=True, eq=False)
class StoredResult:
    """What a job stored: its result, source context and reference CT."""

    result: CycleResult | CourseResult
    source: SourceContext
    reference_ct: Volume


def write_result(
    folder: Path, result: CycleResult | CourseResult, source: SourceContext, reference_ct: Volume
) -> None:
    """Write ``result.json`` and its arrays into ``folder`` (arrays first, durably)."""
    folder.mkdir(parents=True, exist_ok=True)
    kind = "cycle" if isinstance(result, CycleResult) else "course"

    def store(key: str, array: npt.NDArray[Any]) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        write_durably(_array_path(folder, key), buffer.getvalue())

    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "result": record_to_json(result, _KINDS[kind], "result", store),
        "source": source_to_json(source),
        "reference_ct": record_to_json(reference_ct, Volume, "reference_ct", store),
    }
    text = json.dumps(doc, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    write_durably(folder / RESULT_JSON, text.encode("utf-8"))


def load_stored_result(folder: Path) -> StoredResult:
    """Read back what :func:`write_result` wrote into ``folder``.

    Raises
    ------
    StoredResultError
        No ``result.json``, or one that is not exactly what this theranode
        writes (the message names the file and what is wrong).
    """
    path = folder / RESULT_JSON
    try:
        doc = json.loads(path.read_bytes(), parse_constant=_no_constant)
    except FileNotFoundError:
        raise StoredResultError(
            f"{path} does not exist: the job that computed this result did not finish, or "
            "its files were removed. Reprocess the patient to compute it again."
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoredResultError(f"{path} is not valid JSON ({exc}); reprocess the patient.") \
            from None
    try:
        return _decode(doc, folder)
    except RecordFormatError as exc:
        raise StoredResultError(f"{path}: {exc}") from None


def _upgraded(doc: Any) -> Any:
    """An earlier version's ``result.json`` as the current version (fields added filled in)."""
    found = doc.get("version") if isinstance(doc, dict) else None
    if not (isinstance(found, int) and not isinstance(found, bool) and
            1 <= found < FORMAT_VERSION and doc.get("kind") in _KINDS):
        return doc
    result = doc.get("result")
    for version in range(found + 1, FORMAT_VERSION + 1):
        result = RESULT_CODEC.with_added_fields(result, _KINDS[doc["kind"]],
                                                FIELDS_ADDED[version])
    return {**doc, "version": FORMAT_VERSION, "result": result}


def _decode(doc: Any, folder: Path) -> StoredResult:
    body = check_format(_upgraded(doc), RESULT_JSON, FORMAT, FORMAT_VERSION)
    if set(body) != {"format", "version", "kind", "result", "source", "reference_ct"} or \
            body["kind"] not in _KINDS:
        raise RecordFormatError(
            f"expected the keys format, version, kind (cycle or course), result, source and "
            f"reference_ct; found {sorted(body)} (kind {body.get('kind')!r:.20})."
        )

    def load(key: str, dtype: np.dtype[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
        return _load_array(folder, key, dtype, shape)

    result = record_from_json(body["result"], _KINDS[body["kind"]], "result", load)
    reference_ct = record_from_json(body["reference_ct"], Volume, "reference_ct", load)
    return StoredResult(result, source_from_json(body["source"]), reference_ct)


def _array_path(folder: Path, key: str) -> Path:
    if not ARRAY_KEY.match(key):  # keys are field paths; never a path of the file's choosing
        raise RecordFormatError(f"{key!r:.60} is not an array name theranode writes.")
    return folder / f"{key}.npy"


def _load_array(
    folder: Path, key: str, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> npt.NDArray[Any]:
    path = _array_path(folder, key)
    try:
        array: npt.NDArray[Any] = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RecordFormatError(f"the array file {path.name} is missing.") from None
    except ValueError as exc:
        raise RecordFormatError(f"the array file {path.name} cannot be read: {exc}.") from None
    if array.dtype != dtype or array.shape != shape:
        raise RecordFormatError(
            f"the array file {path.name} holds {array.dtype} {array.shape}; the result "
            f"declares {dtype} {shape}."
        )
    return array


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or infinity)")

