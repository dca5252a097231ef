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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from theranode.config.schema import Settings
from theranode.dicomio.course_report import write_course_pdf
from theranode.dicomio.ct import read_ct_series
from theranode.dicomio.dvh import dvhs_from_masks
from theranode.dicomio.errors import MissingAttributeError
from theranode.dicomio.nm import read_spect
from theranode.dicomio.part10 import encode
from theranode.dicomio.pdf_report import PaperSize, write_cycle_pdf
from theranode.dicomio.report_figures import RegisteredCt, ReportImages
from theranode.dicomio.rrd_sr import (
    RRD_SR_STORAGE,
    Administration,
    administration_from_headers,
    write_rrd_sr,
)
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
    register_time_points,
)
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import CourseResult, CycleResult
from theranode.dosimetry.voi_names import classify_roi
from theranode.dosimetry.volume import Volume
from theranode.service.errors import PipelineError
from theranode.service.jobs.checks import (
    administered_activity,
    check_plausible_ct,
    check_plausible_spect,
    frame_mismatch_note,
    header_activity_mbq,
    hold_if_implausible,
)
from theranode.service.jobs.engine_settings import (
    build_engine_settings,
    course_limits,
    kidney_bed_parameters,
)
from theranode.service.jobs.results import load_stored_result, write_result
from theranode.service.jobs.spec import (
    JobKind,
    JobOutcome,
    JobSpec,
    ResultObject,
    TimePointInput,
)
from theranode.service.receive.archive import write_durably
from theranode.service.receive.calibration import counts_calibration, spect_fwhm_mm

logger = logging.getLogger(__name__)



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
    administration: Administration


def _spect(datasets: list[Dataset], settings: Settings) -> Any:
    calibration = counts_calibration(datasets[0], settings.calibration)
    return read_spect(datasets if len(datasets) > 1 else datasets[0], calibration)


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
    fwhm_mm = spect_fwhm_mm(spect_ds[0], settings.calibration)
    images = TimePointImages(elapsed_h, ct, spect.volume, spect_fwhm_mm=fwhm_mm)
    return images, ct_ds, spect_ds


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
    activity_mbq, activity_notes = administered_activity(header_activities)
    notes = [*frame_notes, *activity_notes, *notes]
    inputs = CycleInputs(job.cycle_number, tuple(images), vois, activity_mbq)
    source = source_context_from_datasets(
        ct_sets[0],
        structure_set=structure_set,
        source_images=[*spect_sets, *(ds for cts in ct_sets[1:] for ds in cts)],
    )
    administration = administration_from_headers(spect_sets, injection)
    return _ReadCycle(inputs, source, rois, notes, administration)


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
        name = _file_name(ds)
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


#: File names of the result objects that are not named by their modality
#: (the dose-registry SR would otherwise take the TID 1500 report's ``SR.dcm``).
FILE_NAMES = {RRD_SR_STORAGE: "RRDSR.dcm"}


def _file_name(ds: Dataset) -> str:
    return FILE_NAMES.get(str(ds.SOPClassUID), f"{ds.Modality}.dcm")


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
    registrations: tuple[RigidRegistration | None, ...] = ()
    if job.multi_time_point:
        # Registered here rather than inside the engine so the report can show them.
        registrations = register_time_points(read.inputs, settings)
        result = compute_multi_time_point_cycle(read.inputs, settings, registrations)
    else:
        result = compute_single_time_point_cycle(read.inputs, settings, _reference_cycle(spec))
    if read.notes:
        result = _with_warnings(result, read.notes)
    hold_if_implausible(result, spec.settings)
    identity = ResultIdentity(
        ResultKind.CYCLE, spec.version, datetime.fromisoformat(spec.created_at),
        cycle_number=job.cycle_number,
    )
    datasets = _cycle_objects(result, read, identity, spec.settings, registrations)
    write_result(spec.result_dir, result, read.source, read.inputs.reference.ct)
    objects = _write_objects(spec, datasets)
    logger.info("Job %d: cycle %d %s written (%d objects)", spec.job_id, job.cycle_number,
                identity.label, len(objects))
    return JobOutcome(objects, spec.result_folder, _summary(result.vois))


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


def report_images(
    inputs: CycleInputs, registrations: Sequence[RigidRegistration | None]
) -> ReportImages:
    """The reference CT and each later CT with its registration, for the cycle PDF."""
    ordered = inputs.ordered()
    registered = tuple(
        RegisteredCt(tp.elapsed_h, tp.ct, reg)
        for tp, reg in zip(ordered, registrations, strict=False)
        if reg is not None
    )
    return ReportImages(ordered[0].ct, registered)


def _cycle_objects(
    result: CycleResult,
    read: _ReadCycle,
    identity: ResultIdentity,
    settings: Settings,
    registrations: Sequence[RigidRegistration | None] = (),
) -> list[Dataset]:
    dvhs = {}
    masks: dict[str, Any] = {}
    if result.dose_map is not None:
        masks = dvh_masks(result, read.rois)
        dvhs = dvhs_from_masks(result.dose_map, masks)
    datasets: list[Dataset] = []
    if result.dose_map is not None:
        datasets.append(cycle_rt_dose(result, read.source, identity, dvhs=dvhs))
    datasets.append(write_cycle_sr(result, read.source, identity))
    if settings.reports.radiopharmaceutical_dose_sr:
        datasets.extend(_dose_registry_sr(result, read, identity))
    datasets.append(write_cycle_pdf(
        result, read.source, identity, dvhs=dvhs, masks=masks,
        images=report_images(read.inputs, registrations), limits=course_limits(settings),
        paper=PaperSize(settings.reports.paper_size),
    ))
    return datasets


def _dose_registry_sr(
    result: CycleResult, read: _ReadCycle, identity: ResultIdentity
) -> list[Dataset]:
    """The optional Radiopharmaceutical Radiation Dose SR, or none (logged) when it cannot be.

    Its administration needs the administered activity; a cycle whose SPECT
    headers state none still gets its dose report, SR and PDF (which say so).
    """
    try:
        return [write_rrd_sr(result, read.source, identity, administration=read.administration)]
    except MissingAttributeError as exc:
        logger.warning("%s: no Radiopharmaceutical Radiation Dose SR: %s", identity.label, exc)
        return []


def run_course(spec: JobSpec) -> JobOutcome:
    """Sum the computed cycles of a course and write its RT Dose, SR and PDF."""
    job = spec.course
    assert job is not None
    data_dir = Path(spec.data_dir)
    loaded = [load_result(data_dir, folder) for folder in job.cycle_results]
    cycles = [r for r, _, _ in loaded]
    course: CourseResult = compute_course(
        cycles,
        [ct for _, _, ct in loaded],
        planned_cycles=spec.settings.protocol.planned_cycles,
        limits=course_limits(spec.settings),
    )
    source = course_source_context([s for _, s, _ in loaded])
    identity = ResultIdentity(
        ResultKind.COURSE, spec.version, datetime.fromisoformat(spec.created_at)
    )
    datasets: list[Dataset] = []
    if course.course_map is not None:
        datasets.append(course_rt_dose(course, source, identity))
    datasets.append(write_course_sr(course, source, identity))
    datasets.append(
        write_course_pdf(
            course,
            source,
            identity,
            limits=course_limits(spec.settings),
            bed=kidney_bed_parameters(spec.settings),
            paper=PaperSize(spec.settings.reports.paper_size),
        )
    )
    write_result(spec.result_dir, course, source, loaded[0][2])
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
