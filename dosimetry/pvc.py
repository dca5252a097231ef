"""Partial-volume correction of SPECT concentrations for every VOI.

Reconstructed Lu-177 SPECT is the true activity distribution blurred by the
system's point-spread function (PSF), 10-15 mm FWHM with a medium-energy
collimator and resolution recovery. A VOI drawn on an organ's CT edge
therefore reads its mean concentration too low (spill-out) and picks up
activity of its neighbours (spill-in). This room corrects for both with the
PSF modelled as an isotropic Gaussian (:class:`PointSpread`, with activity
beyond the field of view zero or continuing, :class:`OutsideFieldOfView`):

* :func:`occupancy` turns a CT-grid mask into the fraction of every SPECT
  voxel it covers (optionally through a rigid registration);
* :func:`disjoint_regions` makes the VOIs non-overlapping and adds the rest
  of the body as a background region (:class:`PvcRegion`);
* :func:`gtm` solves the geometric transfer matrix (Rousset 1998) for the
  true mean concentration of every region (:class:`GtmResult`);
* :func:`region_based_voxelwise` corrects the image voxel by voxel
  consistently with those means (RBV, Thomas 2011), for the dose map;
* :func:`contrast_corrected_mean` and :func:`background_shell` correct a
  lesion with a sphere recovery coefficient while accounting for the warm
  tissue around it (MIRD 23).

The image model shared by GTM and RBV is ``f = PSF ∗ Σ_j T_j · o_j`` with
``o_j`` the occupancy of region ``j`` and ``T_j`` its uniform true
concentration. Regions must be disjoint and together cover every voxel that
holds activity; activity outside them (outside the body) is assumed zero.

References
----------
Rousset OG, Ma Y, Evans AC. Correction for partial volume effects in PET:
principle and validation. J Nucl Med 1998;39:904-911.
Thomas BA, Erlandsson K, Modat M, et al. The importance of appropriate partial
volume correction for PET quantification in Alzheimer's disease. Eur J Nucl
Med Mol Imaging 2011;38:1104-1119.
Erlandsson K, Buvat I, Pretorius PH, Thomas BA, Hutton BF. A review of partial
volume correction techniques for emission tomography and their applications
in neurology, cardiology and oncology. Phys Med Biol 2012;57:R119-R159.
Dewaraja YK et al. MIRD Pamphlet No. 23: quantitative SPECT for patient-
specific 3-dimensional dosimetry in internal radionuclide therapy. J Nucl Med
2012;53:1310-1325.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from theranode.dosimetry.errors import DosimetryError, GeometryError
from theranode.dosimetry.registration import RigidRegistration, crop_mask
from theranode.dosimetry.volume import Volume, resample

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: FWHM = FWHM_PER_SIGMA · σ for a Gaussian.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

#: The Gaussian kernel is cut at this many standard deviations.
TRUNCATE_SIGMAS = 4.0

#: Name of the region :func:`disjoint_regions` appends for the rest of the body.
BACKGROUND = "body background"

#: Occupancy resamples at most this many supersampled voxels at once (memory bound).
MAX_FINE_VOXELS = 4_000_000

#: A transfer matrix with a larger condition number is treated as singular.
MAX_CONDITION_NUMBER = 1e8

#: RBV leaves voxels where the blurred region model is below this fraction of
#: its peak unchanged (outside the body, where nothing is modelled).
RBV_FLOOR = 1e-6


# -- the point-spread function -------------------------------------------
def _check_spacing(spacing_mm: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing_mm)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise GeometryError(
            f"Voxel spacing must be three positive numbers (x, y, z) in mm, got {spacing_mm}."
        )
    return values[0], values[1], values[2]


def _nonzero_box(array: npt.NDArray[Any]) -> tuple[tuple[int, int], ...] | None:
    """``(lo, hi)`` index bounds per axis of the non-zero voxels, or None."""
    bounds = []
    for axis in range(array.ndim):
        others = tuple(a for a in range(array.ndim) if a != axis)
        hits = np.flatnonzero(np.any(array != 0, axis=others))
        if hits.size == 0:
            return None
        bounds.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(bounds)


class OutsideFieldOfView(str, Enum):
    """What the image model assumes beyond the edges of the reconstructed field of view.

    ``ZERO``: no activity (a field of view that holds the whole patient, or
    edges in air). ``EXTEND``: activity continues as on the edge voxel (the
    body goes on past a SPECT's axial field of view and spills into its end
    slices).
    """

    ZERO = "zero"
    EXTEND = "extend"


@dataclass(frozen=True)
class PointSpread:
    """An isotropic 3-D Gaussian point-spread function.

    Parameters
    ----------
    fwhm_mm:
        Full width at half maximum in millimetres (finite, > 0); 10-15 mm for
        Lu-177 SPECT with a medium-energy collimator and resolution recovery.
    outside:
        Activity assumed beyond the array's edges when blurring.

    References
    ----------
    Dewaraja et al., MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325
    (Gaussian model of the SPECT resolution).
    """

    fwhm_mm: float
    outside: OutsideFieldOfView = OutsideFieldOfView.ZERO

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "outside", OutsideFieldOfView(self.outside))
        except ValueError:
            raise DosimetryError(
                f"Unknown assumption {self.outside!r} beyond the field of view; use one of "
                f"{[o.value for o in OutsideFieldOfView]}."
            ) from None
        value = self.fwhm_mm
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise DosimetryError(
                f"The PSF FWHM must be a positive, finite number of millimetres, got "
                f"{value!r}. Use the camera's measured reconstructed resolution "
                "(10-15 mm for Lu-177 with a medium-energy collimator)."
            )
        object.__setattr__(self, "fwhm_mm", float(value))

    @property
    def sigma_mm(self) -> float:
        """Standard deviation σ = FWHM / (2 √(2 ln 2)) in millimetres."""
        return self.fwhm_mm / FWHM_PER_SIGMA

    def sigma_voxels(self, spacing_mm: Sequence[float]) -> tuple[float, float, float]:
        """σ in voxels along the array axes ``(z, y, x)`` for a spacing ``(x, y, z)``."""
        sx, sy, sz = _check_spacing(spacing_mm)
        return self.sigma_mm / sz, self.sigma_mm / sy, self.sigma_mm / sx

    def blur(self, array: npt.ArrayLike, spacing_mm: Sequence[float]) -> FloatArray:
        """Convolve a ``z, y, x`` array with the PSF.

        Beyond the array's edges the activity is zero or continues as on the
        edge (:attr:`outside`). Only the bounding box of the non-zero voxels,
        padded by the kernel radius (4 σ), is filtered: the result is identical
        to filtering the whole array (the padding is zero, and where the box
        reaches an edge that edge is the array's), and regions are small
        against the field of view. Measured on a 128×128×100 grid: 5 ms for a
        kidney against 180 ms for the whole array.

        Returns
        -------
        numpy.ndarray
            float64 array of the same shape.
        """
        values = np.asarray(array, dtype=np.float64)
        sigmas = self.sigma_voxels(spacing_mm)
        out = np.zeros(values.shape, dtype=np.float64)
        box = _nonzero_box(values)
        if box is None:
            return out
        window = tuple(
            slice(max(0, lo - _radius(s)), min(n, hi + _radius(s)))
            for (lo, hi), s, n in zip(box, sigmas, values.shape, strict=True)
        )
        out[window] = ndimage.gaussian_filter(
            values[window], sigmas, mode=_SCIPY_MODES[self.outside], cval=0.0,
            truncate=TRUNCATE_SIGMAS,
        )
        return out


_SCIPY_MODES = {OutsideFieldOfView.ZERO: "constant", OutsideFieldOfView.EXTEND: "nearest"}


def _radius(sigma_voxels: float) -> int:
    """Kernel half-width scipy uses for ``truncate`` σ (plus one voxel of slack)."""
    return int(TRUNCATE_SIGMAS * sigma_voxels + 0.5) + 1


# -- occupancy of a CT mask on the image grid -----------------------------
def _sitk_transform(
    transform: sitk.Transform | RigidRegistration | None,
) -> sitk.Transform | None:
    if isinstance(transform, RigidRegistration):
        return transform.transform()
    return transform


def _mask_corners_mm(mask: Volume) -> FloatArray:
    """Patient coordinates of the 8 outer corners of the mask's voxel box."""
    nz, ny, nx = mask.shape
    corners = np.array(
        [[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)]
    )
    return mask.index_to_patient(corners)


def _grid_window(
    mask: Volume, grid: Volume, transform: sitk.Transform | None
) -> tuple[slice, slice, slice] | None:
    """The ``z, y, x`` slices of ``grid`` that can overlap ``mask`` (None: none)."""
    corners = _mask_corners_mm(mask)
    if transform is not None:
        try:
            inverse = transform.GetInverse()
        except RuntimeError:
            return (slice(0, grid.shape[0]), slice(0, grid.shape[1]), slice(0, grid.shape[2]))
        corners = np.array([inverse.TransformPoint(tuple(map(float, p))) for p in corners])
    ijk = grid.patient_to_index(corners)
    lo = np.floor(ijk.min(axis=0)).astype(int) - 1
    hi = np.ceil(ijk.max(axis=0)).astype(int) + 2
    shape_xyz = grid.shape[::-1]
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape_xyz)
    if np.any(hi <= lo):
        return None
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _fine_reference(grid: Volume, window: tuple[slice, ...], supersample: int) -> Volume:
    """A grid ``supersample``× finer per axis tiling exactly the voxels in ``window``."""
    s = supersample
    start = np.array([window[2].start, window[1].start, window[0].start], dtype=float)
    offset = (s - 1) / (2.0 * s)
    origin = grid.index_to_patient(start - offset)
    shape = tuple((w.stop - w.start) * s for w in window)
    return Volume(
        array=np.zeros(shape, dtype=np.uint8),
        spacing_mm=tuple(sp / s for sp in grid.spacing_mm),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=grid.direction,
    )


