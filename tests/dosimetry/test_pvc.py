"""Partial-volume correction: PSF, occupancy, regions, GTM, RBV, contrast-aware RC.

The known answers come from an independent route: the SPECT image of a phantom
made of uniform boxes and spheres is the *analytic* convolution of each shape
with the Gaussian PSF (erf closed forms), averaged over every 4 mm voxel; the
VOI masks are drawn on a 1.5 mm CT grid that is not aligned with the SPECT
grid. Nothing in the truth passes through the code under test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given
from hypothesis import strategies as st
from scipy import ndimage
from scipy.special import erf

from theranode.dosimetry import pvc
from theranode.dosimetry.errors import DosimetryError, GeometryError
from theranode.dosimetry.pvc import (
    BACKGROUND,
    GtmResult,
    OutsideFieldOfView,
    PointSpread,
    PvcRegion,
    background_shell,
    contrast_corrected_mean,
    disjoint_regions,
    geometric_transfer_matrix,
    gtm,
    occupancy,
    region_based_voxelwise,
)
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.volume import Volume

FWHM_MM = 10.0
SIGMA_MM = FWHM_MM / (2.0 * math.sqrt(2.0 * math.log(2.0)))
N, VOXEL_MM = 48, 4.0
SPECT_ORIGIN = -0.5 * (N - 1) * VOXEL_MM
CT_N, CT_MM, CT_ORIGIN = 128, 1.5, -95.3
BODY_HALF_MM = 76.0


@dataclass(frozen=True)
class Ball:
    center_mm: tuple[float, float, float]
    radius_mm: float
    concentration: float

    @property
    def volume_ml(self) -> float:
        return 4.0 / 3.0 * math.pi * self.radius_mm**3 / 1000.0


KIDNEY = Ball((40.3, -30.7, 10.2), 16.0, 6.0)
LIVER = Ball((-28.1, 20.4, -5.3), 30.0, 3.0)
LESION = Ball((-22.6, 26.0, -9.1), 10.0, 15.0)  # inside the liver
BODY_CONCENTRATION = 1.0


# -- the independent forward model -------------------------------------------
def _blurred_ball(x, y, z, ball: Ball):
    """Indicator of a ball convolved with the isotropic Gaussian (closed form)."""
    cx, cy, cz = ball.center_mm
    r = np.maximum(np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2), 1e-6)
    big_r, s = ball.radius_mm, SIGMA_MM
    gauss = np.exp(-((big_r - r) ** 2) / (2 * s * s)) - np.exp(-((big_r + r) ** 2) / (2 * s * s))
    edge = 0.5 * (erf((big_r - r) / (math.sqrt(2) * s)) + erf((big_r + r) / (math.sqrt(2) * s)))
    return edge - s / (r * math.sqrt(2 * math.pi)) * gauss


def _blurred_body(x, y, z):
    """Indicator of the cube |x|, |y|, |z| ≤ 76 mm convolved with the Gaussian."""
    out = 1.0
    for v in (x, y, z):
        out = out * 0.5 * (erf((BODY_HALF_MM - v) / (math.sqrt(2) * SIGMA_MM))
                           - erf((-BODY_HALF_MM - v) / (math.sqrt(2) * SIGMA_MM)))
    return out


def _voxel_average(field) -> np.ndarray:
    """Mean of ``field(x, y, z)`` over each 4 mm voxel (3 × 3 × 3 midpoint rule)."""
    axis = SPECT_ORIGIN + VOXEL_MM * np.arange(N)
    offsets = (-VOXEL_MM / 3, 0.0, VOXEL_MM / 3)
    total = np.zeros((N, N, N))
    for dx in offsets:
        for dy in offsets:
            for dz in offsets:
                z, y, x = np.meshgrid(axis + dz, axis + dy, axis + dx, indexing="ij")
                total += field(x, y, z)
    return total / 27.0


def _spect_grid() -> Volume:
    return Volume(np.zeros((N, N, N), np.float32), (VOXEL_MM,) * 3, (SPECT_ORIGIN,) * 3)


def _ct_grid() -> Volume:
    return Volume(np.zeros((CT_N,) * 3, bool), (CT_MM,) * 3, (CT_ORIGIN,) * 3)


def _ct_coordinates():
    axis = CT_ORIGIN + CT_MM * np.arange(CT_N)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    return x, y, z


def _ball_mask(ball: Ball) -> Volume:
    x, y, z = _ct_coordinates()
    cx, cy, cz = ball.center_mm
    inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= ball.radius_mm**2
    return _ct_grid().with_array(inside, unit="mask")


def _body_mask() -> Volume:
    x, y, z = _ct_coordinates()
    inside = (np.abs(x) <= BODY_HALF_MM) & (np.abs(y) <= BODY_HALF_MM) & (np.abs(z) <= BODY_HALF_MM)
    return _ct_grid().with_array(inside, unit="mask")


@dataclass(frozen=True)
class Phantom:
    image: Volume
    regions: list[PvcRegion]
    truth: dict[str, float]


def _regions(balls: dict[str, Ball]) -> list[PvcRegion]:
    grid = _spect_grid()
    vois = [(name, occupancy(_ball_mask(ball), grid), None) for name, ball in balls.items()]
    return disjoint_regions(vois, occupancy(_body_mask(), grid))


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    """Warm body, hot kidney, warm liver with a hot lesion; analytic blurred image."""

    def field(x, y, z):
        value = BODY_CONCENTRATION * _blurred_body(x, y, z)
        value = value + (KIDNEY.concentration - BODY_CONCENTRATION) * _blurred_ball(x, y, z, KIDNEY)
        value = value + (LIVER.concentration - BODY_CONCENTRATION) * _blurred_ball(x, y, z, LIVER)
        return value + (LESION.concentration - LIVER.concentration) * _blurred_ball(
            x, y, z, LESION
        )

    image = _spect_grid().with_array(_voxel_average(field), unit="Bq/mL")
    balls = {"kidney": KIDNEY, "liver": LIVER, "lesion": LESION}
    truth = {name: ball.concentration for name, ball in balls.items()}
    truth[BACKGROUND] = BODY_CONCENTRATION
    return Phantom(image, _regions(balls), truth)


PSF = PointSpread(FWHM_MM)


# -- PointSpread ---------------------------------------------------------------
def test_sigma_is_fwhm_over_two_root_two_ln_two() -> None:
    assert PointSpread(10.0).sigma_mm == pytest.approx(4.246609, rel=1e-6)


@pytest.mark.parametrize("fwhm", [0.0, -3.0, math.nan, math.inf])
def test_a_psf_needs_a_positive_finite_fwhm(fwhm: float) -> None:
    with pytest.raises(DosimetryError, match="FWHM must be a positive, finite"):
        PointSpread(fwhm)


@pytest.mark.parametrize("spacing_mm", [(2.0, 2.0, 2.0), (2.0, 3.0, 5.0)])
def test_blurred_point_has_the_psf_variance_in_mm(spacing_mm) -> None:
    point = np.zeros((41, 41, 41))
    point[20, 20, 20] = 1.0
    spread = PSF.blur(point, spacing_mm)
    assert spread.sum() == pytest.approx(1.0, rel=1e-9)
    for axis, step in zip((2, 1, 0), spacing_mm, strict=True):
        offsets_mm = (np.arange(41) - 20) * step
        profile = spread.sum(axis=tuple(a for a in range(3) if a != axis))
        assert np.sum(profile * offsets_mm**2) == pytest.approx(SIGMA_MM**2, rel=1e-3)


@pytest.mark.parametrize(("outside", "mode"), [("zero", "constant"), ("extend", "nearest")])
def test_blurring_the_box_of_a_region_equals_blurring_the_whole_array(outside, mode) -> None:
    rng = np.random.default_rng(7)
    values = np.zeros((60, 50, 40))
    values[20:26, 3:9, 30:37] = rng.uniform(0.2, 1.0, (6, 6, 7))  # near one face
    values[0:2, 40:44, 1:3] = 2.0  # touching the array's edge
    psf = PointSpread(FWHM_MM, outside)
    whole = ndimage.gaussian_filter(values, psf.sigma_voxels((2.5, 3.0, 4.0)),
                                    mode=mode, truncate=4.0)
    np.testing.assert_allclose(psf.blur(values, (2.5, 3.0, 4.0)), whole, atol=1e-14)


def test_activity_extended_past_the_field_of_view_keeps_a_uniform_image_uniform() -> None:
    uniform = np.full((12, 10, 8), 3.0)
    extended = PointSpread(FWHM_MM, OutsideFieldOfView.EXTEND).blur(uniform, (4.0, 4.0, 4.0))
    np.testing.assert_allclose(extended, 3.0, rtol=1e-12)
    zero = PSF.blur(uniform, (4.0, 4.0, 4.0))
    assert zero[0, 5, 4] < 0.75 * 3.0  # half the kernel falls outside: edge reads low
    with pytest.raises(DosimetryError, match="beyond the field of view"):
        PointSpread(FWHM_MM, "mirror")  # type: ignore[arg-type]


def test_blurring_nothing_gives_nothing() -> None:
    assert not PSF.blur(np.zeros((5, 5, 5)), (4.0, 4.0, 4.0)).any()


# -- occupancy -------------------------------------------------------------------
@pytest.mark.parametrize("ball", [KIDNEY, LESION], ids=["17 mL", "4 mL"])
def test_summed_occupancy_is_the_sphere_volume(ball: Ball) -> None:
    fraction = occupancy(_ball_mask(ball), _spect_grid())
    assert fraction.dtype == np.float32
    assert 0.0 <= fraction.min() and fraction.max() <= 1.0
    assert fraction.sum() * VOXEL_MM**3 / 1000 == pytest.approx(ball.volume_ml, rel=0.01)


def test_occupancy_through_a_rotation_keeps_the_volume() -> None:
    angle = math.radians(20.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    rotation[:3, 3] = (4.2, -3.1, 2.6)
    fraction = occupancy(_ball_mask(KIDNEY), _spect_grid(), RigidRegistration.known(rotation))
    assert fraction.sum() * VOXEL_MM**3 / 1000 == pytest.approx(KIDNEY.volume_ml, rel=0.01)


def test_occupancy_through_a_translation_is_that_of_the_translated_mask() -> None:
    shift = (3.3, -2.1, 5.7)  # grid point p maps to mask point p + shift
    mask = _ball_mask(KIDNEY)
    moved = Volume(mask.array, mask.spacing_mm,
                   tuple(o - s for o, s in zip(mask.origin_mm, shift, strict=True)))
    expected = occupancy(moved, _spect_grid())
    translation = sitk.TranslationTransform(3, shift)
    np.testing.assert_allclose(occupancy(mask, _spect_grid(), translation), expected, atol=1e-5)
    affine = np.eye(4)
    affine[:3, 3] = shift
    registration = RigidRegistration.known(affine)
    np.testing.assert_allclose(occupancy(mask, _spect_grid(), registration), expected, atol=1e-5)
    assert not np.allclose(expected, occupancy(mask, _spect_grid()), atol=0.05)


def test_occupancy_of_a_mask_on_the_target_grid_keeps_its_voxel_count() -> None:
    grid = _spect_grid()
    mask = np.zeros(grid.shape, bool)
    mask[10:17, 20:31, 5:9] = True
    mask[30:33, 30:33, 30:33] = True
    fraction = occupancy(grid.with_array(mask), grid)
    assert fraction.sum() == pytest.approx(mask.sum(), rel=1e-5)
    assert np.all(fraction[11:16, 21:30, 6:8] == pytest.approx(1.0))


def test_occupancy_in_slabs_equals_occupancy_in_one_go(monkeypatch) -> None:
    mask = _ball_mask(LIVER)
    whole = occupancy(mask, _spect_grid())
    monkeypatch.setattr(pvc, "MAX_FINE_VOXELS", 5000)  # a few z slices per slab
    np.testing.assert_array_equal(occupancy(mask, _spect_grid()), whole)


def test_occupancy_needs_a_mask_with_voxels_and_is_zero_outside_the_grid() -> None:
    empty = _ct_grid()
    with pytest.raises(GeometryError, match="holds no voxel"):
        occupancy(empty, _spect_grid())
    far_away = Volume(_ball_mask(LESION).array, (CT_MM,) * 3,
                      (CT_ORIGIN + 500.0, CT_ORIGIN, CT_ORIGIN))
    assert not occupancy(far_away, _spect_grid()).any()
    with pytest.raises(GeometryError, match="supersample"):
        occupancy(_ball_mask(LESION), _spect_grid(), supersample=0)


# -- regions -----------------------------------------------------------------------
def _sphere_occupancy(center, radius_vox, shape=(20, 20, 20)) -> np.ndarray:
    """Crude partial-volume sphere: fraction of 4³ sub-points of each voxel inside."""
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    inside = np.zeros(shape)
    for dz in sub:
        for dy in sub:
            for dx in sub:
                r2 = ((x + dx - center[2]) ** 2 + (y + dy - center[1]) ** 2
                      + (z + dz - center[0]) ** 2)
                inside += r2 <= radius_vox**2
    return inside / 64


@pytest.mark.parametrize("lesion_first", [True, False])
def test_a_lesion_carves_the_liver_it_lies_in(lesion_first: bool) -> None:
    liver = _sphere_occupancy((10, 10, 10), 7.0)
    lesion = _sphere_occupancy((11, 9, 10), 2.5)
    body = _sphere_occupancy((10, 10, 10), 9.5)
    vois = [("liver", liver, None), ("lesion", lesion, None)]
    regions = disjoint_regions(vois[::-1] if lesion_first else vois, body)
    by_name = {r.name: r for r in regions}
    assert regions[-1].name == BACKGROUND
    np.testing.assert_array_equal(by_name["lesion"].occupancy, lesion)  # smaller wins
    np.testing.assert_allclose(by_name["liver"].occupancy, np.minimum(liver, 1 - lesion))
    assert not by_name["liver"].occupancy[lesion == 1].any()
    total = sum(r.occupancy for r in regions)
    assert total.max() <= 1 + 1e-12
    assert by_name[BACKGROUND].occupancy.min() >= 0
    carved = by_name["liver"].occupancy + by_name["lesion"].occupancy
    np.testing.assert_allclose(by_name[BACKGROUND].occupancy, np.clip(body - carved, 0, 1))
    assert not (by_name["liver"].measure & by_name["lesion"].measure).any()
    assert by_name["lesion"].measure.sum() == (lesion >= 0.5).sum()


def test_overlapping_vois_are_clipped_to_a_sum_of_one() -> None:
    left = _sphere_occupancy((10, 10, 7), 5.0)
    right = _sphere_occupancy((10, 10, 12), 4.0)
    assert (left + right).max() > 1.5
    regions = disjoint_regions([("left", left, None), ("right", right, None)], np.ones_like(left))
    assert sum(r.occupancy for r in regions).max() == pytest.approx(1.0)
    np.testing.assert_array_equal(regions[1].occupancy, right)
    assert np.all(regions[0].occupancy <= left)


def test_uncarved_measure_masks_are_kept_as_given() -> None:
    liver = _sphere_occupancy((10, 10, 10), 7.0)
    lesion = _sphere_occupancy((10, 10, 10), 2.5)
    regions = disjoint_regions([("liver", liver, liver >= 0.5), ("lesion", lesion, None)],
                               liver, carve_measure=False)
    np.testing.assert_array_equal(regions[0].measure, liver >= 0.5)


def test_a_region_needs_fractions_not_labels() -> None:
    with pytest.raises(GeometryError, match=r"occupancy must lie in \[0, 1\]"):
        PvcRegion("kidney", np.full((3, 3, 3), 2.0))


# -- GTM and RBV on the analytic phantom --------------------------------------------
def test_gtm_recovers_the_set_concentrations(phantom: Phantom) -> None:
    result = gtm(phantom.image, phantom.regions, PSF)
    assert result.names == ("kidney", "liver", "lesion", BACKGROUND)
    for name in ("kidney", "lesion"):
        assert result.observed_mean(name) < 0.9 * phantom.truth[name]
    for name, truth in phantom.truth.items():
        assert result.true_mean(name) == pytest.approx(truth, rel=0.02), name
    assert 1.0 < result.condition_number < 10.0
    assert result.factor("kidney") == pytest.approx(
        result.true_mean("kidney") / result.observed_mean("kidney"))
    assert result.unit == "Bq/mL"


def test_rbv_means_over_the_vois_match_the_concentrations(phantom: Phantom) -> None:
    result = gtm(phantom.image, phantom.regions, PSF)
    corrected = region_based_voxelwise(phantom.image, phantom.regions, result.true_means, PSF)
    assert corrected.same_grid(phantom.image) and corrected.unit == "Bq/mL"
    for region in phantom.regions:
        mean = corrected.array[region.measure].mean()
        assert mean == pytest.approx(phantom.truth[region.name], rel=0.03), region.name
        assert mean == pytest.approx(result.true_mean(region.name), rel=0.01), region.name


def test_rbv_with_the_mixed_model_leaves_edge_voxels_partial(phantom: Phantom) -> None:
    """Thomas et al.'s S on a coarse grid: an edge voxel keeps its tissue mix."""
    result = gtm(phantom.image, phantom.regions, PSF)
    mixed = region_based_voxelwise(phantom.image, phantom.regions, result.true_means, PSF,
                                   dominant_region=False)
    kidney = phantom.regions[0]
    assert mixed.array[kidney.measure].mean() < 0.97 * KIDNEY.concentration


