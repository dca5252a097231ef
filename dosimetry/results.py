"""Result records of the dosimetry engine.

These frozen dataclasses are the contract between the engine
(:mod:`dosimetry`), the DICOM writers (:mod:`theranode.dicomio.rtdose`,
:mod:`theranode.dicomio.sr`, the PDF report) and the service, which stores them.
Every number says in its name what unit it is in and every dose says which
method produced it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError
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


# -- uncertainty (theranode.dosimetry.uncertainty computes it) ---------------------
class UncertaintyComponent(str, Enum):
    """Sources of uncertainty of a VOI dose (Gear 2018)."""

    CALIBRATION = "calibration"
    PARTIAL_VOLUME = "partial volume"
    VOLUME = "volume"
    COUNTS = "counts"
    REGISTRATION = "registration"
    KINETIC_FIT = "kinetic fit"
    SINGLE_TIME_POINT_METHOD = "single-time-point method"
    REFERENCE_CYCLE = "reference cycle"


#: Components random between time points (and the fit's residual scatter).
RANDOM_COMPONENTS = (
    UncertaintyComponent.COUNTS,
    UncertaintyComponent.REGISTRATION,
    UncertaintyComponent.KINETIC_FIT,
)


@dataclass(frozen=True)
class DoseUncertainty:
    """Combined standard uncertainty of a dose and its components.

    Attributes
    ----------
    dose_gy:
        The dose the components are relative to.
    components:
        Relative standard uncertainty of the dose per source, independent of
        each other, so that the relative combined uncertainty is their
        root sum of squares.
    effective_decay_sd_per_h:
        Standard uncertainty of the VOI's fitted λ_eff (multi-time-point
        cycles): what a later cycle scaled from this one carries.
    """

    dose_gy: float
    components: dict[UncertaintyComponent, float] = field(default_factory=dict)
    effective_decay_sd_per_h: float | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.dose_gy) and self.dose_gy >= 0):
            raise DosimetryError(f"A dose must be finite and ≥ 0 Gy, got {self.dose_gy}.")
        components: dict[UncertaintyComponent, float] = {}
        for key, value in self.components.items():
            component = _component(key)
            if not (math.isfinite(value) and value >= 0):
                raise DosimetryError(
                    f"The {component.value} component must be a finite relative uncertainty "
                    f"≥ 0, got {value}."
                )
            components[component] = float(value)
        object.__setattr__(self, "components", components)

    @property
    def relative(self) -> float:
        """Combined relative standard uncertainty (k = 1)."""
        return math.sqrt(math.fsum(v**2 for v in self.components.values()))

    @property
    def standard_gy(self) -> float:
        """Combined standard uncertainty in Gy (k = 1)."""
        return self.dose_gy * self.relative

    @property
    def dominant(self) -> UncertaintyComponent | None:
        """The largest component (None when there is none above 0)."""
        if not self.components or max(self.components.values()) == 0:
            return None
        return max(self.components, key=lambda c: self.components[c])

    @property
    def random_relative(self) -> float:
        """Counts, registration and kinetic fit combined: what a scaled cycle
        takes over from its reference (:attr:`theranode.dosimetry.uncertainty.ReferenceCycle.dose_random_relative`)."""
        return math.sqrt(math.fsum(self.components.get(c, 0.0) ** 2 for c in RANDOM_COMPONENTS))

    @property
    def shares(self) -> dict[UncertaintyComponent, float]:
        """Each component's share of the combined variance (sums to 1)."""
        total = math.fsum(v**2 for v in self.components.values())
        if total == 0:
            return {c: 0.0 for c in self.components}
        return {c: v**2 / total for c, v in self.components.items()}

    def interval(self, k: float = 2.0) -> tuple[float, float]:
        """``(D − k·u, D + k·u)`` in Gy, the low end floored at 0 (GUM 6.2)."""
        if not (math.isfinite(k) and k > 0):
            raise DosimetryError(f"A coverage factor must be positive, got k = {k}.")
        half = k * self.standard_gy
        return max(self.dose_gy - half, 0.0), self.dose_gy + half


def _component(key: object) -> UncertaintyComponent:
    try:
        return UncertaintyComponent(key)
    except ValueError:
        names = ", ".join(repr(c.value) for c in UncertaintyComponent)
        raise DosimetryError(
            f"Unknown uncertainty component {key!r}; expected one of {names}."
        ) from None


@dataclass(frozen=True)
class VoiDose:
    """Absorbed dose to one VOI in one cycle.

    Partial volume: ``recovery_coefficient`` is the RC(volume) the mean was
    divided by after the fit (the paper's method, 1 when not applied);
    ``partial_volume_factor`` is corrected / uncorrected absorbed dose from a
    correction applied per time point before the fit (GTM, or RC with the
    lesion's background; 1 when none).

    Uncertainty: ``mean_gy_sd`` is the kinetic fit's own standard deviation
    (from its residuals); ``uncertainty`` is the whole budget of ``mean_gy``
    (calibration, partial volume, volume, counts, registration, fit,
    single-time-point method; :mod:`theranode.dosimetry.uncertainty`).
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
    uncertainty: DoseUncertainty | None = None


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
    uncertainty: DoseUncertainty | None = None


@dataclass(frozen=True)
class LesionIndices:
    """The paper's per-patient lesion indices (over lesions ≥ the minimum volume)."""

    n_lesions: int
    mean_total_gy: float
    min_total_gy: float
    max_total_gy: float
    mean_uncertainty: DoseUncertainty | None = None
    min_uncertainty: DoseUncertainty | None = None
    max_uncertainty: DoseUncertainty | None = None


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
