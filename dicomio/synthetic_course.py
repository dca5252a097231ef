"""Write the synthetic Lu-177 patient course as DICOM, with its truth.

:func:`write_course` renders the analytic phantom of
:mod:`theranode.dosimetry.synthetic.phantom` at every time point of a course and writes, per
time point, one study holding a CT series (one file per slice) and one
reconstructed SPECT (NM multi-frame in Bq/mL or in counts, or per-slice PT
in BQML) sharing a Frame of Reference; per cycle, an RT Structure Set on the
cycle's first CT; and ``truth.json`` with the analytic answer.

Layout of ``out_dir``::

    truth.json
    c1_t4h/CT/CT_0001.dcm ...      (one study per time point)
    c1_t4h/SPECT/NM.dcm            (or SPECT/PT_0001.dcm ... for PT)
    c1_t4h/RTSTRUCT.dcm            (first time point of each cycle)

All UIDs are derived from the seed: the same seed gives the same objects.

References
----------
DICOM PS3.3 A.3 (CT Image IOD), A.5 (NM Image IOD), A.21 (PET Image IOD),
A.19 (RT Structure Set IOD); Hebert et al. J Nucl Med 2024 (protocol).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from theranode.dicomio.rtstruct import RoiDefinition, build_rtstruct
from theranode.dicomio.valuerep import format_ds
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.results import VoiKind
from theranode.dosimetry.synthetic.phantom import (
    CountingStatistics,
    CourseSpec,
    ImageGrid,
    TimePoint,
    Voxelisation,
    analytic_truth,
    clean_margin_mm,
    clean_margin_model,
    concentration_table_bq_per_ml,
    course_time_points,
    default_course,
    expected_counts,
    hu_table,
    poisson_counts,
    spect_blur,
    voi_contours,
    voxelise,
    with_subvoxel_motion,
)
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NM_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
#: Lu-177 (SNOMED CT), PS3.16 CID 18.
LU177_CODE = ("447553000", "SCT", "^177^Lutetium")
#: Offset added to HU before storing CT pixels unsigned (intercept −1024).
CT_INTERCEPT = -1024
#: Largest stored value used for scaled SPECT pixels.
SPECT_MAX_STORED = 60000
PT_MAX_STORED = 32000
#: Default camera: 10 cps/MBq (Lu-177, MEGP, 208 keV ± 10 %), 60 views × 20 s.
DEFAULT_COUNTING = CountingStatistics(cps_per_mbq=10.0, duration_s=1200.0)
#: Namespace of the phantom's name-based UUIDs.
PHANTOM_UID_NAMESPACE = uuid.uuid5(
    uuid.NAMESPACE_URL, "urn:theranode:synthetic-phantom"
)
#: ROI display colours, cycled.
COLORS = (
    (220, 120, 40),
    (255, 200, 0),
    (0, 160, 255),
    (160, 0, 200),
    (0, 200, 80),
    (255, 0, 0),
)


class SpectStorage(str, Enum):
    """How the SPECT of each time point is encoded."""

    NM_BQML = "nm-bqml"  # NM multi-frame, Real World Value Mapping in Bq/mL
    NM_COUNTS = "nm-counts"  # NM multi-frame, counts (needs the stated calibration)
    PT_BQML = "pt-bqml"  # classic per-slice PT, Units BQML


@dataclass(frozen=True)
class PhantomGrids:
    """CT and SPECT grids (centred on the scanner isocentre)."""

    ct: ImageGrid
    spect: ImageGrid

    @classmethod
    def small(cls) -> PhantomGrids:
        """Test size: CT 96×96×40 at 4 mm, SPECT 48×48×20 at 8 mm (z ±78 mm)."""
        return cls(
            ImageGrid.centred((96, 96, 40), (4.0, 4.0, 4.0)),
            ImageGrid.centred((48, 48, 20), (8.0, 8.0, 8.0)),
        )

    @classmethod
    def clinical(cls) -> PhantomGrids:
        """Benchmark size: CT 512×512×200 (0.977×0.977×2.5 mm), SPECT 128×128×100 at 4.42 mm."""
        return cls(
            ImageGrid.centred((512, 512, 200), (0.977, 0.977, 2.5)),
            ImageGrid.centred((128, 128, 100), (4.42, 4.42, 4.42)),
        )


def clean_margin_course(grids: PhantomGrids | None = None) -> CourseSpec:
    """The four-cycle course of the clean-margin patient for ``grids``.

    Every VOI contour lies :func:`theranode.dosimetry.synthetic.phantom.clean_margin_mm` inside
    uniform activity (:func:`theranode.dosimetry.synthetic.phantom.clean_margin_model`), the
    patient moves by less than one SPECT voxel between scans
    (:func:`theranode.dosimetry.synthetic.phantom.with_subvoxel_motion`). Cycles as
    :func:`theranode.dosimetry.synthetic.phantom.default_course`: 1–2 at 4, 24, 72, 192 h, cycle 3
    once at 26 h, cycle 4 once at 24 h; every VOI keeps its effective
    half-life in every cycle (lesion uptake falls), so the paper's
    single-time-point scaling from cycle 2 is exact for cycles 3–4 — the
    course tests the pipeline, not the scaling's validity in patients.
    """
    grids = grids or PhantomGrids.small()
    margin = clean_margin_mm(grids.ct.spacing_mm, grids.spect.spacing_mm)
    course = default_course(clean_margin_model(margin))
    return with_subvoxel_motion(course, min(grids.spect.spacing_mm))


@dataclass(frozen=True)
class CourseWriteSpec:
    """What :func:`write_course` writes.

    Parameters
    ----------
    counting:
        Camera model: the calibration stated for :attr:`SpectStorage.NM_COUNTS`
        (``cps_per_mbq``) and the acquisition duration written in every SPECT
        (views × per-view time); also drives the Poisson noise.
    cycles:
        Cycle numbers to write (``None``: all), to keep tests small.
    """

    course: CourseSpec = field(default_factory=default_course)
    grids: PhantomGrids = field(default_factory=PhantomGrids.small)
    spect_storage: SpectStorage = SpectStorage.NM_BQML
    spect_fwhm_mm: float = 0.0
    poisson_noise: bool = False
    counting: CountingStatistics = DEFAULT_COUNTING
    views: int = 60
    supersampling: int = 3
    patient_id: str = "PHANTOM-LU177-001"
    patient_name: str = "Phantom^Lutetium"
    cycles: tuple[int, ...] | None = None
    write_rtstruct: bool = True


@dataclass(frozen=True)
class TimePointFiles:
    """The files and identifiers of one written time point."""

    time_point: TimePoint
    study_instance_uid: str
    frame_of_reference_uid: str
    ct_series_uid: str
    ct_files: tuple[Path, ...]
    spect_series_uid: str
    spect_files: tuple[Path, ...]
    rtstruct_file: Path | None


@dataclass(frozen=True)
class CourseManifest:
    """What :func:`write_course` wrote."""

    out_dir: Path
    patient_id: str
    truth_path: Path
    truth: dict[str, Any]
    time_points: tuple[TimePointFiles, ...]
    spec: CourseWriteSpec

    def time_point(self, label: str) -> TimePointFiles:
        """The time point labelled ``label`` (e.g. ``"c1_t24h"``)."""
        for tp in self.time_points:
            if tp.time_point.label == label:
                return tp
        raise KeyError(label)


class _Uids:
    """Deterministic UIDs from the seed and a role name (PS3.5 B.2, UUID v5 under 2.25)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, *role: object) -> str:
        name = ":".join(str(r) for r in (self.seed, *role))
        return f"2.25.{uuid.uuid5(PHANTOM_UID_NAMESPACE, name).int}"


