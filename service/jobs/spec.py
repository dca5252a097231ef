"""What a dosimetry job is: its kind, its inputs by value, and what it produced.

A :class:`JobSpec` carries everything a worker process needs, so the job
runs with no database connection. The planner stores a job's inputs
(:class:`CycleJobInput` or :class:`CourseJobInput`) as versioned JSON
(:mod:`theranode.service.jobs.payload`); the runner reads them back into a
:class:`JobSpec`, and :mod:`theranode.service.jobs.pipeline` returns a
:class:`JobOutcome`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from theranode.config.schema import Settings

#: Result folders live under ``<data_dir>/results/``, one per job.
RESULTS_DIR = "results"


class JobKind(str, Enum):
    CYCLE = "cycle"
    COURSE = "course"


@dataclass(frozen=True)
class TimePointInput:
    """The files of one time point: its SPECT and the CT in its frame of reference."""

    nominal_h: float
    elapsed_h: float
    spect_files: tuple[str, ...]
    ct_files: tuple[str, ...]


@dataclass(frozen=True)
class CycleJobInput:
    """One cycle's inputs (file paths relative to the data folder).

    ``reference_result`` is the result folder of the multi-time-point cycle a
    single-time-point cycle is scaled from (``None``: the configured fallback).
    """

    cycle_number: int
    injection: str
    multi_time_point: bool
    time_points: tuple[TimePointInput, ...]
    rtstruct_file: str
    reference_result: str | None = None


@dataclass(frozen=True)
class CourseJobInput:
    """A course: the result folders of its computed cycles, in cycle order."""

    cycle_results: tuple[str, ...]


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run one job."""

    job_id: int
    kind: JobKind
    version: int
    created_at: str
    data_dir: str
    settings: Settings
    cycle: CycleJobInput | None = None
    course: CourseJobInput | None = None
    #: Why the job's stored inputs could not be read: the worker fails the job with it.
    payload_error: str | None = None

    @property
    def result_folder(self) -> str:
        """The job's result folder, relative to the data folder."""
        return f"{RESULTS_DIR}/job-{self.job_id}"

    @property
    def result_dir(self) -> Path:
        return Path(self.data_dir) / self.result_folder


@dataclass(frozen=True)
class ResultObject:
    """One written DICOM result object."""

    path: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    modality: str
    description: str


@dataclass(frozen=True)
class JobOutcome:
    """What a finished job produced."""

    objects: tuple[ResultObject, ...]
    result_dir: str
    summary: tuple[str, ...] = field(default=())
