"""One truth per result: a dose map whose VOI means are the reported VOI doses.

A VOI's reported mean absorbed dose and the 3-D dose map are computed along
different paths: the mean from the VOI's mean dose-rate curve (or the paper's
single-time-point scaling of it), recovery-corrected for lesions; the map
voxel by voxel. The two disagree (the fit is not linear; a voxel-wise
single-time-point formula is not the VOI method; RC is a statement about a
VOI mean), and a physicist overlaying the map would read doses the report
does not state. :func:`normalise_to_voi_means` makes them agree: within each
VOI the map is multiplied by one factor so that its mean over the VOI's mask
— the mask the engine averages over for the report — equals the reported
mean. The map keeps its spatial distribution inside each VOI and the report
gives its level: a VOI-level time integration applied to voxel-level
dose rates (EANM 2022 discusses VOI- and voxel-level time integration).

Overlapping VOIs (a lesion inside the liver): VOIs are set smallest first
(fewest voxels; ties by name). A voxel belongs to the smallest VOI that holds
it, and that VOI's factor applies there. A larger VOI's factor applies only
to its voxels not set yet, and is chosen so that the mean over its *whole*
mask, the already-set voxels included, equals its reported mean: that is how
the report averages (every VOI's mean over its full mask, lesion voxels
included in the liver). Voxels outside every VOI keep the map as computed.

A VOI whose remaining voxels are all zero in the map (no dose rate measured
there) receives the missing dose uniformly on those voxels; a VOI whose
smaller VOIs alone already exceed its reported mean keeps its remaining
voxels at zero and a warning says by how much its mean is off.

References
----------
Sjögreen Gleisner K et al., EANM recommendations for 177Lu dosimetry, Eur J
Nucl Med Mol Imaging 2022;49:1778-1809.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import GeometryError
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

BoolArray = npt.NDArray[np.bool_]

#: A factor this far from 1 is worth a note in the result (the map and the
#: VOI method disagreed by more than the 1 % the map is held to).
NOTEWORTHY_FACTOR_DEVIATION = 0.01


@dataclass(frozen=True, eq=False)
class VoiTarget:
    """A VOI's mask on the dose grid and the mean dose the map must have in it.

    Attributes
    ----------
    name:
        VOI name.
    mask:
        Boolean array of the dose grid's shape (the mask the report averages over).
    mean_gy:
        The reported mean absorbed dose of the VOI.
    """

    name: str
    mask: BoolArray
    mean_gy: float


@dataclass(frozen=True, eq=False)
class NormalisedMap:
    """The normalised map, the factor applied in each VOI and any warnings.

    ``factors[name]`` multiplies the input map on the voxels set for that VOI
    (``nan`` where the VOI's voxels were filled uniformly or left at zero).
    """

    dose: Volume
    factors: dict[str, float]
    warnings: tuple[str, ...]


def setting_order(targets: Sequence[VoiTarget]) -> list[VoiTarget]:
    """Smallest VOI first (voxel count), ties by name: the overlap rule."""
    return sorted(targets, key=lambda t: (int(np.count_nonzero(t.mask)), t.name))


def normalise_to_voi_means(dose: Volume, targets: Sequence[VoiTarget]) -> NormalisedMap:
    """Scale ``dose`` within each VOI so that its VOI mean is the target (module docstring).

    Parameters
    ----------
    dose:
        The map to normalise (Gy), on the grid of the masks.
    targets:
        VOIs with their masks and reported means; empty masks are skipped.

    Raises
    ------
    GeometryError
        A mask's shape differs from the map's.
    """
    source = np.asarray(dose.array, dtype=np.float64)
    out = source.copy()
    taken = np.zeros(source.shape, dtype=bool)
    factors: dict[str, float] = {}
    warnings: list[str] = []
    for target in setting_order(targets):
        if target.mask.shape != source.shape:
            raise GeometryError(
                f"The mask of VOI {target.name!r} has shape {target.mask.shape}, the dose "
                f"map {source.shape}; masks must be on the dose grid."
            )
        if not target.mask.any():
            continue
        factor, warning = _set_voi(out, source, taken, target)
        factors[target.name] = factor
        if warning:
            warnings.append(warning)
        taken |= target.mask
    for warning in warnings:
        logger.warning("dose map: %s", warning)
    return NormalisedMap(dose.with_array(out.astype(np.float32)), factors, tuple(warnings))


def _set_voi(
    out: npt.NDArray[np.float64],
    source: npt.NDArray[np.float64],
    taken: BoolArray,
    target: VoiTarget,
) -> tuple[float, str | None]:
    """Set ``target``'s free voxels of ``out``; returns its factor and a warning."""
    free = target.mask & ~taken
    n_voxels = int(np.count_nonzero(target.mask))
    already = float(out[target.mask & taken].sum())
    wanted = target.mean_gy * n_voxels - already
    if not free.any():
        mean_gy = already / n_voxels
        if abs(mean_gy - target.mean_gy) <= NOTEWORTHY_FACTOR_DEVIATION * abs(target.mean_gy):
            return math.nan, None
        return math.nan, _off_warning(target, mean_gy, "is not met by the smaller VOIs covering it")
    measured = float(source[free].sum())
    if wanted < 0:
        out[free] = 0.0
        return 0.0, _off_warning(target, already / n_voxels, "is exceeded by smaller VOIs in it")
    if measured <= 0:
        out[free] = wanted / int(np.count_nonzero(free))
        return math.nan, (
            f"VOI {target.name!r}: the map is zero in it; its reported mean "
            f"{target.mean_gy:.4g} Gy is spread uniformly over its voxels"
        )
    factor = wanted / measured
    out[free] = source[free] * factor
    return factor, None


def _off_warning(target: VoiTarget, mean_gy: float, why: str) -> str:
    return (
        f"VOI {target.name!r}: its reported mean {target.mean_gy:.4g} Gy {why}; "
        f"the map's mean in it is {mean_gy:.4g} Gy"
    )


def voi_means(dose: Volume, targets: Sequence[VoiTarget]) -> dict[str, float]:
    """Mean of ``dose`` over each target's mask (for checks and notes)."""
    array = np.asarray(dose.array, dtype=np.float64)
    return {t.name: float(array[t.mask].mean()) for t in targets if t.mask.any()}
