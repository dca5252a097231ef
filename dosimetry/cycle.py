"""Orchestration of one treatment cycle: images in, :class:`CycleResult` out.

Multi-time-point cycles (the paper's cycles 1-2)
------------------------------------------------
1. Every CT is registered rigidly onto the reference CT, the first (earliest)
   time point's (:func:`theranode.dosimetry.registration.register_rigid`).
2. Per time point, on its own SPECT grid: density from its own CT (HU →
   g/mL on the CT grid, box-averaged by integer bin shrinking to about the
   SPECT voxel, then linearly resampled: mass is averaged, not HU) and the
   LED dose-rate map (:mod:`theranode.dosimetry.absorbed_dose`).
3. The VOIs drawn on the reference CT are carried to each time point through
   the inverse registration, as the paper propagates them (a time point's
   own VOIs replace them). Masks go from the CT grid to the SPECT grid by
   linear interpolation of their 0/1 occupancy thresholded at
   ``mask_threshold`` (0.5), which keeps the volume of smooth shapes. Moving
   the masks rather than the SPECT means the VOI curves never interpolate
   SPECT values (interpolation would blur each later time point a little more
   and bias the fitted clearance). VOI volumes are measured on the CT-grid
   masks (finer).
4. The **dose grid is the reference time point's SPECT grid**: its SPECT is
   not interpolated and the map keeps the SPECT resolution (a finer grid
   would pretend to a resolution SPECT lacks). The other time points'
   dose-rate maps are resampled onto it (linear) for the voxel-wise fit.
5. VOI mean dose rate per time point → time-dose-rate curve → fit (mono-
   exponential by default) → mean absorbed dose with its sd. Lesions (and
   marrow if asked) are corrected by RC(volume); lesions below the minimum
   volume are kept but flagged excluded.
6. Voxel-wise mono-exponential fit of the stacked dose-rate maps → dose map
   (Gy). The fit of voxel curves and the fit of the VOI mean curve differ
   (the fit is not linear, partial-volume voxels at a VOI's border clear
   differently; see :mod:`theranode.dosimetry.kinetics`), by 5-10 % for organs on a
   coarse SPECT grid. So the map is then scaled within each VOI to the VOI's
   reported mean (RC-corrected for lesions), smallest VOI first
   (:mod:`theranode.dosimetry.dose_map`): the map keeps the voxel fit's distribution
   and the report's level, and every VOI mean of the map is the reported
   mean. Outside every VOI the map is the voxel fit. Per VOI, min, max, D98
   and D2 come from the scaled map; the factor is noted per VOI.

Single-time-point cycles (cycles 3-4)
-------------------------------------
VOI means come from the paper's formula scaled from a multi-time-point
reference cycle (same VOI name; the reference curve point nearest in time
after injection; Δt corrected with the reference λ_eff), else from Hänscheid
(default) or Madsen with a configured population half-life.

The dose map follows the same method, VOI by VOI: ``D(x) = Ḋ(x, t)·τ_v`` in
VOI v, with τ_v = reported mean / mean dose rate in v, the VOI's effective
time-integration factor. For a scaled VOI τ_v carries the reference VOI's
kinetics (its integral per dose rate at the matching scan time, corrected
by e^(λ_eff Δt)) and, for a lesion, 1/RC; for a Hänscheid VOI it is 2t/ln 2
(1/RC for lesions); for a Madsen VOI e^(λt)/λ. Overlaps follow
:mod:`theranode.dosimetry.dose_map` (smallest VOI first, each VOI's mean over its
whole mask is its reported mean). Outside every VOI, where no VOI kinetics
exist, the map is Hänscheid's ``Ḋ(x, t)·2t/ln 2`` (Madsen's population λ is
per VOI, so it has no value there).

A per-VOI factor was chosen over a per-voxel effective decay taken from the
registered reference cycle: the paper's formula and the report are per
VOI (Hebert 2024), so the map's VOI means equal the report by construction;
a voxel λ_eff from another cycle, weeks apart, would add a cross-cycle
registration's voxel-level error and the noise of voxel fits (EANM 2022
discusses both for voxel-level time integration), and could not reproduce
the reported VOI means.

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (protocol, LED with density,
mono-exponential fits, cycles 3-4 formula, RC, 2 cm³ threshold).
Sjögreen Gleisner K et al., EANM recommendations for 177Lu dosimetry, Eur J
Nucl Med Mol Imaging 2022;49:1778-1809.
Hänscheid H et al., J Nucl Med 2018;59:75-81. Madsen MT et al., Med Phys
2018;45:2318-2324.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from theranode.dosimetry.absorbed_dose import (
    DEFAULT_GAS_THRESHOLD_G_PER_ML,
    GasPolicy,
    led_dose_rate,
)
from theranode.dosimetry.density import SCHNEIDER_2000, DensityCalibration
from theranode.dosimetry.dose_map import NormalisedMap, VoiTarget, normalise_to_voi_means
from theranode.dosimetry.errors import DosimetryError, GeometryError, InsufficientDataError
from theranode.dosimetry.kinetics import fit_best, fit_curve, fit_voxels_monoexponential
from theranode.dosimetry.partial_volume import (
    PartialVolumeMethod,
    TimePointCorrection,
    VoiOnGrid,
    contrast_correction,
    gtm_correction,
)
from theranode.dosimetry.pvc import PointSpread
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.recovery import (
    DEFAULT_RECOVERY,
    MIN_LESION_VOLUME_ML,
    RecoveryCurve,
    apply_lesion_eligibility,
    apply_recovery,
)
from theranode.dosimetry.registration import (
    RegistrationSettings,
    RigidRegistration,
    register_rigid,
    resample_mask,
    resample_to_reference,
)
from theranode.dosimetry.results import (
    CurvePoint,
    CycleResult,
    DoseMethod,
    DoseUncertainty,
    KineticFit,
    KineticModel,
    MapVoi,
    Organ,
    VoiDose,
    VoiKind,
)
from theranode.dosimetry.roi import voi_statistics
from theranode.dosimetry.single_time_point import (
    VoiScan,
    hanscheid,
    hanscheid_dose_gy,
    madsen,
    scale_from_reference_cycle,
)
from theranode.dosimetry.uncertainty import (
    ReferenceCycle,
    TimePointSpread,
    UncertaintyInputs,
    multi_time_point_budget,
    recovery_log_slope,
    recovery_relative,
    segmentation_relative,
    single_time_point_budget,
)
from theranode.dosimetry.voi_sensitivity import (
    noise_relative,
    registration_relative,
    volume_log_slope,
)
from theranode.dosimetry.volume import Volume, average_onto

logger = logging.getLogger(__name__)

DOSE_UNIT = "Gy"


# -- inputs and settings ---------------------------------------------------
@dataclass(frozen=True)
class VoiMask:
    """A named volume of interest as a boolean mask on a CT grid."""

    name: str
    kind: VoiKind
    mask: Volume
    organ: Organ | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", VoiKind(self.kind))
        if not np.any(self.mask.array):
            raise GeometryError(
                f"VOI {self.name!r} has an empty mask; remove it or redraw it."
            )

    @property
    def volume_ml(self) -> float:
        """Volume of the mask on its own grid (voxel count × voxel volume)."""
        return float(np.count_nonzero(self.mask.array)) * self.mask.voxel_volume_ml


@dataclass(frozen=True)
class TimePointImages:
    """The SPECT/CT of one time point (SPECT and CT share a frame of reference).

    Attributes
    ----------
    elapsed_h:
        Acquisition time after injection, hours.
    ct:
        CT in HU.
    spect:
        Activity concentration in Bq/mL.
    vois:
        Optional VOIs adjusted on this time point's CT; they replace the
        propagated reference VOIs of the same name at this time point.
    spect_fwhm_mm:
        Resolution of this SPECT (FWHM of a Gaussian point spread function,
        mm) for partial-volume correction; ``None``: the settings' default.
    """

    elapsed_h: float
    ct: Volume
    spect: Volume
    vois: tuple[VoiMask, ...] = ()
    spect_fwhm_mm: float | None = None


@dataclass(frozen=True)
class CycleInputs:
    """Everything the engine needs for one cycle.

    ``vois`` are drawn on the reference CT: the CT of the earliest time point.
    """

    cycle_number: int
    time_points: tuple[TimePointImages, ...]
    vois: tuple[VoiMask, ...]
    administered_activity_mbq: float | None = None

    def ordered(self) -> tuple[TimePointImages, ...]:
        """Time points sorted by time after injection."""
        return tuple(sorted(self.time_points, key=lambda tp: tp.elapsed_h))

    @property
    def reference(self) -> TimePointImages:
        """The reference (earliest) time point."""
        return self.ordered()[0]


class StpFallback(str, Enum):
    """Single-time-point method when no multi-time-point reference cycle exists."""

    HANSCHEID = "hanscheid"
    MADSEN = "madsen"


@dataclass(frozen=True)
class EngineSettings:
    """Every knob of the dosimetry engine (defaults follow Hebert 2024).

    Attributes
    ----------
    radionuclide:
        Therapy radionuclide.
    density_calibration:
        HU → g/mL curve of the CT protocol.
    gas_policy, gas_threshold_g_per_ml:
        LED in voxels of almost no mass (:mod:`theranode.dosimetry.absorbed_dose`).
    kinetic_model:
        Model of VOI curves; mono-exponential as in the paper.
    select_model_by_aicc:
        Choose between mono- and bi-exponential by AICc (needs ≥ 5 points
        for the bi-exponential to be ranked; otherwise falls back).
    recovery_curve:
        RC(volume) of the camera/reconstruction.
    partial_volume:
        How VOI means are corrected for partial volume
        (:mod:`theranode.dosimetry.partial_volume`); the paper's RC(volume) for
        lesions by default.
    spect_fwhm_mm:
        SPECT resolution (FWHM, mm) for time points that state none; the
        methods other than ``paper`` need one.
    uncertainty:
        Input uncertainties of the budget every VOI dose carries
        (:mod:`theranode.dosimetry.uncertainty`).
    min_lesion_volume_ml:
        Lesions below are flagged excluded (2 mL, RC ≈ 0.5, paper).
    apply_recovery_to_marrow:
        Also divide the L2-L4 marrow dose by RC(volume).
    stp_fallback:
        Method for single-time-point cycles without a reference cycle.
    population_half_life_h:
        Madsen population effective half-lives, keyed by VOI name, organ
        value or kind value (looked up in that order).
    mask_threshold:
        Occupancy threshold of masks resampled to the dose grid.
    voxelwise_map:
        Compute the voxel-wise dose map (False skips it, e.g. for speed).
    registration:
        Rigid registration settings.
    """

    radionuclide: Radionuclide = Radionuclide.LU177
    density_calibration: DensityCalibration = SCHNEIDER_2000
    gas_policy: GasPolicy = GasPolicy.ZERO_DOSE
    gas_threshold_g_per_ml: float = DEFAULT_GAS_THRESHOLD_G_PER_ML
    kinetic_model: KineticModel = KineticModel.MONOEXPONENTIAL
    select_model_by_aicc: bool = False
    recovery_curve: RecoveryCurve = DEFAULT_RECOVERY
    partial_volume: PartialVolumeMethod = PartialVolumeMethod.PAPER
    spect_fwhm_mm: float | None = None
    uncertainty: UncertaintyInputs = field(default_factory=UncertaintyInputs)
    min_lesion_volume_ml: float = MIN_LESION_VOLUME_ML
    apply_recovery_to_marrow: bool = False
    stp_fallback: StpFallback = StpFallback.HANSCHEID
    population_half_life_h: Mapping[str, float] = field(default_factory=dict)
    mask_threshold: float = 0.5
    voxelwise_map: bool = True
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "radionuclide", Radionuclide(self.radionuclide))
        object.__setattr__(self, "gas_policy", GasPolicy(self.gas_policy))
        object.__setattr__(self, "kinetic_model", KineticModel(self.kinetic_model))
        object.__setattr__(self, "stp_fallback", StpFallback(self.stp_fallback))
        object.__setattr__(self, "partial_volume", PartialVolumeMethod(self.partial_volume))
        if self.spect_fwhm_mm is not None:
            PointSpread(self.spect_fwhm_mm)  # refuses a non-positive or infinite FWHM
        if not 0.0 < self.mask_threshold < 1.0:
            raise DosimetryError(
                f"mask_threshold must be in (0, 1), got {self.mask_threshold}."
            )

    def as_dict(self) -> dict[str, object]:
        """JSON-ready echo of the settings, stored with every result."""
        return {name: _plain(getattr(self, name)) for name in self.__dataclass_fields__}

    def population_lambda_per_h(self, voi: VoiMask) -> float:
        """Madsen population λ for ``voi`` (name, then organ, then kind)."""
        keys = [voi.name, voi.organ.value if voi.organ else None, voi.kind.value]
        for key in keys:
            if key is not None and key in self.population_half_life_h:
                return math.log(2.0) / self.population_half_life_h[key]
        raise InsufficientDataError(
            f"Madsen's single-time-point method needs a population effective half-life for "
            f"VOI {voi.name!r} (keys tried: {[k for k in keys if k]}); add one to "
            "population_half_life_h or use the Hänscheid fallback."
        )


def _plain(value: object) -> object:
    """A JSON-friendly copy of a settings value."""
    if isinstance(value, Enum):
        return value.value
    if is_dataclass(value) and not isinstance(value, type):
        return {
            "type": type(value).__name__,
            **{k: _plain(v) for k, v in asdict(value).items()},
        }
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# -- grid preparation --------------------------------------------------------
def _density_float32(
    ct: Volume, calibration: DensityCalibration, slab: int = 16
) -> Volume:
    """HU → g/mL in float32, a few slices at a time (bounds float64 temporaries)."""
    if ct.unit.lower() not in ("", "hu"):
        raise DosimetryError(
            f"Expected a CT volume in HU, got unit {ct.unit!r}. Convert the image to "
            "Hounsfield units (rescale slope/intercept) first."
        )
    out = np.empty(ct.shape, dtype=np.float32)
    for start in range(0, ct.shape[0], slab):
        out[start : start + slab] = calibration.density(ct.array[start : start + slab])
    return ct.with_array(out, unit="g/mL")


def density_on_grid(
    ct: Volume, grid: Volume, calibration: DensityCalibration
) -> Volume:
    """Mass density of ``ct`` averaged onto ``grid`` (same frame of reference).

    HU are converted to g/mL on the CT grid first (density is what LED
    averages), then bin-shrunk by the integer factor ``floor(target / source
    spacing)`` per axis (a box average close to the dose voxel) and linearly
    resampled onto ``grid``.

    References
    ----------
    Hebert et al. 2024 (LED with density correction); Schneider et al. 2000.
    """
    density = _density_float32(ct, calibration)
    out = average_onto(density, grid, default_value=calibration.points_g_per_ml[0])
    return out.with_array(out.array.astype(np.float64), unit=density.unit)


@dataclass(frozen=True, eq=False)
class _PreparedTimePoint:
    """One time point on its own SPECT grid, with the VOIs propagated onto it.

    ``dose_rate`` is the LED dose rate of the SPECT as measured: VOI curve
    points are its VOI means times the partial-volume factors of
    ``correction``. ``map_dose_rate`` is what the voxel-wise map is made of:
    the LED dose rate of the voxel-wise corrected SPECT when the method gives
    one (GTM → RBV), else ``dose_rate``.
    """

    elapsed_h: float
    activity: Volume
    density: Volume
    dose_rate: Volume
    masks: dict[str, Volume]
    volumes_ml: dict[str, float]
    registration: RigidRegistration | None
    correction: TimePointCorrection
    map_dose_rate: Volume

    def factor(self, name: str) -> float:
        """The partial-volume factor of VOI ``name`` at this time point (1: none)."""
        return self.correction.factors.get(name, 1.0)


def _voi_masks_on_spect(
    reference_vois: Sequence[VoiMask],
    own_vois: Sequence[VoiMask],
    spect: Volume,
    registration: RigidRegistration | None,
    threshold: float,
) -> list[VoiOnGrid]:
    """Reference VOIs carried to this time point (own VOIs take precedence)."""
    to_moving = registration.inverse() if registration is not None else None
    own = {v.name: v for v in own_vois}
    out = []
    for voi in reference_vois:
        if voi.name in own:
            source, reg = own[voi.name], None
        else:
            source, reg = voi, to_moving
        mask = resample_mask(source.mask, spect, reg, threshold)
        out.append(VoiOnGrid(voi.name, voi.kind, source.mask, reg,
                             np.asarray(mask.array, dtype=bool), source.volume_ml))
    return out


def _psf(tp: TimePointImages, settings: EngineSettings) -> PointSpread:
    fwhm_mm = tp.spect_fwhm_mm if tp.spect_fwhm_mm is not None else settings.spect_fwhm_mm
    if fwhm_mm is None:
        raise InsufficientDataError(
            f"The {settings.partial_volume.value!r} partial-volume correction needs the "
            f"resolution of the {tp.elapsed_h:g} h SPECT, and neither its camera nor the "
            "settings state one; configure the camera's spect_fwhm_mm (or "
            "default_spect_fwhm_mm), or use the 'paper' method."
        )
    return PointSpread(fwhm_mm)


def _fwhm_used(tp: TimePointImages, settings: EngineSettings) -> float | None:
    """The resolution a time point's partial-volume correction used (None: none needed)."""
    if settings.partial_volume is PartialVolumeMethod.PAPER:
        return None
    return _psf(tp, settings).fwhm_mm


