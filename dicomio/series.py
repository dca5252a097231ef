"""Stacking single-frame image instances into one regular volume.

A CT series (or a classic per-slice PET/SPECT series) is a set of 2-D
instances, each with its own Image Position (Patient). They form a volume
when they share orientation, matrix and pixel spacing, and their positions
lie on one line along the slice normal ``n = row × column`` at one spacing.
Gantry-tilted series (positions not along the normal) are refused.

References
----------
DICOM PS3.3 C.7.6.2 (Image Plane module) and C.7.6.2.1.1 (Image Position
and Image Orientation (Patient)).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from theranode.dicomio.errors import InconsistentSeriesError, MissingAttributeError
from theranode.dosimetry.volume import Matrix3, Vector3

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Largest tolerated difference between slice gaps, in mm.
SPACING_TOLERANCE_MM = 0.01
#: Largest tolerated cosine difference between orientations of two slices.
ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class StackGeometry:
    """Geometry of a sorted slice stack, in :class:`~theranode.dosimetry.volume.Volume` terms."""

    spacing_mm: Vector3
    origin_mm: Vector3
    direction: Matrix3


def required(ds: Dataset, keyword: str) -> object:
    """The value of ``keyword``, or :class:`MissingAttributeError` when absent/empty."""
    value = ds.get(keyword)
    if value is None or value == "":
        sop = ds.get("SOPInstanceUID", "?")
        raise MissingAttributeError(
            f"{keyword} is missing or empty in instance {sop}; it is needed to place the "
            "image in space. Ask for the series to be exported with full headers."
        )
    return value


def orientation_axes(iop: Sequence[float]) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Unit row, column and normal vectors of an Image Orientation (Patient)."""
    values = np.asarray([float(v) for v in iop], dtype=np.float64)
    if values.size != 6:
        raise InconsistentSeriesError(
            f"ImageOrientationPatient needs six values, found {values.size}."
        )
    row, col = values[:3], values[3:]
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise InconsistentSeriesError(
            f"ImageOrientationPatient {list(values)} has non-orthogonal row and column "
            "directions; the image cannot be placed in space."
        )
    return row, col, np.cross(row, col)


def direction_matrix(
    row: FloatArray, col: FloatArray, slice_dir: FloatArray
) -> Matrix3:
    """Row-major 3×3 with the index-axis unit vectors as columns."""
    matrix = np.column_stack([row, col, slice_dir])
    return tuple(float(v) for v in matrix.reshape(-1))  # type: ignore[return-value]


def pixel_spacing_xy(ds: Dataset) -> tuple[float, float]:
    """(column spacing, row spacing) — i.e. spacing along x then y index axes."""
    spacing = [float(v) for v in required(ds, "PixelSpacing")]  # type: ignore[attr-defined]
    if len(spacing) != 2 or min(spacing) <= 0:
        raise InconsistentSeriesError(
            f"PixelSpacing must be two positive numbers, got {spacing}."
        )
    return spacing[1], spacing[0]


def sort_slices(datasets: Sequence[Dataset]) -> tuple[list[Dataset], StackGeometry]:
    """Sort instances along their normal and check they form one volume.

    Raises
    ------
    InconsistentSeriesError
        Mixed orientation, matrix size or pixel spacing; duplicate positions;
        a tilted stack; or uneven slice gaps (a missing slice).
    """
    if not datasets:
        raise InconsistentSeriesError(
            "No instances were given; a series needs at least one slice."
        )
    first = datasets[0]
    row, col, normal = orientation_axes(required(first, "ImageOrientationPatient"))  # type: ignore[arg-type]
    _check_uniform(datasets, row, col)
    positions = np.array(
        [[float(v) for v in required(ds, "ImagePositionPatient")] for ds in datasets],  # type: ignore[attr-defined]
        dtype=np.float64,
    )
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    ordered = [datasets[int(i)] for i in order]
    dx, dy = pixel_spacing_xy(first)
    dz = _slice_gap_mm(ordered, positions, normal)
    return ordered, StackGeometry(
        spacing_mm=(dx, dy, dz),
        origin_mm=tuple(float(v) for v in positions[0]),  # type: ignore[arg-type]
        direction=direction_matrix(row, col, normal),
    )


def _check_uniform(
    datasets: Sequence[Dataset], row: FloatArray, col: FloatArray
) -> None:
    first = datasets[0]
    shape = (int(required(first, "Rows")), int(required(first, "Columns")))  # type: ignore[call-overload]
    spacing = pixel_spacing_xy(first)
    for ds in datasets[1:]:
        r, c, _ = orientation_axes(required(ds, "ImageOrientationPatient"))  # type: ignore[arg-type]
        if max(np.abs(r - row).max(), np.abs(c - col).max()) > ORIENTATION_TOLERANCE:
            raise InconsistentSeriesError(
                f"Instance {ds.get('SOPInstanceUID', '?')} has another orientation than the "
                "first slice; a series must share one ImageOrientationPatient."
            )
        if (int(ds.Rows), int(ds.Columns)) != shape or not np.allclose(
            pixel_spacing_xy(ds), spacing, atol=1e-4
        ):
            raise InconsistentSeriesError(
                f"Instance {ds.get('SOPInstanceUID', '?')} has matrix "
                f"{(int(ds.Rows), int(ds.Columns))} / spacing {pixel_spacing_xy(ds)} where the "
                f"first slice has {shape} / {spacing}; split the series first."
            )


def _slice_gap_mm(
    ordered: Sequence[Dataset], positions: FloatArray, normal: FloatArray
) -> float:
    if len(ordered) == 1:
        thickness = ordered[0].get("SliceThickness") or ordered[0].get(
            "SpacingBetweenSlices"
        )
        if thickness in (None, ""):
            raise MissingAttributeError(
                "A single-slice volume needs SliceThickness or SpacingBetweenSlices "
                "to know its depth."
            )
        return float(thickness)
    steps = np.diff(positions, axis=0)
    gaps = steps @ normal
    if np.any(gaps < SPACING_TOLERANCE_MM):
        raise InconsistentSeriesError(
            "Two instances share one slice position; the series holds duplicates or several "
            "volumes. Split it (e.g. by AcquisitionNumber) before reading."
        )
    lateral = np.linalg.norm(steps - np.outer(gaps, normal), axis=1)
    if np.any(lateral > SPACING_TOLERANCE_MM * 10 + 1e-3 * gaps):
        raise InconsistentSeriesError(
            f"Slice positions drift sideways by up to {lateral.max():.3f} mm per slice: the "
            "series is gantry-tilted or sheared, which theranode does not read. Resample it "
            "to an orthogonal grid first."
        )
    if gaps.max() - gaps.min() > SPACING_TOLERANCE_MM:
        raise InconsistentSeriesError(
            f"Slice gaps range from {gaps.min():.4f} to {gaps.max():.4f} mm; expected one "
            "regular spacing. A slice is probably missing: re-send the complete series."
        )
    return float(gaps.mean())
