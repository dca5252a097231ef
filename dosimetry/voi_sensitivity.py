"""How one VOI's mean on one SPECT responds to noise, misregistration and its outline.

These are the per-time-point inputs of the uncertainty budget
(:class:`theranode.dosimetry.uncertainty.TimePointSpread`), measured on the
image itself because the engine receives activity concentrations, not counts:

* **noise** — the voxel noise σ is estimated inside the VOI from the image's
  discrete Laplacian, which removes smooth signal (Immerkær 1996); a robust
  (median absolute deviation) estimate keeps edges from inflating it, though
  an edge only a voxel or two wide still adds its curvature (the estimate then
  errs high). The VOI mean's relative standard uncertainty is σ/(√n · mean). Voxel noise of an
  iteratively reconstructed SPECT is correlated between neighbours, so this
  is a lower bound there; the budget's residual scaling (reduced χ² of the
  kinetic fit) widens the interval when the points scatter more.
* **registration** — the VOI mean with the image moved by ± the residual
  registration error along each axis (linear interpolation), central
  differences combined in quadrature over the axes.
* **outline** — ∂ln(mean)/∂ln(volume) from the VOI grown and shrunk by one
  voxel layer (6-connected), the slope the segmentation term multiplies by
  u(V)/V (Gear 2018).

References
----------
Immerkær J. Fast noise variance estimation. Computer Vision and Image
Understanding 1996;64:300-302.
Gear JI et al. EANM practical guidance on uncertainty analysis for molecular
radiotherapy absorbed dose calculations. Eur J Nucl Med Mol Imaging
2018;45:2456-2474.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from theranode.dosimetry.errors import GeometryError

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: 6-neighbour discrete Laplacian; for white noise of variance σ² its output has
#: variance σ² × Σk² = 42 σ².
_LAPLACIAN = np.zeros((3, 3, 3))
_LAPLACIAN[1, 1, 1] = 6.0
for _axis in range(3):
    for _side in (0, 2):
        _index = [1, 1, 1]
        _index[_axis] = _side
        _LAPLACIAN[tuple(_index)] = -1.0
_LAPLACIAN_NORM = math.sqrt(float(np.sum(_LAPLACIAN**2)))
#: Normal-consistent scale of the median absolute deviation.
_MAD_SCALE = 1.4826


def _box(mask: BoolArray, margin: int) -> tuple[slice, ...]:
    where = np.nonzero(mask)
    if not where[0].size:
        raise GeometryError("A VOI with no voxel on the SPECT grid has no mean to perturb.")
    return tuple(
        slice(max(int(w.min()) - margin, 0), min(int(w.max()) + margin + 1, n))
        for w, n in zip(where, mask.shape, strict=True)
    )


def _mean(image: FloatArray, mask: BoolArray) -> float:
    mean = float(image[mask].mean())
    if not (math.isfinite(mean) and mean > 0):
        raise GeometryError(
            f"The VOI's mean on the SPECT is {mean:.3g}; its uncertainty is relative to a "
            "positive mean. Check the VOI's position and the SPECT."
        )
    return mean


def noise_relative(image: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """Relative standard uncertainty of the VOI mean from the image's voxel noise."""
    values, inside = np.asarray(image, dtype=np.float64), np.asarray(mask, dtype=bool)
    box = _box(inside, 1)
    laplacian = ndimage.convolve(values[box], _LAPLACIAN, mode="nearest")[inside[box]]
    mad = float(np.median(np.abs(laplacian - np.median(laplacian))))
    sigma = _MAD_SCALE * mad / _LAPLACIAN_NORM
    return sigma / math.sqrt(int(inside.sum())) / _mean(values, inside)


def registration_relative(
    image: npt.ArrayLike, mask: npt.ArrayLike, spacing_mm: Sequence[float], sd_mm: float
) -> float:
    """Relative change of the VOI mean per ``sd_mm`` of misregistration, axes in quadrature.

    ``spacing_mm`` is (x, y, z), the image is indexed (z, y, x).
    """
    if sd_mm <= 0:
        return 0.0
    values, inside = np.asarray(image, dtype=np.float64), np.asarray(mask, dtype=bool)
    margin = math.ceil(sd_mm / min(spacing_mm)) + 2
    box = _box(inside, margin)
    sub, sub_mask = values[box], inside[box]
    nominal = _mean(values, inside)
    changes = []
    for axis, spacing in zip((2, 1, 0), spacing_mm, strict=True):
        step = [0.0, 0.0, 0.0]
        step[axis] = sd_mm / spacing
        plus = ndimage.shift(sub, step, order=1, mode="nearest")[sub_mask].mean()
        minus = ndimage.shift(sub, [-s for s in step], order=1, mode="nearest")[sub_mask].mean()
        changes.append(float(plus - minus) / (2.0 * nominal))
    return math.hypot(*changes)


def volume_log_slope(image: npt.ArrayLike, mask: npt.ArrayLike) -> float:
    """∂ln(VOI mean)/∂ln(VOI volume), from the VOI grown and shrunk by one voxel layer.

    A VOI too thin to shrink uses the growth alone.
    """
    values, inside = np.asarray(image, dtype=np.float64), np.asarray(mask, dtype=bool)
    box = _box(inside, 2)
    sub, sub_mask = values[box], inside[box]
    n, mean = int(sub_mask.sum()), _mean(values, inside)
    slopes = []
    for grown in (ndimage.binary_dilation(sub_mask), ndimage.binary_erosion(sub_mask)):
        m = int(grown.sum())
        other = float(sub[grown].mean()) if m else 0.0
        if m and m != n and other > 0:
            slopes.append((math.log(other) - math.log(mean)) / (math.log(m) - math.log(n)))
    return float(np.mean(slopes)) if slopes else 0.0