def _correction(
    tp: TimePointImages,
    activity: Volume,
    vois: Sequence[VoiOnGrid],
    settings: EngineSettings,
) -> TimePointCorrection:
    method = settings.partial_volume
    if method is PartialVolumeMethod.GTM:
        return gtm_correction(activity, tp.ct, vois, _psf(tp, settings),
                              settings.uncertainty.psf_fwhm_sd_mm)
    if method is PartialVolumeMethod.PAPER_CONTRAST:
        return contrast_correction(activity, vois, _psf(tp, settings), settings.recovery_curve)
    return TimePointCorrection()


def _prepare_time_point(
    tp: TimePointImages,
    registration: RigidRegistration | None,
    vois: Sequence[VoiMask],
    settings: EngineSettings,
) -> _PreparedTimePoint:
    """LED dose rate on the time point's own SPECT grid with its own CT's density.

    The VOIs are carried to the time point (the paper propagates them), so
    the VOI curves never interpolate SPECT values.
    """
    activity = tp.spect.with_array(np.asarray(tp.spect.array, dtype=np.float64))
    density = density_on_grid(tp.ct, tp.spect, settings.density_calibration)

    def dose_rate(concentration: Volume) -> Volume:
        return led_dose_rate(
            concentration,
            density,
            settings.radionuclide,
            settings.gas_policy,
            settings.gas_threshold_g_per_ml,
        ).dose_rate

    rate = dose_rate(activity)
    on_grid = _voi_masks_on_spect(
        vois, tp.vois, tp.spect, registration, settings.mask_threshold
    )
    correction = _correction(tp, activity, on_grid, settings)
    map_rate = rate if correction.activity is None else dose_rate(correction.activity)
    return _PreparedTimePoint(
        tp.elapsed_h, activity, density, rate,
        {v.name: tp.spect.with_array(v.measure, unit="mask") for v in on_grid},
        {v.name: v.volume_ml for v in on_grid},
        registration, correction, map_rate,
    )


