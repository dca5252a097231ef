"""Orchestration of one treatment cycle: images in, :class:`CycleResult` out.

Multi-time-point cycles (the paper's cycles 1-2)
------------------------------------------------
1. Every CT is registered rigidly onto the reference CT, the first (earliest)
   time point's (:func:`dosimetry.registration.register_rigid`).
2. Per time point, on its own SPECT grid: density from its own CT (HU →
   g/mL on the CT grid, box-averaged by integer bin shrinking to about the
   SPECT voxel, then linearly resampled: mass is averaged, not HU) and the
   LED dose-rate map (:mod:`dosimetry.absorbed_dose`).
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
   (Gy). Per VOI, min, max, D98 and D2 come from this map, the mean from the
   VOI curve fit. The two agree when the kinetics inside the VOI are uniform
   and differ otherwise (the fit is not linear; see :mod:`dosimetry.kinetics`);
   the map's own mean is written into the VOI notes so the gap is visible.

Single-time-point cycles (cycles 3-4)
-------------------------------------
VOI means come from the paper's formula scaled from a multi-time-point
reference cycle (same VOI name; the reference curve point nearest in time
after injection; Δt corrected with the reference λ_eff), else from Hänscheid
(default) or Madsen with a configured population half-life. The dose map of
such a cycle is Hänscheid's formula applied voxel-wise to its dose-rate map,
``D(x) = Ḋ(x, t)·2t/ln 2``; per VOI the map's min/max/D98/D2 are rescaled by
the ratio of the VOI's reported mean to the map's VOI mean, so the map gives
the spatial distribution and the VOI method the level (noted per VOI).

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
import SimpleITK as sitk

from dosimetry.absorbed_dose import (
    DEFAULT_GAS_THRESHOLD_G_PER_ML,
    GasPolicy,
    led_dose_rate,
)
from dosimetry.density import SCHNEIDER_2000, DensityCalibration
from dosimetry.errors import DosimetryError, GeometryError, InsufficientDataError
from dosimetry.kinetics import fit_best, fit_curve, fit_voxels_monoexponential
from dosimetry.radionuclides import Radionuclide, nuclear_data
from dosimetry.recovery import (
    DEFAULT_RECOVERY,
    MIN_LESION_VOLUME_ML,
    RecoveryCurve,
    apply_lesion_eligibility,
    apply_recovery,
)
from dosimetry.registration import (
    RegistrationSettings,
    RigidRegistration,
    register_rigid,
    resample_mask,
    resample_to_reference,
)
from dosimetry.results import (
    CurvePoint,
    CycleResult,
    DoseMethod,
    KineticFit,
    KineticModel,
    Organ,
    VoiDose,
    VoiKind,
)
from dosimetry.roi import voi_statistics
from dosimetry.single_time_point import (
    VoiScan,
    hanscheid,
    hanscheid_dose_gy,
    madsen,
    scale_from_reference_cycle,
)
from dosimetry.volume import Volume, resample

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
    """

    elapsed_h: float
    ct: Volume
    spect: Volume
    vois: tuple[VoiMask, ...] = ()


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
        LED in voxels of almost no mass (:mod:`dosimetry.absorbed_dose`).
    kinetic_model:
        Model of VOI curves; mono-exponential as in the paper.
    select_model_by_aicc:
        Choose between mono- and bi-exponential by AICc (needs ≥ 5 points
        for the bi-exponential to be ranked; otherwise falls back).
    recovery_curve:
        RC(volume) of the camera/reconstruction.
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
    image = density.to_sitk()
    factors = [
        max(1, int(t / s + 1e-6))
        for t, s in zip(grid.spacing_mm, ct.spacing_mm, strict=True)
    ]
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
    shrunk = Volume.from_sitk(image, unit=density.unit)
    out = resample(
        shrunk, grid, None, "linear", default_value=calibration.points_g_per_ml[0]
    )
    return out.with_array(out.array.astype(np.float64), unit=density.unit)


@dataclass(frozen=True, eq=False)
class _PreparedTimePoint:
    """One time point on its own SPECT grid, with the VOIs propagated onto it."""

    elapsed_h: float
    activity: Volume
    density: Volume
    dose_rate: Volume
    masks: dict[str, Volume]
    volumes_ml: dict[str, float]
    registration: RigidRegistration | None


def _voi_masks_on_spect(
    reference_vois: Sequence[VoiMask],
    own_vois: Sequence[VoiMask],
    spect: Volume,
    registration: RigidRegistration | None,
    threshold: float,
) -> tuple[dict[str, Volume], dict[str, float]]:
    """Reference VOIs carried to this time point (own VOIs take precedence)."""
    to_moving = registration.inverse() if registration is not None else None
    own = {v.name: v for v in own_vois}
    masks: dict[str, Volume] = {}
    volumes: dict[str, float] = {}
    for voi in reference_vois:
        if voi.name in own:
            source, reg = own[voi.name], None
        else:
            source, reg = voi, to_moving
        masks[voi.name] = resample_mask(source.mask, spect, reg, threshold)
        volumes[voi.name] = source.volume_ml
    return masks, volumes


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
    rate = led_dose_rate(
        activity,
        density,
        settings.radionuclide,
        settings.gas_policy,
        settings.gas_threshold_g_per_ml,
    ).dose_rate
    masks, volumes = _voi_masks_on_spect(
        vois, tp.vois, tp.spect, registration, settings.mask_threshold
    )
    return _PreparedTimePoint(
        tp.elapsed_h, activity, density, rate, masks, volumes, registration
    )


