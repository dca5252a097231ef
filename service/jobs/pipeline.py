"""Read → compute → write for one dosimetry job (a cycle or a course).

A job arrives as a :class:`JobSpec`: everything needed, by value, so that it
can run in a worker process with no database connection. The pipeline

1. reads the archived input files of the cycle (:mod:`dicomio` readers),
2. builds the engine's inputs (VOIs from the RTSTRUCT drawn on the first CT),
3. computes with :mod:`theranode.dosimetry.cycle` or :mod:`theranode.dosimetry.course_map`,
4. writes RT Dose, SR and PDF (deterministic: UIDs from the inputs and the
   result version, creation time from the job record) into
   ``<data_dir>/results/job-<id>/`` by write-and-rename, together with the
   result, source context and reference CT as versioned JSON and ``.npy``
   arrays (:mod:`theranode.service.jobs.results`) that later course and
   single-time-point jobs read back,

and returns a :class:`JobOutcome` listing the written objects; sending them is
the outbox's business (:mod:`theranode.service.deliver.outbox`).

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (protocol and method).
DICOM PS3.3 A.18 (RT Dose), A.35.13 (Comprehensive 3D SR), A.45.1
(Encapsulated PDF).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from theranode.config.schema import Settings
from theranode.dicomio.ct import read_ct_series
from theranode.dicomio.dvh import dvhs_from_masks
from theranode.dicomio.headers import MAX_PLAUSIBLE_ACTIVITY_MBQ
from theranode.dicomio.headers import injection as recorded_injection
from theranode.dicomio.nm import read_spect
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import write_course_pdf, write_cycle_pdf
from theranode.dicomio.rtdose import course_rt_dose, cycle_rt_dose
from theranode.dicomio.rtstruct import ContourLimits, RoiContours, read_rois, roi_mask
from theranode.dicomio.source import (
    SourceContext,
    course_source_context,
    source_context_from_datasets,
)
from theranode.dicomio.sr import write_course_sr, write_cycle_sr
from theranode.dicomio.uids import ResultIdentity, ResultKind
from theranode.dosimetry.course_map import compute_course
from theranode.dosimetry.cycle import (
    CycleInputs,
    TimePointImages,
    VoiMask,
    compute_multi_time_point_cycle,
    compute_single_time_point_cycle,
)
from theranode.dosimetry.plausibility import PlausibilityLimits, implausible_doses
from theranode.dosimetry.results import CourseResult, CycleResult
from theranode.dosimetry.voi_names import classify_roi
from theranode.dosimetry.volume import Volume
from theranode.service.errors import ServiceError
from theranode.service.jobs.engine_settings import build_engine_settings
from theranode.service.jobs.results import RESULT_JSON, load_stored_result, write_result
from theranode.service.receive.archive import write_durably
from theranode.service.receive.calibration import counts_calibration

logger = logging.getLogger(__name__)

RESULTS_DIR = "results"
MIN_HU, MAX_HU = -1100.0, 3100.0  # the CT scale with a margin (PS3.3 C.11.1.1.2)
RESULT_FILE = RESULT_JSON


class PipelineError(ServiceError):
    """The inputs of a job cannot be turned into results (the message says why)."""


class ImplausibleResultError(PipelineError):
    """A computed result is outside physical plausibility: held, nothing is sent."""


class JobKind(str, Enum):
    CYCLE = "cycle"
    COURSE = "course"


# -- job descriptions (by value; stored as JSON by theranode.service.jobs.payload) ----------
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
    administered_activity_mbq: float | None = None


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


# -- VOIs -----------------------------------------------------------------------
def voi_masks(rois: Sequence[RoiContours], ct: Volume) -> tuple[tuple[VoiMask, ...], list[str]]:
    """VOIs on the reference CT grid, and notes on the ROIs left out."""
    vois, notes = [], []
    for roi in rois:
        kind = classify_roi(roi.name, roi.interpreted_type)
        if kind is None:
            notes.append(f"ROI {roi.name!r} is not an organ, marrow or lesion VOI; ignored")
            continue
        mask = roi_mask(roi, ct)
        if not mask.array.any():
            notes.append(f"ROI {roi.name!r} covers no voxel of the reference CT; ignored")
            continue
        vois.append(VoiMask(roi.name, kind[0], mask, kind[1]))
    if not vois:
        raise PipelineError(
            "The RTSTRUCT holds no usable VOI (organs, marrow or lesions with contours on "
            "the first CT); draw them and resend the structure set."
        )
    return tuple(vois), notes


# -- reading ------------------------------------------------------------------------
def _read(data_dir: Path, files: Sequence[str]) -> list[Dataset]:
    return [pydicom.dcmread(data_dir / f) for f in files]


@dataclass(frozen=True, eq=False)
class _ReadCycle:
    inputs: CycleInputs
    source: SourceContext
    rois: list[RoiContours]
    notes: list[str]


def _spect(datasets: list[Dataset], settings: Settings) -> Any:
    calibration = counts_calibration(datasets[0], settings.calibration)
    return read_spect(datasets if len(datasets) > 1 else datasets[0], calibration)


def check_plausible_spect(spect: Volume, nominal_h: float) -> None:
    """Refuse a SPECT whose field of view holds no activity or more than any treatment.

    Counts scaled by a wrong RescaleSlope or Real World Value Mapping (or
    never calibrated) would otherwise give absorbed doses of 10^30 Gy or NaN
    that are sent to the PACS as results.

    References
    ----------
    theranode.dicomio.headers.MAX_PLAUSIBLE_ACTIVITY_MBQ (100 GBq: no PRRT cycle administers more).
    """
    total_mbq = float(np.sum(spect.array, dtype=np.float64)) * spect.voxel_volume_ml / 1e6
    if not math.isfinite(total_mbq) or not 0 < total_mbq <= MAX_PLAUSIBLE_ACTIVITY_MBQ:
        raise PipelineError(
            f"The SPECT at {nominal_h:g} h holds {total_mbq:.3g} MBq in its field of view; "
            f"expected more than 0 and at most {MAX_PLAUSIBLE_ACTIVITY_MBQ:g} MBq (the most a "
            f"Lu-177 treatment administers). Check "
            f"the SPECT's units and scaling (Real World Value Mapping, RescaleSlope) and resend it."
        )


def check_plausible_ct(ct: Volume, nominal_h: float) -> None:
    """Refuse a CT whose numbers are not Hounsfield units (median outside air…bone).

    Densities derived from such a CT would silently change every dose.

    References
    ----------
    DICOM PS3.3 C.11.1.1.2 (Rescale Intercept/Slope to HU); the CT scale spans
    −1024 HU (air) to 3071 HU in 12-bit images.
    """
    median_hu = float(np.median(ct.array))
    if not MIN_HU <= median_hu <= MAX_HU:
        raise PipelineError(
            f"The CT at {nominal_h:g} h has a median of {median_hu:.0f} HU; CT numbers lie "
            f"between {MIN_HU:g} (air) and {MAX_HU:g} HU. Check its RescaleSlope and "
            f"RescaleIntercept and resend it."
        )


def _time_point(
    data_dir: Path, tp: TimePointInput, injection: datetime, settings: Settings
) -> tuple[TimePointImages, list[Dataset], list[Dataset]]:
    ct_ds = _read(data_dir, tp.ct_files)
    spect_ds = _read(data_dir, tp.spect_files)
    spect = _spect(spect_ds, settings)
    check_plausible_spect(spect.volume, tp.nominal_h)
    elapsed_h = spect.elapsed_h
    if elapsed_h is None:  # injection time of day only: the grouping dated it
        elapsed_h = (spect.acquisition_start - injection).total_seconds() / 3600.0
    ct = read_ct_series(ct_ds)
    check_plausible_ct(ct, tp.nominal_h)
    images = TimePointImages(elapsed_h, ct, spect.volume)
    return images, ct_ds, spect_ds


def frame_mismatch_note(
    tp: TimePointInput, ct_ds: list[Dataset], spect_ds: list[Dataset]
) -> list[str]:
    """A warning when a time point's SPECT and CT are in different frames of reference.

    The completion rules take another CT of the time point when none shares
    the SPECT's frame (service/plan/completion.py); the SPECT is then placed on
    that CT by patient coordinates, which only a hybrid scanner guarantees,
    so the result says so (PS3.3 C.7.4.1: one frame of reference, one
    patient coordinate system).
    """
    spect_frame = str(spect_ds[0].get("FrameOfReferenceUID", ""))
    ct_frame = str(ct_ds[0].get("FrameOfReferenceUID", ""))
    if spect_frame == ct_frame:
        return []
    note = (f"The SPECT at {tp.nominal_h:g} h is not in its CT's frame of reference "
            f"(SPECT {spect_frame or 'none'}, CT {ct_frame or 'none'}); it was placed on the CT "
            f"by patient coordinates without registration: check the fusion before using the "
            f"doses.")
    return [note]


#: SPECT headers of one cycle naming administered activities further apart than this
#: (relative) are reported: they should all record the same administration.
ACTIVITY_AGREEMENT = 0.01


def header_activity_mbq(spect_ds: Sequence[Dataset]) -> float | None:
    """RadionuclideTotalDose of a SPECT, in MBq (PS3.3 C.8.4.10.1.7, C.8.9.1.1.4)."""
    shot = recorded_injection(spect_ds[0]) if spect_ds else None
    return shot.activity_mbq if shot is not None else None


def administered_activity(
    given_mbq: float | None, header_mbq: Sequence[tuple[float, float | None]]
) -> tuple[float | None, list[str]]:
    """The cycle's administered activity and a warning when its records disagree.

    ``given_mbq`` (from the job) wins; otherwise the earliest time point's
    SPECT header. Every time point of a cycle records the same
    administration, so values more than :data:`ACTIVITY_AGREEMENT` apart
    mean a header was edited or belongs to another cycle.
    """
    recorded = [(h, a) for h, a in header_mbq if a is not None]
    chosen = given_mbq if given_mbq is not None else (recorded[0][1] if recorded else None)
    if chosen is None:
        return None, ["No administered activity (RadionuclideTotalDose) in the cycle's SPECT "
                      "headers: doses per administered activity are not checked or reported."]
    values = [a for _, a in recorded]
    if not values or max(abs(a - chosen) for a in values) <= ACTIVITY_AGREEMENT * chosen:
        return chosen, []
    listed = ", ".join(f"{a:.6g} MBq at {h:g} h" for h, a in recorded)
    return chosen, [f"The SPECT headers of this cycle disagree on the administered activity "
                    f"({listed}); {chosen:.6g} MBq was used. Check RadionuclideTotalDose."]


def contour_limits(settings: Settings) -> ContourLimits:
    """The contour bounds of ``[security]``: the job reads what ingest accepted."""
    security = settings.security
    return ContourLimits(security.max_contour_points, security.max_contours_per_roi)


def read_cycle(spec: JobSpec) -> _ReadCycle:
    """Read every input file of a cycle job into the engine's inputs."""
    job = spec.cycle
    assert job is not None
    data_dir = Path(spec.data_dir)
    injection = datetime.fromisoformat(job.injection)
    ordered = sorted(job.time_points, key=lambda t: t.elapsed_h)
    images, ct_sets, spect_sets, frame_notes = [], [], [], []
    header_activities: list[tuple[float, float | None]] = []
    for tp in ordered:
        tp_images, ct_ds, spect_ds = _time_point(data_dir, tp, injection, spec.settings)
        header_activities.append((tp.nominal_h, header_activity_mbq(spect_ds)))
        images.append(tp_images)
        ct_sets.append(ct_ds)
        spect_sets.extend(spect_ds)
        frame_notes += frame_mismatch_note(tp, ct_ds, spect_ds)
    structure_set = pydicom.dcmread(data_dir / job.rtstruct_file)
    rois = read_rois(structure_set, contour_limits(spec.settings))
    vois, notes = voi_masks(rois, images[0].ct)
    activity_mbq, activity_notes = administered_activity(
        job.administered_activity_mbq, header_activities
    )
    notes = [*frame_notes, *activity_notes, *notes]
    inputs = CycleInputs(job.cycle_number, tuple(images), vois, activity_mbq)
    source = source_context_from_datasets(
        ct_sets[0],
        structure_set=structure_set,
        source_images=[*spect_sets, *(ds for cts in ct_sets[1:] for ds in cts)],
    )
    return _ReadCycle(inputs, source, rois, notes)


