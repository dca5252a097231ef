"""LED dose rate: known answers on a uniform sphere, linearity, gas policies."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from theranode.dosimetry.absorbed_dose import (
    GasPolicy,
    led_dose_rate,
    led_dose_rate_in_water,
    led_factor_gy_per_h_per_bq_per_ml,
)
from theranode.dosimetry.errors import DosimetryError, GeometryError
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.volume import Volume

SPACING = (4.0, 4.0, 4.0)


def _sphere_mask(
    shape: tuple[int, int, int] = (16, 16, 16), radius_vox: float = 5.0
) -> npt.NDArray[np.bool_]:
    z, y, x = np.indices(shape)
    centre = (np.asarray(shape) - 1) / 2.0
    r2 = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    return np.asarray(r2 <= radius_vox**2, dtype=bool)


def _volume(array: npt.NDArray[np.float64], unit: str) -> Volume:
    return Volume(array, spacing_mm=SPACING, origin_mm=(-30.0, -30.0, -30.0), unit=unit)


def test_led_factor_per_bq() -> None:
    k = nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml
    assert led_factor_gy_per_h_per_bq_per_ml("Lu-177") == pytest.approx(k / 1e6)


def test_uniform_sphere_dose_rate_is_k_c_over_rho() -> None:
    sphere = _sphere_mask()
    concentration_bq_per_ml = 2.5e6
    rho = 1.05
    activity = _volume(np.where(sphere, concentration_bq_per_ml, 0.0), "Bq/mL")
    density = _volume(np.full(sphere.shape, rho), "g/mL")
    result = led_dose_rate(activity, density)
    k = nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml
    np.testing.assert_allclose(result.dose_rate.array[sphere], k * 2.5 / rho, rtol=1e-12)
    assert np.all(result.dose_rate.array[~sphere] == 0.0)
    assert result.dose_rate.unit == "Gy/h"
    assert result.dose_rate.same_grid(activity)
    assert result.gas_voxel_count == 0


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-3, 1e3), st.floats(1e-3, 1e3))
def test_dose_rate_is_linear_in_activity(a: float, b: float) -> None:
    rng = np.random.default_rng(7)
    act1 = rng.uniform(0, 1e6, (4, 5, 6))
    act2 = rng.uniform(0, 1e6, (4, 5, 6))
    density = _volume(rng.uniform(0.05, 2.0, (4, 5, 6)), "g/mL")

    def rate(array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.asarray(led_dose_rate(_volume(array, "Bq/mL"), density).dose_rate.array)

    np.testing.assert_allclose(
        rate(a * act1 + b * act2), a * rate(act1) + b * rate(act2), rtol=1e-10, atol=1e-12
    )


@pytest.fixture
def gas_case() -> tuple[Volume, Volume, npt.NDArray[np.bool_]]:
    rho = np.full((2, 2, 2), 1.0)
    rho[0, 0, :] = 0.0012  # air
    rho[1, 1, 1] = 0.05  # bowel gas
    rho[1, 0, 0] = 0.26  # lung: real tissue, above the default threshold
    activity = _volume(np.full((2, 2, 2), 1e6), "Bq/mL")
    return activity, _volume(rho, "g/mL"), rho < 0.1


@pytest.mark.parametrize(
    ("policy", "gas_rate_factor"),
    [
        (GasPolicy.ZERO_DOSE, 0.0),
        (GasPolicy.WATER_DENSITY, 1.0),
        (GasPolicy.CLIP_DENSITY, 1.0 / 0.1),
    ],
)
def test_gas_policies(
    gas_case: tuple[Volume, Volume, npt.NDArray[np.bool_]],
    policy: GasPolicy,
    gas_rate_factor: float,
) -> None:
    activity, density, gas = gas_case
    k = nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml
    result = led_dose_rate(activity, density, gas_policy=policy)
    assert result.gas_voxel_count == 3
    np.testing.assert_array_equal(result.gas_mask, gas)
    np.testing.assert_allclose(result.dose_rate.array[gas], k * gas_rate_factor)
    np.testing.assert_allclose(result.dose_rate.array[1, 0, 0], k / 0.26)
    np.testing.assert_allclose(result.dose_rate.array[0, 1, 1], k)


def test_keep_policy_uses_true_density(
    gas_case: tuple[Volume, Volume, npt.NDArray[np.bool_]],
) -> None:
    activity, density, _ = gas_case
    k = nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml
    result = led_dose_rate(activity, density, gas_policy=GasPolicy.KEEP)
    np.testing.assert_allclose(result.dose_rate.array, k / density.array)


def test_threshold_is_configurable(gas_case: tuple[Volume, Volume, npt.NDArray[np.bool_]]) -> None:
    activity, density, _ = gas_case
    result = led_dose_rate(activity, density, density_threshold_g_per_ml=0.3)
    assert result.gas_voxel_count == 4
    assert result.dose_rate.array[1, 0, 0] == 0.0


def test_dose_rate_in_water() -> None:
    activity = _volume(np.full((2, 2, 2), 3e6), "BQML")
    k = nuclear_data("Lu-177").led_gy_per_h_per_mbq_per_ml
    np.testing.assert_allclose(led_dose_rate_in_water(activity).array, 3 * k)


def test_grids_must_match() -> None:
    activity = _volume(np.ones((2, 2, 2)), "Bq/mL")
    density = Volume(np.ones((2, 2, 2)), spacing_mm=(2.0, 2.0, 2.0), unit="g/mL")
    with pytest.raises(GeometryError, match="different grids"):
        led_dose_rate(activity, density)


def test_units_are_checked() -> None:
    counts = _volume(np.ones((2, 2, 2)), "counts")
    density = _volume(np.ones((2, 2, 2)), "g/mL")
    with pytest.raises(DosimetryError, match="Bq/mL"):
        led_dose_rate(counts, density)
    with pytest.raises(DosimetryError, match="g/mL"):
        led_dose_rate(_volume(np.ones((2, 2, 2)), "Bq/mL"), _volume(np.ones((2, 2, 2)), "HU"))


def test_threshold_must_be_positive() -> None:
    ones = np.ones((2, 2, 2))
    with pytest.raises(DosimetryError, match="threshold"):
        led_dose_rate(_volume(ones, "Bq/mL"), _volume(ones, "g/mL"), density_threshold_g_per_ml=0.0)