def _curve_point(
    prepared: _PreparedTimePoint, name: str, corrected: bool = True
) -> CurvePoint:
    """The VOI's point: mean dose rate and activity, partial-volume corrected if asked."""
    mask = prepared.masks[name].array
    factor = prepared.factor(name) if corrected else 1.0
    mean_rate = float(prepared.dose_rate.array[mask].mean()) * factor
    mean_bq_per_ml = float(prepared.activity.array[mask].mean()) * factor
    volume_ml = prepared.volumes_ml[name]
    return CurvePoint(
        elapsed_h=prepared.elapsed_h,
        mean_dose_rate_gy_per_h=mean_rate,
        activity_mbq=mean_bq_per_ml * volume_ml / 1e6,
        volume_ml=volume_ml,
    )


# -- fits and corrections ------------------------------------------------------
def _fit(
    times_h: Sequence[float], values: Sequence[float], settings: EngineSettings
) -> KineticFit:
    lam_phys = nuclear_data(settings.radionuclide).decay_constant_per_h
    if settings.select_model_by_aicc:
        return fit_best(times_h, values, lam_phys)
    return fit_curve(settings.kinetic_model, times_h, values, lam_phys)


def _divided_by_rc(kind: VoiKind, settings: EngineSettings) -> bool:
    """Whether a VOI of ``kind`` is divided by RC(volume) after its fit (:func:`_corrected`)."""
    method = settings.partial_volume
    return (kind is VoiKind.LESION and method is PartialVolumeMethod.PAPER) or (
        kind is VoiKind.MARROW
        and settings.apply_recovery_to_marrow
        and method is not PartialVolumeMethod.GTM
    )


