"""Hand-built inputs and result records for the output writers' tests.

Small, seeded, with known values: a reference CT series (real CT image
datasets, tiny), an RTSTRUCT with box contours on the dose planes, a SPECT
instance from another study, dose maps and cycle/course results.

``cycle_result()`` and ``course_result()`` are results as a version before the
uncertainty budget and the partial-volume methods computed them (no budget, no
``partial_volume`` setting); ``partial_volume="paper" | "paper-contrast" |
"gtm"`` gives results of the current engine: every VOI dose, course total and
lesion index with its EANM budget, the method and its SPECT FWHM per time point
in the settings.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from theranode.dicomio.part10 import file_meta
from theranode.dicomio.source import SourceContext, source_context_from_datasets
from theranode.dicomio.uids import ResultIdentity, ResultKind
from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CurvePoint,
    CycleResult,
    DoseMethod,
    DoseUncertainty,
    KineticFit,
    KineticModel,
    LesionIndices,
    Organ,
    RegistrationQuality,
    UncertaintyComponent,
    VoiDose,
    VoiKind,
)
from theranode.dosimetry.volume import Volume

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
LU177_LAMBDA_PHYS_PER_H = math.log(2) / 159.528
CREATED = datetime(2024, 3, 1, 14, 30, 5)

#: A 5 x 6 x 7 dose grid (z, y, x) and the voxel boxes of two VOIs on it.
SHAPE = (5, 6, 7)
LIVER_BOX = (slice(1, 4), slice(1, 5), slice(1, 6))
LESION_BOX = (slice(2, 4), slice(2, 4), slice(2, 4))


def _uid(seed: str) -> str:
    return str(generate_uid(entropy_srcs=[seed]))


def patient(ds: Dataset, name: str = "Doe^Jane") -> None:
    ds.PatientName = name
    ds.PatientID = "TN-0001"
    ds.PatientBirthDate = "19580412"
    ds.PatientSex = "F"


def reference_ct(
    n_slices: int = 3, key: str = "c1", spacing_mm: float = 2.5
) -> list[Dataset]:
    """A tiny axial CT series (real CT image datasets with 4 x 4 pixels)."""
    study, series, frame = (
        _uid(key + "study"),
        _uid(key + "series"),
        _uid(key + "frame"),
    )
    slices = []
    for k in range(n_slices):
        ds = Dataset()
        patient(ds)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CT_STORAGE
        ds.SOPInstanceUID = _uid(f"{key}ct{k}")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
            study,
            series,
            frame,
        )
        ds.Modality = "CT"
        ds.StudyID, ds.AccessionNumber = "42", "ACC42"
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = (
            "20240301",
            "091500",
            "Ref^Doc",
        )
        ds.SeriesNumber, ds.InstanceNumber = 2, k + 1
        ds.ImagePositionPatient = ["-5", "-5", str(k * spacing_mm)]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["2.5", "2.5"]
        ds.SliceThickness = str(spacing_mm)
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
            16,
            16,
            15,
            1,
        )
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.PixelData = np.zeros((4, 4), dtype="<i2").tobytes()
        slices.append(ds)
    return slices


def spect_elsewhere(key: str = "c1") -> Dataset:
    """An NM instance of the 24 h time point (its own study)."""
    ds = Dataset()
    patient(ds)
    ds.SOPClassUID = NM_STORAGE
    ds.SOPInstanceUID = _uid(key + "nm")
    ds.StudyInstanceUID = _uid(key + "nmstudy")
    ds.SeriesInstanceUID = _uid(key + "nmseries")
    ds.Modality = "NM"
    return ds


def structure_set(
    ct: list[Dataset],
    dose: Volume,
    boxes: dict[str, tuple[slice, slice, slice]],
    key: str = "c1",
) -> Dataset:
    """An RTSTRUCT with one box ROI per entry, contoured on every dose plane it covers.

    The contours run along voxel borders (half a voxel outside the centres)
    of an axis-aligned ``dose`` grid, so contour-based tools select exactly
    the voxels of the box.
    """
    ds = Dataset()
    patient(ds)
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = _uid(key + "rtss")
    ds.StudyInstanceUID = ct[0].StudyInstanceUID
    ds.SeriesInstanceUID = _uid(key + "rtssseries")
    ds.Modality = "RTSTRUCT"
    frame = Dataset()
    frame.FrameOfReferenceUID = ct[0].FrameOfReferenceUID
    ds.ReferencedFrameOfReferenceSequence = [frame]
    rois, contours, observations = [], [], []
    for number, (name, box) in enumerate(boxes.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = frame.FrameOfReferenceUID
        rois.append(roi)
        contours.append(_roi_contour(number, dose, box))
        observation = Dataset()
        observation.ObservationNumber = observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN"
        observations.append(observation)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = contours
    ds.RTROIObservationsSequence = observations
    ds.file_meta = file_meta(RTSTRUCT_STORAGE, ds.SOPInstanceUID)
    return ds


def _roi_contour(number: int, dose: Volume, box: tuple[slice, slice, slice]) -> Dataset:
    sx, sy, sz = dose.spacing_mm
    ox, oy, oz = dose.origin_mm
    zs, ys, xs = box
    x0, x1 = ox + (xs.start - 0.5) * sx, ox + (xs.stop - 0.5) * sx
    y0, y1 = oy + (ys.start - 0.5) * sy, oy + (ys.stop - 0.5) * sy
    items = []
    for k in range(zs.start, zs.stop):
        z = oz + k * sz
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        points = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        contour.NumberOfContourPoints = len(points)
        contour.ContourData = [f"{v:g}" for x, y in points for v in (x, y, z)]
        items.append(contour)
    roi_contour = Dataset()
    roi_contour.ReferencedROINumber = number
    roi_contour.ROIDisplayColor = [255, 0, 0]
    roi_contour.ContourSequence = items
    return roi_contour


def dose_map(seed: int = 7, direction: tuple[float, ...] | None = None) -> Volume:
    """A seeded positive dose map (Gy) on the 5 x 6 x 7 grid, hot inside the lesion box."""
    rng = np.random.default_rng(seed)
    array = rng.gamma(4.0, 0.5, size=SHAPE)
    array[LESION_BOX] += 25.0
    kwargs = {} if direction is None else {"direction": direction}
    return Volume(array, (2.5, 2.5, 2.5), (-5.0, -5.0, 0.0), unit="Gy", **kwargs)


def box_mask(box: tuple[slice, slice, slice]) -> npt.NDArray[np.bool_]:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[box] = True
    return mask


def source_for_cycle(
    key: str = "c1", dose: Volume | None = None
) -> tuple[SourceContext, Dataset]:
    """The source context of a cycle and its RTSTRUCT (ROIs 'liver' and 'lesion 1')."""
    ct = reference_ct(n_slices=SHAPE[0], key=key)
    rtss = structure_set(
        ct, dose or dose_map(), {"liver": LIVER_BOX, "lesion 1": LESION_BOX}, key
    )
    source = source_context_from_datasets(
        ct, structure_set=rtss, source_images=[spect_elsewhere(key)]
    )
    return source, rtss


def identity(
    kind: ResultKind = ResultKind.CYCLE, cycle: int | None = 1, version: int = 1
) -> ResultIdentity:
    return ResultIdentity(
        kind=kind,
        version=version,
        created_at=CREATED,
        cycle_number=cycle if kind is ResultKind.CYCLE else None,
        software_version="0.1.0",
    )


def _curve(
    d0: float, lam: float, activity0: float, volume_ml: float
) -> tuple[CurvePoint, ...]:
    return tuple(
        CurvePoint(
            t, d0 * math.exp(-lam * t), activity0 * math.exp(-lam * t), volume_ml
        )
        for t in (4.0, 24.0, 72.0, 192.0)
    )


def _mono_fit(d0: float, lam: float, sd: float) -> KineticFit:
    return KineticFit(
        model=KineticModel.MONOEXPONENTIAL,
        parameters={"initial_value": d0, "lambda_per_h": lam},
        integral=d0 / lam,
        integral_sd=sd,
        effective_half_life_h=math.log(2) / lam,
        aicc=-12.5,
        notes=("fit on 4 time points",),
    )


#: Relative standard uncertainties (k = 1) per VOI of the current engine's results.
BUDGETS: dict[str, dict[UncertaintyComponent, float]] = {
    "liver": {
        UncertaintyComponent.CALIBRATION: 0.05,
        UncertaintyComponent.PARTIAL_VOLUME: 0.012,
        UncertaintyComponent.VOLUME: 0.01,
        UncertaintyComponent.COUNTS: 0.004,
        UncertaintyComponent.REGISTRATION: 0.003,
        UncertaintyComponent.KINETIC_FIT: 0.0,
    },
    "kidney_left": {
        UncertaintyComponent.CALIBRATION: 0.05,
        UncertaintyComponent.PARTIAL_VOLUME: 0.06,
        UncertaintyComponent.VOLUME: 0.04,
        UncertaintyComponent.COUNTS: 0.01,
        UncertaintyComponent.REGISTRATION: 0.02,
    },
    "marrow L2-L4": {
        UncertaintyComponent.CALIBRATION: 0.05,
        UncertaintyComponent.PARTIAL_VOLUME: 0.09,
        UncertaintyComponent.VOLUME: 0.05,
        UncertaintyComponent.COUNTS: 0.03,
    },
    "lesion 1": {
        UncertaintyComponent.CALIBRATION: 0.05,
        UncertaintyComponent.PARTIAL_VOLUME: 0.08,
        UncertaintyComponent.VOLUME: 0.11,
        UncertaintyComponent.COUNTS: 0.02,
        UncertaintyComponent.KINETIC_FIT: 0.03,
    },
    "lesion 2": {
        UncertaintyComponent.CALIBRATION: 0.05,
        UncertaintyComponent.PARTIAL_VOLUME: 0.35,
        UncertaintyComponent.VOLUME: 0.2,
    },
}
BUDGETS["kidney_right"] = BUDGETS["kidney_left"]
#: corrected / uncorrected dose per VOI under GTM (every VOI) and the contrast-aware
#: lesion RC (lesions only).
GTM_FACTORS = {"liver": 1.06, "kidney_left": 1.17, "kidney_right": 1.17,
               "marrow L2-L4": 1.22, "lesion 1": 1.38, "lesion 2": 2.05}
#: The SPECT FWHM (mm) of the four time points (the last from another camera).
FWHM_MM = (10.0, 10.0, 10.0, 12.5)


def budget(dose_gy: float, name: str) -> DoseUncertainty:
    """The EANM budget of VOI ``name`` at ``dose_gy``."""
    return DoseUncertainty(dose_gy, dict(BUDGETS[name]))


def with_partial_volume(result: CycleResult, partial_volume: str) -> CycleResult:
    """``result`` as the current engine states it with method ``partial_volume``."""
    vois = []
    for voi in result.vois:
        factor, rc = 1.0, voi.recovery_coefficient
        if partial_volume != "paper":
            rc = 1.0
            if partial_volume == "gtm" or voi.kind is VoiKind.LESION:
                factor = GTM_FACTORS[voi.name]
        vois.append(dataclasses.replace(
            voi, recovery_coefficient=rc, partial_volume_factor=factor,
            uncertainty=budget(voi.mean_gy, voi.name),
        ))
    fwhm = [None] * len(FWHM_MM) if partial_volume == "paper" else list(FWHM_MM)
    settings = {**result.settings, "partial_volume": partial_volume,
                "time_point_spect_fwhm_mm": fwhm}
    return dataclasses.replace(result, vois=tuple(vois), settings=settings)


def cycle_result(
    cycle: int = 1, dose: Volume | None = None, partial_volume: str | None = None
) -> CycleResult:
    """A multi-time-point cycle with an organ of each laterality, marrow and two lesions.

    Without ``partial_volume``, as an older version computed it (no budgets, no
    partial-volume settings); with it, as the current engine does.
    """
    lam_liver, lam_lesion = math.log(2) / 70.0, math.log(2) / 95.0
    liver = VoiDose(
        name="liver",
        kind=VoiKind.ORGAN,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=1532.25,
        mean_gy=1.0812,
        mean_gy_sd=0.0734,
        min_gy=0.2114,
        max_gy=3.9071,
        d98_gy=0.4012,
        d2_gy=2.8855,
        organ=Organ.LIVER,
        time_integrated_activity_mbq_h=61234.5,
        effective_half_life_h=70.0,
        fit=_mono_fit(1.0812 * lam_liver, lam_liver, 0.0734),
        curve=_curve(1.0812 * lam_liver, lam_liver, 480.0, 1532.25),
    )
    kidney_left = VoiDose(
        name="kidney_left",
        kind=VoiKind.ORGAN,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=160.5,
        mean_gy=2.731,
        mean_gy_sd=0.151,
        organ=Organ.KIDNEY_LEFT,
        notes=("cyst excluded from the VOI",),
    )
    kidney_right = dataclasses.replace(
        kidney_left, name="kidney_right", organ=Organ.KIDNEY_RIGHT, notes=()
    )
    marrow = VoiDose(
        name="marrow L2-L4",
        kind=VoiKind.MARROW,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=42.0,
        mean_gy=0.291,
        mean_gy_sd=0.05,
    )
    lesion = VoiDose(
        name="lesion 1",
        kind=VoiKind.LESION,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=12.25,
        mean_gy=31.99,
        mean_gy_sd=2.4,
        min_gy=12.5,
        max_gy=58.25,
        d98_gy=14.0,
        d2_gy=55.0,
        time_integrated_activity_mbq_h=9876.5,
        effective_half_life_h=95.0,
        fit=_mono_fit(31.99 * lam_lesion, lam_lesion, 2.4),
        curve=_curve(31.99 * lam_lesion, lam_lesion, 60.0, 12.25),
        recovery_coefficient=0.71,
    )
    small = VoiDose(
        name="lesion 2",
        kind=VoiKind.LESION,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=1.4,
        mean_gy=18.0,
        mean_gy_sd=3.0,
        recovery_coefficient=0.48,
        excluded=True,
        exclusion_reason="volume 1.4 mL below the 2 mL minimum",
    )
    result = CycleResult(
        cycle_number=cycle,
        method=DoseMethod.MULTI_TIME_POINT,
        administered_activity_mbq=7400.0,
        time_points_h=(4.0, 24.0, 72.0, 192.0),
        vois=(liver, kidney_left, kidney_right, marrow, lesion, small),
        dose_map=dose if dose is not None else dose_map(),
        registration=(
            RegistrationQuality(
                24.0,
                "mean squares",
                1520.0,
                210.5,
                (1.2, -0.4, 3.1),
                (0.2, 0.0, -0.5),
                True,
            ),
        ),
        warnings=("kidney_left: 2 voxels of gas clipped",),
        settings={
            "kinetics": {"model": "auto", "min_points": 3},
            "density": {"curve": "schneider2000"},
        },
    )
    return result if partial_volume is None else with_partial_volume(result, partial_volume)


def course_result(dose: Volume | None = None, partial_volume: str | None = None) -> CourseResult:
    """A two-cycle course with cumulative doses, lesion indices and flags.

    With ``partial_volume`` (the current engine): both cycles with that method and
    budgets, and the totals and lesion indices with theirs.
    """
    c1 = cycle_result(1, dose, partial_volume)
    c2 = cycle_result(2, dose, partial_volume)
    cumulative = (
        CumulativeDose(
            "liver", VoiKind.ORGAN, 2.2, 0.11, {1: 1.0812, 2: 1.1188}, Organ.LIVER
        ),
        CumulativeDose(
            "kidney_left",
            VoiKind.ORGAN,
            5.46,
            0.2,
            {1: 2.731, 2: 2.729},
            Organ.KIDNEY_LEFT,
        ),
        CumulativeDose("lesion 1", VoiKind.LESION, 57.63, 3.3, {1: 31.99, 2: 25.64}),
    )
    indices = LesionIndices(1, 57.63, 57.63, 57.63)
    if partial_volume is not None:
        cumulative = tuple(
            dataclasses.replace(d, uncertainty=budget(d.total_gy, d.name)) for d in cumulative
        )
        lesion = budget(57.63, "lesion 1")
        indices = LesionIndices(1, 57.63, 57.63, 57.63, lesion, lesion, lesion)
    return CourseResult(
        cycles=(c1, c2),
        cumulative=cumulative,
        lesion_indices=indices,
        flags=("min lesion total AD 57.63 Gy above 52.52 Gy (Hebert 2024)",),
        projected_total_gy={"kidney_left": 10.92, "liver": 4.4},
        planned_cycles=4,
        course_map=dose if dose is not None else dose_map(),
    )