def write_course(
    out_dir: Path, spec: CourseWriteSpec | None = None, seed: int = 0
) -> CourseManifest:
    """Render and write the course; return what was written.

    Parameters
    ----------
    out_dir:
        Created if needed; existing files of the same names are overwritten.
    spec:
        What to write (default: the 4-cycle default course on small grids).
    seed:
        Seeds the repositioning transforms, the noise and every UID.
    """
    spec = spec or CourseWriteSpec()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uids = _Uids(seed)
    rng = np.random.default_rng(seed)
    points = [
        tp
        for tp in course_time_points(spec.course, seed)
        if spec.cycles is None or tp.cycle_number in spec.cycles
    ]
    truth = analytic_truth(spec.course, points)
    written = [_write_time_point(out_dir, spec, tp, uids, rng, truth) for tp in points]
    truth["patient_id"] = spec.patient_id
    truth["spect_storage"] = spec.spect_storage.value
    truth["spect_fwhm_mm"] = spec.spect_fwhm_mm
    truth["poisson_noise"] = spec.poisson_noise
    truth["counts_calibration"] = {
        "cps_per_mbq": spec.counting.cps_per_mbq,
        "acquisition_duration_s": spec.counting.duration_s,
        "decay_during_acquisition_simulated": True,
    }
    truth["grids"] = {
        "ct": _grid_truth(spec.grids.ct),
        "spect": _grid_truth(spec.grids.spect),
    }
    truth["roi_interpreted_types"] = {
        v.name: _interpreted_type(v.kind) for v in spec.course.model.vois
    }
    truth_path = out_dir / "truth.json"
    truth_path.write_text(json.dumps(truth, indent=2, sort_keys=True))
    logger.info("Wrote phantom course of %d time points to %s", len(written), out_dir)
    return CourseManifest(
        out_dir, spec.patient_id, truth_path, truth, tuple(written), spec
    )