def test_gtm_is_unbiased_under_poisson_noise(phantom: Phantom) -> None:
    clean = gtm(phantom.image, phantom.regions, PSF).true_means
    counts_per_unit = 20.0
    estimates = []
    for seed in range(4):
        rng = np.random.default_rng(seed)
        noisy = rng.poisson(phantom.image.array * counts_per_unit) / counts_per_unit
        estimates.append(gtm(phantom.image.with_array(noisy), phantom.regions, PSF).true_means)
    np.testing.assert_allclose(np.mean(estimates, axis=0), clean, rtol=0.01)
    assert np.std(np.asarray(estimates)[:, 2]) > 0  # the noise did reach the lesion


def test_gtm_is_linear_in_the_image(phantom: Phantom) -> None:
    once = gtm(phantom.image, phantom.regions, PSF)
    twice = gtm(phantom.image.with_array(2.0 * phantom.image.array), phantom.regions, PSF)
    np.testing.assert_allclose(twice.true_means, 2.0 * once.true_means, rtol=1e-10)
    np.testing.assert_allclose(twice.matrix, once.matrix)


def test_a_uniform_body_needs_no_correction(phantom: Phantom) -> None:
    uniform = _spect_grid().with_array(2.0 * _voxel_average(_blurred_body))
    result = gtm(uniform, phantom.regions, PSF)
    for name in ("kidney", "liver", "lesion"):
        assert result.factor(name) == pytest.approx(1.0, abs=0.01), name
    np.testing.assert_allclose(result.true_means, 2.0, rtol=0.015)
    corrected = region_based_voxelwise(uniform, phantom.regions, result.true_means, PSF)
    for region in phantom.regions[:3]:
        np.testing.assert_allclose(corrected.array[region.measure], 2.0, rtol=0.02)


