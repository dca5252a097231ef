"""Known-answer tests of the analytic Lu-177 phantom."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime

import numpy as np
import pytest

from theranode.dosimetry.density import SCHNEIDER_2000
from theranode.dosimetry.radionuclides import nuclear_data
from theranode.dosimetry.results import VoiKind
from theranode.dosimetry.synthetic.phantom import (
    CountingStatistics,
    CycleSpec,
    Ellipsoid,
    ImageGrid,
    Kinetics,
    PhantomError,
    PhantomModel,
    RigidTransform,
    Structure,
    VoiSpec,
    analytic_truth,
    clean_margin_mm,
    clean_margin_model,
    course_time_points,
    cycle_kinetics,
    default_course,
    default_model,
    ellipsoid_section,
    expected_counts,
    mean_dose_gy,
    poisson_counts,
    relative_affine,
    render_activity,
    render_ct,
    spect_blur,
    stp_formula_dose_gy,
    validate_model,
    voi_contours,
    voxelise,
    with_lesion_lambda_change,
    with_subvoxel_motion,
)

LU = nuclear_data("Lu-177")
SMALL_CT = ImageGrid.centred((96, 96, 40), (4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def model() -> PhantomModel:
    return default_model()


def test_mean_dose_is_led_formula_with_icrp_factor(model: PhantomModel) -> None:
    course = default_course(model)
    cycle = course.cycle(1)
    for voi in model.vois:
        k = cycle_kinetics(model, cycle)[voi.structures[0]]
        rho = float(
            SCHNEIDER_2000.density(np.array([model.voi_structure(voi.name).hu]))[0]
        )
        expected = (
            LU.led_gy_per_h_per_mbq_per_ml
            * k.c0_mbq_per_ml
            / (rho * k.lambda_eff_per_h)
        )
        assert mean_dose_gy(model, voi.name, cycle) == pytest.approx(
            expected, rel=1e-12
        )


def test_default_doses_have_paper_magnitudes(model: PhantomModel) -> None:
    cycle = default_course(model).cycle(1)
    assert mean_dose_gy(model, "Kidney_L", cycle) == pytest.approx(2.7)
    assert mean_dose_gy(model, "Spleen", cycle) == pytest.approx(3.5)
    assert mean_dose_gy(model, "Liver", cycle) == pytest.approx(1.1)
    assert mean_dose_gy(model, "BoneMarrow_L2-L4", cycle) == pytest.approx(0.3)
    lesions = [v.name for v in model.vois if v.kind is VoiKind.LESION]
    assert all(10 <= mean_dose_gy(model, name, cycle) <= 100 for name in lesions)


def test_lesion_sizes_cover_the_exclusion_threshold(model: PhantomModel) -> None:
    volumes = [
        model.voi_volume_ml(v.name) for v in model.vois if v.kind is VoiKind.LESION
    ]
    assert any(v < 2 for v in volumes)
    assert any(2 <= v < 4 for v in volumes)
    assert any(v >= 4 for v in volumes)


def test_healthy_liver_excludes_liver_lesions(model: PhantomModel) -> None:
    lobes = (
        model.structure("Liver_right_lobe").shape.volume_ml
        + model.structure("Liver_left_lobe").shape.volume_ml
    )
    lesions = model.voi_volume_ml("Lesion_01") + model.voi_volume_ml("Lesion_02")
    assert model.voi_volume_ml("Liver") == pytest.approx(lobes - lesions)


def test_dose_scales_with_activity_and_is_halved_by_doubling_lambda(
    model: PhantomModel,
) -> None:
    c1 = CycleSpec(1, 7400.0, datetime(2024, 1, 1), (24.0,))
    c2 = CycleSpec(1, 3700.0, datetime(2024, 1, 1), (24.0,), lesion_lambda_scale=2.0)
    assert mean_dose_gy(model, "Kidney_L", c2) == pytest.approx(
        mean_dose_gy(model, "Kidney_L", c1) / 2
    )
    lam = cycle_kinetics(model, c1)["Lesion_01"].lambda_eff_per_h
    if 2 * lam >= LU.decay_constant_per_h:
        assert mean_dose_gy(model, "Lesion_01", c2) == pytest.approx(
            mean_dose_gy(model, "Lesion_01", c1) / 4
        )


def test_lambda_eff_is_floored_at_physical_decay(model: PhantomModel) -> None:
    cycle = CycleSpec(
        1, 7400.0, datetime(2024, 1, 1), (24.0,), lesion_lambda_scale=0.01
    )
    k = cycle_kinetics(model, cycle)["Lesion_01"]
    assert k.lambda_eff_per_h == pytest.approx(LU.decay_constant_per_h)


def test_stp_formula_is_exact_when_kinetics_only_scale(model: PhantomModel) -> None:
    course = default_course(model)
    c2, c3 = course.cycle(2), course.cycle(3)
    assert c3.scan_elapsed_h == (26.0,)
    for voi in model.vois:
        stp = stp_formula_dose_gy(model, voi.name, c3, c2, 26.0, 24.0)
        assert stp == pytest.approx(mean_dose_gy(model, voi.name, c3), rel=1e-12)


def test_stp_formula_departs_when_lesion_clearance_changes(model: PhantomModel) -> None:
    course = with_lesion_lambda_change(default_course(model), 3, 1.5)
    c2, c3 = course.cycle(2), course.cycle(3)
    stp = stp_formula_dose_gy(model, "Lesion_01", c3, c2, 26.0, 24.0)
    exact = mean_dose_gy(model, "Lesion_01", c3)
    assert stp > exact * 1.2  # the formula assumes the slower reference clearance


def test_overlapping_structures_are_rejected() -> None:
    k = Kinetics(0.1, 0.01)
    body = Structure("Body", Ellipsoid((0, 0, 0), (100, 100, 100)), 40.0, k)
    a = Structure("A", Ellipsoid((0, 0, 0), (20, 20, 20)), 40.0, k, "Body")
    b = Structure("B", Ellipsoid((25, 0, 0), (20, 20, 20)), 40.0, k, "Body")
    from theranode.dosimetry.synthetic.phantom import validate_model

    with pytest.raises(PhantomError, match="overlap"):
        validate_model(
            PhantomModel((body, a, b), (VoiSpec("A", VoiKind.ORGAN, ("A",)),))
        )
    outside = Structure("C", Ellipsoid((95, 0, 0), (20, 20, 20)), 40.0, k, "Body")
    with pytest.raises(PhantomError, match="not fully inside"):
        validate_model(PhantomModel((body, outside), ()))


def test_voxelised_volumes_match_analytic(model: PhantomModel) -> None:
    vox = voxelise(model, SMALL_CT, RigidTransform((1.0, -1.5, 2.0), (3.0, -2.0, 1.5)))
    for voi in model.vois:
        fraction_ml = (
            float(vox.fraction(model.voi_labels(voi.name)).sum())
            * SMALL_CT.voxel_volume_ml
        )
        assert fraction_ml == pytest.approx(model.voi_volume_ml(voi.name), rel=0.03), (
            voi.name
        )


def test_partial_volume_is_the_voxel_average() -> None:
    k = Kinetics(1.0, 0.01)
    body = Structure(
        "Body", Ellipsoid((0, 0, 0), (500, 500, 500)), 0.0, Kinetics(0.0, 0.01)
    )
    sphere = Structure("S", Ellipsoid((0, 0, 0), (6.0, 6.0, 6.0)), 100.0, k, "Body")
    model = PhantomModel((body, sphere), (VoiSpec("S", VoiKind.ORGAN, ("S",)),))
    grid = ImageGrid.centred((9, 9, 9), (4.0, 4.0, 4.0))
    ct = render_ct(model, grid, supersampling=8)
    mean_hu = float(ct.array.sum()) * grid.voxel_volume_ml / sphere.shape.volume_ml
    assert mean_hu == pytest.approx(100.0, rel=0.02)
    assert 0 < ct.array[4, 4, 5] < 100  # a voxel spanning 2..6 mm is mixed
    assert ct.array[4, 4, 4] == 100.0 and ct.array[4, 4, 6] == 0.0


def test_rendered_activity_decays_with_lambda_eff(model: PhantomModel) -> None:
    grid = ImageGrid.centred((24, 24, 10), (16.0, 16.0, 16.0))
    vox = voxelise(model, grid, RigidTransform())
    cycle = default_course(model).cycle(1)
    a4 = render_activity(model, grid, 4.0, cycle=cycle, voxelisation=vox)
    a72 = render_activity(model, grid, 72.0, cycle=cycle, voxelisation=vox)
    k = cycle_kinetics(model, cycle)["Spleen"]
    full = vox.fraction(model.voi_labels("Spleen")) == 1.0
    assert full.any()
    ratio = a72.array[full] / a4.array[full]
    np.testing.assert_allclose(ratio, math.exp(-k.lambda_eff_per_h * 68.0), rtol=1e-5)
    assert a4.unit == "Bq/mL"


def test_transform_round_trip_and_relative_affine() -> None:
    t1 = RigidTransform((1.0, 2.0, -1.5), (4.0, -3.0, 2.0))
    t2 = RigidTransform((-0.5, 0.5, 1.0), (-2.0, 1.0, 0.0))
    rng = np.random.default_rng(3)
    pts = rng.uniform(-100, 100, (20, 3))
    np.testing.assert_allclose(t1.to_model(t1.to_patient(pts)), pts, atol=1e-9)
    rel = relative_affine(t1, t2)
    x1 = t1.to_patient(pts)
    x2 = t2.to_patient(pts)
    np.testing.assert_allclose(x1 @ rel[:3, :3].T + rel[:3, 3], x2, atol=1e-9)


def test_section_polygon_has_the_ellipse_area() -> None:
    shape = Ellipsoid((5.0, -3.0, 2.0), (30.0, 20.0, 10.0))
    transform = RigidTransform((2.0, -3.0, 20.0), (1.0, 2.0, 3.0))
    z = transform.to_patient(np.array([5.0, -3.0, 2.0]))[2] + 3.0
    poly = ellipsoid_section(shape, transform, z)
    assert poly is not None
    x, y = poly[:, 0], poly[:, 1]
    area = 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
    assert area > 0  # counter-clockwise
    # Every vertex lies (after the area-preserving scale) on the true section.
    levels = shape.level(transform.to_model(poly))
    assert np.all(np.abs(np.sqrt(levels) - 1.0) < 0.01)
    assert ellipsoid_section(shape, transform, z + 40.0) is None


def test_liver_contours_carry_lesion_holes(model: PhantomModel) -> None:
    contours = voi_contours(model, "Liver", RigidTransform(), 25.0)
    areas = [
        0.5
        * float(np.sum(c[:, 0] * np.roll(c[:, 1], -1) - np.roll(c[:, 0], -1) * c[:, 1]))
        for c in contours
    ]
    assert sum(a > 0 for a in areas) == 2  # two lobes on this plane
    assert sum(a < 0 for a in areas) == 1  # Lesion_01 is a hole


def test_truth_is_consistent_with_the_model(model: PhantomModel) -> None:
    course = default_course(model)
    points = course_time_points(course, seed=7)
    truth = analytic_truth(course, points)
    assert len(truth["time_points"]) == 10
    assert points[0].transform.is_identity()
    assert not points[1].transform.is_identity()
    assert points == course_time_points(course, seed=7)
    c3 = truth["cycles"][2]
    assert not c3["multi_time_point"]
    for entry in c3["vois"].values():
        assert entry["stp_formula_dose_gy"] == pytest.approx(
            entry["mean_dose_gy"], rel=1e-9
        )
    tp = truth["time_points"][1]
    k = truth["cycles"][0]["vois"]["Kidney_L"]
    assert tp["concentration_mbq_per_ml"]["Kidney_L"] == pytest.approx(
        k["c0_mbq_per_ml"] * math.exp(-k["lambda_eff_per_h"] * tp["elapsed_h"])
    )


def test_counts_model_and_noise_are_seeded() -> None:
    grid = ImageGrid.centred((8, 8, 8), (8.0, 8.0, 8.0))
    activity = grid.volume(np.full(grid.shape_zyx, 1e5, dtype=np.float32), "Bq/mL")
    stats = CountingStatistics(cps_per_mbq=10.0, duration_s=1200.0)
    counts = expected_counts(activity, stats)
    lam_t = LU.decay_constant_per_h * 1200.0 / 3600.0
    expected = 1e5 * 0.512 * 1e-6 * 10.0 * 1200.0 * (1 - math.exp(-lam_t)) / lam_t
    assert float(counts.array[0, 0, 0]) == pytest.approx(expected, rel=1e-6)
    a = poisson_counts(counts, np.random.default_rng(1))
    b = poisson_counts(counts, np.random.default_rng(1))
    np.testing.assert_array_equal(a.array, b.array)
    assert float(a.array.mean()) == pytest.approx(expected, rel=0.05)


def test_blur_preserves_total_activity() -> None:
    grid = ImageGrid.centred((32, 32, 32), (4.0, 4.0, 4.0))
    arr = np.zeros(grid.shape_zyx, dtype=np.float32)
    arr[16, 16, 16] = 1000.0
    blurred = spect_blur(grid.volume(arr, "Bq/mL"), fwhm_mm=12.0)
    assert float(blurred.array.sum()) == pytest.approx(1000.0, rel=1e-3)
    assert float(blurred.array.max()) < 100.0


# -- clean margins and sub-voxel motion (the restated accuracy criterion) ------
def _unit_directions(n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(5)
    u = rng.normal(size=(n, 3))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def test_inset_keeps_the_margin_everywhere_and_outset_holds_the_margin() -> None:
    shape = Ellipsoid((3.0, -2.0, 1.0), (60.0, 25.0, 12.0))
    margin = 7.0
    inner, outer = shape.inset(margin), shape.outset(margin)
    balls = inner.sample_points()[:, None, :] + margin * _unit_directions()[None]
    assert np.all(shape.level(balls) <= 1.0 + 1e-9)  # a ball of radius m fits everywhere
    shell = shape.sample_points()[:, None, :] + margin * _unit_directions()[None]
    assert np.all(outer.level(shell) <= 1.0 + 1e-9)
    np.testing.assert_allclose(outer.inset(margin).semi_axes_mm, shape.semi_axes_mm)
    # shrinking every semi-axis by m would come closer than m on an elongated ellipsoid
    naive = Ellipsoid(shape.center_mm, tuple(a - margin for a in shape.semi_axes_mm))
    balls = naive.sample_points()[:, None, :] + margin * _unit_directions()[None]
    assert np.any(shape.level(balls) > 1.0)
    with pytest.raises(PhantomError, match="smallest semi-axis"):
        shape.inset(12.0)


@pytest.fixture(scope="module")
def clean() -> PhantomModel:
    return clean_margin_model(clean_margin_mm((4.0, 4.0, 4.0), (8.0, 8.0, 8.0)))


def test_clean_margin_is_at_least_one_spect_voxel() -> None:
    assert clean_margin_mm((4.0,) * 3, (8.0,) * 3) == pytest.approx(3**0.5 / 2 * 12 + 1)
    assert clean_margin_mm((0.977, 0.977, 2.5), (4.42,) * 3) >= 4.42
    assert clean_margin_mm((0.5,) * 3, (10.0,) * 3, slack_mm=0.0) == 10.0


def test_clean_margin_contours_lie_the_margin_inside_uniform_activity(
    clean: PhantomModel,
) -> None:
    margin = clean.contour_margin_mm
    transform = RigidTransform((0.2, -0.1, 0.15), (1.0, -0.5, 0.8))
    for voi in clean.vois:
        member = clean.structure(voi.structures[0])
        children = clean.children(member.name)
        vertices = np.concatenate([
            c for z in np.arange(-80.0, 80.0, 4.0)
            for c in voi_contours(clean, voi.name, transform, float(z))
        ])
        # polygon vertices lie up to ~0.6 % of the radius outside the exact section
        # (area-preserving polygons): 0.2 mm of the margin's slack allows for it
        balls = (transform.to_model(vertices)[:, None, :]
                 + (margin - 0.2) * _unit_directions()[None])
        assert np.all(member.shape.level(balls) <= 1.0), voi.name
        for child in children:  # e.g. the liver lesion, a hole of the liver VOI
            assert np.all(child.shape.level(balls) >= 1.0), (voi.name, child.name)


def test_clean_margin_contour_volume_is_analytic(clean: PhantomModel) -> None:
    rng = np.random.default_rng(2)
    for voi in clean.vois:
        (outline, holes), = clean.voi_contour_shapes(voi.name)
        box = np.asarray(outline.semi_axes_mm)
        points = np.asarray(outline.center_mm) + rng.uniform(-1, 1, (400_000, 3)) * box
        inside = outline.contains(points)
        for hole in holes:
            inside &= ~hole.contains(points)
        estimate = inside.mean() * float(np.prod(2 * box)) / 1000.0
        assert estimate == pytest.approx(clean.voi_contour_volume_ml(voi.name), rel=0.01)


def test_clean_margin_patient_has_every_voi_kind_and_default_doses(
    clean: PhantomModel,
) -> None:
    cycle = default_course(clean).cycle(1)
    kinds = {v.kind for v in clean.vois}
    assert kinds == {VoiKind.ORGAN, VoiKind.MARROW, VoiKind.LESION}
    lesions = [v.name for v in clean.vois if v.kind is VoiKind.LESION]
    assert len(lesions) == 3
    assert all(clean.voi_contour_volume_ml(n) >= 4.0 for n in lesions)
    assert mean_dose_gy(clean, "Kidney_L", cycle) == pytest.approx(2.7)
    assert mean_dose_gy(clean, "BoneMarrow_L2-L4", cycle) == pytest.approx(0.3)
    assert clean.structure("Lesion_01").parent == "Liver"
    assert default_model().contour_margin_mm == 0.0


def test_contours_without_margin_are_unchanged(model: PhantomModel) -> None:
    for voi in model.vois:
        for (outline, holes), name in zip(
            model.voi_contour_shapes(voi.name), voi.structures, strict=True
        ):
            assert outline == model.structure(name).shape
            assert holes == tuple(c.shape for c in model.children(name))
        assert model.voi_contour_volume_ml(voi.name) == pytest.approx(
            model.voi_volume_ml(voi.name)
        )


def test_a_margin_that_swallows_a_voi_is_refused(model: PhantomModel) -> None:
    with pytest.raises(PhantomError, match="VOI .*margin"):
        validate_model(replace(model, contour_margin_mm=10.0))


def test_subvoxel_motion_moves_no_voi_point_by_a_voxel_between_any_two_scans(
    clean: PhantomModel,
) -> None:
    voxel = 8.0
    course = with_subvoxel_motion(default_course(clean), voxel)
    points = course_time_points(course, seed=11)
    model_points = np.concatenate([
        clean.structure(s).shape.sample_points(8) for v in clean.vois for s in v.structures
    ])
    largest = 0.0
    for a in points:
        for b in points:
            moved = b.transform.to_patient(model_points) - a.transform.to_patient(model_points)
            largest = max(largest, float(np.linalg.norm(moved, axis=1).max()))
    assert 0.1 * voxel < largest < voxel


def test_clean_course_truth_has_course_totals_and_exact_scaling(clean: PhantomModel) -> None:
    course = default_course(clean)
    truth = analytic_truth(course, course_time_points(course, seed=3))
    assert truth["contour_margin_mm"] == clean.contour_margin_mm
    for voi in clean.vois:
        per_cycle = [c["vois"][voi.name]["mean_dose_gy"] for c in truth["cycles"]]
        assert truth["course_total_gy"][voi.name] == pytest.approx(sum(per_cycle))
        assert truth["vois"][voi.name]["contour_volume_ml"] == pytest.approx(
            clean.voi_contour_volume_ml(voi.name))
        for entry in truth["cycles"][2:]:  # cycles 3-4: the paper's scaling is exact
            assert entry["vois"][voi.name]["stp_formula_dose_gy"] == pytest.approx(
                entry["vois"][voi.name]["mean_dose_gy"], rel=1e-12)
