"""Absorbed dose rate by local energy deposition (LED).

Under LED the energy of every electron (β⁻, internal conversion, Auger)
emitted in a voxel is absorbed in that voxel and photons escape::

    Ḋ [Gy/h] = k × C [MBq/mL] / ρ [g/mL]

with ``k = nuclear_data(...).led_gy_per_h_per_mbq_per_ml`` (0.08532 for
Lu-177). Here activity concentrations are in Bq/mL, so ``k`` is divided by 1e6.

Gas and air
-----------
Dividing by ρ makes LED explode where there is almost no mass: SPECT spills
activity a centimetre beyond organ borders (resolution ~10-15 mm FWHM), so
air around the body, bowel gas and airways receive counts but no tissue to
hold them. Voxels whose density is below ``density_threshold_g_per_ml`` are
handled by a :class:`GasPolicy`:

* ``ZERO_DOSE`` (default) — no tissue, no dose. The activity seen there is
  spill-out; zero is what a clinician expects outside the body and keeps
  artefactual hot spots out of the RT Dose.
* ``WATER_DENSITY`` — the voxel is treated as soft tissue (ρ = 1 g/mL), the
  "dose in water" variant; useful when a VOI is known to touch gas.
* ``CLIP_DENSITY`` — ρ is raised to the threshold, bounding the amplification
  at 1/threshold.
* ``KEEP`` — true density, for research comparisons only.

The default threshold 0.1 g/mL (−904 HU on the Schneider curve) sits about
two noise standard deviations of a low-dose CT (±50 HU ≈ ±0.05 g/mL) above
air, and below aerated lung parenchyma (≈0.15-0.3 g/mL), which is real tissue
whose true density LED should use. None of the paper's VOIs (liver, kidneys,
spleen, L2-L4 marrow, abdominal lesions) contains gas; sites that also want
to suppress lung-base spill-out from the liver can raise the threshold to
~0.3 g/mL.

References
----------
Hebert et al., J Nucl Med 2024;65:923-930 (LED with density correction).
Sjögreen Gleisner K et al., EANM dosimetry committee recommendations for
dosimetry of 177Lu-labelled somatostatin-receptor- and PSMA-targeting
ligands, Eur J Nucl Med Mol Imaging 2022;49:1778-1809.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

import numpy as np
import numpy.typing as npt

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

#: Unit string of dose-rate volumes produced here.
DOSE_RATE_UNIT = "Gy/h"
#: Density of soft tissue / water used by the "in water" variant, g/mL.
WATER_DENSITY_G_PER_ML = 1.0
#: Default density below which a voxel counts as gas (see module docstring).
DEFAULT_GAS_THRESHOLD_G_PER_ML = 0.1

_ACTIVITY_UNITS = frozenset({"", "bq/ml", "bqml"})
_DENSITY_UNITS = frozenset({"", "g/ml", "g/cm3", "g/cm³"})


class GasPolicy(str, Enum):
    """What LED does in voxels below the gas density threshold."""

    ZERO_DOSE = "zero-dose"
    WATER_DENSITY = "water-density"
    CLIP_DENSITY = "clip-density"
    KEEP = "keep"


@dataclass(frozen=True)
class DoseRateMap:
    """An LED dose-rate map and how gas voxels were treated.

    Attributes
    ----------
    dose_rate:
        Dose rate in Gy/h on the grid of the activity map.
    gas_mask:
        Boolean ``[z, y, x]`` array of the voxels below the threshold.
    gas_policy, density_threshold_g_per_ml:
        The policy applied to them.
    """

    dose_rate: Volume
    gas_mask: npt.NDArray[np.bool_]
    gas_policy: GasPolicy
    density_threshold_g_per_ml: float

    @property
    def gas_voxel_count(self) -> int:
        """Number of voxels the gas policy applied to."""
        return int(self.gas_mask.sum())


def led_factor_gy_per_h_per_bq_per_ml(radionuclide: Radionuclide | str = "Lu-177") -> float:
    """LED factor in Gy/h per Bq/mL at 1 g/mL (``k`` / 1e6)."""
    return nuclear_data(radionuclide).led_gy_per_h_per_mbq_per_ml / 1e6


def led_dose_rate(
    activity_bq_per_ml: Volume,
    density_g_per_ml: Volume,
    radionuclide: Radionuclide | str = "Lu-177",
    gas_policy: GasPolicy = GasPolicy.ZERO_DOSE,
    density_threshold_g_per_ml: float = DEFAULT_GAS_THRESHOLD_G_PER_ML,
) -> DoseRateMap:
    """LED dose rate Ḋ = k·C/ρ of an activity map with a density map.

    Parameters
    ----------
    activity_bq_per_ml:
        Activity concentration (Bq/mL), e.g. quantitative SPECT.
    density_g_per_ml:
        Mass density on the same grid (from
        :meth:`theranode.dosimetry.density.DensityCalibration.density_volume` of the
        registered, resampled CT).
    gas_policy, density_threshold_g_per_ml:
        Treatment of voxels with ρ below the threshold (module docstring).

    Raises
    ------
    GeometryError
        The two volumes are on different grids.
    DosimetryError
        A unit is not Bq/mL resp. g/mL, or the threshold is not positive.
    """
    _check_unit(activity_bq_per_ml, _ACTIVITY_UNITS, "activity concentration in Bq/mL")
    _check_unit(density_g_per_ml, _DENSITY_UNITS, "mass density in g/mL")
    activity_bq_per_ml.require_same_grid(density_g_per_ml, "activity and density maps")
    if not density_threshold_g_per_ml > 0:
        raise DosimetryError(
            f"The gas density threshold must be positive, got {density_threshold_g_per_ml} g/mL."
        )
    rho = np.asarray(density_g_per_ml.array, dtype=np.float64)
    gas = rho < density_threshold_g_per_ml
    rho_used = _density_under_policy(rho, gas, gas_policy, density_threshold_g_per_ml)
    factor = led_factor_gy_per_h_per_bq_per_ml(radionuclide)
    activity = np.asarray(activity_bq_per_ml.array, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = factor * activity / rho_used
    if gas_policy is GasPolicy.ZERO_DOSE:
        rate[gas] = 0.0
    logger.debug(
        "LED: %d gas voxels (rho < %s g/mL) handled by %s",
        int(gas.sum()),
        density_threshold_g_per_ml,
        gas_policy.value,
    )
    return DoseRateMap(
        dose_rate=activity_bq_per_ml.with_array(rate, unit=DOSE_RATE_UNIT),
        gas_mask=gas,
        gas_policy=gas_policy,
        density_threshold_g_per_ml=density_threshold_g_per_ml,
    )


def led_dose_rate_in_water(
    activity_bq_per_ml: Volume, radionuclide: Radionuclide | str = "Lu-177"
) -> Volume:
    """LED dose rate assuming ρ = 1 g/mL everywhere (no CT needed)."""
    _check_unit(activity_bq_per_ml, _ACTIVITY_UNITS, "activity concentration in Bq/mL")
    factor = led_factor_gy_per_h_per_bq_per_ml(radionuclide) / WATER_DENSITY_G_PER_ML
    rate = factor * np.asarray(activity_bq_per_ml.array, dtype=np.float64)
    return activity_bq_per_ml.with_array(rate, unit=DOSE_RATE_UNIT)


def _density_under_policy(
    rho: npt.NDArray[np.float64],
    gas: npt.NDArray[np.bool_],
    policy: GasPolicy,
    threshold_g_per_ml: float,
) -> npt.NDArray[np.float64]:
    replacement = {
        GasPolicy.ZERO_DOSE: WATER_DENSITY_G_PER_ML,  # any positive value; dose zeroed after
        GasPolicy.WATER_DENSITY: WATER_DENSITY_G_PER_ML,
        GasPolicy.CLIP_DENSITY: threshold_g_per_ml,
    }
    if policy is GasPolicy.KEEP:
        return rho
    return np.where(gas, replacement[policy], rho)


def _check_unit(volume: Volume, accepted: frozenset[str], what: str) -> None:
    if volume.unit.lower() not in accepted:
        raise DosimetryError(
            f"Expected a volume of {what}, got unit {volume.unit!r}. Convert it before "
            "computing the LED dose rate."
        )