def test_transfer_matrix_columns_are_the_blurred_regions(phantom: Phantom) -> None:
    matrix = geometric_transfer_matrix(phantom.regions, PSF, phantom.image.spacing_mm)
    # Every region's activity lands, blurred, somewhere: rows sum to ≤ 1, diagonal dominant.
    assert np.all(np.diag(matrix) > 0.5)
    assert np.all(matrix.sum(axis=1) <= 1.0 + 1e-6)
    assert matrix[0, 2] == pytest.approx(0.0, abs=1e-9)  # kidney far from the lesion


def test_rbv_leaves_far_outside_unchanged_and_clears_spill_out(phantom: Phantom) -> None:
    result = gtm(phantom.image, phantom.regions, PSF)
    image = phantom.image.array.copy()
    image[0, 0, 0] = 7.0  # far outside the body (20 mm > 4 σ from its surface)
    corrected = region_based_voxelwise(phantom.image.with_array(image), phantom.regions,
                                       result.true_means, PSF)
    assert corrected.array[0, 0, 0] == 7.0
    just_outside = (N // 2, N // 2, int((BODY_HALF_MM - SPECT_ORIGIN) / VOXEL_MM) + 2)
    assert phantom.image.array[just_outside] > 0.01
    assert corrected.array[just_outside] == 0.0


# -- errors --------------------------------------------------------------------------
def test_a_region_without_measure_voxels_is_named(phantom: Phantom) -> None:
    empty = PvcRegion("L7", phantom.regions[2].occupancy, np.zeros(phantom.image.shape, bool))
    with pytest.raises(DosimetryError, match="'L7' has no measure voxel"):
        gtm(phantom.image, [*phantom.regions[:2], empty, phantom.regions[3]], PSF)


def test_regions_that_cannot_be_told_apart_are_refused(phantom: Phantom) -> None:
    kidney = phantom.regions[0]
    twin = PvcRegion("kidney copy", kidney.occupancy, kidney.measure)
    with pytest.raises(DosimetryError, match="singular"):
        gtm(phantom.image, [kidney, twin, *phantom.regions[1:]], PSF)


def test_regions_on_another_grid_are_refused(phantom: Phantom) -> None:
    small = PvcRegion("kidney", np.ones((4, 4, 4)))
    with pytest.raises(GeometryError, match="on the image grid"):
        gtm(phantom.image, [small], PSF)


def test_rbv_needs_one_mean_per_region(phantom: Phantom) -> None:
    with pytest.raises(DosimetryError, match="one true mean per region"):
        region_based_voxelwise(phantom.image, phantom.regions, [1.0, 2.0], PSF)


def test_no_factor_for_a_region_that_reads_nothing() -> None:
    result = GtmResult(("cold",), np.array([0.0]), np.array([0.3]), 1.0, np.eye(1), "Bq/mL")
    with pytest.raises(DosimetryError, match="positive observed mean"):
        result.factor("cold")
    with pytest.raises(DosimetryError, match="No region 'hot'"):
        result.factor("hot")


# -- contrast-aware lesion recovery -------------------------------------------------------
@given(
    lesion=st.floats(0.01, 1e6),
    background_fraction=st.floats(0.0, 0.95),
    rc=st.floats(0.05, 1.0),
)
def test_contrast_correction_inverts_the_sphere_model(
    lesion: float, background_fraction: float, rc: float
) -> None:
    background = background_fraction * lesion
    observed = rc * lesion + (1 - rc) * background
    assert contrast_corrected_mean(observed, background, rc) == pytest.approx(lesion, rel=1e-9)


@pytest.mark.parametrize(
    ("observed", "background", "rc", "message"),
    [
        (5.0, 1.0, 0.0, r"in \(0, 1\]"),
        (5.0, 1.0, 1.2, r"in \(0, 1\]"),
        (math.nan, 1.0, 0.5, "finite"),
        (1.0, 3.0, 0.5, "background is not below the lesion"),
    ],
)
def test_contrast_correction_refuses_nonsense(observed, background, rc, message) -> None:
    with pytest.raises(DosimetryError, match=message):
        contrast_corrected_mean(observed, background, rc)


def test_background_shell_lies_one_to_two_fwhm_outside_the_lesion() -> None:
    spacing = (4.0, 4.0, 5.0)
    lesion = np.zeros((30, 40, 40), bool)
    lesion[14:17, 18:22, 18:22] = True
    shell = background_shell(lesion, PSF, spacing)
    distance = ndimage.distance_transform_edt(~lesion, sampling=(5.0, 4.0, 4.0))
    assert shell.any() and not (shell & lesion).any()
    assert distance[shell].min() >= FWHM_MM and distance[shell].max() <= 2 * FWHM_MM
    np.testing.assert_array_equal(shell, (distance >= FWHM_MM) & (distance <= 2 * FWHM_MM))
    other = np.zeros_like(lesion)
    other[:, :, 24:] = True
    trimmed = background_shell(lesion, PSF, spacing, exclude=other)
    np.testing.assert_array_equal(trimmed, shell & ~other)
    with pytest.raises(GeometryError, match="No voxel lies 1-2 FWHM"):
        background_shell(lesion, PSF, spacing, exclude=~lesion)
    with pytest.raises(GeometryError, match="holds no voxel"):
        background_shell(np.zeros_like(lesion), PSF, spacing)


def test_contrast_correction_fixes_a_cold_background_rc_on_a_warm_lesion() -> None:
    """RC from a sphere in a cold background over-corrects the same sphere in warm tissue."""
    lesion = Ball((1.3, -2.2, 0.7), 10.0, 4.0)
    cold = _voxel_average(lambda x, y, z: _blurred_ball(x, y, z, lesion))
    measure = occupancy(_ball_mask(lesion), _spect_grid()) >= 0.5
    rc = cold[measure].mean()  # the site's phantom measurement, concentration 1
    warm = _voxel_average(
        lambda x, y, z: _blurred_body(x, y, z) + 3.0 * _blurred_ball(x, y, z, lesion)
    )
    observed = warm[measure].mean()
    background = warm[background_shell(measure, PSF, (VOXEL_MM,) * 3)].mean()
    assert observed / rc > 1.1 * lesion.concentration
    corrected = contrast_corrected_mean(observed, background, rc)
    assert corrected == pytest.approx(lesion.concentration, rel=0.02)
