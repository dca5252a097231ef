"""A sphere phantom imaged the way a site measures its recovery coefficients.

The site fills the spheres of a NEMA IEC body phantom (inner diameters 10,
13, 17, 22, 28 and 37 mm; 0.52-26.5 mL) with a known activity concentration
S, the background compartment with B (cold, B = 0, or warm, e.g. S:B = 4:1 or
8:1), images it with the clinical SPECT protocol and draws each sphere's VOI
on its true edge. Its recovery coefficient is::

    RC = mean over the VOI / S                         (not subtracted)
    RC = (mean over the VOI − B̂) / (S − B̂)            (background subtracted)

with B̂ the measured background. Larger fillable spheres (e.g. 47 and 57 mm,
54 and 97 mL) extend the curve to organ-sized lesions.

The simulation: each sphere alone, centred at a seeded sub-voxel position in
an unbounded uniform background, rendered on a cubic SPECT grid with
partial-volume supersampling (surface voxels are averaged over n³ sub-voxels,
as :func:`theranode.dosimetry.synthetic.phantom.voxelise` does), blurred by
the camera's Gaussian PSF (the background continues beyond the grid edge, so
it stays uniform), optionally given Poisson noise at a count level, and
measured in the 0.5-occupancy mask of the sphere (the engine's mask
threshold). B̂ is the mean over a shell further than 3 FWHM from the sphere's
surface, where the sphere's blur has vanished. One sphere per image leaves
out cross-talk between neighbouring spheres of the real phantom.

Without noise the image is ``B + (S − B) · (PSF ∗ 1_sphere)``, so::

    RC_not subtracted = RC₀ + (1 − RC₀) · B / S,      RC_subtracted = RC₀

with RC₀ the RC in a cold background: a warm background raises the
un-subtracted RC, which is why a site must state which one it measured.

References
----------
Dewaraja YK et al., MIRD Pamphlet No. 23: quantitative SPECT for patient-
specific 3-dimensional dosimetry in internal radionuclide therapy, J Nucl
Med 2012;53:1310-1325 (recovery coefficients from hot spheres).
NEMA NU 2-2018, Performance measurements of positron emission tomographs,
section 7 (image quality: the IEC body phantom and its six spheres).
IEC 61675-1:2013, Radionuclide imaging devices: characteristics and test
conditions, part 1 (the same body phantom).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.recovery import RecoveryTable, SigmoidRecoveryFit, sigmoid_recovery_fit
from theranode.dosimetry.synthetic.phantom import CountingStatistics

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Inner diameters (mm) of the six spheres of the NEMA IEC body phantom.
NEMA_SPHERE_DIAMETERS_MM: tuple[float, ...] = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
#: Larger fillable spheres (54 and 97 mL) for organ-sized lesions.
LARGE_SPHERE_DIAMETERS_MM: tuple[float, ...] = (47.0, 57.0)
#: Background shell measured for B̂: beyond this many FWHM from the sphere's surface.
_BACKGROUND_CLEARANCE_FWHM = 3.0
#: Thickness of that shell, mm.
_BACKGROUND_SHELL_MM = 20.0
#: Default sphere concentration, MBq/mL: a typical Lu-177 phantom filling.
DEFAULT_SPHERE_MBQ_PER_ML = 1.0


def sphere_volume_ml(diameter_mm: float) -> float:
    """Volume π d³ / 6 of a sphere of inner diameter ``diameter_mm``, in mL."""
    return math.pi * diameter_mm**3 / 6.0 / 1000.0


@dataclass(frozen=True)
class SphereSetup:
    """How the sphere phantom is filled and imaged.

    Attributes
    ----------
    fwhm_mm:
        FWHM of the Gaussian PSF of the reconstructed SPECT, mm (> 0).
    spacing_mm:
        SPECT voxel size (cubic voxels), mm.
    diameters_mm:
        Inner sphere diameters, mm.
    sphere_to_background:
        S:B concentration ratio; ``math.inf`` for a cold background.
    sphere_mbq_per_ml:
        Sphere concentration S, MBq/mL (matters only with noise).
    counting:
        Camera sensitivity and acquisition time for Poisson noise; ``None``
        for noise-free images.
    supersampling:
        Sub-voxels per axis in surface voxels.
    background_subtracted:
        Report RC after subtracting the measured background (see module).
    """

    fwhm_mm: float
    spacing_mm: float = 4.42
    diameters_mm: tuple[float, ...] = NEMA_SPHERE_DIAMETERS_MM
    sphere_to_background: float = math.inf
    sphere_mbq_per_ml: float = DEFAULT_SPHERE_MBQ_PER_ML
    counting: CountingStatistics | None = None
    supersampling: int = 5
    background_subtracted: bool = False

    def __post_init__(self) -> None:
        if not (self.fwhm_mm > 0 and self.spacing_mm > 0 and self.supersampling >= 1):
            raise DosimetryError(
                f"A sphere measurement needs a PSF FWHM > 0 mm, a voxel size > 0 mm and "
                f"supersampling ≥ 1; got FWHM {self.fwhm_mm} mm, voxel {self.spacing_mm} mm, "
                f"supersampling {self.supersampling}."
            )
        if not self.diameters_mm or min(self.diameters_mm) <= 0:
            raise DosimetryError(
                f"Sphere diameters must be positive, got {self.diameters_mm}."
            )
        if not self.sphere_to_background > 1.0:
            raise DosimetryError(
                f"The sphere-to-background ratio must exceed 1 (math.inf for a cold "
                f"background), got {self.sphere_to_background}."
            )
        if self.background_subtracted and math.isinf(self.sphere_to_background):
            raise DosimetryError(
                "Background subtraction needs a warm background; with a cold one "
                "(sphere_to_background = inf) leave background_subtracted False."
            )

    @property
    def background_fraction(self) -> float:
        """B / S (0 for a cold background)."""
        return 0.0 if math.isinf(self.sphere_to_background) else 1.0 / self.sphere_to_background


@dataclass(frozen=True)
class SphereRecovery:
    """The recovery coefficient measured on one sphere.

    Attributes
    ----------
    diameter_mm, volume_ml:
        Inner diameter and true volume of the sphere.
    rc:
        Measured recovery coefficient (see the module for the definition).
    contrast:
        Sphere-to-background concentration ratio (``math.inf``: cold).
    fwhm_mm:
        PSF FWHM of the images, mm.
    background_subtracted:
        Whether the measured background was subtracted.
    voi_voxels:
        Voxels in the sphere's VOI.
    """

    diameter_mm: float
    volume_ml: float
    rc: float
    contrast: float
    fwhm_mm: float
    background_subtracted: bool
    voi_voxels: int


def _half_extent_mm(radius_mm: float, setup: SphereSetup) -> float:
    clearance = _BACKGROUND_CLEARANCE_FWHM * setup.fwhm_mm
    return radius_mm + clearance + _BACKGROUND_SHELL_MM + setup.spacing_mm


def _distance_mm(n: int, spacing_mm: float, offset_mm: FloatArray) -> FloatArray:
    """Distance of every voxel centre of an n³ grid from a point near its centre."""
    axis = (np.arange(n) - (n - 1) / 2.0) * spacing_mm
    z, y, x = np.meshgrid(
        axis - offset_mm[2], axis - offset_mm[1], axis - offset_mm[0], indexing="ij"
    )
    return np.asarray(np.sqrt(x**2 + y**2 + z**2), dtype=np.float64)


def sphere_fraction(
    radius_mm: float, distance_mm: FloatArray, spacing_mm: float, offsets: FloatArray
) -> FloatArray:
    """Fraction of each cubic voxel inside a sphere, supersampled at its surface.

    Voxels whose centre lies farther than the half-diagonal from the surface
    are wholly inside or outside; the others average ``len(offsets)``
    sub-voxel samples (``offsets`` in mm, relative to the voxel centre).
    """
    fraction = (distance_mm <= radius_mm).astype(np.float64)
    half_diagonal = math.sqrt(3.0) / 2.0 * spacing_mm
    edge = np.abs(distance_mm - radius_mm) <= half_diagonal
    if not np.any(edge):
        return fraction
    n = distance_mm.shape[0]
    centres = ((np.argwhere(edge) - (n - 1) / 2.0) * spacing_mm)[:, ::-1]  # (x, y, z) mm
    return _fill_edges(fraction, edge, centres, offsets, radius_mm)


def _fill_edges(
    fraction: FloatArray,
    edge: npt.NDArray[np.bool_],
    centres_mm: FloatArray,
    offsets: FloatArray,
    radius_mm: float,
) -> FloatArray:
    points = centres_mm[:, None, :] + offsets[None, :, :]
    inside = np.einsum("ijk,ijk->ij", points, points) <= radius_mm**2
    fraction[edge] = inside.mean(axis=1)
    return fraction


def _sub_voxel_offsets(spacing_mm: float, n: int) -> FloatArray:
    steps = ((np.arange(n) + 0.5) / n - 0.5) * spacing_mm
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1)
    return np.asarray(grid.reshape(-1, 3), dtype=np.float64)


def _blur(image: FloatArray, fwhm_mm: float, spacing_mm: float) -> FloatArray:
    """Gaussian PSF; the uniform background continues beyond the grid edge."""
    sigma_vox = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing_mm
    return np.asarray(ndimage.gaussian_filter(image, sigma_vox, mode="nearest"))


def _with_noise(
    image_mbq_per_ml: FloatArray, setup: SphereSetup, rng: np.random.Generator
) -> FloatArray:
    """Poisson counts of the image, converted back to MBq/mL with the exact factor."""
    if setup.counting is None:
        return image_mbq_per_ml
    decay = nuclear_data(Radionuclide.LU177).decay_constant_per_h
    per = setup.counting.expected_counts_per_bq_per_ml(setup.spacing_mm**3 / 1000.0, decay)
    counts = rng.poisson(np.clip(image_mbq_per_ml * 1e6 * per, 0.0, None))
    return np.asarray(counts / (per * 1e6), dtype=np.float64)


def _image_sphere(
    diameter_mm: float, setup: SphereSetup, rng: np.random.Generator
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Measured image (MBq/mL), sphere occupancy and centre distances of one sphere."""
    radius = diameter_mm / 2.0
    n = 2 * math.ceil(_half_extent_mm(radius, setup) / setup.spacing_mm) + 1
    offset = rng.uniform(-0.5, 0.5, 3) * setup.spacing_mm
    distance = _distance_mm(n, setup.spacing_mm, offset)
    offsets = _sub_voxel_offsets(setup.spacing_mm, setup.supersampling)
    fraction = sphere_fraction(radius, distance, setup.spacing_mm, offsets)
    s = setup.sphere_mbq_per_ml
    truth = s * setup.background_fraction + s * (1.0 - setup.background_fraction) * fraction
    image = _with_noise(_blur(truth, setup.fwhm_mm, setup.spacing_mm), setup, rng)
    return image, fraction, distance


