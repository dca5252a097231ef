"""The contour rasterisation theranode used before issue #12, kept as a test oracle.

It finds each contour's plane by a linear search and each voxel's nearest
plane through a points × planes array: correct, and the definition the
faster :func:`theranode.dicomio.rtstruct.roi_mask` must reproduce voxel for voxel,
but 2,000 contour planes on a small grid took tens of seconds.
"""

from __future__ import annotations

import numpy as np
from matplotlib.path import Path as PolygonPath

from theranode.dicomio.rtstruct import (
    PLANE_TOLERANCE_MM,
    RoiContours,
    _default_spacing,
    _plane_basis,
    _slab_index_box,
    contour_normal,
)
from theranode.dosimetry.volume import Volume


def reference_roi_mask(roi: RoiContours, grid: Volume) -> np.ndarray:
    mask = np.zeros(grid.shape, dtype=bool)
    if not roi.contours:
        return mask
    normal = contour_normal(roi.contours)
    u, v = _plane_basis(normal)
    planes: dict[float, list[np.ndarray]] = {}
    keys: list[float] = []
    for contour in roi.contours:
        d = float(np.mean(contour @ normal))
        match = next((k for k in keys if abs(k - d) <= PLANE_TOLERANCE_MM), None)
        if match is None:
            keys.append(d)
            match = d
        planes.setdefault(match, []).append(contour)
    positions = np.array(sorted(planes))
    half = 0.5 * _default_spacing(positions, grid, normal)
    for position in positions:
        contours = planes[float(position)]
        box = _slab_index_box(grid, contours, normal, half)
        if box is None:
            continue
        zs, ys, xs = box
        k, j, i = np.meshgrid(np.arange(zs.start, zs.stop), np.arange(ys.start, ys.stop),
                              np.arange(xs.start, xs.stop), indexing="ij")
        points = grid.index_to_patient(np.stack([i, j, k], axis=-1).reshape(-1, 3))
        d = points @ normal
        nearest = positions[np.argmin(np.abs(d[:, None] - positions[None, :]), axis=1)]
        in_slab = (nearest == position) & (np.abs(d - position) <= half + 1e-6)
        if not in_slab.any():
            continue
        uv = np.column_stack([points[in_slab] @ u, points[in_slab] @ v])
        inside = np.zeros(uv.shape[0], dtype=bool)
        for contour in contours:
            inside ^= PolygonPath(np.column_stack([contour @ u, contour @ v])).contains_points(uv)
        hit = np.zeros(in_slab.size, dtype=bool)
        hit[np.flatnonzero(in_slab)[inside]] = True
        mask[zs, ys, xs] |= hit.reshape(k.shape)
    return mask
