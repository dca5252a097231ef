"""The cycle report's images: where the slices cut, which way the patient faces, and the
checkerboard of a registration (known answers on small phantoms)."""

from __future__ import annotations

import numpy as np
import pytest

from theranode.dicomio.report_figures import (
    RegisteredCt,
    View,
    build_scene,
    checkerboard,
    display_grid,
    hottest_lesion,
    kidneys_point_mm,
    oriented_slice,
    registration_scene,
    slice_indices,
)
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import CycleResult, DoseMethod, Organ, VoiDose, VoiKind
from theranode.dosimetry.volume import Volume

SHAPE = (40, 48, 48)  # z, y, x
SPACING = 4.0
ORIGIN = (-94.0, -94.0, -78.0)  # voxel (0, 0, 0) centre; index 23.5 is the middle in x, y


def _volume(array: np.ndarray, unit: str = "Gy", **kwargs: object) -> Volume:
    return Volume(array, (SPACING,) * 3, ORIGIN, unit=unit, **kwargs)  # type: ignore[arg-type]


def _box(z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[z[0] : z[1] + 1, y[0] : y[1] + 1, x[0] : x[1] + 1] = True
    return mask


def _voi(name: str, kind: VoiKind, mean_gy: float, organ: Organ | None = None,
         excluded: bool = False) -> VoiDose:
    return VoiDose(name, kind, DoseMethod.MULTI_TIME_POINT, 10.0, mean_gy, 0.1, organ=organ,
                   excluded=excluded)


def _result(dose: Volume, vois: tuple[VoiDose, ...]) -> CycleResult:
    return CycleResult(1, DoseMethod.MULTI_TIME_POINT, 7400.0, (4.0, 24.0), vois, dose_map=dose)


# Right kidney on the patient's right (low x in LPS), left kidney on the left (high x).
KIDNEY_RIGHT = _box((20, 26), (25, 29), (10, 14))
KIDNEY_LEFT = _box((20, 26), (25, 29), (30, 34))
LESION_COOL = _box((5, 7), (10, 12), (20, 22))
LESION_HOT = _box((30, 34), (14, 18), (36, 40))
LESION_EXCLUDED = _box((10, 11), (40, 41), (5, 6))
VOIS = (
    _voi("kidney_right", VoiKind.ORGAN, 3.0, Organ.KIDNEY_RIGHT),
    _voi("kidney_left", VoiKind.ORGAN, 3.2, Organ.KIDNEY_LEFT),
    _voi("lesion cool", VoiKind.LESION, 20.0),
    _voi("lesion hot", VoiKind.LESION, 50.0),
    _voi("lesion excluded", VoiKind.LESION, 90.0, excluded=True),
)
MASKS = {"kidney_right": KIDNEY_RIGHT, "kidney_left": KIDNEY_LEFT, "lesion cool": LESION_COOL,
         "lesion hot": LESION_HOT, "lesion excluded": LESION_EXCLUDED}


def _dose() -> Volume:
    array = np.zeros(SHAPE, dtype=np.float32)
    for name, value in (("kidney_right", 3.0), ("kidney_left", 3.2), ("lesion cool", 20.0),
                        ("lesion hot", 50.0), ("lesion excluded", 90.0)):
        array[MASKS[name]] = value
    return _volume(array)


def test_the_display_grid_of_an_axis_aligned_grid_is_that_grid() -> None:
    grid = display_grid(_dose())
    assert grid.shape == SHAPE and grid.spacing_mm == (SPACING,) * 3
    assert grid.origin_mm == pytest.approx(ORIGIN)


def test_the_slices_cut_through_the_kidneys_centroid_and_the_hottest_included_lesion() -> None:
    scene = build_scene(_result(_dose(), VOIS), MASKS, reference_ct=None)
    assert scene is not None
    kidneys = kidneys_point_mm(_result(_dose(), VOIS), scene)
    assert kidneys is not None
    # centroid of both boxes: x index (12 + 32) / 2 = 22, y index 27, z index 23
    assert slice_indices(scene.grid, kidneys) == (22, 27, 23)
    name, point = hottest_lesion(_result(_dose(), VOIS), scene)
    assert name == "lesion hot"  # 50 Gy; the 90 Gy lesion is excluded
    assert slice_indices(scene.grid, point) == (38, 16, 32)


def test_without_lesions_the_hottest_voxel_is_shown_and_without_kidneys_no_kidney_row() -> None:
    dose = _dose()
    vois = (_voi("liver", VoiKind.ORGAN, 1.0, Organ.LIVER),)
    result = _result(dose, vois)
    scene = build_scene(result, {"liver": KIDNEY_RIGHT}, reference_ct=None)
    assert scene is not None
    assert kidneys_point_mm(result, scene) is None
    name, point = hottest_lesion(result, scene)
    assert name == "hottest voxel"
    i, j, k = slice_indices(scene.grid, point)
    assert LESION_EXCLUDED[k, j, i]  # the 90 Gy box holds the maximum


def _blob_at(x: int, y: int, z: int) -> np.ndarray:
    array = np.zeros(SHAPE, dtype=np.float32)
    array[z - 2 : z + 3, y - 2 : y + 3, x - 2 : x + 3] = 10.0
    return array


def _where(image: np.ndarray) -> tuple[float, float]:
    """Row and column of the centre of an image's nonzero pixels, as fractions of its size."""
    rows, cols = np.nonzero(image > 1.0)
    return rows.mean() / image.shape[0], cols.mean() / image.shape[1]


@pytest.mark.parametrize("flipped", [False, True], ids=["LPS-axes", "x-and-z-reversed"])
def test_radiological_convention_left_on_the_right_anterior_and_superior_on_top(
    flipped: bool,
) -> None:
    """A dose blob on the patient's left (+x), anterior (−y) and superior (+z) shows on the
    image's right in the axial and coronal views, at the top of the axial, coronal and
    sagittal views and on the left (anterior) of the sagittal view."""
    x, y, z = 38, 10, 32  # left, anterior, superior of the middle (23.5, 23.5, 19.5)
    dose = _volume(_blob_at(x, y, z))
    if flipped:  # same patient positions, stored with the x and z index axes reversed
        nz, _, nx = SHAPE
        corner = dose.index_to_patient(np.array([nx - 1, 0, nz - 1], dtype=float))
        dose = Volume(dose.array[::-1, :, ::-1].copy(), dose.spacing_mm,
                      tuple(float(v) for v in corner),  # type: ignore[arg-type]
                      direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0), unit="Gy")
    scene = build_scene(_result(dose, ()), {}, reference_ct=None)
    assert scene is not None
    point = tuple(float(v) for v in _volume(_blob_at(x, y, z)).index_to_patient(
        np.array([x, y, z], dtype=float)))
    ijk = slice_indices(scene.grid, point)  # type: ignore[arg-type]
    axial_row, axial_col = _where(oriented_slice(scene.dose, View.AXIAL, ijk))
    coronal_row, coronal_col = _where(oriented_slice(scene.dose, View.CORONAL, ijk))
    sagittal_row, sagittal_col = _where(oriented_slice(scene.dose, View.SAGITTAL, ijk))
    assert axial_col > 0.6 and coronal_col > 0.6  # patient's left on the image's right
    assert axial_row < 0.4  # anterior at the top of the axial view
    assert coronal_row < 0.4 and sagittal_row < 0.4  # superior at the top
    assert sagittal_col < 0.4  # anterior on the left of the sagittal view
    assert View.AXIAL.edges == ("R", "L", "A", "P")
    assert View.SAGITTAL.edges == ("A", "P", "S", "I")