def _uses_rc(kind: VoiKind, settings: EngineSettings) -> bool:
    """Whether RC(volume) enters the VOI's dose (after the fit, or per time point)."""
    contrast = kind is VoiKind.LESION and \
        settings.partial_volume is PartialVolumeMethod.PAPER_CONTRAST
    return contrast or _divided_by_rc(kind, settings)


#: Smallest random relative uncertainty a curve point is given: a noise-free image
#: would otherwise state none, and the weighted fit needs every point's σ > 0.
MIN_POINT_RELATIVE = 1e-3


def _spread(
    prepared: _PreparedTimePoint, voi: VoiMask, value: float, settings: EngineSettings
) -> TimePointSpread:
    """The budget's inputs for ``voi`` at one time point (:mod:`.voi_sensitivity`)."""
    inputs = settings.uncertainty
    image, mask = prepared.activity.array, prepared.masks[voi.name].array
    counts = max(noise_relative(image, mask), MIN_POINT_RELATIVE)
    registration = 0.0 if prepared.registration is None else registration_relative(
        image, mask, prepared.activity.spacing_mm, inputs.registration_sd_mm)
    rc_slope = 0.0
    partial_volume = prepared.correction.psf_sensitivity.get(voi.name, 0.0)
    if _uses_rc(voi.kind, settings):
        partial_volume = recovery_relative(settings.recovery_curve, voi.volume_ml, inputs)
        rc_slope = recovery_log_slope(settings.recovery_curve, voi.volume_ml)
    volume = segmentation_relative(
        inputs.volume_relative(voi.kind), volume_log_slope(image, mask), rc_slope)
    return TimePointSpread(prepared.elapsed_h, value, counts, registration, partial_volume,
                           volume)


