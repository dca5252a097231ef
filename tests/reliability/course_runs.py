"""A synthetic course computed by a real ``theranode serve``, and what it produced.

Shared by the job-kill, outage and hostile-processing tests: the node
configuration (short quiet period and poll interval, small outbox backoff,
one DICOM destination), reading the node's database from the test while the
node runs (SQLite WAL lets a reader in), and the per-cycle results a run is
compared with (VOI mean doses, RT Dose pixel bytes).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import pydicom

from tests.reliability.processes import write_config
from tests.reliability.shared_runs import shared
from theranode.config.schema import Settings
from theranode.dicomio.synthetic_course import CourseManifest, CourseWriteSpec, write_course
from theranode.dosimetry.results import CourseResult
from theranode.service.jobs.pipeline import run_job
from theranode.service.jobs.results import load_stored_result
from theranode.service.jobs.spec import CycleJobInput, JobKind, JobSpec, TimePointInput
from theranode.service.store import open_database
from theranode.service.store.jobs import JobRecord, JobState, JobStore

NODE_SETTINGS: dict[str, dict[str, Any]] = {
    "protocol": {"quiet_period_s": 2.0},
    "jobs": {"poll_interval_s": 0.5},
    "outbox": {"retry_base_s": 0.2, "retry_max_s": 1.0},
}


def course_files(manifest: CourseManifest, cycles: tuple[int, ...] | None = None) -> list[Path]:
    """Every file of a written course (or of its ``cycles``), the cycles' time points interleaved.

    Cycle 1's first time point, cycle 2's first, cycle 1's second, ...: every
    cycle's last instance arrives near the end of the transfer, so no cycle
    turns quiet (and is computed, and gets a course result of its own) while
    another is still arriving; the run then has one course job, as a clean
    run to compare with must. Within a time point the CT comes first, then the
    SPECT and the RTSTRUCT, so a cycle is complete only with its last file.
    """
    per_cycle_points: dict[int, list[list[Path]]] = {}
    for tp in manifest.time_points:
        if cycles is not None and tp.time_point.cycle_number not in cycles:
            continue
        files = [*tp.ct_files, *tp.spect_files]
        files += [tp.rtstruct_file] if tp.rtstruct_file is not None else []
        per_cycle_points.setdefault(tp.time_point.cycle_number, []).append(files)
    ordered: list[Path] = []
    for group in zip_longest(*per_cycle_points.values(), fillvalue=[]):
        for files in group:
            ordered += files
    return ordered


def write_node_config(work: Path, destination_port: int,
                      **sections: dict[str, Any]) -> tuple[Path, int, Path]:
    """A node configuration sending to one DICOM destination ``PACS`` on ``destination_port``.

    Returns the configuration file, the node's DICOM port and its data folder.
    """
    work.mkdir(parents=True, exist_ok=True)
    config, data_dir = work / "node.toml", work / "data"
    merged = {name: {**values, **sections.pop(name, {})} for name, values in NODE_SETTINGS.items()}
    port = write_config(config, data_dir, **merged, **sections)
    with open(config, "a", encoding="utf-8") as handle:
        handle.write(f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\n'
                     f'host = "127.0.0.1"\nport = {destination_port}\n')
    return config, port, data_dir



class NodeDatabase:
    """Read-only view of a node's jobs and outbox from the test process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.jobs = JobStore(open_database(data_dir / "theranode.db"))

    def close(self) -> None:
        self.jobs.db.conn.close()

    def all_jobs(self) -> list[JobRecord]:
        return sorted(self.jobs.all(1000), key=lambda j: j.id)

    def of_kind(self, kind: str, *states: JobState) -> list[JobRecord]:
        return [j for j in self.all_jobs() if j.kind == kind and (not states or j.state in states)]

    def query(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self.jobs.lock:
            return list(self.jobs.db.query(sql, params or []))

    def result_objects(self) -> list[dict[str, Any]]:
        """Every result object, in the order the jobs produced them (the outbox's order)."""
        return self.query("select o.*, j.kind, j.label, j.patient_key from result_objects o "
                          "join jobs j on j.id = o.job_id order by o.id")

    def deliveries(self, *states: str) -> list[dict[str, Any]]:
        rows = self.query("select * from deliveries order by object_id")
        return [r for r in rows if not states or r["state"] in states]

    def all_delivered(self) -> bool:
        rows = self.deliveries()
        return bool(rows) and all(r["state"] == "sent" for r in rows)

    def patient_ids(self) -> dict[str, str]:
        """PatientID of every patient key the node has seen."""
        return {r["patient_key"]: r["patient_id"]
                for r in self.query("select patient_key, patient_id from patients")}


@dataclass(frozen=True)
class CycleOutput:
    """What a cycle job produced: mean dose per VOI and the RT Dose pixel bytes."""

    cycle_number: int
    mean_gy: dict[str, float]
    rtdose_pixels: bytes | None


def cycle_output(data_dir: Path, job: JobRecord) -> CycleOutput:
    folder = data_dir / str(job.result_dir)
    result = load_stored_result(folder).result
    rtdose = folder / "RTDOSE.dcm"
    pixels = pydicom.dcmread(rtdose).PixelData if rtdose.exists() else None
    return CycleOutput(result.cycle_number, {v.name: v.mean_gy for v in result.vois}, pixels)


def outputs_by_cycle(db: NodeDatabase, patient_key: str | None = None) -> dict[int, CycleOutput]:
    """The done cycle jobs' outputs keyed by cycle number (optionally of one patient)."""
    jobs = [j for j in db.of_kind("cycle", JobState.DONE)
            if patient_key is None or j.patient_key == patient_key]
    outputs = [cycle_output(db.data_dir, j) for j in jobs]
    return {o.cycle_number: o for o in outputs}


COURSE_SEED = 11
#: Phantom supersampling of the courses the fault tests write: surface voxels sampled once
#: at their centre instead of 3³ times (the default). These tests compare a run with a clean
#: run of the same files (or with the pipeline run on them), never with the analytic truth,
#: so finer phantom edges buy nothing there; writing a cycle takes a third of the time.
FAULT_SUPERSAMPLING = 1


def two_cycle_course(factory: Any) -> CourseManifest:
    """The synthetic course's cycles 1 and 2 (both multi-time-point) on small grids.

    Written once per test session (``factory``: pytest's ``tmp_path_factory``),
    whichever worker asks first (:func:`tests.reliability.shared_runs.shared`):
    the job-kill, graceful-shutdown and outage tests share it, so the outage
    run can serve as the others' clean run.
    """
    return shared(factory, f"course-seed{COURSE_SEED}-cycles1-2",
                  lambda folder: write_course(
                      folder, CourseWriteSpec(cycles=(1, 2), supersampling=FAULT_SUPERSAMPLING),
                      COURSE_SEED))


def course_totals_gy(db: NodeDatabase, job: JobRecord | None = None) -> dict[str, float]:
    """Total dose per VOI of a done course job (default: the latest; empty when there is none)."""
    done = db.of_kind("course", JobState.DONE)
    job = job or (done[-1] if done else None)
    if job is None:
        return {}
    result = load_stored_result(db.data_dir / str(job.result_dir)).result
    assert isinstance(result, CourseResult)
    return {c.name: c.total_gy for c in result.cumulative}


def direct_cycle_output(manifest: CourseManifest) -> CycleOutput:
    """A one-cycle course computed by the pipeline itself, without a node: the clean result.

    The result is written below the course folder (``results/job-0``), as
    tests/service/test_pipeline.py's reference does.
    """
    out = manifest.out_dir

    def rel(path: Path) -> str:
        return str(Path(path).relative_to(out))

    points = manifest.time_points
    structure = points[0].rtstruct_file
    assert structure is not None, "the course was written without an RTSTRUCT"
    spec = JobSpec(
        job_id=0, kind=JobKind.CYCLE, version=1, created_at="2024-01-01T00:00:00",
        data_dir=str(out), settings=Settings(),
        cycle=CycleJobInput(
            points[0].time_point.cycle_number, points[0].time_point.injection_datetime.isoformat(),
            True,
            tuple(TimePointInput(0, tp.time_point.elapsed_h, tuple(map(rel, tp.spect_files)),
                                 tuple(map(rel, tp.ct_files))) for tp in points),
            rel(structure)))
    outcome = run_job(spec)
    folder = out / outcome.result_dir
    result = load_stored_result(folder).result
    return CycleOutput(result.cycle_number, {v.name: v.mean_gy for v in result.vois},
                       pydicom.dcmread(folder / "RTDOSE.dcm").PixelData)
