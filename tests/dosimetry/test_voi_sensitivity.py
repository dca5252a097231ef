"""A VOI mean's sensitivity to noise, misregistration and its outline, on images with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from theranode.dosimetry.errors import GeometryError
from theranode.dosimetry.voi_sensitivity import (
    noise_relative,
    registration_relative,
    volume_log_slope,
)

SHAPE = (40, 40, 40)


def _ball(radius: float) -> np.ndarray:
    z, y, x = np.indices(SHAPE) - 19.5
    return np.asarray(x**2 + y**2 + z**2 <= radius**2)


def test_noise_of_the_mean_is_sigma_over_root_n_even_on_a_blurred_edge() -> None:
    ball = _ball(10.0)
    signal = ndimage.gaussian_filter(1000.0 * ball + 100.0, 1.5)  # smooth signal, sharp-ish edge
    noisy = signal + np.random.default_rng(3).normal(0.0, 40.0, SHAPE)
    expected = 40.0 / math.sqrt(ball.sum()) / float(noisy[ball].mean())
    assert noise_relative(noisy, ball) == pytest.approx(expected, rel=0.15)
    # A noise-free edge is not noise, but curvature at a voxel-sharp edge leaks in: the
    # estimate errs high (conservative), less as the edge gets smoother.
    assert noise_relative(signal, ball) < 0.3 * expected
    smoother = ndimage.gaussian_filter(1000.0 * ball + 100.0, 3.0)
    assert noise_relative(smoother, ball) < 0.1 * expected


def test_registration_sensitivity_of_a_linear_ramp_is_its_slope_times_the_shift() -> None:
    z, y, x = np.indices(SHAPE).astype(float)
    ramp = 100.0 + 2.0 * x  # along x only; spacing 4 mm in x
    ball = _ball(8.0)
    found = registration_relative(ramp, ball, (4.0, 2.0, 2.0), sd_mm=2.0)
    assert found == pytest.approx(2.0 * (2.0 / 4.0) / float(ramp[ball].mean()), rel=1e-6)
    assert registration_relative(ramp, ball, (4.0, 2.0, 2.0), sd_mm=0.0) == 0.0


def test_outline_slope_is_zero_in_uniform_activity_and_negative_on_a_blurred_organ() -> None:
    ball = _ball(8.0)
    assert volume_log_slope(np.full(SHAPE, 5.0), ball) == pytest.approx(0.0, abs=1e-12)
    blurred = ndimage.gaussian_filter(1000.0 * ball + 10.0, 2.0)
    assert volume_log_slope(blurred, ball) < -0.2, "growing the VOI takes in the fall-off"


def test_a_voi_without_voxels_or_activity_is_refused() -> None:
    with pytest.raises(GeometryError, match="no voxel"):
        noise_relative(np.ones(SHAPE), np.zeros(SHAPE, dtype=bool))
    with pytest.raises(GeometryError, match="positive mean"):
        volume_log_slope(np.zeros(SHAPE), _ball(5.0))