def load_result(data_dir: Path, result_dir: str) -> tuple[CycleResult, SourceContext, Volume]:
    """A computed cycle's result, source context and reference CT (for scaling and courses)."""
    stored = load_stored_result(data_dir / result_dir)
    if not isinstance(stored.result, CycleResult):
        raise PipelineError(
            f"{result_dir} holds a course result where a cycle's result was expected; "
            "reprocess the patient."
        )
    return stored.result, stored.source, stored.reference_ct


# -- writing ------------------------------------------------------------------------
def _write_objects(spec: JobSpec, datasets: Sequence[Dataset]) -> tuple[ResultObject, ...]:
    folder = spec.result_dir
    folder.mkdir(parents=True, exist_ok=True)
    # Every object is encoded (and so validated, PS3.5) before any is written:
    # an invalid one fails the job without leaving the others of the set behind.
    encoded = [encode(ds) for ds in datasets]
    objects = []
    for ds, data in zip(datasets, encoded, strict=True):
        name = f"{ds.Modality}.dcm"
        write_durably(folder / name, data)
        objects.append(
            ResultObject(
                path=f"{spec.result_folder}/{name}",
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                modality=str(ds.Modality),
                description=str(ds.get("SeriesDescription", "")),
            )
        )
    return tuple(objects)