def _curve_point(prepared: _PreparedTimePoint, name: str) -> CurvePoint:
    mask = prepared.masks[name].array
    mean_rate = float(prepared.dose_rate.array[mask].mean())
    mean_bq_per_ml = float(prepared.activity.array[mask].mean())
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


def _corrected(voi: VoiDose, settings: EngineSettings) -> VoiDose:
    """RC for lesions (and marrow if configured), then lesion eligibility."""
    wants_rc = voi.kind is VoiKind.LESION or (
        voi.kind is VoiKind.MARROW and settings.apply_recovery_to_marrow
    )
    if wants_rc:
        voi = apply_recovery(voi, settings.recovery_curve)
    return apply_lesion_eligibility(voi, settings.min_lesion_volume_ml)


def _map_statistics(
    dose_map: Volume | None, mask: Volume, scale: float = 1.0
) -> dict[str, Any]:
    if dose_map is None:
        return {}
    stats = voi_statistics(dose_map, mask)
    return {
        "min_gy": stats.min * scale,
        "max_gy": stats.max * scale,
        "d98_gy": stats.d98 * scale,
        "d2_gy": stats.d2 * scale,
        "map_mean_gy": stats.mean,
    }


def _multi_time_point_voi(
    voi: VoiMask,
    prepared: Sequence[_PreparedTimePoint],
    dose_map: Volume | None,
    settings: EngineSettings,
) -> VoiDose:
    curve = tuple(_curve_point(p, voi.name) for p in prepared)
    times = [c.elapsed_h for c in curve]
    fit = _fit(times, [c.mean_dose_rate_gy_per_h for c in curve], settings)
    activity_fit = _fit(times, [c.activity_mbq for c in curve], settings)
    stats = _map_statistics(dose_map, prepared[0].masks[voi.name])
    notes = list(fit.notes)
    map_mean = stats.pop("map_mean_gy", None)
    if map_mean is not None:
        notes.append(
            f"mean from the VOI curve fit; voxel-wise map mean in the VOI {map_mean:.4g} Gy "
            "(min/max/D98/D2 from the map)"
        )
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
        notes=tuple(notes),
        **stats,
    )
    return _corrected(dose, settings)


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
            resample_to_reference(p.dose_rate, grid, p.registration).array
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
    dose_map = None
    if settings.voxelwise_map:
        dose_map, map_warnings = _voxelwise_dose_map(prepared, settings)
        warnings += map_warnings
    vois = tuple(
        _multi_time_point_voi(v, prepared, dose_map, settings) for v in inputs.vois
    )
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
    return CycleResult(
        cycle_number=inputs.cycle_number,
        method=DoseMethod.MULTI_TIME_POINT,
        administered_activity_mbq=inputs.administered_activity_mbq,
        time_points_h=tuple(tp.elapsed_h for tp in ordered),
        vois=vois,
        dose_map=dose_map,
        registration=quality,
        warnings=tuple(warnings),
        settings={**settings.as_dict(), "dose_grid": "reference time point SPECT grid"},
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
    dose_map: Volume,
    settings: EngineSettings,
) -> VoiDose:
    point = _curve_point(prepared, voi.name)
    dose = _single_voi_uncorrected(voi, point, reference, settings)
    map_mean = float(dose_map.array[prepared.masks[voi.name].array].mean())
    scale = dose.mean_gy / map_mean if map_mean > 0 else 1.0
    stats = _map_statistics(dose_map, prepared.masks[voi.name], scale)
    stats.pop("map_mean_gy", None)
    note = (
        f"min/max/D98/D2 from the voxel-wise Hänscheid map scaled by {scale:.4g} "
        "to this VOI's mean"
    )
    dose = replace(dose, curve=(point,), notes=(*dose.notes, note), **stats)
    return _corrected(dose, settings)


def compute_single_time_point_cycle(
    inputs: CycleInputs,
    settings: EngineSettings | None = None,
    reference: CycleResult | None = None,
) -> CycleResult:
    """Absorbed doses of a cycle imaged once (~24 h), as in the paper's cycles 3-4.

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
    dose_map = prepared.dose_rate.with_array(
        (prepared.dose_rate.array * hanscheid_dose_gy(1.0, tp.elapsed_h)).astype(
            np.float32
        ),
        unit=DOSE_UNIT,
    )
    vois = tuple(
        _single_voi(v, prepared, reference, dose_map, settings) for v in inputs.vois
    )
    method = _cycle_method(vois)
    warnings = _stp_warnings(vois, reference)
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
            "dose_map": "Hänscheid 2018 voxel-wise: D = Ḋ(t)·2t/ln 2",
            "reference_cycle": None if reference is None else reference.cycle_number,
        },
    )


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
