"""Rigid CT registration recovers known repositionings of the analytic phantom."""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from theranode.dosimetry.errors import GeometryError, RegistrationError
from theranode.dosimetry.registration import (
    InitialAlignment,
    RegistrationSettings,
    RigidRegistration,
    SimilarityMetric,
    register_rigid,
    resample_mask,
    resample_to_reference,
)
from theranode.dosimetry.synthetic import phantom as ph
from theranode.dosimetry.volume import Volume

#: Small CT grid: 3 mm voxels over the abdomen (fast, still sub-voxel accuracy).
GRID = ph.ImageGrid.centred((120, 88, 56), (3.0, 3.0, 3.0), (0.0, 0.0, -5.0))


@pytest.fixture(scope="module")
def model() -> ph.PhantomModel:
    return ph.default_model(lungs=False)


@pytest.fixture(scope="module")
def reference_ct(model: ph.PhantomModel) -> Volume:
    return ph.render_ct(model, GRID)


def _points_in_abdomen() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.uniform((-120.0, -80.0, -60.0), (120.0, 80.0, 50.0), size=(500, 3))


def _mapping_error_mm(result: RigidRegistration, truth: ph.RigidTransform) -> float:
    """Largest distance between the found and the true reference → moving maps."""
    points = _points_in_abdomen()
    true_affine = ph.relative_affine(ph.RigidTransform(), truth)
    expected = points @ true_affine[:3, :3].T + true_affine[:3, 3]
    found = np.array([result.map_point_mm(tuple(p)) for p in points])
    return float(np.linalg.norm(found - expected, axis=1).max())


def _rotation_error_deg(result: RigidRegistration, truth: ph.RigidTransform) -> float:
    found = np.asarray(result.transform().GetMatrix()).reshape(3, 3)
    residual = found @ truth.matrix.T
    cos_angle = np.clip((np.trace(residual) - 1.0) / 2.0, -1.0, 1.0)
    return math.degrees(math.acos(cos_angle))


@pytest.mark.parametrize(
    "truth",
    [
        ph.RigidTransform((0.0, 0.0, 0.0), (1.7, 0.0, 0.0)),
        ph.RigidTransform((0.0, 0.0, 0.0), (1.7, -0.9, 2.3)),
        ph.RigidTransform((1.5, -2.0, 3.0), (-1.2, 2.4, 0.8)),
    ],
    ids=["x-shift-1.7mm", "sub-voxel-shift", "shift-and-3deg"],
)
def test_recovers_known_rigid_motion(
    model: ph.PhantomModel, reference_ct: Volume, truth: ph.RigidTransform
) -> None:
    moving = ph.render_ct(model, GRID, truth)
    result = register_rigid(reference_ct, moving)
    assert result.converged, result.stop_condition
    assert _mapping_error_mm(result, truth) < 0.3
    assert _rotation_error_deg(result, truth) < 0.2
    assert result.metric_after < result.metric_before


def test_quality_record_reports_the_motion(
    model: ph.PhantomModel, reference_ct: Volume
) -> None:
    truth = ph.RigidTransform((0.0, 0.0, 2.0), (0.0, 0.0, 0.0))
    result = register_rigid(reference_ct, ph.render_ct(model, GRID, truth))
    quality = result.quality(elapsed_h=24.0)
    assert quality.elapsed_h == 24.0
    assert quality.converged
    assert quality.rotation_deg[2] == pytest.approx(2.0, abs=0.1)
    assert "mean-squares" in quality.metric
    assert quality.value_after < quality.value_before


def test_different_fields_of_view_are_aligned_by_auto_initialisation(
    model: ph.PhantomModel, reference_ct: Volume
) -> None:
    """A moving CT with a shorter, shifted scan range still registers."""
    short = ph.ImageGrid.centred((120, 88, 40), (3.0, 3.0, 3.0), (0.0, 0.0, -20.0))
    truth = ph.RigidTransform((0.0, 1.0, 0.0), (2.0, -1.0, 1.0))
    result = register_rigid(reference_ct, ph.render_ct(model, short, truth))
    assert _mapping_error_mm(result, truth) < 0.5


def test_inverse_maps_back() -> None:
    reg = RigidRegistration(
        (0.02, -0.01, 0.04, 1.7, -2.0, 3.0),
        (10.0, 20.0, -5.0),
        SimilarityMetric.MEAN_SQUARES,
        1.0,
        0.5,
        True,
    )
    point = (13.0, -40.0, 77.0)
    back = reg.inverse().map_point_mm(reg.map_point_mm(point))
    assert np.allclose(back, point, atol=1e-9)


