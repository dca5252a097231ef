"""DICOM SR dose reports: TID 1500 Measurement Reports built with highdicom.

One Comprehensive 3D SR per cycle and one per course. Every VOI is a TID
1501 measurement group whose tracking identifier is the RTSTRUCT ROI name
and whose tracking UID is derived from the patient and that name, so the
same ROI carries the same UID in every cycle's report. Codes come from
SNOMED CT, DICOM and UCUM where a concept exists; the rest use the private
coding scheme ``99THERANODE`` (declared in the Coding Scheme Identification
Sequence and listed in docs/conformance.md).

:func:`read_sr_report` parses a report back into numbers, for round-trip
tests and for anyone reading theranode's results from a PACS.

References
----------
DICOM PS3.16 TID 1500 (Measurement Report), TID 1501 (Measurement and
Qualitative Evaluation Group), TID 300 (Measurement), TID 310 (Measurement
Properties: upper/lower measurement uncertainty), TID 4108 (Tracking
Identifier), CID 7464 (ROI measurement modifiers: Mean, Minimum, Maximum);
PS3.3 A.35.13 (Comprehensive 3D SR IOD).
Uncertainty: JCGM 100:2008 (GUM) 2.3.1 (standard uncertainty), 6.3 (coverage
factor); Gear JI et al., EANM practical guidance on uncertainty analysis for
molecular radiotherapy absorbed dose calculations, Eur J Nucl Med Mol Imaging
2018;45:2456-2474.
Partial volume: Hebert K et al., J Nucl Med 2024;65:923-930 (RC(volume) for
lesions); Rousset OG et al., J Nucl Med 1998;39:904-911 (geometric transfer
matrix); Dewaraja YK et al., MIRD Pamphlet No. 23, J Nucl Med
2012;53:1310-1325 (lesion recovery with background).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from theranode.dicomio.errors import UnsupportedObjectError
from theranode.dicomio.part10 import dicom_date, dicom_time
from theranode.dicomio.source import InstanceReference, SourceContext, patient_study_dataset
from theranode.dicomio.uids import (
    MANUFACTURER,
    MODEL_NAME,
    OutputObject,
    ResultIdentity,
    ResultKind,
    device_uid,
    output_uids,
    tracking_uid,
)
from theranode.dosimetry.partial_volume import PartialVolumeMethod
from theranode.dosimetry.results import (
    CourseResult,
    CumulativeDose,
    CycleResult,
    DoseMethod,
    DoseUncertainty,
    KineticModel,
    LesionIndices,
    Organ,
    UncertaintyComponent,
    VoiDose,
    VoiKind,
)

logger = logging.getLogger(__name__)

PRIVATE_SCHEME = "99THERANODE"


def _private(value: str, meaning: str) -> Code:
    return Code(value, PRIVATE_SCHEME, meaning)


# -- standard codes (checked against pydicom's PS3.16 code dictionary) -------
ABSORBED_DOSE = codes.DCM.AbsorbedDose  # DCM 128513
VOLUME = Code("118565006", "SCT", "Volume")
MEAN = codes.SCT.Mean  # SCT 373098007
MINIMUM = codes.SCT.Minimum  # SCT 255605001
MAXIMUM = codes.SCT.Maximum  # SCT 56851009
ANATOMICAL_STRUCTURE = codes.SCT.AnatomicalStructure  # SCT 91723000
MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # SCT 49755003
NEOPLASM = codes.SCT.Neoplasm  # SCT 108369006
LIVER = Code("10200004", "SCT", "Liver")
KIDNEY = Code("64033007", "SCT", "Kidney")
SPLEEN = Code("78961009", "SCT", "Spleen")
BONE_MARROW = Code("14016003", "SCT", "Bone marrow")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
RIGHT_AND_LEFT = Code("51440002", "SCT", "Right and left")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

GRAY = Code("Gy", "UCUM", "Gy")
CUBIC_CENTIMETER = Code("cm3", "UCUM", "cm3")
MEGABECQUEREL_HOUR = Code("MBq.h", "UCUM", "MBq.h")
HOUR = Code("h", "UCUM", "h")
NO_UNITS = Code("1", "UCUM", "no units")
LESION_COUNT_UNIT = Code("{lesions}", "UCUM", "lesions")
#: TID 1500 row 10; the administered activity as TID 10022 (Radiopharmaceutical
#: Administration Event Data) codes it: DCM 113507 in UCUM MBq.
DERIVED_IMAGING_MEASUREMENTS = codes.DCM.DerivedImagingMeasurements  # DCM 126011
ADMINISTERED_ACTIVITY = codes.DCM.AdministeredActivity  # DCM 113507
MEGABECQUEREL = Code("MBq", "UCUM", "MBq")
#: TID 310 rows: the standard uncertainty (k = 1) as upper and lower range, in the
#: unit of the measurement.
UPPER_UNCERTAINTY = codes.SCT.RangeOfUpperMeasurementUncertainty  # SCT 371886008
LOWER_UNCERTAINTY = codes.SCT.RangeOfLowerMeasurementUncertainty  # SCT 371885007
#: What the uncertainty is (standard uncertainty k = 1, EANM budget), as TEXT.
UNCERTAINTY_METHOD = codes.DCM.ReferenceToUncertaintyDeterminationMethod  # DCM 128511
CALIBRATION_UNCERTAINTY = codes.DCM.CalibrationUncertainty  # DCM 113763, in %
TIME_AFTER_INJECTION = codes.DCM.TimeAfterTheStartOfInjection  # DCM 130194
TIME_POINT_ORDER = codes.DCM.TimePointOrder  # DCM 126073 (the cycle, as in TID 1502)
PERCENT = Code("%", "UCUM", "%")
MILLIMETER = Code("mm", "UCUM", "mm")

# -- private codes: concepts DICOM has no code for yet -----------------------
PROCEDURE = _private("LU177DOSIMETRY", "Lu-177 post-therapy absorbed dose assessment")
D98 = _private("D98", "Dose received by at least 98% of the volume")
D2 = _private("D2", "Dose received by at least 2% of the volume")
TIME_INTEGRATED_ACTIVITY = _private("TIA", "Time-integrated activity")
EFFECTIVE_HALF_LIFE = _private("TEFF", "Effective half-life")
RECOVERY_COEFFICIENT = _private("RC", "Recovery coefficient applied")
CUMULATIVE_DOSE = _private("CUMAD", "Cumulative absorbed dose over the cycles")
PROJECTED_DOSE = _private(
    "PROJAD", "Projected cumulative absorbed dose for the planned cycles"
)
LESION_COUNT = _private("NLES", "Number of lesions in the lesion indices")
DOSIMETRY_METHOD = _private("DOSEMETHOD", "Dosimetry method")
CURVE_MODEL = _private("TACMODEL", "Time-activity curve model")
UPTAKE_MODEL = _private("UPTAKE", "Uptake model of the curve integral")
EXCLUSION = _private("EXCLUDED", "Excluded from the dose analysis")
NOTE = _private("NOTE", "Dosimetry note")
FLAG = _private("FLAG", "Dosimetry flag")
WARNING = _private("WARNING", "Processing warning")
DOSE_MAP_METHOD = _private("DOSEMAP", "Method of the RT Dose map")
DOMINANT_UNCERTAINTY = _private("UDOMINANT", "Dominant component of the standard uncertainty")
PARTIAL_VOLUME_METHOD = _private("PVCMETHOD", "Partial-volume correction method")
PARTIAL_VOLUME_FACTOR = _private(
    "PVFACTOR", "Partial-volume factor (corrected / uncorrected dose)"
)
SPECT_FWHM = _private(
    "SPECTFWHM", "SPECT resolution (FWHM) used by the partial-volume correction"
)
LESION_INDICES_ID = "lesion indices"

METHOD_CODES: dict[DoseMethod, Code] = {
    DoseMethod.MULTI_TIME_POINT: _private("MTP", "Multi-time-point"),
    DoseMethod.SINGLE_TIME_POINT_SCALED: _private(
        "STPSCALED", "Single-time-point scaled from a multi-time-point cycle"
    ),
    DoseMethod.HANSCHEID: _private("STPHANSCHEID", "Single-time-point, Hanscheid 2018"),
    DoseMethod.MADSEN: _private("STPMADSEN", "Single-time-point, Madsen 2018"),
}
MODEL_CODES: dict[KineticModel, Code] = {
    KineticModel.MONOEXPONENTIAL: _private("MONOEXP", "Monoexponential"),
    KineticModel.BIEXPONENTIAL_UPTAKE: _private(
        "BIEXPUPTAKE", "Biexponential with uptake"
    ),
    KineticModel.TRAPEZOID_TAIL: _private(
        "TRAPEZTAIL", "Trapezoid with physical-decay tail"
    ),
}
#: Each source of uncertainty as the concept name of its relative standard
#: uncertainty (NUM, %) and as the value of the dominant component (CODE).
COMPONENT_CODES: dict[UncertaintyComponent, Code] = {
    UncertaintyComponent.CALIBRATION: CALIBRATION_UNCERTAINTY,
    UncertaintyComponent.PARTIAL_VOLUME: _private(
        "UPVC", "Partial-volume correction uncertainty"
    ),
    UncertaintyComponent.VOLUME: _private("UVOLUME", "VOI volume (segmentation) uncertainty"),
    UncertaintyComponent.COUNTS: _private("UCOUNTS", "Count noise uncertainty"),
    UncertaintyComponent.REGISTRATION: _private("UREG", "Registration uncertainty"),
    UncertaintyComponent.KINETIC_FIT: _private("UFIT", "Kinetic fit residual uncertainty"),
    UncertaintyComponent.SINGLE_TIME_POINT_METHOD: _private(
        "USTP", "Single-time-point method uncertainty"
    ),
    UncertaintyComponent.REFERENCE_CYCLE: _private(
        "UREFCYCLE", "Reference cycle uncertainty"
    ),
}
PARTIAL_VOLUME_CODES: dict[PartialVolumeMethod, Code] = {
    PartialVolumeMethod.PAPER: _private(
        "PVCPAPER", "RC(volume) for lesions after the fit (Hebert 2024)"
    ),
    PartialVolumeMethod.PAPER_CONTRAST: _private(
        "PVCCONTRAST", "RC(volume) for lesions with local background per time point"
    ),
    PartialVolumeMethod.GTM: _private(
        "PVCGTM", "Geometric transfer matrix for every VOI per time point"
    ),
}
#: The TEXT of DCM 128511 beside a standard uncertainty from the budget, and beside
#: the kinetic fit's standard deviation of a result computed without one.
BUDGET_STATEMENT = (
    "Standard uncertainty, coverage factor k = 1, of the EANM uncertainty budget "
    "(Gear et al., EJNMMI 2018;45:2456; JCGM 100:2008); the interval at k = 2 "
    "covers about 95 %"
)
FIT_SD_STATEMENT = (
    "Standard deviation (k = 1) from the kinetic fit only; no uncertainty budget "
    "(result computed before theranode stated one)"
)
ORGAN_SITES: dict[Organ, tuple[Code, Code | None]] = {
    Organ.LIVER: (LIVER, None),
    Organ.KIDNEY_LEFT: (KIDNEY, LEFT),
    Organ.KIDNEY_RIGHT: (KIDNEY, RIGHT),
    Organ.KIDNEYS: (KIDNEY, RIGHT_AND_LEFT),
    Organ.SPLEEN: (SPLEEN, None),
    Organ.BONE_MARROW: (BONE_MARROW, None),
}

#: VoiDose field -> (concept name, derivation, unit) of its TID 300 measurement.
VOI_MEASUREMENTS: dict[str, tuple[Code, Code | None, Code]] = {
    "mean_gy": (ABSORBED_DOSE, MEAN, GRAY),
    "min_gy": (ABSORBED_DOSE, MINIMUM, GRAY),
    "max_gy": (ABSORBED_DOSE, MAXIMUM, GRAY),
    "d98_gy": (ABSORBED_DOSE, D98, GRAY),
    "d2_gy": (ABSORBED_DOSE, D2, GRAY),
    "volume_ml": (VOLUME, None, CUBIC_CENTIMETER),
    "time_integrated_activity_mbq_h": (
        TIME_INTEGRATED_ACTIVITY,
        None,
        MEGABECQUEREL_HOUR,
    ),
    "effective_half_life_h": (EFFECTIVE_HALF_LIFE, None, HOUR),
    "recovery_coefficient": (RECOVERY_COEFFICIENT, None, NO_UNITS),
    "partial_volume_factor": (PARTIAL_VOLUME_FACTOR, None, NO_UNITS),
}
#: Course-level measurements: key -> (concept name, derivation, unit).
COURSE_MEASUREMENTS: dict[str, tuple[Code, Code | None, Code]] = {
    "total_gy": (CUMULATIVE_DOSE, MEAN, GRAY),
    "projected_total_gy": (PROJECTED_DOSE, MEAN, GRAY),
}
LESION_INDEX_MEASUREMENTS: dict[str, tuple[Code, Code | None, Code]] = {
    "n_lesions": (LESION_COUNT, None, LESION_COUNT_UNIT),
    "mean_total_gy": (CUMULATIVE_DOSE, MEAN, GRAY),
    "min_total_gy": (CUMULATIVE_DOSE, MINIMUM, GRAY),
    "max_total_gy": (CUMULATIVE_DOSE, MAXIMUM, GRAY),
}

PRIVATE_CODES: tuple[Code, ...] = (
    PROCEDURE,
    D98,
    D2,
    TIME_INTEGRATED_ACTIVITY,
    EFFECTIVE_HALF_LIFE,
    RECOVERY_COEFFICIENT,
    CUMULATIVE_DOSE,
    PROJECTED_DOSE,
    LESION_COUNT,
    DOSIMETRY_METHOD,
    CURVE_MODEL,
    UPTAKE_MODEL,
    EXCLUSION,
    NOTE,
    FLAG,
    WARNING,
    DOSE_MAP_METHOD,
    DOMINANT_UNCERTAINTY,
    PARTIAL_VOLUME_METHOD,
    PARTIAL_VOLUME_FACTOR,
    SPECT_FWHM,
    *METHOD_CODES.values(),
    *MODEL_CODES.values(),
    *(c for c in COMPONENT_CODES.values() if c.scheme_designator == PRIVATE_SCHEME),
    *PARTIAL_VOLUME_CODES.values(),
)


# -- reading the result's settings --------------------------------------------
def partial_volume_method(settings: dict[str, object]) -> PartialVolumeMethod:
    """The partial-volume method a cycle used (``"paper"`` for results that predate the
    setting)."""
    value = settings.get("partial_volume", PartialVolumeMethod.PAPER.value)
    try:
        return PartialVolumeMethod(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in PartialVolumeMethod)
        raise ValueError(
            f"The result's settings name the partial-volume method {value!r}; this theranode "
            f"knows {known}. Report it with the version that computed the result."
        ) from None


@dataclass(frozen=True)
class SpectResolution:
    """The SPECT FWHM one time point's partial-volume correction used."""

    cycle_number: int
    elapsed_h: float
    fwhm_mm: float


