"""VOI statistics and DVH."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from theranode.dosimetry.errors import DosimetryError, GeometryError
from theranode.dosimetry.roi import cumulative_dvh, dose_covering, voi_mean_curve, voi_statistics
from theranode.dosimetry.volume import Volume


def _volume(array: np.ndarray, unit: str = "Gy") -> Volume:
    return Volume(np.asarray(array), spacing_mm=(2.0, 2.0, 2.5), unit=unit)


def test_statistics_of_a_known_map() -> None:
    dose = np.arange(1.0, 101.0).reshape(4, 5, 5)
    stats = voi_statistics(_volume(dose), np.ones(dose.shape, dtype=bool))
    assert stats.n_voxels == 100
    assert stats.volume_ml == pytest.approx(100 * 0.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.min == 1.0 and stats.max == 100.0
    assert stats.d98 == 3.0  # 98 voxels have ≥ 3 Gy
    assert stats.d2 == 99.0  # 2 voxels have ≥ 99 Gy
    assert stats.total == pytest.approx(5050 * 0.01)


def test_mask_restricts_the_statistics() -> None:
    dose = np.zeros((3, 3, 3))
    dose[1, 1, 1] = 7.0
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[1, 1, 1] = True
    stats = voi_statistics(_volume(dose), _volume(mask, "mask"))
    assert (stats.mean, stats.min, stats.max, stats.d98, stats.d2) == (7.0, 7.0, 7.0, 7.0, 7.0)


def test_uniform_dose_dvh_is_a_step() -> None:
    dose = np.full((4, 4, 4), 12.5)
    dvh = cumulative_dvh(_volume(dose), np.ones(dose.shape, dtype=bool), bin_width=0.5)
    below = dvh.dose_bins <= 12.5
    np.testing.assert_array_equal(dvh.volume_fraction[below], 1.0)
    np.testing.assert_array_equal(dvh.volume_fraction[~below], 0.0)
    assert dvh.dose_bins[0] == 0.0 and dvh.dose_bins[-1] > 12.5
    assert dvh.volume_ml == pytest.approx(64 * 0.01)


def test_dvh_is_consistent_with_d98_and_d2() -> None:
    rng = np.random.default_rng(3)
    dose = rng.gamma(4.0, 2.0, (10, 10, 10))
    mask = np.ones(dose.shape, dtype=bool)
    stats = voi_statistics(_volume(dose), mask)
    dvh = cumulative_dvh(_volume(dose), mask, n_bins=500)
    assert np.all(np.diff(dvh.volume_fraction) <= 0)
    assert dvh.volume_fraction[0] == 1.0 and dvh.volume_fraction[-1] == 0.0
    assert np.mean(dose >= stats.d98) >= 0.98
    assert np.mean(dose >= stats.d2) >= 0.02
    assert np.mean(dose > stats.d2) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_d98_below_mean_below_d2_for_random_maps(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dose = rng.lognormal(1.0, 0.5, (8, 8, 8)) if seed % 2 else rng.uniform(0, 50, (8, 8, 8))
    stats = voi_statistics(_volume(dose), np.ones(dose.shape, dtype=bool))
    assert stats.min <= stats.d98 <= stats.mean <= stats.d2 <= stats.max


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.integers(1, 200), elements=st.floats(-10, 1e3)))
def test_dose_covering_is_ordered(values: np.ndarray) -> None:
    descending = np.sort(values)[::-1]
    d98, d50, d2 = (dose_covering(descending, x) for x in (0.98, 0.5, 0.02))
    assert values.min() <= d98 <= d50 <= d2 <= values.max()


def test_voi_mean_curve() -> None:
    mask = np.zeros((2, 2, 2), dtype=bool)
    mask[0] = True
    frames = [np.full((2, 2, 2), v) for v in (4.0, 2.0, 1.0)]
    frames[0][1] = 100.0  # outside the VOI
    np.testing.assert_allclose(voi_mean_curve(frames, mask), [4.0, 2.0, 1.0])


def test_errors() -> None:
    dose = np.ones((2, 2, 2))
    with pytest.raises(GeometryError, match="empty"):
        voi_statistics(_volume(dose), np.zeros((2, 2, 2), dtype=bool))
    with pytest.raises(GeometryError, match="shape"):
        voi_statistics(_volume(dose), np.ones((2, 2, 3), dtype=bool))
    with pytest.raises(GeometryError, match="voxel"):
        voi_statistics(dose, np.ones((2, 2, 2), dtype=bool))
    other_grid = Volume(np.ones((2, 2, 2), dtype=bool), spacing_mm=(1.0, 1.0, 1.0))
    with pytest.raises(GeometryError, match="different grids"):
        voi_statistics(_volume(dose), other_grid)
    dose[0, 0, 0] = np.nan
    with pytest.raises(DosimetryError, match="NaN"):
        voi_statistics(_volume(dose), np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(DosimetryError, match="frames"):
        voi_mean_curve([], np.ones((2, 2, 2), dtype=bool))
