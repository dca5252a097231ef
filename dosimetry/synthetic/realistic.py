"""Realistic cycle inputs from the analytic phantom: blurred, noisy SPECT, VOIs on true edges.

What a clinic's images of the phantom patient would look like, as the
engine's :class:`~theranode.dosimetry.cycle.CycleInputs`:

* **CT** of every time point, voxel-averaged (partial-volume supersampling),
  in the pose the patient lay in (seeded repositioning,
  :func:`~theranode.dosimetry.synthetic.phantom.course_time_points`);
* **SPECT** of every time point: the activity voxel-averaged on the SPECT
  grid, blurred by the camera's Gaussian PSF (10-15 mm FWHM for Lu-177
  with a medium-energy collimator and resolution recovery), then, given
  counting statistics, a Poisson realisation of its counts converted back
  to Bq/mL with the exact calibration factor. The blur lets the body's
  background continue past the edges of the field of view (``nearest``
  extension: in x and y that is air, in z the body goes on);
* **VOIs** rasterised from the phantom's true edges (its contour shapes) at
  the CT voxel centres of the first time point, as an RT Structure Set drawn
  on the organ's boundary is: no margin, so every VOI loses the activity the
  PSF spills out of it, and gains the background's and neighbours' spill-in
  (the body, bone and liver backgrounds are warm);
* **truth**: the analytic mean absorbed dose of every VOI
  (:func:`~theranode.dosimetry.synthetic.phantom.mean_dose_gy`).

The noise-free part (:class:`RealisticCycle`) is rendered once; each seed
then draws one noise realisation (:meth:`RealisticCycle.inputs`), so a study
of noise spread repeats only the cheap part.

Count level (:data:`CLINICAL_COUNTING`): published Lu-177 calibration
factors for the 208 keV (±10 %) window with medium-energy collimators span
about 5-20 cps/MBq across cameras and head counts; the default takes
15 cps/MBq over a 30 min acquisition, of the order of the multicentre
MRTDosimetry protocol (Tran-Gia 2021: 120 projections, ME collimators).
Lower it (or shorten the acquisition) for a noisier camera. Every voxel's
counts are independent Poisson variates: reconstructed (OSEM) images have
correlated noise of a larger variance per voxel, so the spread found with
this model is a lower bound on a real camera's.

References
----------
Dewaraja YK et al., MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325
(quantitative SPECT, resolution, partial volume).
Ljungberg M et al., MIRD Pamphlet No. 26: joint EANM/MIRD guidelines for
quantitative 177Lu SPECT applied for dosimetry of radiopharmaceutical
therapy, J Nucl Med 2016;57:151-162 (collimators, energy window,
acquisition protocol).
Tran-Gia J et al., A multicentre and multi-national evaluation of the
accuracy of quantitative Lu-177 SPECT/CT imaging performed within the
MRTDosimetry project, EJNMMI Phys 2021;8:55.
Hebert K et al., J Nucl Med 2024;65:923-930 (protocol: 4, 24, 72, 192 h).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy import ndimage

from theranode.dosimetry.cycle import CycleInputs, TimePointImages, VoiMask
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.synthetic.phantom import (
    CountingStatistics,
    CourseSpec,
    ImageGrid,
    TimePoint,
    course_time_points,
    mean_dose_gy,
    render_activity,
    render_ct,
    voi_contour_mask,
    voxelise,
)
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

#: Lu-177 SPECT count level: 15 cps/MBq (ME collimator, 208 keV window), 30 min.
CLINICAL_COUNTING = CountingStatistics(cps_per_mbq=15.0, duration_s=1800.0)
#: Seed of the patient's repositioning between time points (not of the noise).
DEFAULT_POSE_SEED = 11


@dataclass(frozen=True)
class ImagingProtocol:
    """How the phantom is imaged.

    Attributes
    ----------
    fwhm_mm:
        FWHM of the reconstructed SPECT's Gaussian PSF, mm (0: no blur).
    counting:
        Camera sensitivity and acquisition time; ``None`` for noise-free SPECT.
    supersampling:
        Sub-voxels per axis where a surface crosses a voxel (CT and SPECT).
    """

    fwhm_mm: float = 10.0
    counting: CountingStatistics | None = CLINICAL_COUNTING
    supersampling: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fwhm_mm) and self.fwhm_mm >= 0):
            raise DosimetryError(
                f"The PSF FWHM must be ≥ 0 mm (0: no blur), got {self.fwhm_mm}."
            )


def psf_blur(volume: Volume, fwhm_mm: float) -> Volume:
    """Isotropic Gaussian blur of FWHM ``fwhm_mm``; edges extended by their nearest value.

    σ = FWHM / (2 √(2 ln 2)) per axis in voxels. Unlike
    :func:`~theranode.dosimetry.synthetic.phantom.spect_blur` (zero outside),
    activity outside the field of view is taken equal to the edge's, as the
    body continues beyond a SPECT's axial field of view.
    """
    if fwhm_mm <= 0:
        return volume
    sigma_mm = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma_vox = [sigma_mm / s for s in reversed(volume.spacing_mm)]
    blurred = ndimage.gaussian_filter(volume.array.astype(np.float64), sigma_vox, mode="nearest")
    return volume.with_array(blurred.astype(np.float32))


def poisson_activity(
    activity: Volume, counting: CountingStatistics, rng: np.random.Generator
) -> Volume:
    """One Poisson realisation of an activity image (Bq/mL), back in Bq/mL.

    Expected counts per voxel = C · V · 1e-6 · sensitivity · duration ·
    decay during the acquisition (:class:`CountingStatistics`); the counts
    are divided by the same factor, so the image is unbiased.
    """
    if activity.unit != "Bq/mL":
        raise DosimetryError(f"Expected an activity image in Bq/mL, got {activity.unit!r}.")
    decay = nuclear_data(Radionuclide.LU177).decay_constant_per_h
    per = counting.expected_counts_per_bq_per_ml(activity.voxel_volume_ml, decay)
    counts = rng.poisson(np.clip(activity.array.astype(np.float64) * per, 0.0, None))
    return activity.with_array((counts / per).astype(np.float32))


_TIME_POINT_FIELDS = {f.name for f in fields(TimePointImages)}


def _time_point(elapsed_h: float, ct: Volume, spect: Volume, fwhm_mm: float) -> TimePointImages:
    """Images of one time point, stating the PSF when the engine takes it."""
    extra: dict[str, Any] = {}
    if "spect_fwhm_mm" in _TIME_POINT_FIELDS and fwhm_mm > 0:
        extra["spect_fwhm_mm"] = fwhm_mm
    return TimePointImages(elapsed_h, ct, spect, **extra)


@dataclass(frozen=True, eq=False)
class RealisticCycle:
    """The noise-free part of a realistic cycle and its analytic truth.

    Attributes
    ----------
    cycle_number:
        Cycle of the course.
    protocol:
        How it was imaged.
    time_points:
        The acquisitions (elapsed time, pose).
    cts:
        CT (HU) per time point.
    expected_spect:
        Blurred, noise-free SPECT (Bq/mL) per time point.
    vois:
        VOIs on the first time point's CT, on the true edges.
    truth_gy:
        Analytic mean absorbed dose of every VOI in this cycle.
    administered_activity_mbq:
        Injected activity of the cycle.
    """

    cycle_number: int
    protocol: ImagingProtocol
    time_points: tuple[TimePoint, ...]
    cts: tuple[Volume, ...]
    expected_spect: tuple[Volume, ...]
    vois: tuple[VoiMask, ...]
    truth_gy: Mapping[str, float]
    administered_activity_mbq: float

    def spect(self, rng: np.random.Generator | None) -> tuple[Volume, ...]:
        """SPECT per time point: one noise realisation from ``rng`` (None: noise-free)."""
        counting = self.protocol.counting
        if rng is None or counting is None:
            return self.expected_spect
        return tuple(poisson_activity(s, counting, rng) for s in self.expected_spect)

    def inputs(self, seed: int | None = None, stated_fwhm_mm: float | None = None) -> CycleInputs:
        """Engine inputs with the noise realisation of ``seed`` (None: noise-free).

        Each time point states the PSF FWHM of the protocol, as a camera's
        configuration does, or ``stated_fwhm_mm`` to study a misstated PSF.
        """
        rng = None if seed is None else np.random.default_rng(seed)
        fwhm = self.protocol.fwhm_mm if stated_fwhm_mm is None else stated_fwhm_mm
        images = tuple(
            _time_point(tp.elapsed_h, ct, spect, fwhm)
            for tp, ct, spect in zip(self.time_points, self.cts, self.spect(rng), strict=True)
        )
        return CycleInputs(
            self.cycle_number, images, self.vois, self.administered_activity_mbq
        )


def render_spect(
    course: CourseSpec,
    time_points: Sequence[TimePoint],
    grid: ImageGrid,
    protocol: ImagingProtocol,
) -> tuple[Volume, ...]:
    """Noise-free SPECT (Bq/mL) of each time point: voxel-averaged, then PSF-blurred.

    Another resolution of the same scans: ``dataclasses.replace(cycle,
    protocol=p, expected_spect=render_spect(course, cycle.time_points, grid, p))``
    keeps the CTs and VOIs of a :class:`RealisticCycle`.
    """
    out = []
    for tp in time_points:
        activity = render_activity(
            course.model, grid, tp.elapsed_h, tp.transform,
            cycle=course.cycle(tp.cycle_number), supersampling=protocol.supersampling,
        )
        out.append(psf_blur(activity, protocol.fwhm_mm))
    return tuple(out)


def true_edge_vois(course: CourseSpec, grid: ImageGrid, first: TimePoint) -> tuple[VoiMask, ...]:
    """Every VOI rasterised from its true edges at the voxel centres of ``grid``."""
    model = course.model
    return tuple(
        VoiMask(
            v.name,
            v.kind,
            grid.volume(voi_contour_mask(model, v.name, grid, first.transform), "mask"),
            v.organ,
        )
        for v in model.vois
    )


def render_realistic_cycle(
    course: CourseSpec,
    number: int,
    ct_grid: ImageGrid,
    spect_grid: ImageGrid,
    protocol: ImagingProtocol = ImagingProtocol(),
    *,
    pose_seed: int = DEFAULT_POSE_SEED,
    time_points: Sequence[TimePoint] | None = None,
) -> RealisticCycle:
    """Render cycle ``number`` of ``course`` as a clinic would image it (module docstring).

    ``time_points`` defaults to ``course_time_points(course, pose_seed)``.

    Raises
    ------
    DosimetryError
        The course has no scan of that cycle.
    """
    points = tuple(course_time_points(course, pose_seed) if time_points is None else time_points)
    mine = tuple(tp for tp in points if tp.cycle_number == number)
    if not mine:
        raise DosimetryError(
            f"Cycle {number} has no scan among the course's time points; pick one of "
            f"{sorted({tp.cycle_number for tp in points})}."
        )
    cts = tuple(
        render_ct(course.model, ct_grid,
                  voxelisation=voxelise(course.model, ct_grid, tp.transform,
                                        protocol.supersampling))
        for tp in mine
    )
    spects = render_spect(course, mine, spect_grid, protocol)
    cycle = course.cycle(number)
    logger.debug("rendered cycle %d: %d time points, FWHM %g mm", number, len(mine),
                 protocol.fwhm_mm)
    return RealisticCycle(
        cycle_number=number,
        protocol=protocol,
        time_points=mine,
        cts=cts,
        expected_spect=spects,
        vois=true_edge_vois(course, ct_grid, mine[0]),
        truth_gy={v.name: mean_dose_gy(course.model, v.name, cycle) for v in course.model.vois},
        administered_activity_mbq=cycle.injected_activity_mbq,
    )


def realistic_cycle_inputs(
    course: CourseSpec,
    number: int,
    ct_grid: ImageGrid,
    spect_grid: ImageGrid,
    protocol: ImagingProtocol = ImagingProtocol(),
    *,
    seed: int,
    pose_seed: int = DEFAULT_POSE_SEED,
) -> tuple[CycleInputs, Mapping[str, float]]:
    """One noise realisation (``seed``) of a realistic cycle and its analytic truth per VOI."""
    rendered = render_realistic_cycle(
        course, number, ct_grid, spect_grid, protocol, pose_seed=pose_seed
    )
    return rendered.inputs(seed), rendered.truth_gy


__all__ = [
    "CLINICAL_COUNTING",
    "DEFAULT_POSE_SEED",
    "ImagingProtocol",
    "RealisticCycle",
    "poisson_activity",
    "psf_blur",
    "realistic_cycle_inputs",
    "render_realistic_cycle",
    "render_spect",
    "true_edge_vois",
]
