"""Settings → the dosimetry engine's objects, checked before the node starts.

Every job builds its :class:`~theranode.dosimetry.cycle.EngineSettings` (and each
camera's :class:`~theranode.dicomio.nm.CountsCalibration`) from the configuration.
The engine's constructors check their values themselves (a density curve
above the density cap, a recovery plateau outside (0, 1], …); if those
checks ran only in jobs, a configuration that ``check-config`` calls valid
would make every job fail. :func:`build_engine_settings` therefore builds
exactly what a job builds, plus the few checks the engine makes later
(gas threshold in the LED dose rate, recovery at the smallest lesion, the
course projection, Madsen's population decay constants), and raises one
:class:`~theranode.config.schema.ConfigError` listing every refusal, one per
line, named by its setting. ``check-config`` and ``serve`` call it at
start-up; the pipeline calls it per job.

References
----------
Schneider W et al., Phys Med Biol 2000;45:459-478 (HU → density curve).
Hebert K et al., J Nucl Med 2024;65:923-930 (recovery, 2 cm³ lesions).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import TypeVar

import numpy as np

from theranode.config.schema import CalibrationSettings, ConfigError, Settings
from theranode.dicomio.nm import CountsCalibration
from theranode.dosimetry.absorbed_dose import GasPolicy, led_dose_rate
from theranode.dosimetry.bed import BedParameters
from theranode.dosimetry.course import CourseLimits, projected_totals
from theranode.dosimetry.cycle import EngineSettings, StpFallback
from theranode.dosimetry.density import DensityCalibration
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.partial_volume import PartialVolumeMethod
from theranode.dosimetry.pvc import PointSpread
from theranode.dosimetry.recovery import SigmoidRecovery
from theranode.dosimetry.results import KineticModel, VoiKind
from theranode.dosimetry.single_time_point import madsen_dose_gy
from theranode.dosimetry.uncertainty import UncertaintyInputs
from theranode.dosimetry.volume import Volume

T = TypeVar("T")

_DENSITY_KEYS = "dosimetry.density_points_hu / density_points_g_per_ml"
_RECOVERY_KEYS = "dosimetry.recovery_plateau / recovery_half_volume_ml / recovery_slope"
_DENSITY_CAP = next(
    f.default for f in dataclasses.fields(DensityCalibration) if f.name == "max_density_g_per_ml"
)


def _attempt(keys: str, build: Callable[[], T], problems: list[str], hint: str = "") -> T | None:
    """``build()``, or ``None`` with the engine's refusal added to ``problems``."""
    try:
        return build()
    except (DosimetryError, ValueError) as exc:
        problems.append(f"{keys}: the dosimetry engine refuses this value: {exc}{hint}")
        return None


def density_calibration(settings: Settings) -> DensityCalibration:
    """The configured HU → g/mL curve (raises the engine's DosimetryError)."""
    d = settings.dosimetry
    return DensityCalibration(
        tuple(d.density_points_hu), tuple(d.density_points_g_per_ml), name="configured"
    )


def recovery_curve(settings: Settings) -> SigmoidRecovery:
    """The configured RC(volume) curve (raises the engine's DosimetryError)."""
    d = settings.dosimetry
    return SigmoidRecovery(d.recovery_plateau, d.recovery_half_volume_ml, d.recovery_slope)


def uncertainty_inputs(settings: Settings) -> UncertaintyInputs:
    """The budget's input uncertainties from ``[uncertainty]`` (percent → fraction)."""
    u = settings.uncertainty
    return UncertaintyInputs(
        calibration_relative=u.calibration_percent / 100.0,
        psf_fwhm_sd_mm=u.psf_fwhm_sd_mm,
        recovery_curve_relative=u.recovery_curve_percent / 100.0,
        organ_volume_relative=u.organ_volume_percent / 100.0,
        lesion_volume_relative=u.lesion_volume_percent / 100.0,
        registration_sd_mm=u.registration_sd_mm,
        scaled_method_relative=u.scaled_method_percent / 100.0,
        hanscheid_relative=u.hanscheid_percent / 100.0,
        madsen_relative=u.madsen_percent / 100.0,
    )


def _engine(
    settings: Settings, density: DensityCalibration | None, recovery: SigmoidRecovery | None
) -> EngineSettings:
    d, p = settings.dosimetry, settings.protocol
    defaults = EngineSettings()
    return EngineSettings(
        density_calibration=density or defaults.density_calibration,
        gas_policy=GasPolicy(d.gas_policy),
        gas_threshold_g_per_ml=d.gas_threshold_g_per_ml,
        kinetic_model=KineticModel(d.kinetic_model),
        select_model_by_aicc=d.select_model_by_aicc,
        recovery_curve=recovery or defaults.recovery_curve,
        min_lesion_volume_ml=d.min_lesion_volume_ml,
        apply_recovery_to_marrow=d.apply_recovery_to_marrow,
        partial_volume=PartialVolumeMethod(d.partial_volume),
        spect_fwhm_mm=settings.calibration.default_spect_fwhm_mm or None,
        uncertainty=uncertainty_inputs(settings),
        stp_fallback=StpFallback(p.single_time_point_fallback),
        population_half_life_h={
            VoiKind.ORGAN.value: p.population_half_life_organ_h,
            VoiKind.MARROW.value: p.population_half_life_marrow_h,
            VoiKind.LESION.value: p.population_half_life_lesion_h,
        },
        voxelwise_map=d.voxelwise_map,
    )