def spect_resolutions(result: CycleResult) -> list[SpectResolution]:
    """The FWHM used per time point (none with the ``paper`` method or an older result)."""
    fwhms = result.settings.get("time_point_spect_fwhm_mm") or []
    if not isinstance(fwhms, list | tuple):
        return []
    return [
        SpectResolution(result.cycle_number, float(t), float(f))
        for t, f in zip(result.time_points_h, fwhms, strict=False)
        if isinstance(f, int | float) and math.isfinite(f)
    ]


# -- building ---------------------------------------------------------------
@dataclass(frozen=True)
class Spread:
    """The uncertainty written beside a value: the budget, or a bare standard deviation."""

    standard: float
    budget: DoseUncertainty | None = None

    @classmethod
    def of(cls, budget: DoseUncertainty | None, sd: float | None) -> Spread | None:
        """The budget's standard uncertainty when there is one, else ``sd`` (if finite)."""
        if budget is not None:
            return cls(budget.standard_gy, budget)
        # A model without an uncertainty estimate (trapezoid + tail) gives NaN: no
        # uncertainty is stated rather than a value DS cannot hold (PS3.5 6.2).
        if sd is None or not math.isfinite(sd):
            return None
        return cls(float(sd))


def _property(item: Any) -> Any:
    item.RelationshipType = "HAS PROPERTIES"
    return item