def _store_result(
    spec: JobSpec, result: CycleResult | CourseResult, source: SourceContext, reference_ct: Volume
) -> None:
    write_result(spec.result_dir, result, source, reference_ct)


def _summary(vois: Sequence[Any]) -> tuple[str, ...]:
    return tuple(
        f"{v.name}: {v.mean_gy:.3f} Gy ({v.method.value})"
        + (" [excluded]" if getattr(v, "excluded", False) else "")
        for v in vois
    )


# -- cycle and course jobs ----------------------------------------------------------
def _reference_cycle(spec: JobSpec) -> CycleResult | None:
    job = spec.cycle
    assert job is not None
    if job.multi_time_point or job.reference_result is None:
        return None
    result, _, _ = load_result(Path(spec.data_dir), job.reference_result)
    return result


def run_cycle(spec: JobSpec) -> JobOutcome:
    """Compute one cycle and write its RT Dose, SR and PDF."""
    job = spec.cycle
    assert job is not None
    read = read_cycle(spec)
    settings = build_engine_settings(spec.settings)
    if job.multi_time_point:
        result = compute_multi_time_point_cycle(read.inputs, settings)
    else:
        result = compute_single_time_point_cycle(read.inputs, settings, _reference_cycle(spec))
    if read.notes:
        result = _with_warnings(result, read.notes)
    hold_if_implausible(result, spec.settings)
    identity = ResultIdentity(
        ResultKind.CYCLE, spec.version, datetime.fromisoformat(spec.created_at),
        cycle_number=job.cycle_number,
    )
    datasets = _cycle_objects(result, read, identity)
    _store_result(spec, result, read.source, read.inputs.reference.ct)
    objects = _write_objects(spec, datasets)
    logger.info("Job %d: cycle %d %s written (%d objects)", spec.job_id, job.cycle_number,
                identity.label, len(objects))
    return JobOutcome(objects, spec.result_folder, _summary(result.vois))


