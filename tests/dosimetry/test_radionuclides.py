"""Nuclear data pinned against the ICRP-107 packages and ICRP Publication 107 figures."""

from __future__ import annotations

import math

import icrp107_database
import pytest
import radioactivedecay

from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.radionuclides import decay_factor, nuclear_data


def test_half_life_matches_radioactivedecay_and_icrp107() -> None:
    data = nuclear_data("Lu-177")
    assert data.half_life_h == pytest.approx(radioactivedecay.Nuclide("Lu-177").half_life("h"))
    assert data.half_life_h == pytest.approx(159.528, abs=1e-3)


def test_electron_energy_is_147_9_kev() -> None:
    assert nuclear_data("Lu-177").electron_energy_kev == pytest.approx(147.9, abs=0.1)


def test_electron_energy_sums_the_icrp107_electron_spectra() -> None:
    total_kev = 0.0
    for emission in ("beta-", "IE", "auger"):
        spectrum = icrp107_database.get_icrp107_spectrum("Lu-177", emission)
        total_kev += 1000.0 * float((spectrum["energies"] * spectrum["weights"]).sum())
    assert nuclear_data("Lu-177").electron_energy_kev == pytest.approx(total_kev, rel=1e-12)


def test_photon_energy_is_35_1_kev() -> None:
    assert nuclear_data("Lu-177").photon_energy_kev == pytest.approx(35.1, abs=0.1)


def test_led_factor_is_0_08532_gy_per_h_per_mbq_per_ml() -> None:
    assert nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml == pytest.approx(0.08532, abs=1e-4)


def test_led_factor_follows_from_the_electron_energy() -> None:
    data = nuclear_data("Lu-177")
    expected = data.electron_energy_kev * 1.602176634e-16 * 3600.0 * 1e6 / 1e-3
    assert data.led_gy_per_h_per_mbq_per_ml == pytest.approx(expected, rel=1e-12)


def test_decay_constant_and_decay_factor() -> None:
    data = nuclear_data("Lu-177")
    assert data.decay_constant_per_h == pytest.approx(math.log(2) / 159.528, rel=1e-5)
    assert decay_factor("Lu-177", data.half_life_h) == pytest.approx(0.5, rel=1e-12)
    assert decay_factor("Lu-177", 0.0) == 1.0


def test_unknown_radionuclide_is_refused() -> None:
    with pytest.raises(DosimetryError, match="Lu-177"):
        nuclear_data("Y-90")