def _probe_led(engine: EngineSettings) -> None:
    """The LED dose rate of one voxel, with the gas policy and threshold a job uses."""
    voxel = np.ones((1, 1, 1))
    activity = Volume(voxel, (1.0, 1.0, 1.0), unit="Bq/mL")
    density = Volume(voxel, (1.0, 1.0, 1.0), unit="g/mL")
    led_dose_rate(
        activity, density, engine.radionuclide, engine.gas_policy, engine.gas_threshold_g_per_ml
    )


def _runtime_checks(settings: Settings, engine: EngineSettings, problems: list[str]) -> None:
    """Checks the engine makes only while computing: run them once on probe values."""
    d = settings.dosimetry
    _attempt("dosimetry.gas_policy / gas_threshold_g_per_ml", lambda: _probe_led(engine), problems)
    _attempt(
        "dosimetry.min_lesion_volume_ml",
        lambda: engine.recovery_curve.coefficient(d.min_lesion_volume_ml),
        problems,
    )
    _attempt(
        "protocol.planned_cycles",
        lambda: projected_totals([], settings.protocol.planned_cycles),
        problems,
    )
    _attempt("limits", lambda: course_limits(settings), problems)
    _attempt(
        "limits.kidney_alpha_beta_gy / kidney_repair_half_time_h / kidney_bed_gy",
        lambda: kidney_bed_parameters(settings),
        problems,
    )
    for kind, half_life_h in engine.population_half_life_h.items():
        _attempt(
            f"protocol.population_half_life_{kind}_h",
            partial(madsen_dose_gy, 1.0, 24.0, math.log(2.0) / half_life_h),
            problems,
        )


def counts_calibrations(calibration: CalibrationSettings, problems: list[str]) -> None:
    """Build every configured camera sensitivity as the SPECT reader would."""
    decay = calibration.correct_decay_during_acquisition
    for i, camera in enumerate(calibration.cameras):
        _attempt(
            f"calibration.cameras[{i}].cps_per_mbq",
            partial(CountsCalibration, camera.cps_per_mbq, decay),
            problems,
        )
    if calibration.default_cps_per_mbq > 0:
        _attempt(
            "calibration.default_cps_per_mbq",
            lambda: CountsCalibration(calibration.default_cps_per_mbq, decay),
            problems,
        )


def camera_resolutions(settings: Settings, problems: list[str]) -> None:
    """Every configured SPECT resolution as the engine builds it, and one where it is needed.

    The methods other than ``paper`` need a resolution for every SPECT: the
    default, or one on every camera entry (SPECT from a camera no entry
    matches then fails its job with the reason).
    """
    calibration = settings.calibration
    stated = [("calibration.default_spect_fwhm_mm", calibration.default_spect_fwhm_mm)]
    stated += [(f"calibration.cameras[{i}].spect_fwhm_mm", c.spect_fwhm_mm)
               for i, c in enumerate(calibration.cameras)]
    for key, fwhm_mm in stated:
        if fwhm_mm > 0:
            _attempt(key, partial(PointSpread, fwhm_mm), problems)
    method = settings.dosimetry.partial_volume
    if method == PartialVolumeMethod.PAPER.value or calibration.default_spect_fwhm_mm > 0:
        return
    missing = [key for key, fwhm_mm in stated[1:] if fwhm_mm <= 0]
    if missing or not calibration.cameras:
        problems.append(
            f"dosimetry.partial_volume = {method!r} needs the SPECT resolution: set "
            "calibration.default_spect_fwhm_mm, or spect_fwhm_mm on every "
            f"[[calibration.cameras]] entry{' (missing: ' + ', '.join(missing) + ')' if missing else ''}."
        )


def build_engine_settings(settings: Settings) -> EngineSettings:
    """The engine's settings from ``[dosimetry]``, ``[protocol]`` and ``[calibration]``.

    Raises
    ------
    ConfigError
        One line per value the engine refuses, named by its setting.
    """
    problems: list[str] = []
    cap_hint = (
        f" (the density cap is not a setting: theranode uses the engine's {_DENSITY_CAP:g} "
        "g/mL, so every calibration density must be at or below it, non-decreasing with HU)"
    )
    density = _attempt(_DENSITY_KEYS, lambda: density_calibration(settings), problems, cap_hint)
    recovery = _attempt(_RECOVERY_KEYS, lambda: recovery_curve(settings), problems)
    engine = _attempt(
        "dosimetry / protocol", lambda: _engine(settings, density, recovery), problems
    )
    if engine is not None:
        _runtime_checks(settings, engine, problems)
    counts_calibrations(settings.calibration, problems)
    camera_resolutions(settings, problems)
    if problems or engine is None:
        raise ConfigError(problems, settings.source)
    return engine


def course_limits(settings: Settings) -> CourseLimits:
    """The course flags' limits and cut-points from ``[limits]`` (raises DosimetryError)."""
    limits = settings.limits
    return CourseLimits(
        lesion_mean_cut_gy=limits.lesion_mean_cut_gy,
        lesion_min_cut_gy=limits.lesion_min_cut_gy,
        kidney_limit_gy=limits.kidney_gy,
        warning_fraction=limits.warning_fraction,
        marrow_limit_gy=limits.marrow_gy,
    )


def kidney_bed_parameters(settings: Settings) -> BedParameters:
    """The kidney BED's α/β, repair half-time and limit from ``[limits]`` (raises DosimetryError)."""
    limits = settings.limits
    return BedParameters(
        alpha_beta_gy=limits.kidney_alpha_beta_gy,
        repair_half_time_h=limits.kidney_repair_half_time_h,
        limit_gy=limits.kidney_bed_gy,
    )