def hold_if_implausible(result: CycleResult, settings: Settings) -> None:
    """Refuse to write (and so to send) a cycle whose doses no patient can have.

    Raises
    ------
    ImplausibleResultError
        A VOI's mean dose per administered activity exceeds the configured
        bound, or is not a dose at all (see :mod:`theranode.dosimetry.plausibility`).
    """
    limits = PlausibilityLimits(
        settings.dosimetry.max_organ_gy_per_gbq, settings.dosimetry.max_lesion_gy_per_gbq
    )
    included = [v for v in result.vois if not v.excluded]
    reasons = implausible_doses(included, result.administered_activity_mbq, limits)
    if not reasons:
        return
    raise ImplausibleResultError(
        f"Held, not sent: the doses of cycle {result.cycle_number} are outside physical "
        f"plausibility ({'; '.join(reasons)}). A SPECT read in the wrong units or with a "
        "wrong calibration does this: check its Real World Value Mapping, Units, "
        "RescaleSlope or camera sensitivity and the administered activity "
        "(RadionuclideTotalDose), then resend or reprocess. If the doses are real, raise "
        "[dosimetry] max_organ_gy_per_gbq / max_lesion_gy_per_gbq and run theranode "
        "reprocess for this patient."
    )


def _with_warnings(result: CycleResult, notes: Sequence[str]) -> CycleResult:
    return replace(result, warnings=(*result.warnings, *notes))


