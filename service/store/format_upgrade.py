"""One-time conversion of the pickles earlier versions stored, to JSON.

Until format version 1 of ``result.json`` (:mod:`theranode.service.jobs.results`) and
of the job payload (:mod:`theranode.service.jobs.payload`), theranode pickled both: job
inputs into ``jobs.payload`` and every result into
``results/job-<id>/result.pkl``. Reading a pickle runs whatever code the
file names, so anyone able to write the data folder could run code in the
node. This module is **the only place in theranode that unpickles**, and
only here, once:

- :func:`payloads_to_json` is a database migration (``m004`` of
  :mod:`theranode.service.store.jobs`, applied by :func:`theranode.service.store.open_database`):
  every pickled payload becomes a JSON payload;
- :func:`migrate_results` runs at the node's start, before the job runner:
  each ``result.pkl`` becomes ``result.json`` with its ``.npy`` arrays,
  written durably, then the pickle is removed.

Even then, unpickling is restricted (:class:`_RecordUnpickler`) to the
exact classes those files held — theranode's record types, their enums and
numpy's array reconstruction — so a planted file cannot name anything else.
A file that cannot be converted is left in place and logged; its job fails
with a clear reason when it needs it (reprocess the patient to recompute).

References
----------
Python documentation, ``pickle`` — "Restricting Globals".
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from theranode.service.store.database import Database

logger = logging.getLogger(__name__)

RESULT_PICKLE = "result.pkl"
#: The first bytes of a pickle of protocol 2 or later (PROTO opcode).
_PICKLE_MAGIC = b"\x80"


def _unpacked_map_voi(
    name: str, packed: npt.NDArray[np.uint8], shape: tuple[int, ...], factor: float
) -> Any:
    """A pickled VOI mask (packed bits) rebuilt, as earlier versions'
    ``dosimetry.results._unpacked_map_voi`` did."""
    from theranode.dosimetry.results import MapVoi

    count = int(np.prod(shape))
    return MapVoi(name, np.unpackbits(packed, count=count).astype(bool).reshape(shape), factor)


def _allowed() -> dict[tuple[str, str], Callable[..., Any] | type]:
    """Every global the pickles of earlier versions name, and nothing else.

    Those versions installed the top-level packages ``dosimetry``,
    ``dicomio`` and ``service`` (not yet ``theranode.*``), and their pickles
    name the classes by those module paths; the job inputs lived in
    ``service.pipeline``.
    """
    from theranode.dicomio import source
    from theranode.dosimetry import results, volume
    from theranode.service.jobs import spec

    allowed: dict[tuple[str, str], Callable[..., Any] | type] = {
        ("dosimetry.results", "_unpacked_map_voi"): _unpacked_map_voi,
        ("dosimetry.volume", "Volume"): volume.Volume,
        ("dicomio.source", "SourceContext"): source.SourceContext,
        ("dicomio.source", "InstanceReference"): source.InstanceReference,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
    }
    for name in ("CycleResult", "CourseResult", "VoiDose", "KineticFit", "CurvePoint",
                 "RegistrationQuality", "CumulativeDose", "LesionIndices", "MapVoi",
                 "VoiKind", "Organ", "KineticModel", "DoseMethod"):
        allowed[("dosimetry.results", name)] = getattr(results, name)
    for name in ("CycleJobInput", "TimePointInput", "CourseJobInput"):
        allowed[("service.pipeline", name)] = getattr(spec, name)
    for module in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x spell it differently
        allowed[(f"{module}.numeric", "_frombuffer")] = _numpy_global("numeric", "_frombuffer")
        allowed[(f"{module}.multiarray", "_reconstruct")] = _numpy_global(
            "multiarray", "_reconstruct")
        allowed[(f"{module}.multiarray", "scalar")] = _numpy_global("multiarray", "scalar")
    return allowed


def _numpy_global(module: str, name: str) -> Callable[..., Any]:
    try:
        core = __import__(f"numpy._core.{module}", fromlist=[name])
    except ImportError:  # numpy 1.x
        core = __import__(f"numpy.core.{module}", fromlist=[name])
    found: Callable[..., Any] = getattr(core, name)
    return found


class _RecordUnpickler(pickle.Unpickler):
    """An unpickler that builds only the allowed globals (Python docs: Restricting Globals)."""

    def __init__(self, data: bytes, allowed: dict[tuple[str, str], Any]) -> None:
        super().__init__(io.BytesIO(data))
        self._allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not a type earlier theranode versions stored; refused"
            ) from None


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only the types earlier theranode versions stored."""
    return _RecordUnpickler(data, _allowed()).load()


# -- job payloads (a database migration) ----------------------------------------------
def payloads_to_json(db: Database) -> None:
    """Convert every pickled ``jobs.payload`` to JSON (:mod:`theranode.service.jobs.payload`)."""
    rows = [(job_id, bytes(payload)) for job_id, payload in db.execute(
        "select id, payload from jobs where payload is not null").fetchall()
        if bytes(payload).startswith(_PICKLE_MAGIC)]
    if not rows:
        return
    from theranode.service.jobs.payload import encode_payload

    for job_id, payload in rows:
        try:
            converted = encode_payload(restricted_loads(payload))
        except Exception as exc:  # a bad row must not stop the node: its job fails clearly
            logger.error("Job %d: its pickled payload could not be converted to JSON (%s); "
                         "the job fails when it runs. Reprocess its patient.", job_id, exc)
            continue
        db.execute("update jobs set payload = ? where id = ?", [converted, job_id])
    logger.info("Converted %d pickled job payload(s) to JSON", len(rows))


# -- stored results (at start-up, before the job runner) ------------------------------
def migrate_results(data_dir: Path) -> Counter[str]:
    """Convert ``results/job-*/result.pkl`` to ``result.json`` + ``.npy``, then remove them.

    Returns how many were ``converted`` and how many ``failed`` (left in
    place, logged, tried again at the next start).
    """
    tally: Counter[str] = Counter()
    for path in sorted((data_dir / "results").glob(f"job-*/{RESULT_PICKLE}")):
        try:
            _migrate_result(path)
        except Exception as exc:  # a bad file never stops the node starting
            logger.error("%s could not be converted to result.json (%s); jobs that need it "
                         "fail until its patient is reprocessed", path, exc)
            tally["failed"] += 1
            continue
        tally["converted"] += 1
    if tally:
        logger.info("Pickled results converted to JSON: %s", dict(tally))
    return tally


def _migrate_result(path: Path) -> None:
    from theranode.service.jobs.results import write_result

    stored = restricted_loads(path.read_bytes())
    if not isinstance(stored, dict) or set(stored) != {"result", "source", "reference_ct"}:
        raise ValueError("not a stored result (expected result, source and reference_ct)")
    write_result(path.parent, stored["result"], stored["source"], stored["reference_ct"])
    path.unlink()
    folder = os.open(path.parent, os.O_RDONLY)  # the removal itself is durable only then
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