def _grid_truth(grid: ImageGrid) -> dict[str, Any]:
    return {
        "shape_zyx": list(grid.shape_zyx),
        "spacing_mm": list(grid.spacing_mm),
        "origin_mm": list(grid.origin_mm),
    }


def _interpreted_type(kind: VoiKind) -> str:
    return "GTV" if kind is VoiKind.LESION else "ORGAN"


def _write_time_point(
    out_dir: Path,
    spec: CourseWriteSpec,
    tp: TimePoint,
    uids: _Uids,
    rng: np.random.Generator,
    truth: dict[str, Any],
) -> TimePointFiles:
    model = spec.course.model
    folder = out_dir / tp.label
    context = _StudyContext(spec, tp, uids)
    ct_vox = voxelise(model, spec.grids.ct, tp.transform, spec.supersampling)
    ct_datasets = _ct_datasets(context, ct_vox.render(hu_table(model)), spec.grids.ct)
    ct_files = _save_all(folder / "CT", "CT", ct_datasets)
    spect_vox = voxelise(model, spec.grids.spect, tp.transform, spec.supersampling)
    spect_datasets = _spect_datasets(context, spect_vox, rng)
    spect_files = _save_all(
        folder / "SPECT", spect_datasets[0].Modality, spect_datasets
    )
    rtstruct_file = None
    if spec.write_rtstruct and tp.index == 0:
        rtstruct = _rtstruct(context, ct_datasets)
        rtstruct_file = folder / "RTSTRUCT.dcm"
        _save(rtstruct, rtstruct_file)
    entry = next(e for e in truth["time_points"] if e["label"] == tp.label)
    entry.update(
        _time_point_record(
            context, ct_vox, ct_files, spect_files, rtstruct_file, out_dir
        )
    )
    return TimePointFiles(
        tp,
        context.study_uid,
        context.frame_uid,
        context.ct_series_uid,
        ct_files,
        context.spect_series_uid,
        spect_files,
        rtstruct_file,
    )


