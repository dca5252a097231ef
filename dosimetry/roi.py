"""Statistics of a map inside a volume of interest, and dose-volume histograms.

Conventions (discrete voxels, each of equal volume):

* ``D_x`` — the dose covering at least the fraction ``x`` of the VOI: the
  largest d with V(≥ d) ≥ x. With the n voxel values sorted in decreasing
  order it is the value of rank ⌈x·n⌉. D98 is thus a near-minimum and D2 a
  near-maximum, and ``D98 ≤ D50 ≤ D2`` always holds.
* The cumulative DVH gives, for each dose bin edge d, the fraction of VOI
  voxels with a value ≥ d; D_x read from it is consistent with the above.

References
----------
ICRU Report 83, Prescribing, recording, and reporting photon-beam
intensity-modulated radiation therapy, 2010 (D98, D2, cumulative DVH).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError, GeometryError
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
MapLike = Volume | npt.NDArray[np.generic]

#: Default number of DVH bins between 0 and the VOI maximum.
DEFAULT_DVH_BINS = 200
#: Guard against a bin width far too small for the range.
MAX_DVH_BINS = 100_000


@dataclass(frozen=True)
class VoiStatistics:
    """Statistics of a map's values in a VOI (unit of the map).

    ``total`` is the sum of the values times the voxel volume (e.g. Bq for a
    Bq/mL map); ``sd`` is the spatial standard deviation of the voxel values.
    """

    n_voxels: int
    volume_ml: float
    mean: float
    sd: float
    min: float
    max: float
    d98: float
    d2: float
    total: float


@dataclass(frozen=True, eq=False)
class CumulativeDvh:
    """Cumulative dose-volume histogram.

    ``volume_fraction[i]`` is the fraction of the VOI with a value ≥
    ``dose_bins[i]``; the bins are increasing and start at min(0, VOI min).
    """

    dose_bins: FloatArray
    volume_fraction: FloatArray
    volume_ml: float
    unit: str = "Gy"
    #: Exact mean, minimum and maximum of the VOI's values (not read off the bins).
    mean: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def volume_ml_at(self) -> FloatArray:
        """Absolute volume (mL) receiving at least each bin's dose."""
        return np.asarray(self.volume_fraction * self.volume_ml, dtype=np.float64)


def voi_values(values: MapLike, mask: MapLike) -> FloatArray:
    """The map's values inside the mask (1-D float array).

    Raises
    ------
    GeometryError
        Shapes or grids differ, or the mask is empty.
    DosimetryError
        A value inside the VOI is not finite.
    """
    if isinstance(values, Volume) and isinstance(mask, Volume):
        values.require_same_grid(mask, "map and VOI mask")
    array = np.asarray(values.array if isinstance(values, Volume) else values, dtype=np.float64)
    selected = np.asarray(mask.array if isinstance(mask, Volume) else mask).astype(bool)
    if array.shape != selected.shape:
        raise GeometryError(
            f"The VOI mask has shape {selected.shape} but the map has {array.shape}; "
            "resample the mask onto the map's grid."
        )
    inside = array[selected]
    if inside.size == 0:
        raise GeometryError("The VOI mask is empty: no voxel to compute statistics on.")
    if not np.all(np.isfinite(inside)):
        raise DosimetryError(
            f"{int(np.sum(~np.isfinite(inside)))} voxels inside the VOI are NaN or infinite; "
            "check the map (e.g. LED in air with GasPolicy.KEEP)."
        )
    return np.asarray(inside, dtype=np.float64)


def dose_covering(sorted_descending: FloatArray, fraction: float) -> float:
    """``D_x``: the value of rank ⌈x·n⌉ of the values sorted in decreasing order."""
    if not 0.0 < fraction <= 1.0:
        raise DosimetryError(f"A volume fraction must be in (0, 1], got {fraction}.")
    n = sorted_descending.size
    rank = max(math.ceil(fraction * n - 1e-9), 1)
    return float(sorted_descending[rank - 1])


def voi_statistics(
    values: MapLike, mask: MapLike, voxel_volume_ml: float | None = None
) -> VoiStatistics:
    """Mean, sd, min, max, D98, D2, volume and total of a map in a VOI.

    ``voxel_volume_ml`` is taken from ``values`` when it is a :class:`Volume`
    and must be given for plain arrays.
    """
    inside = voi_values(values, mask)
    voxel_ml = _voxel_volume_ml(values, voxel_volume_ml)
    descending = np.sort(inside)[::-1]
    return VoiStatistics(
        n_voxels=int(inside.size),
        volume_ml=inside.size * voxel_ml,
        mean=float(inside.mean()),
        sd=float(inside.std()),
        min=float(descending[-1]),
        max=float(descending[0]),
        d98=dose_covering(descending, 0.98),
        d2=dose_covering(descending, 0.02),
        total=float(inside.sum()) * voxel_ml,
    )


def cumulative_dvh(
    values: MapLike,
    mask: MapLike,
    bin_width: float | None = None,
    n_bins: int = DEFAULT_DVH_BINS,
    voxel_volume_ml: float | None = None,
) -> CumulativeDvh:
    """Cumulative DVH of a map in a VOI.

    Bin edges run from min(0, VOI min) in steps of ``bin_width`` (default:
    VOI maximum / ``n_bins``) until one edge exceeds the VOI maximum, so
    the last fraction is 0.
    """
    inside = voi_values(values, mask)
    voxel_ml = _voxel_volume_ml(values, voxel_volume_ml)
    low = min(0.0, float(inside.min()))
    high = float(inside.max())
    width = bin_width if bin_width is not None else (high - low) / n_bins
    if not width > 0:
        width = max(abs(high), 1.0) / n_bins
    n_edges = math.floor((high - low) / width) + 2
    if n_edges > MAX_DVH_BINS:
        raise DosimetryError(
            f"A bin width of {width:g} over [{low:g}, {high:g}] makes {n_edges} DVH bins "
            f"(limit {MAX_DVH_BINS}); choose a wider bin."
        )
    edges = np.asarray(low + width * np.arange(n_edges), dtype=np.float64)
    ascending = np.sort(inside)
    at_least = inside.size - np.searchsorted(ascending, edges, side="left")
    unit = values.unit if isinstance(values, Volume) and values.unit else "Gy"
    return CumulativeDvh(
        dose_bins=edges,
        volume_fraction=at_least / inside.size,
        volume_ml=inside.size * voxel_ml,
        unit=unit,
        mean=float(inside.mean()),
        minimum=float(ascending[0]),
        maximum=float(ascending[-1]),
    )


def voi_mean_curve(frames: Sequence[MapLike], mask: MapLike) -> FloatArray:
    """Mean value in the VOI of each frame (e.g. dose-rate maps per time point)."""
    if not frames:
        raise DosimetryError("No frames given: pass one map per time point.")
    return np.array([voi_values(frame, mask).mean() for frame in frames], dtype=np.float64)


def _voxel_volume_ml(values: MapLike, voxel_volume_ml: float | None) -> float:
    if voxel_volume_ml is not None:
        if not voxel_volume_ml > 0:
            raise GeometryError(f"Voxel volume must be positive, got {voxel_volume_ml} mL.")
        return voxel_volume_ml
    if isinstance(values, Volume):
        return values.voxel_volume_ml
    raise GeometryError("A plain array has no voxel size: pass voxel_volume_ml or a Volume.")