def test_checkerboard_alternates_the_two_images_in_squares() -> None:
    board = checkerboard(np.zeros((4, 6)), np.ones((4, 6)), 2)
    assert board.tolist() == [
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1],
        [1, 1, 0, 0, 1, 1],
    ]


def test_a_later_ct_moved_by_its_registration_matches_the_reference() -> None:
    """A CT shifted by a known translation, moved back by that registration, equals the
    reference inside the body; unmoved, it does not."""
    rng = np.random.default_rng(3)
    body = np.full(SHAPE, -1000.0, dtype=np.float32)
    body[8:32, 10:38, 8:40] = rng.normal(40.0, 60.0, size=(24, 28, 32))
    reference = _volume(body, unit="HU")
    shift = (8.0, -12.0, 4.0)  # mm, whole voxels: the moving CT is the reference shifted
    moving = Volume(body, reference.spacing_mm,
                    tuple(o + s for o, s in zip(ORIGIN, shift, strict=True)),  # type: ignore[arg-type]
                    unit="HU")
    affine = np.eye(4)
    affine[:3, 3] = shift
    registration = RigidRegistration.known(affine)
    moved = registration_scene(reference, RegisteredCt(24.0, moving, registration))
    unmoved = registration_scene(reference, RegisteredCt(24.0, moving, RigidRegistration.identity()))
    inside = body > -1000.0
    assert np.abs(moved.moved - moved.reference)[inside].max() < 1e-3
    assert np.abs(unmoved.moved - unmoved.reference)[inside].mean() > 30.0