def _with_budget(dose: VoiDose, budget: DoseUncertainty | None) -> VoiDose:
    """``dose`` carrying ``budget``'s components, relative to its (corrected) mean."""
    if budget is None:
        return dose
    return replace(dose, uncertainty=DoseUncertainty(
        dose.mean_gy, budget.components, budget.effective_decay_sd_per_h))


def _multi_time_point_budget(
    voi: VoiMask, prepared: Sequence[_PreparedTimePoint], curve: Sequence[CurvePoint],
    settings: EngineSettings,
) -> tuple[DoseUncertainty | None, tuple[str, ...]]:
    """The VOI's uncertainty budget, or none with the reason in a note."""
    try:
        spreads = [_spread(p, voi, c.mean_dose_rate_gy_per_h, settings)
                   for p, c in zip(prepared, curve, strict=True)]
        lam_phys = nuclear_data(settings.radionuclide).decay_constant_per_h
        return multi_time_point_budget(spreads, settings.uncertainty, lam_phys), ()
    except DosimetryError as exc:
        logger.warning("VOI %s: no uncertainty budget: %s", voi.name, exc)
        return None, (f"uncertainty not computed: {exc}",)


def _corrected(voi: VoiDose, settings: EngineSettings) -> VoiDose:
    """RC after the fit where the method says so, then lesion eligibility.

    The paper's method divides lesions (and marrow if configured) by
    RC(volume); with ``paper-contrast`` lesions were corrected per time point
    and only marrow (if configured) is divided; with ``gtm`` every VOI was
    corrected per time point.
    """
    if _divided_by_rc(voi.kind, settings):
        voi = apply_recovery(voi, settings.recovery_curve)
    return apply_lesion_eligibility(voi, settings.min_lesion_volume_ml)


def _map_statistics(dose_map: Volume, mask: Volume) -> dict[str, Any]:
    stats = voi_statistics(dose_map, mask)
    return {
        "min_gy": stats.min,
        "max_gy": stats.max,
        "d98_gy": stats.d98,
        "d2_gy": stats.d2,
    }


#: The recovery note's clause that no longer holds once the map is scaled.
_RC_STATS_CLAUSE = "min/max/D98/D2 not corrected"


def _map_note(voi: VoiDose, factor: float, what: str) -> str:
    level = "reported (RC-corrected) mean" if voi.recovery_coefficient != 1.0 else "reported mean"
    if math.isnan(factor):
        return f"dose map ({what}) set to this VOI's {level} (map zero or covered here)"
    return (
        f"dose map ({what}) scaled ×{factor:.4g} in this VOI to its {level}; "
        "min/max/D98/D2 from it"
    )


def normalised_map(
    dose_map: Volume,
    vois: Sequence[VoiDose],
    masks: Mapping[str, Volume],
    what: str,
) -> tuple[Volume, tuple[VoiDose, ...], tuple[MapVoi, ...], tuple[str, ...]]:
    """``dose_map`` scaled in each VOI to its reported mean; VOIs with map statistics.

    Returns the scaled map, the VOIs with min/max/D98/D2 from it and a note,
    the VOIs as the map was normalised in them, and warnings
    (:func:`theranode.dosimetry.dose_map.normalise_to_voi_means`).
    """
    targets = [
        VoiTarget(v.name, np.asarray(masks[v.name].array, dtype=bool), v.mean_gy) for v in vois
    ]
    result: NormalisedMap = normalise_to_voi_means(dose_map, targets)
    scaled = result.dose.with_array(result.dose.array, unit=DOSE_UNIT)
    out = []
    for voi in vois:
        factor = result.factors.get(voi.name, math.nan)
        notes = tuple(n.replace(_RC_STATS_CLAUSE, "min/max/D98/D2 from the scaled map")
                      for n in voi.notes)
        out.append(replace(voi, notes=(*notes, _map_note(voi, factor, what)),
                           **_map_statistics(scaled, masks[voi.name])))
    map_vois = tuple(MapVoi(t.name, t.mask, result.factors.get(t.name, math.nan)) for t in targets)
    return scaled, tuple(out), map_vois, result.warnings


def _partial_volume_note(
    name: str, prepared: Sequence[_PreparedTimePoint], factor: float
) -> tuple[str, ...]:
    """What the per-time-point correction did to VOI ``name`` (nothing: no note)."""
    factors = [p.factor(name) for p in prepared]
    if all(f == 1.0 for f in factors):
        return ()
    first = prepared[0].correction.notes.get(name, "partial volume corrected")
    span = f"{min(factors):.3f}" if len(set(factors)) == 1 else \
        f"{min(factors):.3f}-{max(factors):.3f}"
    return (f"{first}: VOI mean × {span} per time point, absorbed dose × {factor:.3f}",)


def _pv_factor(
    voi: VoiMask, prepared: Sequence[_PreparedTimePoint], corrected: KineticFit,
    settings: EngineSettings,
) -> float:
    """Corrected / uncorrected absorbed dose (1 without a per-time-point correction)."""
    if all(p.factor(voi.name) == 1.0 for p in prepared):
        return 1.0
    raw = [_curve_point(p, voi.name, corrected=False) for p in prepared]
    raw_fit = _fit([c.elapsed_h for c in raw], [c.mean_dose_rate_gy_per_h for c in raw],
                   settings)
    return corrected.integral / raw_fit.integral if raw_fit.integral > 0 else math.nan


