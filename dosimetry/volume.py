"""The one geometry type that crosses package boundaries.

A :class:`Volume` is a 3-D array with its placement in patient coordinates
(DICOM LPS, millimetres), following the ITK convention so that it converts to
and from SimpleITK images without loss::

    patient_xyz = origin_mm + direction @ (spacing_mm * index_ijk)

The array is indexed ``[k, j, i]`` (slice, row, column), i.e. ``[z, y, x]``,
exactly as :func:`SimpleITK.GetArrayFromImage` returns it.

References
----------
DICOM PS3.3 C.7.6.2.1.1 (Image Position and Image Orientation (Patient)).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from theranode.dosimetry.errors import GeometryError

Vector3 = tuple[float, float, float]
Matrix3 = tuple[float, float, float, float, float, float, float, float, float]

IDENTITY: Matrix3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3-D array placed in patient coordinates.

    Parameters
    ----------
    array:
        Voxel values indexed ``[z, y, x]``.
    spacing_mm:
        Voxel size along the ``(x, y, z)`` index axes, in millimetres.
    origin_mm:
        Patient position of the centre of voxel ``(0, 0, 0)``.
    direction:
        Row-major 3×3 matrix whose *columns* are the unit vectors of the
        ``x``, ``y`` and ``z`` index axes in patient coordinates.
    unit:
        Unit of the voxel values, e.g. ``"HU"``, ``"Bq/mL"``, ``"Gy/h"``,
        ``"Gy"``, ``"counts"`` or ``"mask"``.
    """

    array: npt.NDArray[Any]
    spacing_mm: Vector3
    origin_mm: Vector3 = (0.0, 0.0, 0.0)
    direction: Matrix3 = IDENTITY
    unit: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise GeometryError(
                f"A Volume needs a 3-D array, got shape {self.array.shape}."
            )
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise GeometryError(
                f"Voxel spacing must be three positive numbers, got {self.spacing_mm}."
            )
        if len(self.direction) != 9:
            raise GeometryError("The direction matrix needs 9 elements (row-major 3×3).")
        object.__setattr__(self, "spacing_mm", tuple(float(s) for s in self.spacing_mm))
        object.__setattr__(self, "origin_mm", tuple(float(s) for s in self.origin_mm))
        object.__setattr__(self, "direction", tuple(float(s) for s in self.direction))

    # -- geometry --------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape ``(nz, ny, nx)``."""
        z, y, x = self.array.shape
        return int(z), int(y), int(x)

    @property
    def direction_matrix(self) -> npt.NDArray[np.float64]:
        """The direction as a 3×3 array (columns are the index axes)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm³)."""
        sx, sy, sz = self.spacing_mm
        return sx * sy * sz / 1000.0

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4×4 matrix mapping homogeneous ``(i, j, k, 1)`` to patient mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction_matrix * np.asarray(self.spacing_mm)[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def index_to_patient(self, ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Patient coordinates (mm) of continuous indices ``(..., 3)`` in ``(i, j, k)``."""
        idx = np.asarray(ijk, dtype=np.float64)
        axes = self.direction_matrix * np.asarray(self.spacing_mm)
        return np.asarray(idx @ axes.T + np.asarray(self.origin_mm), dtype=np.float64)

    def patient_to_index(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Continuous ``(i, j, k)`` indices of patient points ``(..., 3)``."""
        pts = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin_mm)
        inv = np.linalg.inv(self.direction_matrix * np.asarray(self.spacing_mm))
        return np.asarray(pts @ inv.T, dtype=np.float64)

    def same_grid(self, other: Volume, tolerance_mm: float = 1e-3) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tolerance_mm)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def require_same_grid(self, other: Volume, what: str = "volumes") -> None:
        """Raise :class:`GeometryError` unless ``other`` is on this grid."""
        if not self.same_grid(other):
            raise GeometryError(
                f"The {what} are on different grids: shape {self.shape} vs {other.shape}, "
                f"spacing {self.spacing_mm} vs {other.spacing_mm}, origin {self.origin_mm} "
                f"vs {other.origin_mm}. Resample one onto the other first."
            )

    # -- construction ----------------------------------------------------
    def with_array(self, array: npt.NDArray[Any], unit: str | None = None) -> Volume:
        """A volume on the same grid holding ``array``."""
        if array.shape != self.array.shape:
            raise GeometryError(
                f"Array of shape {array.shape} does not fit a grid of shape {self.shape}."
            )
        return replace(self, array=array, unit=self.unit if unit is None else unit)

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same values and geometry."""
        array = self.array
        if array.dtype == bool:
            array = array.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing_mm)
        image.SetOrigin(self.origin_mm)
        image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, unit: str = "") -> Volume:
        """Wrap a SimpleITK image (values copied)."""
        if image.GetDimension() != 3:
            raise GeometryError(f"Expected a 3-D image, got {image.GetDimension()}-D.")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing_mm=tuple(image.GetSpacing()),
            origin_mm=tuple(image.GetOrigin()),
            direction=tuple(image.GetDirection()),
            unit=unit,
        )


def resample(
    volume: Volume,
    reference: Volume,
    transform: sitk.Transform | None = None,
    interpolation: str = "linear",
    default_value: float = 0.0,
) -> Volume:
    """Resample ``volume`` onto the grid of ``reference``.

    Parameters
    ----------
    transform:
        Maps points of the *reference* space to the space of ``volume``
        (ITK's resampling convention). ``None`` means identity.
    interpolation:
        ``"linear"``, ``"nearest"`` or ``"bspline"``.
    """
    interpolators = {
        "linear": sitk.sitkLinear,
        "nearest": sitk.sitkNearestNeighbor,
        "bspline": sitk.sitkBSpline,
    }
    if interpolation not in interpolators:
        raise GeometryError(
            f"Unknown interpolation {interpolation!r}; use one of {sorted(interpolators)}."
        )
    moving = volume.to_sitk()
    if volume.array.dtype not in (np.float32, np.float64) and interpolation != "nearest":
        moving = sitk.Cast(moving, sitk.sitkFloat32)
    out = sitk.Resample(
        moving,
        reference.to_sitk(),
        transform if transform is not None else sitk.Transform(),
        interpolators[interpolation],
        default_value,
    )
    result = Volume.from_sitk(out, unit=volume.unit)
    if volume.array.dtype == bool:
        result = result.with_array(result.array.astype(bool))
    return result


def average_onto(volume: Volume, grid: Volume, default_value: float = 0.0) -> Volume:
    """``volume`` (fine grid) averaged onto the coarser ``grid`` of the same frame.

    Box-averaged by the integer bin factor ``floor(grid / volume spacing)`` per
    axis (a box close to the target voxel), then linearly resampled onto
    ``grid``; outside ``volume`` the value is ``default_value``. This averages
    a quantity (mass density, a 0/1 indicator) instead of sampling it.
    """
    image = volume.to_sitk()
    factors = [
        max(1, int(t / s + 1e-6)) for t, s in zip(grid.spacing_mm, volume.spacing_mm, strict=True)
    ]
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(image, factors)
    shrunk = Volume.from_sitk(image, unit=volume.unit)
    return resample(shrunk, grid, None, "linear", default_value=default_value)
