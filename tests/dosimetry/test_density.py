"""HU → density calibration."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from theranode.dosimetry.density import SCHNEIDER_2000, DensityCalibration
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.volume import Volume


def test_schneider_points_are_reproduced() -> None:
    hu = np.array([-1000.0, -98.0, 14.0, 100.0, 1600.0])
    expected = [0.0012, 0.93, 1.03, 1.12, 1.96]
    np.testing.assert_allclose(SCHNEIDER_2000.density(hu), expected, rtol=1e-12)


def test_interpolates_linearly_between_points() -> None:
    assert SCHNEIDER_2000.density(57.0) == pytest.approx((1.03 + 1.12) / 2)
    assert SCHNEIDER_2000.density(850.0) == pytest.approx((1.12 + 1.96) / 2)


def test_below_first_point_is_air() -> None:
    np.testing.assert_allclose(SCHNEIDER_2000.density([-1024.0, -3000.0]), [0.0012, 0.0012])


def test_above_last_point_extrapolates_then_caps() -> None:
    slope = (1.96 - 1.12) / 1500.0
    assert SCHNEIDER_2000.density(2000.0) == pytest.approx(1.96 + 400 * slope)
    assert SCHNEIDER_2000.density(30000.0) == pytest.approx(3.0)
    capped = DensityCalibration((0.0, 100.0), (1.0, 1.1), max_density_g_per_ml=1.2)
    assert capped.density(1000.0) == pytest.approx(1.2)


@given(st.lists(st.floats(-2000, 5000), min_size=2, max_size=20))
def test_density_is_monotonic_in_hu(hu: list[float]) -> None:
    ordered = np.sort(np.asarray(hu))
    rho = SCHNEIDER_2000.density(ordered)
    assert np.all(np.diff(rho) >= 0)
    assert np.all(rho > 0)


@pytest.mark.parametrize(
    ("hu", "rho", "match"),
    [
        ((0.0, 0.0), (1.0, 1.1), "strictly increasing"),
        ((100.0, 0.0), (1.0, 1.1), "strictly increasing"),
        ((0.0, 100.0), (0.0, 1.1), "positive"),
        ((0.0, 100.0), (1.2, 1.1), "must not decrease"),
        ((0.0,), (1.0,), "at least two"),
        ((0.0, 100.0, 200.0), (1.0, 1.1), "at least two"),
        ((0.0, float("nan")), (1.0, 1.1), "finite"),
    ],
)
def test_invalid_calibrations_are_refused(
    hu: tuple[float, ...], rho: tuple[float, ...], match: str
) -> None:
    with pytest.raises(DosimetryError, match=match):
        DensityCalibration(hu, rho)


def test_cap_below_last_density_is_refused() -> None:
    with pytest.raises(DosimetryError, match="cap"):
        DensityCalibration((0.0, 100.0), (1.0, 1.5), max_density_g_per_ml=1.2)


def test_density_volume_keeps_the_grid() -> None:
    ct = Volume(
        np.full((2, 3, 4), 14.0), spacing_mm=(2.0, 2.0, 5.0), origin_mm=(1, 2, 3), unit="HU"
    )
    rho = SCHNEIDER_2000.density_volume(ct)
    assert rho.same_grid(ct)
    assert rho.unit == "g/mL"
    np.testing.assert_allclose(rho.array, 1.03)


def test_density_volume_refuses_a_non_ct_unit() -> None:
    spect = Volume(np.ones((2, 2, 2)), spacing_mm=(4.0, 4.0, 4.0), unit="Bq/mL")
    with pytest.raises(DosimetryError, match="HU"):
        SCHNEIDER_2000.density_volume(spect)