def _multi_time_point_voi(
    voi: VoiMask,
    prepared: Sequence[_PreparedTimePoint],
    settings: EngineSettings,
) -> VoiDose:
    curve = tuple(_curve_point(p, voi.name) for p in prepared)
    times = [c.elapsed_h for c in curve]
    fit = _fit(times, [c.mean_dose_rate_gy_per_h for c in curve], settings)
    activity_fit = _fit(times, [c.activity_mbq for c in curve], settings)
    pv_factor = _pv_factor(voi, prepared, fit, settings)
    budget, budget_notes = _multi_time_point_budget(voi, prepared, curve, settings)
    dose = VoiDose(
        name=voi.name,
        kind=voi.kind,
        method=DoseMethod.MULTI_TIME_POINT,
        volume_ml=voi.volume_ml,
        mean_gy=fit.integral,
        mean_gy_sd=fit.integral_sd,
        organ=voi.organ,
        time_integrated_activity_mbq_h=activity_fit.integral,
        effective_half_life_h=fit.effective_half_life_h,
        fit=fit,
        curve=curve,
        partial_volume_factor=pv_factor,
        notes=(*fit.notes, *_partial_volume_note(voi.name, prepared, pv_factor),
               *budget_notes),
    )
    return _with_budget(_corrected(dose, settings), budget)


def _voxelwise_dose_map(
    prepared: Sequence[_PreparedTimePoint], settings: EngineSettings
) -> tuple[Volume, list[str]]:
    """Voxel-wise mono-exponential fit on the dose grid (reference SPECT grid).

    Each time point's dose-rate map is resampled onto the grid through its
    registration (linear); voxels where the reference map is in gas are
    left at 0 (density below the gas threshold).
    """
    lam_phys = nuclear_data(settings.radionuclide).decay_constant_per_h
    grid = prepared[0].dose_rate
    stack = np.stack(
        [
            resample_to_reference(p.map_dose_rate, grid, p.registration).array
            for p in prepared
        ]
    )
    tissue = np.asarray(prepared[0].density.array >= settings.gas_threshold_g_per_ml)
    fit = fit_voxels_monoexponential(
        [p.elapsed_h for p in prepared], stack, lam_phys, tissue
    )
    warnings = []
    if fit.n_fallback:
        warnings.append(
            f"voxel-wise fit: {fit.n_fallback} of {int(tissue.sum())} tissue voxels integrated "
            "by trapezoid + physical tail (non-positive samples or degenerate fit)"
        )
    if fit.n_clipped:
        warnings.append(
            f"voxel-wise fit: λ clipped to λ_phys in {fit.n_clipped} voxels"
        )
    return grid.with_array(fit.dose.astype(np.float32), unit=DOSE_UNIT), warnings


# -- multi-time-point cycle ------------------------------------------------
def register_time_points(
    inputs: CycleInputs, settings: EngineSettings
) -> tuple[RigidRegistration | None, ...]:
    """Rigid registration of every CT onto the reference CT (``None`` for the reference)."""
    ordered = inputs.ordered()
    reference_ct = ordered[0].ct
    out: list[RigidRegistration | None] = [None]
    for tp in ordered[1:]:
        out.append(register_rigid(reference_ct, tp.ct, settings.registration))
    return tuple(out)


def _registration_warnings(
    ordered: Sequence[TimePointImages],
    registrations: Sequence[RigidRegistration | None],
) -> list[str]:
    warnings = []
    for tp, reg in zip(ordered, registrations, strict=True):
        if reg is not None and not reg.converged:
            warnings.append(
                f"registration of the {tp.elapsed_h:g} h CT did not converge "
                f"({reg.stop_condition}); review it"
            )
    return warnings


def compute_multi_time_point_cycle(
    inputs: CycleInputs,
    settings: EngineSettings | None = None,
    registrations: Sequence[RigidRegistration | None] | None = None,
) -> CycleResult:
    """Absorbed doses of a cycle imaged at several time points (module docstring).

    Parameters
    ----------
    inputs:
        Images per time point and the VOIs of the reference (earliest) CT.
    settings:
        Engine settings; defaults when ``None``.
    registrations:
        Precomputed registrations in time order (``None`` for the reference),
        e.g. reviewed by a user; computed when omitted.

    Raises
    ------
    InsufficientDataError
        Fewer than two time points.
    RegistrationError, FitError, GeometryError
        From the steps, with their own messages.
    """
    settings = settings or EngineSettings()
    ordered = inputs.ordered()
    if len(ordered) < 2:
        raise InsufficientDataError(
            f"A multi-time-point cycle needs at least 2 time points, got {len(ordered)}; "
            "use compute_single_time_point_cycle."
        )
    regs = (
        tuple(registrations)
        if registrations is not None
        else register_time_points(inputs, settings)
    )
    prepared = [
        _prepare_time_point(tp, reg, inputs.vois, settings)
        for tp, reg in zip(ordered, regs, strict=True)
    ]
    warnings = _registration_warnings(ordered, regs)
    vois = tuple(_multi_time_point_voi(v, prepared, settings) for v in inputs.vois)
    dose_map = None
    map_vois: tuple[MapVoi, ...] = ()
    if settings.voxelwise_map:
        fitted, map_warnings = _voxelwise_dose_map(prepared, settings)
        dose_map, vois, map_vois, scale_warnings = normalised_map(
            fitted, vois, prepared[0].masks, "voxel-wise fit"
        )
        warnings += [*map_warnings, *scale_warnings]
    quality = tuple(
        reg.quality(tp.elapsed_h)
        for tp, reg in zip(ordered, regs, strict=True)
        if reg is not None
    )
    logger.info(
        "Cycle %d: %d VOIs from %d time points",
        inputs.cycle_number,
        len(vois),
        len(ordered),
    )
    map_method, map_comment = multi_time_point_map_method(settings)
    return CycleResult(
        cycle_number=inputs.cycle_number,
        method=DoseMethod.MULTI_TIME_POINT,
        administered_activity_mbq=inputs.administered_activity_mbq,
        time_points_h=tuple(tp.elapsed_h for tp in ordered),
        vois=vois,
        dose_map=dose_map,
        registration=quality,
        warnings=tuple(warnings),
        settings={
            **settings.as_dict(),
            "dose_grid": "reference time point SPECT grid",
            "time_point_spect_fwhm_mm": [_fwhm_used(tp, settings) for tp in ordered],
            "dose_map": map_method if dose_map is not None else "none",
            "dose_map_comment": map_comment if dose_map is not None else "",
        },
        map_vois=map_vois,
    )