def _time_point_record(
    context: _StudyContext,
    ct_vox: Voxelisation,
    ct_files: tuple[Path, ...],
    spect_files: tuple[Path, ...],
    rtstruct_file: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    model = context.spec.course.model
    voxel_ml = context.spec.grids.ct.voxel_volume_ml
    return {
        "study_instance_uid": context.study_uid,
        "frame_of_reference_uid": context.frame_uid,
        "ct_series_instance_uid": context.ct_series_uid,
        "spect_series_instance_uid": context.spect_series_uid,
        "rtstruct_sop_instance_uid": context.uids(context.tp.label, "rtstruct")
        if rtstruct_file
        else None,
        "spect_acquisition_start": context.spect_start.isoformat(),
        "ct_acquisition_datetime": context.ct_start.isoformat(),
        "files": {
            "ct": [str(p.relative_to(out_dir)) for p in ct_files],
            "spect": [str(p.relative_to(out_dir)) for p in spect_files],
            "rtstruct": str(rtstruct_file.relative_to(out_dir))
            if rtstruct_file
            else None,
        },
        "ct_voxelised_volume_ml": {
            v.name: {
                "partial_volume": float(ct_vox.fraction(model.voi_labels(v.name)).sum())
                * voxel_ml,
                "voxel_centres": float(
                    ct_vox.centre_mask(model.voi_labels(v.name)).sum()
                )
                * voxel_ml,
            }
            for v in model.vois
        },
    }


# -- common modules -----------------------------------------------------------
class _StudyContext:
    """Identity and timing shared by the objects of one time point."""

    def __init__(self, spec: CourseWriteSpec, tp: TimePoint, uids: _Uids) -> None:
        self.spec = spec
        self.tp = tp
        self.uids = uids
        self.study_uid = uids(tp.label, "study")
        self.frame_uid = uids(tp.label, "frame")
        self.ct_series_uid = uids(tp.label, "ct-series")
        self.spect_series_uid = uids(tp.label, "spect-series")
        self.spect_start = tp.acquisition_datetime
        self.ct_start = tp.acquisition_datetime + timedelta(
            seconds=spec.counting.duration_s + 120
        )

    def base(
        self,
        sop_class: str,
        sop_uid: str,
        modality: str,
        series_uid: str,
        series_number: int,
    ) -> Dataset:
        ds = Dataset()
        ds.file_meta = _file_meta(sop_class, sop_uid)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.PatientName = self.spec.patient_name
        ds.PatientID = self.spec.patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = self.study_uid
        ds.StudyDate = self.spect_start.strftime("%Y%m%d")
        ds.StudyTime = self.spect_start.strftime("%H%M%S")
        ds.StudyID = f"C{self.tp.cycle_number}T{self.tp.index + 1}"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = f"Lu-177 DOTATATE cycle {self.tp.cycle_number} SPECT/CT"
        ds.Modality = modality
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.Manufacturer = "theranode phantom"
        ds.FrameOfReferenceUID = self.frame_uid
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "ABDOMEN"
        return ds


def _file_meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _save_all(
    folder: Path, prefix: str, datasets: Sequence[Dataset]
) -> tuple[Path, ...]:
    if len(datasets) == 1:
        paths = [folder / f"{prefix}.dcm"]
    else:
        paths = [folder / f"{prefix}_{i + 1:04d}.dcm" for i in range(len(datasets))]
    for ds, path in zip(datasets, paths):
        _save(ds, path)
    return tuple(paths)


def _dt(moment: datetime) -> tuple[str, str]:
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


# -- CT ---------------------------------------------------------------------------
def _ct_datasets(
    context: _StudyContext, hu: npt.NDArray[np.float32], grid: ImageGrid
) -> list[Dataset]:
    stored = np.clip(np.rint(hu) - CT_INTERCEPT, 0, 4095).astype(np.uint16)
    day, tod = _dt(context.ct_start)
    out = []
    for k in range(grid.shape_zyx[0]):
        sop = context.uids(context.tp.label, "ct", k)
        ds = context.base(CT_IMAGE_STORAGE, sop, "CT", context.ct_series_uid, 2)
        ds.SeriesDescription = "CT low dose"
        ds.PatientPosition = "HFS"
        ds.SeriesDate, ds.SeriesTime = day, tod
        ds.AcquisitionDate, ds.AcquisitionTime = day, tod
        ds.ContentDate, ds.ContentTime = day, tod
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1
        ds.AcquisitionNumber = 1
        ds.KVP = "120"
        position = grid.index_to_patient(np.array([0.0, 0.0, float(k)]))
        _image_plane(ds, grid, position)
        ds.SliceThickness = format_ds(grid.spacing_mm[2])
        ds.SliceLocation = format_ds(round(float(position[2]), 6))
        _pixels(ds, stored[k], bits_stored=12, signed=False)
        ds.RescaleIntercept = str(CT_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        out.append(ds)
    return out


def _image_plane(
    ds: Dataset, grid: ImageGrid, position: npt.NDArray[np.float64]
) -> None:
    direction = np.asarray(grid.direction).reshape(3, 3)
    ds.ImagePositionPatient = [format_ds(round(float(v), 6)) for v in position]
    ds.ImageOrientationPatient = [
        format_ds(round(float(v), 9)) for v in (*direction[:, 0], *direction[:, 1])
    ]
    ds.PixelSpacing = [format_ds(grid.spacing_mm[1]), format_ds(grid.spacing_mm[0])]


def _pixels(
    ds: Dataset, array: npt.NDArray[Any], bits_stored: int, signed: bool
) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(array.shape[-2]), int(array.shape[-1])
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(
        array.astype(np.int16 if signed else np.uint16)
    ).tobytes()


# -- SPECT --------------------------------------------------------------------------
def _spect_activity(
    context: _StudyContext, vox: Voxelisation, rng: np.random.Generator
) -> Volume:
    """Bq/mL (or counts for NM_COUNTS) at acquisition start, blurred and noisy as asked."""
    spec = context.spec
    model = spec.course.model
    cycle = spec.course.cycle(context.tp.cycle_number)
    grid = spec.grids.spect
    activity = grid.volume(
        vox.render(concentration_table_bq_per_ml(model, cycle, context.tp.elapsed_h)),
        "Bq/mL",
    )
    activity = spect_blur(activity, spec.spect_fwhm_mm)
    if not spec.poisson_noise and spec.spect_storage is not SpectStorage.NM_COUNTS:
        return activity
    counts = expected_counts(activity, spec.counting, model.radionuclide)
    if spec.poisson_noise:
        counts = poisson_counts(counts, rng)
    if spec.spect_storage is SpectStorage.NM_COUNTS:
        return counts
    per = counts.array.dtype.type(
        spec.counting.expected_counts_per_bq_per_ml(
            grid.voxel_volume_ml, nuclear_data(model.radionuclide).decay_constant_per_h
        )
    )
    return activity.with_array((counts.array / per).astype(np.float32))


def _spect_datasets(
    context: _StudyContext, vox: Voxelisation, rng: np.random.Generator
) -> list[Dataset]:
    values = _spect_activity(context, vox, rng)
    if context.spec.spect_storage is SpectStorage.PT_BQML:
        return _pt_datasets(context, values)
    return [_nm_dataset(context, values)]


def _radiopharmaceutical(context: _StudyContext, dose_value: float) -> Dataset:
    cycle = context.spec.course.cycle(context.tp.cycle_number)
    item = Dataset()
    item.Radiopharmaceutical = "Lu-177 DOTATATE"
    item.RadiopharmaceuticalRoute = "Intravenous"
    item.RadiopharmaceuticalStartTime = cycle.injection_datetime.strftime("%H%M%S")
    item.RadiopharmaceuticalStartDateTime = cycle.injection_datetime.strftime(
        "%Y%m%d%H%M%S"
    )
    item.RadionuclideTotalDose = format_ds(dose_value)
    half_life_s = (
        nuclear_data(context.spec.course.model.radionuclide).half_life_h * 3600.0
    )
    item.RadionuclideHalfLife = format_ds(round(half_life_s, 1))
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = LU177_CODE
    item.RadionuclideCodeSequence = DicomSequence([code])
    return item


def _nm_dataset(context: _StudyContext, values: Volume) -> Dataset:
    spec = context.spec
    grid = spec.grids.spect
    cycle = spec.course.cycle(context.tp.cycle_number)
    sop = context.uids(context.tp.label, "nm")
    ds = context.base(NM_IMAGE_STORAGE, sop, "NM", context.spect_series_uid, 1)
    counts = spec.spect_storage is SpectStorage.NM_COUNTS
    ds.SeriesDescription = (
        "SPECT Lu-177 counts" if counts else "SPECT Lu-177 quantitative Bq/mL"
    )
    day, tod = _dt(context.spect_start)
    ds.SeriesDate, ds.SeriesTime = day, tod
    ds.AcquisitionDate, ds.AcquisitionTime = day, tod
    ds.ContentDate, ds.ContentTime = day, tod
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.PatientOrientationCodeSequence = DicomSequence()
    ds.PatientGantryRelationshipCodeSequence = DicomSequence()
    ds.AcquisitionContextSequence = DicomSequence()
    nz = grid.shape_zyx[0]
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = [pydicom.tag.Tag("SliceVector")]
    ds.SliceVector = list(range(1, nz + 1))
    ds.NumberOfSlices = nz
    ds.NumberOfEnergyWindows = 1
    ds.NumberOfDetectors = 1
    ds.NumberOfRotations = 1
    ds.PixelSpacing = [format_ds(grid.spacing_mm[1]), format_ds(grid.spacing_mm[0])]
    ds.SpacingBetweenSlices = format_ds(grid.spacing_mm[2])
    ds.SliceThickness = format_ds(grid.spacing_mm[2])
    ds.CountsAccumulated = int(max(0.0, float(values.array.sum()))) if counts else 0
    ds.ReconstructionDiameter = format_ds(grid.spacing_mm[0] * grid.shape_zyx[2])
    ds.ConvolutionKernel = "OSEM 4i8s"
    ds.CorrectedImage = ["ATTN", "SCAT", "DECY"] if not counts else ["ATTN", "SCAT"]
    ds.EnergyWindowInformationSequence = DicomSequence([_energy_window()])
    ds.RadiopharmaceuticalInformationSequence = DicomSequence(
        [_radiopharmaceutical(context, cycle.injected_activity_mbq)]
    )
    ds.DetectorInformationSequence = DicomSequence([_detector(grid)])
    ds.RotationInformationSequence = DicomSequence([_rotation(spec)])
    ds.TypeOfDetectorMotion = "STEP AND SHOOT"
    _nm_pixels(ds, values, counts)
    return ds


def _energy_window() -> Dataset:
    window = Dataset()
    window.EnergyWindowName = "Lu177 208keV"
    rng = Dataset()
    rng.EnergyWindowLowerLimit = "187.2"
    rng.EnergyWindowUpperLimit = "228.8"
    window.EnergyWindowRangeSequence = DicomSequence([rng])
    return window


def _detector(grid: ImageGrid) -> Dataset:
    detector = Dataset()
    direction = np.asarray(grid.direction).reshape(3, 3)
    detector.ImagePositionPatient = [
        format_ds(round(float(v), 6)) for v in grid.origin_mm
    ]
    detector.ImageOrientationPatient = [
        format_ds(round(float(v), 9)) for v in (*direction[:, 0], *direction[:, 1])
    ]
    detector.CollimatorGridName = "MEGP"
    detector.CollimatorType = "PARA"
    detector.FocalDistance = ["0"]
    detector.XFocusCenter = ["0"]
    detector.YFocusCenter = ["0"]
    return detector


def _rotation(spec: CourseWriteSpec) -> Dataset:
    rotation = Dataset()
    rotation.StartAngle = "0"
    rotation.AngularStep = format_ds(360.0 / spec.views)
    rotation.RotationDirection = "CW"
    rotation.ScanArc = "360"
    rotation.ActualFrameDuration = round(spec.counting.duration_s * 1000.0 / spec.views)
    rotation.NumberOfFramesInRotation = spec.views
    return rotation


def _nm_pixels(ds: Dataset, values: Volume, counts: bool) -> None:
    data = values.array.astype(np.float64)
    if counts:
        stored = np.rint(data)
        if stored.max() > 65535:
            raise ValueError(
                f"Counts up to {stored.max():.0f} do not fit 16-bit NM pixels; lower the "
                "calibration factor or the acquisition duration of the phantom."
            )
        _pixels(ds, stored, bits_stored=16, signed=False)
        return
    slope = max(float(data.max()), 1.0) / SPECT_MAX_STORED
    _pixels(ds, np.rint(np.clip(data, 0, None) / slope), bits_stored=16, signed=False)
    mapping = Dataset()
    mapping.RealWorldValueFirstValueMapped = 0
    mapping.RealWorldValueLastValueMapped = 65535
    mapping.RealWorldValueIntercept = 0.0
    mapping.RealWorldValueSlope = slope
    mapping.LUTExplanation = "Activity concentration"
    mapping.LUTLabel = "BQML"
    unit = Dataset()
    unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = (
        "Bq/mL",
        "UCUM",
        "becquerels per milliliter",
    )
    mapping.MeasurementUnitsCodeSequence = DicomSequence([unit])
    ds.RealWorldValueMappingSequence = DicomSequence([mapping])


def _pt_datasets(context: _StudyContext, values: Volume) -> list[Dataset]:
    spec = context.spec
    grid = spec.grids.spect
    cycle = spec.course.cycle(context.tp.cycle_number)
    day, tod = _dt(context.spect_start)
    nz = grid.shape_zyx[0]
    out = []
    for k in range(nz):
        sop = context.uids(context.tp.label, "pt", k)
        ds = context.base(PET_IMAGE_STORAGE, sop, "PT", context.spect_series_uid, 1)
        ds.SeriesDescription = "SPECT Lu-177 exported as PT (BQML)"
        ds.SeriesDate, ds.SeriesTime = day, tod
        ds.AcquisitionDate, ds.AcquisitionTime = day, tod
        ds.ContentDate, ds.ContentTime = day, tod
        ds.InstanceNumber = k + 1
        ds.ImageIndex = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.Units = "BQML"
        ds.CountsSource = "EMISSION"
        ds.SeriesType = ["STATIC", "IMAGE"]
        ds.NumberOfSlices = nz
        ds.CorrectedImage = ["ATTN", "SCAT", "DECY"]
        ds.DecayCorrection = "START"
        ds.DecayFactor = "1"
        ds.FrameReferenceTime = "0"
        ds.ActualFrameDuration = round(spec.counting.duration_s * 1000.0)
        ds.CollimatorType = ""
        ds.PatientOrientationCodeSequence = DicomSequence()
        ds.PatientGantryRelationshipCodeSequence = DicomSequence()
        ds.RadiopharmaceuticalInformationSequence = DicomSequence(
            [_radiopharmaceutical(context, cycle.injected_activity_mbq * 1e6)]
        )
        position = grid.index_to_patient(np.array([0.0, 0.0, float(k)]))
        _image_plane(ds, grid, position)
        ds.SliceThickness = format_ds(grid.spacing_mm[2])
        _pt_pixels(ds, values.array[k].astype(np.float64))
        out.append(ds)
    return out


def _pt_pixels(ds: Dataset, plane: npt.NDArray[np.float64]) -> None:
    slope_text = format_ds(float(f"{max(float(plane.max()), 1.0) / PT_MAX_STORED:.6g}"))
    stored = np.rint(np.clip(plane, 0, None) / float(slope_text))
    _pixels(ds, stored, bits_stored=16, signed=True)
    ds.RescaleSlope = slope_text
    ds.RescaleIntercept = "0"


# -- RTSTRUCT ------------------------------------------------------------------------
def _rtstruct(context: _StudyContext, ct_datasets: Sequence[Dataset]) -> Dataset:
    model = context.spec.course.model
    z_positions = [float(ds.ImagePositionPatient[2]) for ds in ct_datasets]
    rois = [
        RoiDefinition(
            name=voi.name,
            interpreted_type=_interpreted_type(voi.kind),
            contours=tuple(
                c
                for z in z_positions
                for c in voi_contours(model, voi.name, context.tp.transform, z)
            ),
            color_rgb=COLORS[i % len(COLORS)],
        )
        for i, voi in enumerate(model.vois)
    ]
    created = context.ct_start + timedelta(minutes=30)
    ds = build_rtstruct(
        rois,
        ct_datasets,
        sop_instance_uid=context.uids(context.tp.label, "rtstruct"),
        series_instance_uid=context.uids(context.tp.label, "rtstruct-series"),
        created=created,
        label=f"Cycle {context.tp.cycle_number} VOIs",
    )
    return ds


__all__ = [
    "CourseManifest",
    "CourseWriteSpec",
    "PhantomGrids",
    "SpectStorage",
    "TimePointFiles",
    "clean_margin_course",
    "write_course",
]