def _uncertainty_items(spread: Spread, unit: Code) -> list[Any]:
    """TID 310 upper/lower uncertainty (k = 1, unit of the value), what it is (DCM 128511),
    and with a budget its dominant component and every component (relative, %)."""
    items: list[Any] = [
        hd.sr.NumContentItem(
            name=name, value=spread.standard, unit=unit, relationship_type="HAS PROPERTIES"
        )
        for name in (UPPER_UNCERTAINTY, LOWER_UNCERTAINTY)
    ]
    statement = BUDGET_STATEMENT if spread.budget is not None else FIT_SD_STATEMENT
    items.append(_property(_text(UNCERTAINTY_METHOD, statement)))
    if spread.budget is None:
        return items
    dominant = spread.budget.dominant
    if dominant is not None:
        items.append(
            hd.sr.CodeContentItem(
                name=DOMINANT_UNCERTAINTY,
                value=COMPONENT_CODES[dominant],
                relationship_type="HAS PROPERTIES",
            )
        )
    items.extend(
        hd.sr.NumContentItem(
            name=COMPONENT_CODES[component],
            value=100.0 * relative,
            unit=PERCENT,
            relationship_type="HAS PROPERTIES",
        )
        for component, relative in spread.budget.components.items()
    )
    return items


def _measurement(key: str, value: float, spread: Spread | None = None) -> hd.sr.Measurement:
    name, derivation, unit = {
        **VOI_MEASUREMENTS,
        **COURSE_MEASUREMENTS,
        **LESION_INDEX_MEASUREMENTS,
    }[key]
    measurement = hd.sr.Measurement(
        name=name, value=float(value), unit=unit, derivation=derivation
    )
    if spread is not None:
        item = measurement[0]
        if "ContentSequence" not in item:
            item.ContentSequence = hd.sr.ContentSequence()
        item.ContentSequence.extend(_uncertainty_items(spread, unit))
    return measurement


