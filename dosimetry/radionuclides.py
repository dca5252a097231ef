"""Nuclear data of the therapy radionuclides, read from ICRP-107 packages.

No decay constant or emission energy is typed in here: half-lives come from
``radioactivedecay`` and electron/photon energies per decay from
``icrp107-database``; both package ICRP Publication 107.

References
----------
ICRP Publication 107, Nuclear Decay Data for Dosimetric Calculations, 2008.
Hebert et al., J Nucl Med 2024;65:923-930 (local energy deposition of
Lu-177 electrons).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import cache

import icrp107_database
import radioactivedecay

from theranode.dosimetry.errors import DosimetryError

#: Joules per kilo-electronvolt (CODATA 2018 elementary charge × 1000).
JOULE_PER_KEV = 1.602176634e-16

#: Emission types whose energy is deposited locally under LED (electrons).
ELECTRON_EMISSIONS = ("beta-", "IE", "auger")
#: Photon emissions, which escape the voxel and are not deposited under LED.
PHOTON_EMISSIONS = ("gamma", "X")


class Radionuclide(str, Enum):
    """Radionuclides theranode can do dosimetry for."""

    LU177 = "Lu-177"


@dataclass(frozen=True)
class NuclearData:
    """Decay data of one radionuclide.

    Attributes
    ----------
    half_life_h:
        Physical half-life in hours.
    electron_energy_kev:
        Mean energy emitted as electrons (β⁻, internal conversion and Auger)
        per decay, in keV.
    photon_energy_kev:
        Mean energy emitted as photons (γ and X) per decay, in keV.
    """

    radionuclide: Radionuclide
    half_life_h: float
    electron_energy_kev: float
    photon_energy_kev: float

    @property
    def decay_constant_per_h(self) -> float:
        """Physical decay constant λ_phys = ln 2 / T½ in 1/h."""
        return math.log(2.0) / self.half_life_h

    @property
    def led_gy_per_h_per_mbq_per_ml(self) -> float:
        """LED dose-rate factor: Gy/h per MBq/mL in a medium of 1 g/mL.

        Ḋ = C · E_e / ρ with C in Bq/g and E_e in J:
        1 MBq/mL × 1e6 × E_e[keV] × 1.602e-16 J/keV × 3600 s/h ÷ 1e-3 kg.
        """
        joule_per_decay = self.electron_energy_kev * JOULE_PER_KEV
        return 1e6 * joule_per_decay * 3600.0 / 1e-3


def _mean_energy_kev(name: str, emissions: tuple[str, ...]) -> float:
    total_mev = 0.0
    for emission in emissions:
        spectrum = icrp107_database.get_icrp107_spectrum(name, emission)
        total_mev += float((spectrum["energies"] * spectrum["weights"]).sum())
    return total_mev * 1000.0


@cache
def nuclear_data(radionuclide: Radionuclide | str) -> NuclearData:
    """Decay data for ``radionuclide`` (e.g. ``"Lu-177"``), from ICRP-107."""
    try:
        nuclide = Radionuclide(radionuclide)
    except ValueError:
        known = ", ".join(r.value for r in Radionuclide)
        raise DosimetryError(
            f"No dosimetry data for radionuclide {radionuclide!r}; theranode supports {known}."
        ) from None
    return NuclearData(
        radionuclide=nuclide,
        half_life_h=float(radioactivedecay.Nuclide(nuclide.value).half_life("h")),
        electron_energy_kev=_mean_energy_kev(nuclide.value, ELECTRON_EMISSIONS),
        photon_energy_kev=_mean_energy_kev(nuclide.value, PHOTON_EMISSIONS),
    )


def decay_factor(radionuclide: Radionuclide | str, elapsed_h: float) -> float:
    """Fraction of activity left after ``elapsed_h`` hours of physical decay."""
    return math.exp(-nuclear_data(radionuclide).decay_constant_per_h * elapsed_h)