def dvh_masks(result: CycleResult, rois: Sequence[RoiContours]) -> dict[str, Any]:
    """The masks the DVHs are taken in: those the map was normalised in.

    The engine's VOI masks on the dose grid (:attr:`CycleResult.map_vois`)
    are the voxels each reported mean averages over, so the DVHs' mean doses
    agree with the SR. Rasterising the contours afresh on the coarser dose
    grid gave other voxels (organs −6 … +2.5 %, small lesions far more).
    A result without them (computed without a voxel-wise map) falls back to
    the contours on the dose grid.
    """
    if result.map_vois:
        return {v.name: v.mask for v in result.map_vois if v.mask.any()}
    assert result.dose_map is not None
    names = {v.name for v in result.vois}
    masks = {r.name: roi_mask(r, result.dose_map) for r in rois if r.name in names}
    return {k: m for k, m in masks.items() if m.array.any()}


def _cycle_objects(
    result: CycleResult, read: _ReadCycle, identity: ResultIdentity
) -> list[Dataset]:
    dvhs = {}
    if result.dose_map is not None:
        dvhs = dvhs_from_masks(result.dose_map, dvh_masks(result, read.rois))
    datasets: list[Dataset] = []
    if result.dose_map is not None:
        datasets.append(cycle_rt_dose(result, read.source, identity, dvhs=dvhs))
    datasets.append(write_cycle_sr(result, read.source, identity))
    datasets.append(write_cycle_pdf(result, read.source, identity, dvhs=dvhs))
    return datasets


def run_course(spec: JobSpec) -> JobOutcome:
    """Sum the computed cycles of a course and write its RT Dose, SR and PDF."""
    job = spec.course
    assert job is not None
    data_dir = Path(spec.data_dir)
    loaded = [load_result(data_dir, folder) for folder in job.cycle_results]
    cycles = [r for r, _, _ in loaded]
    course: CourseResult = compute_course(
        cycles, [ct for _, _, ct in loaded], planned_cycles=spec.settings.protocol.planned_cycles
    )
    source = course_source_context([s for _, s, _ in loaded])
    identity = ResultIdentity(
        ResultKind.COURSE, spec.version, datetime.fromisoformat(spec.created_at)
    )
    datasets: list[Dataset] = []
    if course.course_map is not None:
        datasets.append(course_rt_dose(course, source, identity))
    datasets.append(write_course_sr(course, source, identity))
    datasets.append(write_course_pdf(course, source, identity))
    _store_result(spec, course, source, loaded[0][2])
    objects = _write_objects(spec, datasets)
    summary = tuple(f"{c.name}: total {c.total_gy:.3f} Gy" for c in course.cumulative)
    logger.info("Job %d: %s written (%d objects)", spec.job_id, identity.label, len(objects))
    return JobOutcome(objects, spec.result_folder, (*summary, *course.flags))


def run_job(spec: JobSpec) -> JobOutcome:
    """Run one job (in a worker process); errors propagate with their message."""
    if spec.payload_error is not None:
        raise PipelineError(spec.payload_error)
    if spec.kind is JobKind.CYCLE:
        return run_cycle(spec)
    return run_course(spec)