# -- single-time-point cycle -------------------------------------------------
def _reference_scan(reference: VoiDose, elapsed_h: float) -> VoiScan | None:
    if not reference.curve:
        return None
    point = min(reference.curve, key=lambda c: abs(c.elapsed_h - elapsed_h))
    return VoiScan(point.activity_mbq, point.volume_ml, point.elapsed_h)


def _single_voi_uncorrected(
    voi: VoiMask,
    point: CurvePoint,
    reference: CycleResult | None,
    settings: EngineSettings,
) -> VoiDose:
    ref_voi = _find_voi(reference, voi.name)
    scan = VoiScan(point.activity_mbq, point.volume_ml, point.elapsed_h)
    ref_scan = (
        _reference_scan(ref_voi, point.elapsed_h) if ref_voi is not None else None
    )
    if ref_voi is not None and ref_scan is not None:
        scaled = scale_from_reference_cycle(ref_voi, ref_scan, scan)
        return replace(
            scaled,
            kind=voi.kind,
            organ=voi.organ,
            excluded=False,
            exclusion_reason=None,
        )
    rate, t = point.mean_dose_rate_gy_per_h, point.elapsed_h
    if settings.stp_fallback is StpFallback.MADSEN:
        lam = settings.population_lambda_per_h(voi)
        return madsen(voi.name, voi.kind, rate, t, voi.volume_ml, lam, organ=voi.organ)
    return hanscheid(voi.name, voi.kind, rate, t, voi.volume_ml, organ=voi.organ)


def _find_voi(result: CycleResult | None, name: str) -> VoiDose | None:
    if result is None:
        return None
    try:
        return result.voi(name)
    except KeyError:
        return None


def _single_voi(
    voi: VoiMask,
    prepared: _PreparedTimePoint,
    reference: CycleResult | None,
    settings: EngineSettings,
) -> VoiDose:
    point = _curve_point(prepared, voi.name)
    dose = _single_voi_uncorrected(voi, point, reference, settings)
    factor = prepared.factor(voi.name)
    notes = _partial_volume_note(voi.name, (prepared,), factor)
    dose = replace(dose, curve=(point,), partial_volume_factor=factor,
                   notes=(*dose.notes, *notes))
    corrected = _corrected(dose, settings)
    budget, budget_notes = _single_time_point_budget(
        voi, prepared, point, corrected, _find_voi(reference, voi.name), settings)
    return _with_budget(replace(corrected, notes=(*corrected.notes, *budget_notes)), budget)


def _single_time_point_budget(
    voi: VoiMask, prepared: _PreparedTimePoint, point: CurvePoint, dose: VoiDose,
    reference: VoiDose | None, settings: EngineSettings,
) -> tuple[DoseUncertainty | None, tuple[str, ...]]:
    """The budget of a single-time-point VOI, or none with the reason in a note.

    For the paper's scaling the reference cycle's λ_eff uncertainty and random
    part come from the reference VOI's budget; its ~24 h scan's count noise is
    taken as this scan's (the same VOI at about the same time).
    """
    try:
        spread = _spread(prepared, voi, point.mean_dose_rate_gy_per_h, settings)
        scaled = None
        if dose.method is DoseMethod.SINGLE_TIME_POINT_SCALED:
            if reference is None or reference.uncertainty is None or \
                    reference.uncertainty.effective_decay_sd_per_h is None:
                return None, (
                    "uncertainty not computed: the reference cycle's VOI has no budget "
                    "(computed by an earlier theranode); reprocess it",
                )
            scan = _reference_scan(reference, point.elapsed_h)
            scaled = ReferenceCycle(
                lambda_eff_sd_per_h=reference.uncertainty.effective_decay_sd_per_h,
                delta_h=point.elapsed_h - (scan.elapsed_h if scan else point.elapsed_h),
                dose_random_relative=reference.uncertainty.random_relative,
                scan_counts_relative=spread.counts_relative)
        budget = single_time_point_budget(dose.mean_gy, spread, settings.uncertainty,
                                          dose.method, scaled)
        return budget, ()
    except DosimetryError as exc:
        logger.warning("VOI %s: no uncertainty budget: %s", voi.name, exc)
        return None, (f"uncertainty not computed: {exc}",)


def compute_single_time_point_cycle(
    inputs: CycleInputs,
    settings: EngineSettings | None = None,
    reference: CycleResult | None = None,
) -> CycleResult:
    """Absorbed doses of a cycle imaged once (~24 h), as in the paper's cycles 3-4.

    The dose map follows the VOI methods (module docstring): the time
    point's dose-rate map times each VOI's effective time-integration
    factor, Hänscheid outside every VOI; its VOI means are the reported means.

    Parameters
    ----------
    inputs:
        One time point (CT, SPECT) and the VOIs drawn on its CT.
    settings:
        Engine settings; defaults when ``None``.
    reference:
        A multi-time-point :class:`CycleResult` of the same patient (the
        paper: cycle 2). VOIs present in it are scaled with the paper's
        formula; the others (or all, without a reference) use
        ``settings.stp_fallback``.

    Raises
    ------
    InsufficientDataError
        Not exactly one time point, or Madsen without a population half-life.
    """
    settings = settings or EngineSettings()
    if len(inputs.time_points) != 1:
        raise InsufficientDataError(
            f"A single-time-point cycle needs exactly one time point, got "
            f"{len(inputs.time_points)}; use compute_multi_time_point_cycle for more."
        )
    tp = inputs.time_points[0]
    prepared = _prepare_time_point(tp, None, inputs.vois, settings)
    rate = prepared.map_dose_rate
    hanscheid_map = rate.with_array(
        (rate.array * hanscheid_dose_gy(1.0, tp.elapsed_h)).astype(
            np.float32
        ),
        unit=DOSE_UNIT,
    )
    vois = tuple(_single_voi(v, prepared, reference, settings) for v in inputs.vois)
    dose_map, vois, map_vois, map_warnings = normalised_map(
        hanscheid_map, vois, prepared.masks, "dose rate × VOI time-integration factor"
    )
    method = _cycle_method(vois)
    warnings = [*_stp_warnings(vois, reference), *map_warnings]
    statement, comment = single_time_point_map_method(
        vois, reference, tp.elapsed_h, settings.partial_volume
    )
    return CycleResult(
        cycle_number=inputs.cycle_number,
        method=method,
        administered_activity_mbq=inputs.administered_activity_mbq,
        time_points_h=(tp.elapsed_h,),
        vois=vois,
        dose_map=dose_map,
        warnings=tuple(warnings),
        settings={
            **settings.as_dict(),
            "dose_grid": "the time point's SPECT grid",
            "time_point_spect_fwhm_mm": [_fwhm_used(tp, settings)],
            "dose_map": statement,
            "dose_map_comment": comment,
            "reference_cycle": None if reference is None else reference.cycle_number,
        },
        map_vois=map_vois,
    )