def _finding(
    voi_kind: VoiKind, organ: Organ | None
) -> tuple[Code, Code, list[hd.sr.FindingSite]]:
    """Finding type, finding category and finding sites of a VOI."""
    if voi_kind is VoiKind.LESION:
        return NEOPLASM, MORPHOLOGICALLY_ABNORMAL, []
    if voi_kind is VoiKind.MARROW and organ is None:
        organ = Organ.BONE_MARROW
    if organ is None:
        return ANATOMICAL_STRUCTURE, ANATOMICAL_STRUCTURE, []
    site, laterality = ORGAN_SITES[organ]
    return site, ANATOMICAL_STRUCTURE, [hd.sr.FindingSite(site, laterality=laterality)]


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS")


def _voi_measurements(voi: VoiDose) -> list[hd.sr.Measurement]:
    measurements = []
    for key in VOI_MEASUREMENTS:
        value = getattr(voi, key)
        if value is None:
            continue
        spread = Spread.of(voi.uncertainty, voi.mean_gy_sd) if key == "mean_gy" else None
        measurements.append(_measurement(key, value, spread))
    return measurements


def _voi_evaluations(
    voi: VoiDose, method: PartialVolumeMethod
) -> list[hd.sr.QualitativeEvaluation]:
    evaluations = [
        hd.sr.QualitativeEvaluation(DOSIMETRY_METHOD, METHOD_CODES[voi.method]),
        hd.sr.QualitativeEvaluation(PARTIAL_VOLUME_METHOD, PARTIAL_VOLUME_CODES[method]),
    ]
    if voi.fit is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(CURVE_MODEL, MODEL_CODES[voi.fit.model])
        )
    return evaluations


def _voi_texts(voi: VoiDose) -> list[hd.sr.TextContentItem]:
    texts = []
    if voi.fit is not None:
        texts.append(_text(UPTAKE_MODEL, voi.fit.uptake_model))
    if voi.excluded:
        texts.append(_text(EXCLUSION, voi.exclusion_reason or "excluded"))
    notes = [*voi.notes, *(voi.fit.notes if voi.fit is not None else ())]
    texts.extend(_text(NOTE, note) for note in notes)
    return texts


