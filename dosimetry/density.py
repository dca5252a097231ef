"""CT number (HU) to mass density calibration.

Local energy deposition divides the energy released in a voxel by the mass of
that voxel, so every LED dose needs a density map. The density comes from the
CT through a piecewise-linear calibration curve measured per CT protocol
(tube voltage, reconstruction kernel); :data:`SCHNEIDER_2000` is a generic
default for 120 kV.

Outside the calibration points:

* below the first point the density of the first point is used (HU below
  −1000 are noise or padding around air);
* above the last point the last segment is extrapolated linearly and the
  result is capped at :attr:`DensityCalibration.max_density_g_per_ml`
  (voxels that bright are metal or streak artefacts, where no curve is
  meaningful and an unbounded extrapolation would only move the artefact
  into the dose map).

References
----------
Schneider W, Bortfeld T, Schlegel W. Correlation between CT numbers and tissue
parameters needed for Monte Carlo simulations of clinical dose distributions.
Phys Med Biol 2000;45:459-478.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

#: Unit string of density volumes produced here.
DENSITY_UNIT = "g/mL"
_CT_UNITS = frozenset({"", "hu"})


@dataclass(frozen=True)
class DensityCalibration:
    """Piecewise-linear HU → mass density curve.

    Parameters
    ----------
    points_hu:
        CT numbers of the calibration points, strictly increasing.
    points_g_per_ml:
        Mass densities at those points, positive and non-decreasing.
    max_density_g_per_ml:
        Cap of the linear extrapolation above the last point.
    name:
        Label recorded with the results (e.g. the CT protocol).
    """

    points_hu: tuple[float, ...]
    points_g_per_ml: tuple[float, ...]
    max_density_g_per_ml: float = 3.0
    name: str = "custom"

    def __post_init__(self) -> None:
        hu = tuple(float(v) for v in self.points_hu)
        rho = tuple(float(v) for v in self.points_g_per_ml)
        object.__setattr__(self, "points_hu", hu)
        object.__setattr__(self, "points_g_per_ml", rho)
        _validate_points(hu, rho)
        if not self.max_density_g_per_ml >= rho[-1]:
            raise DosimetryError(
                f"The density cap must be at least the last calibration density "
                f"({rho[-1]} g/mL), got {self.max_density_g_per_ml} g/mL; raise the cap."
            )

    def density(self, hu: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Mass density (g/mL) of CT numbers ``hu`` (any shape)."""
        values = np.asarray(hu, dtype=np.float64)
        xp = np.asarray(self.points_hu)
        fp = np.asarray(self.points_g_per_ml)
        slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        extrapolated = fp[-1] + slope * (values - xp[-1])
        rho = np.where(values > xp[-1], extrapolated, np.interp(values, xp, fp))
        return np.asarray(np.minimum(rho, self.max_density_g_per_ml), dtype=np.float64)

    def density_volume(self, ct: Volume) -> Volume:
        """Density map (unit ``g/mL``) of a CT volume in HU, on the CT's grid."""
        if ct.unit.lower() not in _CT_UNITS:
            raise DosimetryError(
                f"Expected a CT volume in HU, got unit {ct.unit!r}. Convert the image "
                "to Hounsfield units (rescale slope/intercept) first."
            )
        return ct.with_array(self.density(ct.array), unit=DENSITY_UNIT)


def _validate_points(hu: tuple[float, ...], rho: tuple[float, ...]) -> None:
    if len(hu) != len(rho) or len(hu) < 2:
        raise DosimetryError(
            f"A density calibration needs at least two (HU, g/mL) pairs of equal length; "
            f"got {len(hu)} HU values and {len(rho)} densities."
        )
    if not all(np.isfinite(hu)) or not all(np.isfinite(rho)):
        raise DosimetryError("Density calibration points must be finite numbers.")
    if any(b <= a for a, b in pairwise(hu)):
        raise DosimetryError(
            f"Calibration HU values must be strictly increasing, got {hu}. "
            "Sort the points and remove duplicates."
        )
    if min(rho) <= 0:
        raise DosimetryError(f"Calibration densities must be positive, got {rho} g/mL.")
    if any(b < a for a, b in pairwise(rho)):
        raise DosimetryError(
            f"Calibration densities must not decrease with HU, got {rho} g/mL; "
            "check the order of the points."
        )


#: Generic 120 kV calibration (Schneider W et al., Phys Med Biol 2000;45:459-478;
#: docs/interoperability.md).
SCHNEIDER_2000 = DensityCalibration(
    points_hu=(-1000.0, -98.0, 14.0, 100.0, 1600.0),
    points_g_per_ml=(0.0012, 0.93, 1.03, 1.12, 1.96),
    name="Schneider 2000",
)