def _slabs(window: tuple[slice, slice, slice], supersample: int) -> list[tuple[slice, ...]]:
    """``window`` cut along z so that no slab holds more than :data:`MAX_FINE_VOXELS`."""
    zs, ys, xs = window
    per_slice = (ys.stop - ys.start) * (xs.stop - xs.start) * supersample**3
    depth = max(1, MAX_FINE_VOXELS // per_slice)
    return [
        (slice(z, min(z + depth, zs.stop)), ys, xs) for z in range(zs.start, zs.stop, depth)
    ]


def _block_mean(array: npt.NDArray[Any], factor: int) -> npt.NDArray[np.float32]:
    nz, ny, nx = (n // factor for n in array.shape)
    blocks = array.reshape(nz, factor, ny, factor, nx, factor)
    return np.asarray(blocks.mean(axis=(1, 3, 5), dtype=np.float64), dtype=np.float32)


def occupancy(
    mask: Volume,
    grid: Volume,
    transform: sitk.Transform | RigidRegistration | None = None,
    supersample: int = 3,
) -> npt.NDArray[np.float32]:
    """Fraction of every ``grid`` voxel covered by a binary ``mask``.

    The mask's 0/1 values (usually on the finer CT grid) are interpolated
    linearly at the centres of a grid ``supersample``× finer per axis that
    tiles ``grid`` exactly, then averaged in blocks of ``supersample³``: a
    midpoint-rule integral of the interpolated mask over each voxel. The
    interpolated mask crosses 0.5 about on the faces of the CT voxels, so the
    summed occupancy keeps the mask's volume (within 1 % for a 4 mL sphere
    drawn on 1.5 mm CT voxels, onto 4 mm voxels). Only the part of ``grid`` that
    the mask's bounding box can reach is resampled.

    Parameters
    ----------
    mask:
        Boolean (or 0/1) mask with its geometry, e.g. a VOI on the CT grid.
    grid:
        The target grid (e.g. the SPECT); only its geometry is used.
    transform:
        Maps ``grid`` physical points to ``mask`` physical points (SimpleITK
        resampling convention), or a :class:`RigidRegistration` used as
        :func:`~theranode.dosimetry.registration.resample_to_reference` uses
        it; ``None`` for the identity.
    supersample:
        Sub-samples per axis and voxel (≥ 1; 1 is plain linear resampling).

    Returns
    -------
    numpy.ndarray
        float32 array of ``grid``'s shape with values in [0, 1].

    Raises
    ------
    GeometryError
        When the mask holds no voxel or ``supersample`` < 1.
    """
    if supersample < 1:
        raise GeometryError(f"supersample must be an integer ≥ 1, got {supersample}.")
    cropped = crop_mask(mask, margin=2)
    if not cropped.array.any():
        raise GeometryError(
            "The mask holds no voxel, so it has no occupancy; check that the VOI was drawn."
        )
    sitk_transform = _sitk_transform(transform)
    result = np.zeros(grid.shape, dtype=np.float32)
    window = _grid_window(cropped, grid, sitk_transform)
    if window is None:
        logger.warning("A mask of %d voxels lies outside the target grid.", cropped.array.sum())
        return result
    fraction = cropped.with_array(cropped.array.astype(np.float32), unit="fraction")
    for slab in _slabs(window, supersample):
        fine = resample(fraction, _fine_reference(grid, slab, supersample), sitk_transform)
        result[slab] = np.clip(_block_mean(fine.array, supersample), 0.0, 1.0)
    return result


# -- regions ---------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PvcRegion:
    """A region of uniform true concentration for GTM and RBV.

    Parameters
    ----------
    name:
        The VOI name (or :data:`BACKGROUND`).
    occupancy:
        Fraction (0..1) of each image voxel that belongs to the region.
    measure:
        The voxels the region's reported mean is taken over (the engine's
        0.5-threshold VOI mask); ``None`` means ``occupancy ≥ 0.5``.
    """

    name: str
    occupancy: npt.NDArray[np.floating[Any]]
    measure: BoolArray | None = None

    def __post_init__(self) -> None:
        occ = np.asarray(self.occupancy)
        if occ.ndim != 3:
            raise GeometryError(
                f"Region {self.name!r}: the occupancy must be a 3-D array, got shape {occ.shape}."
            )
        if np.any(occ < -1e-6) or np.any(occ > 1 + 1e-6):
            raise GeometryError(
                f"Region {self.name!r}: occupancy must lie in [0, 1], found "
                f"[{occ.min():.4g}, {occ.max():.4g}]. Pass voxel fractions, not labels."
            )
        measure = occ >= 0.5 if self.measure is None else np.asarray(self.measure, dtype=bool)
        if measure.shape != occ.shape:
            raise GeometryError(
                f"Region {self.name!r}: measure mask of shape {measure.shape} does not fit "
                f"the occupancy of shape {occ.shape}."
            )
        object.__setattr__(self, "occupancy", occ)
        object.__setattr__(self, "measure", measure)

    @property
    def measure_mask(self) -> BoolArray:
        """The measure voxels (never None once constructed)."""
        assert self.measure is not None
        return self.measure

    def volume_ml(self, spacing_mm: Sequence[float]) -> float:
        """Summed occupancy × voxel volume, in mL."""
        sx, sy, sz = _check_spacing(spacing_mm)
        return float(np.sum(self.occupancy, dtype=np.float64)) * sx * sy * sz / 1000.0


def _as_mask(measure: npt.ArrayLike | None) -> BoolArray | None:
    return None if measure is None else np.asarray(measure, dtype=bool)


def disjoint_regions(
    vois: Sequence[tuple[str, npt.ArrayLike, npt.ArrayLike | None]],
    body_occupancy: npt.ArrayLike,
    carve_measure: bool = True,
) -> list[PvcRegion]:
    """Non-overlapping GTM regions from VOIs, plus the rest of the body.

    Rule: VOIs are taken from the smallest summed occupancy to the largest
    (ties in the given order); each keeps at most what the smaller ones left
    of every voxel, ``o'_j = min(o_j, 1 − Σ_{smaller} o'_k)``, so a lesion
    inside the liver carves the liver and the occupancies sum to ≤ 1. With
    ``carve_measure`` the measure voxels of smaller VOIs are also removed from
    a larger VOI's measure mask (the liver is then measured on parenchyma, as
    its GTM concentration describes it). The region :data:`BACKGROUND` is
    appended last: ``max(body − Σ_j o'_j, 0)``, measured where it is ≥ 0.5.

    Parameters
    ----------
    vois:
        ``(name, occupancy, measure)`` per VOI; ``measure`` None means
        occupancy ≥ 0.5.
    body_occupancy:
        Occupancy of the body contour (everything that may hold activity).
    carve_measure:
        Remove smaller VOIs' measure voxels from larger VOIs' measure masks.

    Returns
    -------
    list of PvcRegion
        The VOIs in the given order, then the background; occupancies are
        float32 (13 regions on a 128×128×100 grid hold 85 MB).

    References
    ----------
    Rousset et al., J Nucl Med 1998;39:904-911 (non-overlapping regions
    covering the activity).
    """
    body = np.clip(np.asarray(body_occupancy, dtype=np.float64), 0.0, 1.0)
    given = [
        PvcRegion(name, np.asarray(occ, dtype=np.float32), _as_mask(measure))
        for name, occ, measure in vois
    ]
    for region in given:
        if region.occupancy.shape != body.shape:
            raise GeometryError(
                f"VOI {region.name!r} has occupancy of shape {region.occupancy.shape}; the body "
                f"occupancy has shape {body.shape}. Compute both on the image grid."
            )
    order = sorted(range(len(given)), key=lambda i: float(given[i].occupancy.sum()))
    used = np.zeros(body.shape, dtype=np.float64)
    taken = np.zeros(body.shape, dtype=bool)
    carved: dict[int, PvcRegion] = {}
    for index in order:
        region = given[index]
        occ = np.minimum(region.occupancy, 1.0 - used).astype(np.float32)
        measure = region.measure_mask & ~taken if carve_measure else region.measure_mask
        carved[index] = PvcRegion(region.name, occ, measure)
        used += occ
        taken |= region.measure_mask
    background = np.clip(body - used, 0.0, 1.0).astype(np.float32)
    return [carved[i] for i in range(len(given))] + [PvcRegion(BACKGROUND, background)]


# -- the geometric transfer matrix ------------------------------------------
def _check_regions(regions: Sequence[PvcRegion], shape: tuple[int, ...]) -> None:
    if not regions:
        raise DosimetryError("Partial-volume correction needs at least one region, got none.")
    for region in regions:
        if region.occupancy.shape != shape:
            raise GeometryError(
                f"Region {region.name!r} has shape {region.occupancy.shape}, the image "
                f"{shape}. Compute the occupancies on the image grid (occupancy())."
            )
        if not region.measure_mask.any():
            raise DosimetryError(
                f"Region {region.name!r} has no measure voxel, so its mean cannot be read. "
                "Expected at least one voxel in its VOI mask on the image grid; the VOI is "
                "smaller than half a voxel or lies inside a smaller VOI that carved it. Drop "
                "it or merge it into its neighbour."
            )


def geometric_transfer_matrix(
    regions: Sequence[PvcRegion], psf: PointSpread, spacing_mm: Sequence[float]
) -> FloatArray:
    """The matrix ``W`` with ``w_ij`` = mean over region i's measure of PSF ∗ o_j.

    ``w_ij`` is the fraction of region j's concentration that region i's
    measured mean receives; column j is one blur of ``o_j``.

    References
    ----------
    Rousset et al., J Nucl Med 1998;39:904-911.
    """
    _check_regions(regions, regions[0].occupancy.shape if regions else ())
    measures = [np.flatnonzero(region.measure_mask) for region in regions]
    matrix = np.empty((len(regions), len(regions)), dtype=np.float64)
    for j, region in enumerate(regions):
        spread = psf.blur(region.occupancy, spacing_mm).ravel()
        for i, voxels in enumerate(measures):
            matrix[i, j] = float(spread[voxels].mean())
    return matrix


@dataclass(frozen=True, eq=False)
class GtmResult:
    """Regional means before and after GTM partial-volume correction.

    Attributes
    ----------
    names:
        Region names, in the order of the regions given.
    observed_means:
        Mean of the image over each region's measure voxels.
    true_means:
        The solution ``T`` of ``W T = t``: each region's uniform true
        concentration (image unit).
    condition_number:
        2-norm condition number of ``W``; noise in ``t`` is amplified by up
        to this factor in ``T``.
    matrix:
        The geometric transfer matrix ``W``.
    unit:
        Unit of the means (the image's).
    """

    names: tuple[str, ...]
    observed_means: FloatArray
    true_means: FloatArray
    condition_number: float
    matrix: FloatArray
    unit: str = ""

    def _index(self, name: str) -> int:
        if name not in self.names:
            raise DosimetryError(f"No region {name!r} in the GTM; regions are {list(self.names)}.")
        return self.names.index(name)

    def true_mean(self, name: str) -> float:
        """The corrected mean concentration of region ``name``."""
        return float(self.true_means[self._index(name)])

    def observed_mean(self, name: str) -> float:
        """The uncorrected mean over region ``name``'s measure voxels."""
        return float(self.observed_means[self._index(name)])

    def factor(self, name: str) -> float:
        """Correction factor ``true / observed`` of region ``name``.

        Multiplying the uncorrected mean concentration over the same measure
        voxels by it gives the region's corrected concentration. It holds for
        the image it was solved on; another time point has its own.

        Raises
        ------
        DosimetryError
            When the observed mean is ≤ 0: no ratio is defined; use
            :meth:`true_mean` directly.
        """
        observed = self.observed_mean(name)
        if not observed > 0:
            raise DosimetryError(
                f"Region {name!r} reads a mean of {observed:.4g} {self.unit}; a correction "
                "factor needs a positive observed mean. Use its GTM true mean "
                f"({self.true_mean(name):.4g}) instead, or check the image and the VOI."
            )
        return self.true_mean(name) / observed


def _solve(matrix: FloatArray, observed: FloatArray, names: Sequence[str]) -> tuple[FloatArray,
                                                                                     float]:
    condition = float(np.linalg.cond(matrix))
    if not (math.isfinite(condition) and condition < MAX_CONDITION_NUMBER):
        empty = [n for n, col in zip(names, matrix.T, strict=True) if not np.any(col > 0)]
        hint = f" Regions {empty} receive nothing anywhere (empty occupancy)." if empty else ""
        raise DosimetryError(
            f"The geometric transfer matrix of regions {list(names)} is singular (condition "
            f"number {condition:.3g}): some regions cannot be told apart at this resolution."
            f"{hint} Expected every region to hold voxels of its own; merge regions much "
            "smaller than the PSF with a neighbour or drop them."
        )
    solution, *_ = np.linalg.lstsq(matrix, observed, rcond=None)
    return np.asarray(solution, dtype=np.float64), condition


def gtm(image: Volume, regions: Sequence[PvcRegion], psf: PointSpread) -> GtmResult:
    """Geometric-transfer-matrix partial-volume correction of regional means.

    Solves ``t_i = Σ_j w_ij T_j`` (least squares) for the true mean
    concentrations ``T`` from the observed means ``t`` over each region's
    measure voxels.

    Parameters
    ----------
    image:
        The SPECT (e.g. Bq/mL) on the grid of the occupancies.
    regions:
        Disjoint regions covering the activity (:func:`disjoint_regions`).
    psf:
        The reconstructed resolution of the camera.

    Raises
    ------
    DosimetryError
        A region without measure voxels, or a singular matrix.

    References
    ----------
    Rousset et al., J Nucl Med 1998;39:904-911.
    """
    _check_regions(regions, image.shape)
    image_values = np.asarray(image.array, dtype=np.float64)
    observed = np.array([float(image_values[r.measure_mask].mean()) for r in regions])
    names = tuple(r.name for r in regions)
    matrix = geometric_transfer_matrix(regions, psf, image.spacing_mm)
    true_means, condition = _solve(matrix, observed, names)
    negative = [n for n, t in zip(names, true_means, strict=True) if t < 0]
    if negative:
        # The background's concentration is small late after injection and absorbs the
        # model's misfit (one uniform background for tissues that differ): a negative
        # value there is expected and harmless; in a VOI it is not.
        log = logger.debug if negative == [BACKGROUND] else logger.warning
        log("GTM gave negative concentrations for %s (noise and model misfit amplified by a "
            "condition number of %.3g).", negative, condition)
    logger.debug("GTM over %d regions, FWHM %.1f mm, condition number %.3g",
                 len(regions), psf.fwhm_mm, condition)
    return GtmResult(names, observed, true_means, condition, matrix, image.unit)


# -- region-based voxel-wise correction -------------------------------------
def _region_model(
    regions: Sequence[PvcRegion], means: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """``S = Σ_j T_j o_j`` and ``S_dominant``: each voxel at its dominant region's ``T``.

    The dominant region of a voxel is the one with the largest occupancy there
    (ties: the first given); voxels that no region occupies are 0 in both.
    """
    shape = regions[0].occupancy.shape
    mixed = np.zeros(shape, dtype=np.float64)
    dominant = np.zeros(shape, dtype=np.float64)
    best = np.zeros(shape, dtype=np.float64)
    for region, mean in zip(regions, means, strict=True):
        mixed += mean * region.occupancy
        wins = region.occupancy > best
        dominant[wins] = mean
        best[wins] = region.occupancy[wins]
    return mixed, dominant


def region_based_voxelwise(
    image: Volume,
    regions: Sequence[PvcRegion],
    true_means: npt.ArrayLike,
    psf: PointSpread,
    dominant_region: bool = True,
) -> Volume:
    """Voxel-wise correction consistent with the GTM means (RBV).

    ``f_c = f · S_target / (PSF ∗ S)`` with the piecewise-constant model
    ``S = Σ_j T_j o_j``. Thomas et al. take ``S_target = S``: their regions
    live on a finer anatomical grid, where a voxel belongs to one region. On
    the SPECT grid an edge voxel is part kidney, part fat, so ``S`` there is a
    mix and the kidney's VOI mean would stay low (−6 % for a 17 mL sphere at
    10 mm FWHM on 4 mm voxels). With ``dominant_region`` (the default) the
    target is instead each voxel's dominant region's ``T`` (largest
    occupancy), the map's answer to "what concentration does this voxel's
    tissue hold": the mean of ``f_c`` over a VOI's measure voxels then
    approximates its GTM ``T_j`` (within 2 % on the test phantoms, where
    ``f`` deviates from ``PSF ∗ S`` by discretisation only), which is what a
    dose map read with the same VOIs needs. Texture within regions is kept
    either way.

    Where ``PSF ∗ S`` is below :data:`RBV_FLOOR` of the peak of ``|S|`` (far
    outside every region) the image is left unchanged; just outside the
    regions, where the target is 0, spill-out is set to 0.

    Parameters
    ----------
    true_means:
        One concentration per region, e.g. :attr:`GtmResult.true_means`.
    dominant_region:
        Target each voxel's dominant region (True) or the mixed model ``S``
        of Thomas et al. (False).

    Returns
    -------
    Volume
        The corrected image (float64), same grid and unit.

    References
    ----------
    Thomas et al., Eur J Nucl Med Mol Imaging 2011;38:1104-1119 (RBV).
    """
    _check_regions(regions, image.shape)
    means = np.asarray(true_means, dtype=np.float64).ravel()
    if means.size != len(regions):
        raise DosimetryError(
            f"RBV needs one true mean per region: {len(regions)} regions, {means.size} means."
        )
    mixed, dominant = _region_model(regions, means)
    target = dominant if dominant_region else mixed
    spread = psf.blur(mixed, image.spacing_mm)
    valid = np.abs(spread) > RBV_FLOOR * float(np.max(np.abs(mixed), initial=0.0))
    corrected = np.array(image.array, dtype=np.float64)
    corrected[valid] *= target[valid] / spread[valid]
    return image.with_array(corrected)


# -- contrast-aware lesion recovery -------------------------------------------
def contrast_corrected_mean(observed_mean: float, background_mean: float, rc: float) -> float:
    """Lesion concentration from a sphere RC, accounting for warm surroundings.

    Inverts the sphere model ``observed = RC · C_lesion + (1 − RC) · C_background``:
    ``C_lesion = (observed − (1 − RC) · C_background) / RC``. An RC measured
    on spheres in a cold background applied as ``observed / RC`` over-corrects
    a lesion in warm tissue by ``(1 − RC)/RC · C_background``.

    Raises
    ------
    DosimetryError
        RC outside (0, 1], a non-finite input, or a result ≤ 0 (the
        background estimate is not below the lesion's level).

    References
    ----------
    Dewaraja et al., MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325
    (recovery coefficients and the dependence on background).
    """
    values = (observed_mean, background_mean, rc)
    if not all(math.isfinite(v) for v in values):
        raise DosimetryError(
            f"Contrast correction needs finite numbers, got observed {observed_mean}, "
            f"background {background_mean}, RC {rc}."
        )
    if not 0.0 < rc <= 1.0:
        raise DosimetryError(
            f"A recovery coefficient must be in (0, 1], got {rc}; check the RC curve."
        )
    corrected = (observed_mean - (1.0 - rc) * background_mean) / rc
    if corrected <= 0:
        raise DosimetryError(
            f"The lesion reads {observed_mean:.4g} against a local background of "
            f"{background_mean:.4g} with RC {rc:.3g}: the background is not below the "
            "lesion, so the sphere model gives no positive concentration. Check the "
            "background shell (other VOIs excluded?) or correct this lesion with GTM."
        )
    return corrected


def background_shell(
    measure_mask: npt.ArrayLike,
    psf: PointSpread,
    spacing_mm: Sequence[float],
    exclude: npt.ArrayLike | None = None,
) -> BoolArray:
    """Voxels 1 to 2 FWHM outside a lesion, where its local background is read.

    Distances run from each voxel centre to the nearest lesion voxel centre.
    Closer than 1 FWHM a voxel still holds the lesion's spill-out (≥ 2 %
    of the lesion level is within ~1 FWHM of its edge); beyond 2 FWHM it no
    longer describes the tissue around the lesion.

    Parameters
    ----------
    measure_mask:
        The lesion's voxels (z, y, x).
    spacing_mm:
        Voxel size ``(x, y, z)``.
    exclude:
        Voxels that must not count as background (other VOIs, outside the
        body); ``None`` excludes nothing.

    Raises
    ------
    GeometryError
        An empty lesion mask, shapes that differ, or no voxel left in the shell.

    References
    ----------
    Dewaraja et al., MIRD Pamphlet No. 23, J Nucl Med 2012;53:1310-1325.
    """
    lesion = np.asarray(measure_mask, dtype=bool)
    box = _nonzero_box(lesion)
    if box is None:
        raise GeometryError("The lesion mask holds no voxel, so it has no background shell.")
    sx, sy, sz = _check_spacing(spacing_mm)
    reach = [math.ceil(2 * psf.fwhm_mm / s) + 1 for s in (sz, sy, sx)]
    window = tuple(
        slice(max(0, lo - r), min(n, hi + r))
        for (lo, hi), r, n in zip(box, reach, lesion.shape, strict=True)
    )
    distance = ndimage.distance_transform_edt(~lesion[window], sampling=(sz, sy, sx))
    shell = np.zeros(lesion.shape, dtype=bool)
    shell[window] = (distance >= psf.fwhm_mm) & (distance <= 2 * psf.fwhm_mm)
    if exclude is not None:
        excluded = np.asarray(exclude, dtype=bool)
        if excluded.shape != lesion.shape:
            raise GeometryError(
                f"The exclusion mask has shape {excluded.shape}, the lesion {lesion.shape}."
            )
        shell &= ~excluded
    if not shell.any():
        raise GeometryError(
            f"No voxel lies 1-2 FWHM ({psf.fwhm_mm:g}-{2 * psf.fwhm_mm:g} mm) around the "
            "lesion outside the excluded voxels; its local background cannot be measured. "
            "Use the GTM, or a background VOI drawn by hand."
        )
    return shell


__all__ = [
    "BACKGROUND",
    "GtmResult",
    "OutsideFieldOfView",
    "PointSpread",
    "PvcRegion",
    "background_shell",
    "contrast_corrected_mean",
    "disjoint_regions",
    "geometric_transfer_matrix",
    "gtm",
    "occupancy",
    "region_based_voxelwise",
]