def _group(
    source: SourceContext,
    name: str,
    kind: VoiKind,
    organ: Organ | None,
    time_point: hd.sr.TimePointContext,
    algorithm: hd.sr.AlgorithmIdentification,
    measurements: Sequence[hd.sr.Measurement],
    evaluations: Sequence[hd.sr.QualitativeEvaluation] = (),
    texts: Sequence[hd.sr.TextContentItem] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    finding_type, category, sites = _finding(kind, organ)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(source, name), identifier=name
        ),
        time_point_context=time_point,
        finding_type=finding_type,
        finding_category=category,
        finding_sites=sites or None,
        algorithm_id=algorithm,
        measurements=list(measurements),
        qualitative_evaluations=list(evaluations) or None,
    )
    group[0].ContentSequence.extend(texts)
    return group


def _cycle_time_point(cycle_number: int) -> hd.sr.TimePointContext:
    return hd.sr.TimePointContext(
        time_point=f"cycle {cycle_number}",
        time_point_order=cycle_number,
        protocol_time_point_identifier=f"C{cycle_number}",
    )


def _course_time_point() -> hd.sr.TimePointContext:
    return hd.sr.TimePointContext(
        time_point="course", protocol_time_point_identifier="COURSE"
    )


def settings_digest(settings: dict[str, object]) -> str:
    """SHA-256 of the settings as canonical JSON (recorded as an algorithm parameter)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _algorithm(
    identity: ResultIdentity, settings: dict[str, object]
) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name="theranode LED dosimetry",
        version=identity.software_version,
        parameters=[f"settings sha256 {settings_digest(settings)}"],
        manufacturer=MANUFACTURER,
    )


def cycle_groups(
    result: CycleResult, source: SourceContext, identity: ResultIdentity
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One TID 1501 group per VOI of a cycle."""
    algorithm = _algorithm(identity, result.settings)
    return [
        _group(
            source,
            voi.name,
            voi.kind,
            voi.organ,
            _cycle_time_point(result.cycle_number),
            algorithm,
            _voi_measurements(voi),
            _voi_evaluations(voi, partial_volume_method(result.settings)),
            _voi_texts(voi),
        )
        for voi in result.vois
    ]