def _measure(diameter_mm: float, setup: SphereSetup, rng: np.random.Generator) -> SphereRecovery:
    image, fraction, distance = _image_sphere(diameter_mm, setup, rng)
    voi = fraction >= 0.5
    if not np.any(voi):
        raise DosimetryError(
            f"A {diameter_mm:g} mm sphere covers no {setup.spacing_mm:g} mm voxel by half or "
            "more; it is too small for this grid."
        )
    mean = float(image[voi].mean())
    s = setup.sphere_mbq_per_ml
    if setup.background_subtracted:
        inner = diameter_mm / 2.0 + _BACKGROUND_CLEARANCE_FWHM * setup.fwhm_mm
        shell = (distance > inner) & (distance <= inner + _BACKGROUND_SHELL_MM)
        background = float(image[shell].mean())
        rc = (mean - background) / (s - background)
    else:
        rc = mean / s
    return SphereRecovery(
        diameter_mm=diameter_mm,
        volume_ml=sphere_volume_ml(diameter_mm),
        rc=rc,
        contrast=setup.sphere_to_background,
        fwhm_mm=setup.fwhm_mm,
        background_subtracted=setup.background_subtracted,
        voi_voxels=int(np.count_nonzero(voi)),
    )


def measure_sphere_recovery(setup: SphereSetup, seed: int = 0) -> tuple[SphereRecovery, ...]:
    """RC of every sphere of ``setup``, smallest first.

    ``seed`` draws each sphere's sub-voxel position and, with counting
    statistics, one noise realisation: the same seed gives the same numbers.
    """
    rng = np.random.default_rng(seed)
    out = tuple(_measure(d, setup, rng) for d in sorted(setup.diameters_mm))
    logger.debug(
        "sphere RCs at %g mm FWHM, S:B %s: %s",
        setup.fwhm_mm,
        setup.sphere_to_background,
        ", ".join(f"{r.volume_ml:.3g} mL {r.rc:.3f}" for r in out),
    )
    return out