def _registration_from_truth(truth: ph.RigidTransform) -> RigidRegistration:
    affine = ph.relative_affine(ph.RigidTransform(), truth)
    euler = sitk.Euler3DTransform()
    euler.SetMatrix(tuple(float(v) for v in affine[:3, :3].ravel()))
    euler.SetTranslation(tuple(float(v) for v in affine[:3, 3]))
    parameters = tuple(float(p) for p in euler.GetParameters())
    return RigidRegistration(
        parameters, (0.0, 0.0, 0.0), SimilarityMetric.MEAN_SQUARES, 0.0, 0.0, True
    )  # type: ignore[arg-type]


def test_spect_follows_its_ct(model: ph.PhantomModel) -> None:
    """Activity resampled through the CT's transform lands where the reference sees it.

    Interpolating a 5 mm image blurs it, so the check is relative: the
    residual after resampling is a fraction of the residual without it, and
    the resampled kidney keeps its mean within the interpolation loss.
    """
    truth = ph.RigidTransform((0.0, 0.0, 1.0), (4.0, -3.0, 2.0))
    spect_grid = ph.ImageGrid.centred((72, 52, 34), (5.0, 5.0, 5.0), (0.0, 0.0, -5.0))
    reference = ph.render_activity(model, spect_grid, 24.0)
    moved = ph.render_activity(model, spect_grid, 24.0, truth)
    back = resample_to_reference(moved, reference, _registration_from_truth(truth))
    residual_after = float(np.sum((back.array - reference.array) ** 2))
    residual_before = float(np.sum((moved.array - reference.array) ** 2))
    assert residual_after < 0.3 * residual_before
    kidney = ph.voxelise(model, spect_grid, ph.RigidTransform()).centre_mask(
        model.voi_labels("Kidney_L")
    )
    assert back.array[kidney].mean() == pytest.approx(
        reference.array[kidney].mean(), rel=0.1
    )


def test_resample_mask_keeps_volume(model: ph.PhantomModel) -> None:
    vox = ph.voxelise(model, GRID, ph.RigidTransform())
    mask = GRID.volume(vox.fraction(model.voi_labels("Spleen")) >= 0.5, "mask")
    coarse = ph.ImageGrid.centred((72, 52, 34), (5.0, 5.0, 5.0), (0.0, 0.0, -5.0))
    target = coarse.volume(np.zeros(coarse.shape_zyx, dtype=np.float32), "")
    out = resample_mask(mask, target)
    volume_ml = out.array.sum() * out.voxel_volume_ml
    assert volume_ml == pytest.approx(model.voi_volume_ml("Spleen"), rel=0.05)


def test_mask_outside_target_raises(model: ph.PhantomModel) -> None:
    mask = GRID.volume(np.zeros(GRID.shape_zyx, dtype=bool), "mask")
    mask.array[10, 10, 10] = True
    far = Volume(
        np.zeros((4, 4, 4), dtype=np.float32), (5.0, 5.0, 5.0), (900.0, 900.0, 900.0)
    )
    with pytest.raises(GeometryError, match="no voxel left"):
        resample_mask(mask, far)


def test_implausible_motion_raises(
    model: ph.PhantomModel, reference_ct: Volume
) -> None:
    moving = ph.render_ct(
        model, GRID, ph.RigidTransform((0.0, 0.0, 0.0), (6.0, 0.0, 0.0))
    )
    settings = RegistrationSettings(
        max_translation_mm=2.0, initial_alignment=InitialAlignment.IDENTITY
    )
    with pytest.raises(RegistrationError, match="implausible"):
        register_rigid(reference_ct, moving, settings)


def test_ct_without_body_raises() -> None:
    air = Volume(
        np.full((20, 20, 20), -1000.0, dtype=np.float32), (3.0, 3.0, 3.0), unit="HU"
    )
    with pytest.raises(RegistrationError, match="body mask"):
        register_rigid(air, air)


def test_a_known_registration_maps_points_like_its_affine() -> None:
    truth = ph.RigidTransform(rotation_deg=(1.5, -0.8, 2.0), translation_mm=(3.0, -4.5, 1.2))
    affine = ph.relative_affine(ph.RigidTransform(), truth)
    known = RigidRegistration.known(affine)
    point = (12.0, -30.0, 55.0)
    expected = affine @ np.array([*point, 1.0])
    assert known.map_point_mm(point) == pytest.approx(tuple(expected[:3]), abs=1e-9)
    with pytest.raises(RegistrationError, match="rigid"):
        RigidRegistration.known(np.diag([2.0, 1.0, 1.0, 1.0]))