def _cumulative_group(
    dose: CumulativeDose, course: CourseResult, source: SourceContext, algorithm: Any
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    measurements = [
        _measurement("total_gy", dose.total_gy, Spread.of(dose.uncertainty, dose.total_gy_sd))
    ]
    projected = course.projected_total_gy.get(dose.name)
    if projected is not None:
        measurements.append(_measurement("projected_total_gy", projected))
    texts = [_text(EXCLUSION, "excluded")] if dose.excluded else []
    return _group(
        source,
        dose.name,
        dose.kind,
        dose.organ,
        _course_time_point(),
        algorithm,
        measurements,
        texts=texts,
    )


def _per_cycle_groups(
    dose: CumulativeDose, source: SourceContext, algorithm: Any
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    return [
        _group(
            source,
            dose.name,
            dose.kind,
            dose.organ,
            _cycle_time_point(number),
            algorithm,
            [_measurement("mean_gy", value)],
        )
        for number, value in sorted(dose.per_cycle_gy.items())
    ]


def _lesion_indices_group(
    indices: LesionIndices, source: SourceContext, algorithm: Any
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    budgets = {
        "mean_total_gy": indices.mean_uncertainty,
        "min_total_gy": indices.min_uncertainty,
        "max_total_gy": indices.max_uncertainty,
    }
    measurements = [
        _measurement(key, getattr(indices, key), Spread.of(budgets.get(key), None))
        for key in LESION_INDEX_MEASUREMENTS
    ]
    return _group(
        source,
        LESION_INDICES_ID,
        VoiKind.LESION,
        None,
        _course_time_point(),
        algorithm,
        measurements,
    )


def course_groups(
    course: CourseResult, source: SourceContext, identity: ResultIdentity
) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Cumulative and per-cycle groups per VOI, then the lesion indices."""
    settings = course.cycles[0].settings if course.cycles else {}
    algorithm = _algorithm(identity, settings)
    groups = []
    for dose in course.cumulative:
        groups.append(_cumulative_group(dose, course, source, algorithm))
        groups.extend(_per_cycle_groups(dose, source, algorithm))
    if course.lesion_indices is not None:
        groups.append(_lesion_indices_group(course.lesion_indices, source, algorithm))
    return groups


def _cycle_property(cycle_number: int) -> hd.sr.NumContentItem:
    """DCM 126073 Time Point Order = the cycle a report-level item belongs to."""
    return hd.sr.NumContentItem(
        name=TIME_POINT_ORDER, value=cycle_number, unit=NO_UNITS,
        relationship_type="HAS PROPERTIES",
    )


def _resolution_item(resolution: SpectResolution) -> hd.sr.NumContentItem:
    """The FWHM (mm) of one time point, with its time after injection and its cycle."""
    item = hd.sr.NumContentItem(
        name=SPECT_FWHM, value=resolution.fwhm_mm, unit=MILLIMETER,
        relationship_type="CONTAINS",
    )
    elapsed = hd.sr.NumContentItem(
        name=TIME_AFTER_INJECTION, value=resolution.elapsed_h, unit=HOUR,
        relationship_type="HAS PROPERTIES",
    )
    item.ContentSequence = hd.sr.ContentSequence(
        [elapsed, _cycle_property(resolution.cycle_number)]
    )
    return item


def _derived_container(
    administered_activity_mbq: float | None, resolutions: Sequence[SpectResolution] = ()
) -> Dataset | None:
    """TID 1500 row 10: the cycle's administered activity (TID 300, DCM 113507, MBq) and
    the SPECT FWHM each time point's partial-volume correction used (TID 300, mm)."""
    items: list[Any] = [_resolution_item(r) for r in resolutions]
    if administered_activity_mbq is not None:
        items[:0] = hd.sr.Measurement(
            name=ADMINISTERED_ACTIVITY,
            value=float(administered_activity_mbq),
            unit=MEGABECQUEREL,
        )
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=DERIVED_IMAGING_MEASUREMENTS, relationship_type="CONTAINS"
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _observation_context() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(),
        name=MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=MODEL_NAME,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def _method_item(cycle_number: int, method: PartialVolumeMethod) -> hd.sr.CodeContentItem:
    """The partial-volume method of one cycle (CODE), with the cycle as a property."""
    item = hd.sr.CodeContentItem(
        name=PARTIAL_VOLUME_METHOD, value=PARTIAL_VOLUME_CODES[method],
        relationship_type="CONTAINS",
    )
    item.ContentSequence = hd.sr.ContentSequence([_cycle_property(cycle_number)])
    return item


def _evaluations_container(
    flags: Sequence[str],
    warnings: Sequence[str],
    map_method: str = "",
    partial_volume: Sequence[tuple[int, PartialVolumeMethod]] = (),
) -> Dataset | None:
    """TID 1500 row 12: report-level qualitative evaluations (flags, warnings and the
    method of the RT Dose map as TEXT; each cycle's partial-volume method as CODE)."""
    items: list[Any] = [_text(FLAG, f) for f in flags] + [_text(WARNING, w) for w in warnings]
    if map_method:
        items.append(_text(DOSE_MAP_METHOD, map_method))
    items.extend(_method_item(number, method) for number, method in partial_volume)
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS"
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _evidence(source: SourceContext) -> list[Dataset]:
    """Datasets highdicom needs as evidence: identity first, then every input instance."""
    head = patient_study_dataset(source)
    first, *rest = source.all_instances
    _set_reference(head, first)
    evidence = [head]
    for ref in rest:
        item = Dataset()
        _set_reference(item, ref)
        evidence.append(item)
    return evidence


def _set_reference(ds: Dataset, ref: InstanceReference) -> None:
    ds.StudyInstanceUID = ref.study_instance_uid
    ds.SeriesInstanceUID = ref.series_instance_uid
    ds.SOPClassUID = ref.sop_class_uid
    ds.SOPInstanceUID = ref.sop_instance_uid


def _coding_scheme() -> hd.coding_schemes.CodingSchemeIdentificationItem:
    return hd.coding_schemes.CodingSchemeIdentificationItem(
        designator=PRIVATE_SCHEME,
        name="theranode private codes for radiopharmaceutical therapy dosimetry",
        responsible_organization=MANUFACTURER,
    )


def build_report(
    groups: Sequence[hd.sr.MeasurementsAndQualitativeEvaluations],
    source: SourceContext,
    identity: ResultIdentity,
    *,
    flags: Sequence[str] = (),
    warnings: Sequence[str] = (),
    administered_activity_mbq: float | None = None,
    map_method: str = "",
    partial_volume: Sequence[tuple[int, PartialVolumeMethod]] = (),
    resolutions: Sequence[SpectResolution] = (),
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR holding ``groups`` in the reference CT's study.

    ``map_method`` states how the RT Dose map sent with the report was made;
    ``partial_volume`` the partial-volume method per cycle number and
    ``resolutions`` the SPECT FWHM each time point's correction used.
    """
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(),
        procedure_reported=[PROCEDURE, IMAGING_PROCEDURE],
        imaging_measurements=list(groups),
    )
    derived = _derived_container(administered_activity_mbq, resolutions)
    if derived is not None:
        report[0].ContentSequence.append(derived)
    container = _evaluations_container(flags, warnings, map_method, partial_volume)
    if container is not None:
        report[0].ContentSequence.append(container)
    uids = output_uids(source, identity, OutputObject.SR)
    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(source),
        content=report,
        series_instance_uid=uids.series_instance_uid,
        series_number=identity.series_number(OutputObject.SR),
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        series_description=identity.series_description(OutputObject.SR),
        manufacturer_model_name=MODEL_NAME,
        software_versions=identity.software_version,
        content_date=dicom_date(identity.created_at),
        content_time=dicom_time(identity.created_at),
        coding_schemes=[_coding_scheme()],
    )
    _pin_clock_values(sr, identity)
    logger.info(
        "SR %s for %s: %d groups", sr.SOPInstanceUID, identity.label, len(groups)
    )
    return sr


def _pin_clock_values(sr: Dataset, identity: ResultIdentity) -> None:
    """Replace the date-times highdicom takes from the clock by the result's creation time."""
    sr.InstanceCreationDate = dicom_date(identity.created_at)
    sr.InstanceCreationTime = dicom_time(identity.created_at)
    for item in sr.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = dicom_date(identity.created_at) + dicom_time(
            identity.created_at
        )


def write_cycle_sr(
    result: CycleResult, source: SourceContext, identity: ResultIdentity
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 dose report of one cycle (one group per VOI, warnings as text)."""
    require_kind(identity, ResultKind.CYCLE)
    return build_report(
        cycle_groups(result, source, identity),
        source,
        identity,
        warnings=result.warnings,
        administered_activity_mbq=result.administered_activity_mbq,
        map_method=str(result.settings.get("dose_map", "")) if result.dose_map is not None else "",
        partial_volume=[(result.cycle_number, partial_volume_method(result.settings))],
        resolutions=spect_resolutions(result),
    )


def write_course_sr(
    course: CourseResult, source: SourceContext, identity: ResultIdentity
) -> hd.sr.Comprehensive3DSR:
    """TID 1500 dose report of a course: cumulative doses, lesion indices and flags."""
    require_kind(identity, ResultKind.COURSE)
    warnings = [
        f"cycle {c.cycle_number}: {w}" for c in course.cycles for w in c.warnings
    ]
    warnings += getattr(course, "course_map_notes", ())
    return build_report(
        course_groups(course, source, identity),
        source,
        identity,
        flags=course.flags,
        warnings=warnings,
        map_method=getattr(course, "course_map_method", ""),
        partial_volume=[(c.cycle_number, partial_volume_method(c.settings)) for c in course.cycles],
        resolutions=[r for c in course.cycles for r in spect_resolutions(c)],
    )


def require_kind(identity: ResultIdentity, kind: ResultKind) -> None:
    if identity.kind is not kind:
        raise ValueError(
            f"Expected a {kind.value} result identity, got {identity.kind.value}; "
            "build the ResultIdentity with the matching kind."
        )


# -- reading back -----------------------------------------------------------
@dataclass
class GroupValues:
    """Numbers and texts of one measurement group read back from a report."""

    tracking_identifier: str
    tracking_uid: str
    time_point: str
    values: dict[str, float] = field(default_factory=dict)
    uncertainties: dict[str, float] = field(default_factory=dict)
    evaluations: dict[str, str] = field(default_factory=dict)
    texts: dict[str, list[str]] = field(default_factory=dict)
    finding_type: str = ""
    finding_sites: list[tuple[str, str | None]] = field(default_factory=list)
    #: Per value with an uncertainty: what it is (the DCM 128511 text).
    uncertainty_statements: dict[str, str] = field(default_factory=dict)
    #: Per value with a budget: its dominant component (``UncertaintyComponent`` value).
    dominant_uncertainty: dict[str, str] = field(default_factory=dict)
    #: Per value with a budget: relative standard uncertainty (fraction) per component.
    uncertainty_components: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The partial-volume method of the VOI's cycle (``PartialVolumeMethod`` value).
    partial_volume_method: str = ""


@dataclass
class ReportValues:
    """Everything :func:`read_sr_report` extracts from a theranode SR."""

    groups: list[GroupValues]
    flags: list[str]
    warnings: list[str]
    administered_activity_mbq: float | None = None
    #: Cycle number -> ``PartialVolumeMethod`` value.
    partial_volume: dict[int, str] = field(default_factory=dict)
    spect_resolutions: list[SpectResolution] = field(default_factory=list)

    def group(self, name: str, time_point: str) -> GroupValues:
        """The group of VOI ``name`` at ``time_point`` (``"cycle 2"``, ``"course"``)."""
        for group in self.groups:
            if group.tracking_identifier == name and group.time_point == time_point:
                return group
        raise KeyError((name, time_point))


def _key(
    table: dict[str, tuple[Code, Code | None, Code]], name: Any, derivation: Any
) -> str | None:
    for key, (concept, wanted, _unit) in table.items():
        if name == concept and (wanted is None or derivation == wanted):
            return key
    return None


def read_sr_report(ds: Dataset) -> ReportValues:
    """Parse a theranode TID 1500 SR back into numbers (highdicom's reader).

    Raises
    ------
    UnsupportedObjectError
        ``ds`` is not a TID 1500 Measurement Report.
    """
    try:
        sr = hd.sr.Comprehensive3DSR.from_dataset(ds)
    except (ValueError, AttributeError) as error:
        raise UnsupportedObjectError(f"Not a readable SR document: {error}") from error
    content = sr.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise UnsupportedObjectError(
            "Expected a TID 1500 Measurement Report; the SR uses another template."
        )
    groups = [_read_group(g) for g in content.get_image_measurement_groups()]
    flags, warnings = _read_report_texts(ds)
    return ReportValues(
        groups=groups,
        flags=flags,
        warnings=warnings,
        administered_activity_mbq=_read_administered_activity(ds),
        partial_volume=_read_partial_volume(ds),
        spect_resolutions=_read_resolutions(ds),
    )


def _children(ds: Dataset, container: Code) -> list[Dataset]:
    """The items of the report's top-level container called ``container``."""
    for item in ds.ContentSequence:
        code = item.ConceptNameCodeSequence[0]
        if item.ValueType == "CONTAINER" and code.CodeValue == container.value:
            return list(item.get("ContentSequence", []))
    return []


def _is(item: Dataset, concept: Code) -> bool:
    code = item.ConceptNameCodeSequence[0]
    return bool(
        code.CodeValue == concept.value and code.CodingSchemeDesignator == concept.scheme_designator
    )


def _property_number(item: Dataset, concept: Code) -> float | None:
    for child in item.get("ContentSequence", []):
        if child.ValueType == "NUM" and _is(child, concept):
            return float(child.MeasuredValueSequence[0].NumericValue)
    return None


def _read_partial_volume(ds: Dataset) -> dict[int, str]:
    methods = {code.value: method.value for method, code in PARTIAL_VOLUME_CODES.items()}
    found: dict[int, str] = {}
    for item in _children(ds, QUALITATIVE_EVALUATIONS):
        if item.ValueType != "CODE" or not _is(item, PARTIAL_VOLUME_METHOD):
            continue
        cycle = _property_number(item, TIME_POINT_ORDER)
        value = item.ConceptCodeSequence[0].CodeValue
        if cycle is not None and value in methods:
            found[int(cycle)] = methods[value]
    return found


def _read_resolutions(ds: Dataset) -> list[SpectResolution]:
    found = []
    for item in _children(ds, DERIVED_IMAGING_MEASUREMENTS):
        if item.ValueType != "NUM" or not _is(item, SPECT_FWHM):
            continue
        elapsed = _property_number(item, TIME_AFTER_INJECTION)
        cycle = _property_number(item, TIME_POINT_ORDER)
        if elapsed is None or cycle is None:
            continue
        fwhm = float(item.MeasuredValueSequence[0].NumericValue)
        found.append(SpectResolution(int(cycle), elapsed, fwhm))
    return found


def _read_administered_activity(ds: Dataset) -> float | None:
    """The DCM 113507 value of the Derived Imaging Measurements container, if any."""
    for child in _children(ds, DERIVED_IMAGING_MEASUREMENTS):
        if child.ValueType == "NUM" and _is(child, ADMINISTERED_ACTIVITY):
            return float(child.MeasuredValueSequence[0].NumericValue)
    return None


def _read_group(group: Any) -> GroupValues:
    tracking = group.tracking_uid
    values = GroupValues(
        tracking_identifier=str(group.tracking_identifier),
        tracking_uid=str(tracking),
        time_point=_time_point(group),
        finding_type=str(group.finding_type.value)
        if group.finding_type is not None
        else "",
        finding_sites=[
            (
                str(s.value.value),
                str(s.laterality.value) if s.laterality is not None else None,
            )
            for s in group.finding_sites
        ],
    )
    table = {**VOI_MEASUREMENTS, **COURSE_MEASUREMENTS}
    if values.tracking_identifier == LESION_INDICES_ID:
        table = LESION_INDEX_MEASUREMENTS
    for measurement in group.get_measurements():
        key = _key(table, measurement.name, measurement.derivation)
        if key is None:
            continue
        values.values[key] = float(measurement.value)
        _read_uncertainty(measurement[0], key, values)
    methods = {code.value: method.value for method, code in PARTIAL_VOLUME_CODES.items()}
    for evaluation in group.get_qualitative_evaluations():
        values.evaluations[str(evaluation.name.meaning)] = str(evaluation.value.meaning)
        if evaluation.name == PARTIAL_VOLUME_METHOD:
            values.partial_volume_method = methods.get(str(evaluation.value.value), "")
    for item in group[0].ContentSequence:
        if item.ValueType == "TEXT" and item.name.scheme_designator == PRIVATE_SCHEME:
            values.texts.setdefault(str(item.name.value), []).append(str(item.value))
    return values


def _time_point(group: Any) -> str:
    for item in group[0].ContentSequence:
        if item.ValueType != "TEXT":
            continue
        if item.name.value == "C2348792":  # Time Point (UMLS), TID 1502
            return str(item.value)
    return ""


def _read_uncertainty(item: Dataset, key: str, values: GroupValues) -> None:
    """The upper uncertainty (TID 310), its statement, dominant component and components."""
    components = {code.value: c.value for c, code in COMPONENT_CODES.items()}
    relative: dict[str, float] = {}
    for child in item.get("ContentSequence", []):
        code = child.ConceptNameCodeSequence[0].CodeValue
        if child.ValueType == "NUM" and _is(child, UPPER_UNCERTAINTY):
            values.uncertainties[key] = float(child.MeasuredValueSequence[0].NumericValue)
        elif child.ValueType == "TEXT" and _is(child, UNCERTAINTY_METHOD):
            values.uncertainty_statements[key] = str(child.TextValue)
        elif child.ValueType == "CODE" and _is(child, DOMINANT_UNCERTAINTY):
            value = child.ConceptCodeSequence[0].CodeValue
            values.dominant_uncertainty[key] = components.get(value, str(value))
        elif child.ValueType == "NUM" and code in components:
            number = float(child.MeasuredValueSequence[0].NumericValue)
            relative[components[code]] = number / 100.0
    if relative:
        values.uncertainty_components[key] = relative


def _read_report_texts(ds: Dataset) -> tuple[list[str], list[str]]:
    flags: list[str] = []
    warnings: list[str] = []
    for item in ds.ContentSequence:
        code = item.ConceptNameCodeSequence[0]
        if (
            item.ValueType != "CONTAINER"
            or code.CodeValue != QUALITATIVE_EVALUATIONS.value
        ):
            continue
        for child in item.ContentSequence:
            value = child.ConceptNameCodeSequence[0].CodeValue
            if value == FLAG.value:
                flags.append(str(child.TextValue))
            elif value == WARNING.value:
                warnings.append(str(child.TextValue))
    return flags, warnings
