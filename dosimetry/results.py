"""Result records of the dosimetry engine.

These frozen dataclasses are the contract between the engine
(:mod:`dosimetry`), the DICOM writers (:mod:`theranode.dicomio.rtdose`,
:mod:`theranode.dicomio.sr`, the PDF report) and the service, which stores them.
Every number says in its name what unit it is in and every dose says which
method produced it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.volume import Volume


class VoiKind(str, Enum):
    """What a volume of interest is."""

    ORGAN = "organ"
    MARROW = "marrow"
    LESION = "lesion"


class Organ(str, Enum):
    """Organs the paper reports (with the body region used for marrow)."""

    LIVER = "liver"
    KIDNEY_LEFT = "kidney_left"
    KIDNEY_RIGHT = "kidney_right"
    KIDNEYS = "kidneys"
    SPLEEN = "spleen"
    BONE_MARROW = "bone_marrow"


class KineticModel(str, Enum):
    """Time-activity models for the integral of a dose-rate curve."""

    MONOEXPONENTIAL = "monoexponential"
    BIEXPONENTIAL_UPTAKE = "biexponential-uptake"
    TRAPEZOID_TAIL = "trapezoid+physical-tail"


class DoseMethod(str, Enum):
    """How a cycle's absorbed doses were obtained."""

    MULTI_TIME_POINT = "multi-time-point"
    SINGLE_TIME_POINT_SCALED = (
        "single-time-point scaled from a multi-time-point cycle (Hebert 2024)"
    )
    HANSCHEID = "single-time-point Hänscheid 2018"
    MADSEN = "single-time-point Madsen 2018"


@dataclass(frozen=True)
class KineticFit:
    """A fitted time-dose-rate (or time-activity) curve and its integral.

    ``integral`` has the unit of the curve × hours (Gy for a dose-rate curve
    in Gy/h, MBq·h for an activity curve in MBq).
    """

    model: KineticModel
    parameters: dict[str, float]
    integral: float
    integral_sd: float
    effective_half_life_h: float | None
    aicc: float | None = None
    uptake_model: str = "instantaneous uptake at injection"
    notes: tuple[str, ...] = ()

@dataclass(frozen=True)
class CurvePoint:
    """One time point of a VOI's curve."""

    elapsed_h: float
    mean_dose_rate_gy_per_h: float
    activity_mbq: float
    volume_ml: float


@dataclass(frozen=True)
class RegistrationQuality:
    """How well one time point's CT was registered to the reference CT."""

    elapsed_h: float
    metric: str
    value_before: float
    value_after: float
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    converged: bool


@dataclass(frozen=True)
class VoiDose:
    """Absorbed dose to one VOI in one cycle.

    Partial volume: ``recovery_coefficient`` is the RC(volume) the mean was
    divided by after the fit (the paper's method, 1 when not applied);
    ``partial_volume_factor`` is corrected / uncorrected absorbed dose from a
    correction applied per time point before the fit (GTM, or RC with the
    lesion's background; 1 when none).
    """

    name: str
    kind: VoiKind
    method: DoseMethod
    volume_ml: float
    mean_gy: float
    mean_gy_sd: float
    min_gy: float | None = None
    max_gy: float | None = None
    d98_gy: float | None = None
    d2_gy: float | None = None
    organ: Organ | None = None
    time_integrated_activity_mbq_h: float | None = None
    effective_half_life_h: float | None = None
    fit: KineticFit | None = None
    curve: tuple[CurvePoint, ...] = ()
    recovery_coefficient: float = 1.0
    partial_volume_factor: float = 1.0
    excluded: bool = False
    exclusion_reason: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class MapVoi:
    """A VOI as the dose map was normalised in it (:mod:`theranode.dosimetry.dose_map`).

    Attributes
    ----------
    name:
        VOI name.
    mask:
        Boolean mask on the dose map's grid, the voxels the reported mean
        averages over.
    factor:
        The factor the computed map was multiplied by on the voxels set for
        this VOI (``nan`` when the VOI's voxels were filled or covered).
    """

    name: str
    mask: npt.NDArray[np.bool_]
    factor: float


@dataclass(frozen=True)
class CycleResult:
    """All doses of one treatment cycle.

    ``settings["dose_map"]`` states how the map was made and
    ``settings["dose_map_comment"]`` says it in at most 64 characters (an
    RT Dose's Dose Comment); ``map_vois`` are the VOIs the map was normalised
    in, on its grid (a course map is normalised in the first cycle's).
    """

    cycle_number: int
    method: DoseMethod
    administered_activity_mbq: float | None
    time_points_h: tuple[float, ...]
    vois: tuple[VoiDose, ...]
    dose_map: Volume | None = None
    registration: tuple[RegistrationQuality, ...] = ()
    warnings: tuple[str, ...] = ()
    settings: dict[str, object] = field(default_factory=dict)
    map_vois: tuple[MapVoi, ...] = ()

    def voi(self, name: str) -> VoiDose:
        """The VOI called ``name`` (KeyError when absent)."""
        for voi in self.vois:
            if voi.name == name:
                return voi
        raise KeyError(name)


@dataclass(frozen=True)
class CumulativeDose:
    """Total absorbed dose of one VOI over the cycles of a course."""

    name: str
    kind: VoiKind
    total_gy: float
    total_gy_sd: float
    per_cycle_gy: dict[int, float]
    organ: Organ | None = None
    excluded: bool = False


@dataclass(frozen=True)
class LesionIndices:
    """The paper's per-patient lesion indices (over lesions ≥ the minimum volume)."""

    n_lesions: int
    mean_total_gy: float
    min_total_gy: float
    max_total_gy: float


@dataclass(frozen=True)
class CourseResult:
    """Cumulative doses, lesion indices and flags of a treatment course.

    ``course_map_method`` states how ``course_map`` was made (``""`` without a
    map), ``course_map_comment`` says it in at most 64 characters, and
    ``course_map_notes`` carry what the normalisation of the map found.
    """

    cycles: tuple[CycleResult, ...]
    cumulative: tuple[CumulativeDose, ...]
    lesion_indices: LesionIndices | None
    flags: tuple[str, ...]
    projected_total_gy: dict[str, float] = field(default_factory=dict)
    planned_cycles: int = 4
    course_map: Volume | None = None
    course_map_method: str = ""
    course_map_comment: str = ""
    course_map_notes: tuple[str, ...] = ()