#: How a multi-time-point cycle's map is made (``settings["dose_map"]``).
MULTI_TIME_POINT_MAP = (
    "voxel-wise mono-exponential fit of the registered dose-rate maps, scaled within each "
    "VOI so that its mean is the VOI's reported mean (RC-corrected for lesions; smallest "
    "VOI first where VOIs overlap); outside every VOI the voxel-wise fit"
)
#: The same in at most 64 characters (Dose Comment, LO).
MULTI_TIME_POINT_MAP_COMMENT = "Voxel fit scaled to the reported VOI means; outside: voxel fit"
#: How it is made with the GTM partial-volume correction.
MULTI_TIME_POINT_MAP_GTM = (
    "voxel-wise mono-exponential fit of the registered dose-rate maps of the SPECT corrected "
    "for partial volume voxel by voxel (region-based voxel-wise correction, Thomas 2011, with "
    "the GTM means), scaled within each VOI so that its mean is the VOI's reported (GTM-"
    "corrected) mean (smallest VOI first where VOIs overlap); outside every VOI the voxel-wise "
    "fit"
)
MULTI_TIME_POINT_MAP_GTM_COMMENT = "RBV-corrected voxel fit scaled to the reported VOI means"


def multi_time_point_map_method(settings: EngineSettings) -> tuple[str, str]:
    """How a multi-time-point cycle's map is made: a statement and a ≤ 64-character comment."""
    if settings.partial_volume is PartialVolumeMethod.GTM:
        return MULTI_TIME_POINT_MAP_GTM, MULTI_TIME_POINT_MAP_GTM_COMMENT
    return MULTI_TIME_POINT_MAP, MULTI_TIME_POINT_MAP_COMMENT


def single_time_point_map_method(
    vois: Sequence[VoiDose], reference: CycleResult | None, elapsed_h: float,
    partial_volume: PartialVolumeMethod = PartialVolumeMethod.PAPER,
) -> tuple[str, str]:
    """How a single-time-point cycle's map is made: a statement and a ≤ 64-character comment."""
    methods = {v.method for v in vois}
    parts = []
    if DoseMethod.SINGLE_TIME_POINT_SCALED in methods and reference is not None:
        parts.append(
            f"the paper's scaling from cycle {reference.cycle_number} (Hebert 2024) in the "
            "VOIs the report says were scaled"
        )
    for fallback in (DoseMethod.HANSCHEID, DoseMethod.MADSEN):
        if fallback in methods:
            parts.append(f"{fallback.value} in the VOIs the report says used it")
    rate = (
        "dose rate of the SPECT corrected for partial volume voxel by voxel (region-based "
        "voxel-wise correction, Thomas 2011)"
        if partial_volume is PartialVolumeMethod.GTM else "dose rate"
    )
    corrected = "GTM-corrected" if partial_volume is PartialVolumeMethod.GTM else \
        "RC-corrected for lesions"
    statement = (
        f"{rate} at {elapsed_h:.4g} h × each VOI's time-integration factor (reported mean "
        f"÷ mean dose rate in the VOI; {corrected}): {'; '.join(parts)}; smallest "
        "VOI first where VOIs overlap; outside every VOI Hänscheid 2018, D = Ḋ(t)·2t/ln 2"
    )
    if DoseMethod.SINGLE_TIME_POINT_SCALED in methods:
        comment = "Dose rate x per-VOI factor of Hebert 2024; outside: Hanscheid"
    elif DoseMethod.MADSEN in methods:
        comment = "Dose rate x per-VOI Madsen factor; outside: Hanscheid 2018"
    else:
        comment = "Hanscheid 2018 voxel-wise, scaled to the reported VOI means"
    return statement, comment


def _cycle_method(vois: Sequence[VoiDose]) -> DoseMethod:
    methods = {v.method for v in vois}
    if DoseMethod.SINGLE_TIME_POINT_SCALED in methods:
        return DoseMethod.SINGLE_TIME_POINT_SCALED
    return next(iter(methods)) if methods else DoseMethod.HANSCHEID


def _stp_warnings(vois: Sequence[VoiDose], reference: CycleResult | None) -> list[str]:
    fallback = [
        v.name for v in vois if v.method is not DoseMethod.SINGLE_TIME_POINT_SCALED
    ]
    if not fallback:
        return []
    why = (
        "no multi-time-point reference cycle"
        if reference is None
        else "absent from the reference cycle"
    )
    return [f"VOIs {', '.join(fallback)}: {why}; single-time-point fallback used"]