def predicted_warm_rc(cold_rc: float, sphere_to_background: float) -> float:
    """Un-subtracted RC in a warm background from the cold-background RC₀.

    ``RC₀ + (1 − RC₀) · B/S``: the image is ``B + (S − B)·(PSF ∗ 1_sphere)``
    (linearity of the blur), so the VOI mean over S is that.
    """
    background = 0.0 if math.isinf(sphere_to_background) else 1.0 / sphere_to_background
    return cold_rc + (1.0 - cold_rc) * background


def _curve_points(
    measured: Sequence[SphereRecovery],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if any(not 0.0 < m.rc <= 1.0 for m in measured):
        raise DosimetryError(
            "Every sphere's RC must lie in (0, 1] to build a recovery curve; got "
            + ", ".join(f"{m.volume_ml:.3g} mL: {m.rc:.3f}" for m in measured)
            + ". Lower the noise (longer acquisition) or drop the smallest spheres."
        )
    ordered = sorted(measured, key=lambda m: m.volume_ml)
    return tuple(m.volume_ml for m in ordered), tuple(m.rc for m in ordered)


def recovery_table(measured: Sequence[SphereRecovery]) -> RecoveryTable:
    """The measured points as a :class:`RecoveryTable` (log-volume interpolation)."""
    volumes, rcs = _curve_points(measured)
    return RecoveryTable(volumes, rcs)


def recovery_fit(measured: Sequence[SphereRecovery]) -> SigmoidRecoveryFit:
    """The sigmoid ``a / (1 + (b/V)^c)`` fitted to the measured points, with covariance."""
    volumes, rcs = _curve_points(measured)
    return sigmoid_recovery_fit(volumes, rcs)


__all__ = [
    "LARGE_SPHERE_DIAMETERS_MM",
    "NEMA_SPHERE_DIAMETERS_MM",
    "SphereRecovery",
    "SphereSetup",
    "measure_sphere_recovery",
    "predicted_warm_rc",
    "recovery_fit",
    "recovery_table",
    "sphere_fraction",
    "sphere_volume_ml",
]
