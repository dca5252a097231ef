"""The images of the cycle report: the dose on the CT and the registration checkerboards.

Drawn with matplotlib's object-oriented API on :class:`~theranode.dosimetry.volume.Volume`
objects (no pyplot state, so it is safe in worker threads). Every volume is first
brought onto one *display grid*: axis-aligned with the patient axes (DICOM LPS),
isotropic, covering the reference CT and at most :data:`MAX_DISPLAY_VOXELS` voxels
along its longest axis. The CT is averaged onto it (bin shrink, then linear
resampling), the dose map and a later time point's CT (through its rigid
registration) are resampled onto it, and the VOI masks by their occupancy (≥ 0.5).
Through one isotropic grid every view has the aspect ratio of the patient and the
report's images stay small (a few tens of kB each in the PDF).

Views follow the radiological convention: axial slices seen from the feet (the
patient's right on the image's left, anterior at the top), coronal slices seen
from the front (right on the left, superior at the top), sagittal slices seen from
the patient's left (anterior on the left, superior at the top). Each image is
labelled with the patient directions at its edges (R/L, A/P, S/I).

References
----------
DICOM PS3.3 C.7.6.2.1.1 (patient coordinate system, LPS).
Sjögreen Gleisner K et al., EANM guidance on dosimetry for [177Lu]-labelled
somatostatin analogues, Eur J Nucl Med Mol Imaging 2022;49:1778-1809 (review of
registration and dose distributions).
Crameri F, Shephard GE, Heron PJ, Nat Commun 2020;11:5444 (perceptually uniform
colour maps for scientific data).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import matplotlib as mpl
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from theranode.dosimetry.errors import GeometryError
from theranode.dosimetry.registration import RigidRegistration, crop_mask
from theranode.dosimetry.results import CycleResult, Organ, VoiKind
from theranode.dosimetry.volume import Vector3, Volume, resample

logger = logging.getLogger(__name__)

#: Longest side of the display grid, in voxels: keeps each image small in the PDF.
MAX_DISPLAY_VOXELS = 160
#: Finest display spacing (mm): a finer CT is averaged down to it.
MIN_DISPLAY_SPACING_MM = 2.0
#: CT window (HU) of the dose images: soft tissue, as for abdominal reading.
CT_WINDOW_HU = (-160.0, 240.0)
#: Below this fraction of a view's maximum the dose is not drawn (the CT shows through).
DOSE_FLOOR_FRACTION = 0.05
#: Opacity of the dose colour wash over the CT.
DOSE_ALPHA = 0.7
#: Perceptually uniform colour map of the dose (matplotlib's ``plasma``).
DOSE_COLORMAP = "plasma"
#: Side of one checkerboard square (mm).
CHECKER_MM = 20.0
#: Contour colour per VOI kind.
CONTOUR_COLOURS = {VoiKind.ORGAN: "#00e5ff", VoiKind.MARROW: "#76ff03", VoiKind.LESION: "white"}
KIDNEY_ORGANS = frozenset({Organ.KIDNEYS, Organ.KIDNEY_LEFT, Organ.KIDNEY_RIGHT})


class View(Enum):
    """A slice orientation, with the patient directions at the image's left, right,
    top and bottom edges (radiological convention)."""

    AXIAL = ("axial", ("R", "L", "A", "P"))
    CORONAL = ("coronal", ("R", "L", "S", "I"))
    SAGITTAL = ("sagittal", ("A", "P", "S", "I"))

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def edges(self) -> tuple[str, str, str, str]:
        """Patient directions at the image's left, right, top and bottom."""
        left, right, top, bottom = self.value[1]
        return left, right, top, bottom


@dataclass(frozen=True, eq=False)
class RegisteredCt:
    """A later time point's CT and the rigid registration found for it.

    ``registration`` maps reference points to points of ``ct`` (ITK), as
    :func:`theranode.dosimetry.registration.register_rigid` returns it.
    """

    elapsed_h: float
    ct: Volume
    registration: RigidRegistration


@dataclass(frozen=True, eq=False)
class ReportImages:
    """What the report's images are drawn from, besides the result.

    Attributes
    ----------
    reference_ct:
        The cycle's reference (first) CT in HU; ``None``: the dose is drawn alone.
    registered:
        Each later time point's CT with its registration (time order).
    """

    reference_ct: Volume | None = None
    registered: tuple[RegisteredCt, ...] = ()


@dataclass(frozen=True, eq=False)
class VoiOutline:
    """A VOI's mask on the display grid, with its kind (for the contour colour)."""

    name: str
    kind: VoiKind
    mask: npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class Scene:
    """CT, dose and VOI masks on one display grid (module docstring).

    ``ct`` is ``None`` when no CT was given; ``grid`` then is the dose's display grid.
    """

    grid: Volume
    ct: npt.NDArray[np.float32] | None
    dose: npt.NDArray[np.float32]
    outlines: tuple[VoiOutline, ...] = ()


# -- the display grid -----------------------------------------------------------------
def _corners_mm(volume: Volume) -> npt.NDArray[np.float64]:
    nz, ny, nx = volume.shape
    ijk = np.array(
        [[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)]
    )
    return volume.index_to_patient(ijk)


def display_grid(volume: Volume, max_voxels: int = MAX_DISPLAY_VOXELS) -> Volume:
    """An empty, axis-aligned, isotropic grid covering ``volume``'s extent.

    The spacing is the finest of ``volume``'s spacings (at least
    :data:`MIN_DISPLAY_SPACING_MM`), coarsened so that the longest side has at
    most ``max_voxels`` voxels.
    """
    corners = _corners_mm(volume)
    low, high = corners.min(axis=0), corners.max(axis=0)
    extent = high - low
    spacing = max(min(volume.spacing_mm), MIN_DISPLAY_SPACING_MM, float(extent.max()) / max_voxels)
    shape_xyz = [max(1, math.ceil(e / spacing - 1e-6)) for e in extent]
    origin = low + spacing / 2.0
    return Volume(
        np.zeros(shape_xyz[::-1], dtype=np.float32),
        (spacing, spacing, spacing),
        tuple(float(v) for v in origin),  # type: ignore[arg-type]
        unit="",
    )


def on_display_grid(
    volume: Volume,
    grid: Volume,
    registration: RigidRegistration | None = None,
    default_value: float = 0.0,
) -> npt.NDArray[np.float32]:
    """``volume`` averaged down towards ``grid``'s spacing, then resampled onto it.

    ``registration`` (reference → ``volume``'s frame) moves a later time point's
    image onto the reference frame, as :func:`theranode.dosimetry.registration.
    resample_to_reference` does.
    """
    factors = [max(1, int(g / s + 1e-6)) for g, s in zip(grid.spacing_mm, volume.spacing_mm,
                                                         strict=True)]
    source = volume
    if any(f > 1 for f in factors):
        image = sitk.BinShrink(sitk.Cast(volume.to_sitk(), sitk.sitkFloat32), factors)
        source = Volume.from_sitk(image, unit=volume.unit)
    elif source.array.dtype not in (np.float32, np.float64):
        source = source.with_array(source.array.astype(np.float32))
    transform = registration.transform() if registration is not None else None
    moved = resample(source, grid, transform, "linear", default_value=default_value)
    return np.asarray(moved.array, dtype=np.float32)


def mask_on_display_grid(mask: Volume, grid: Volume) -> npt.NDArray[np.bool_]:
    """A boolean mask on ``grid``: its linearly interpolated occupancy ≥ 0.5."""
    cropped = crop_mask(mask.with_array(np.asarray(mask.array, dtype=bool)))
    occupancy = cropped.with_array(cropped.array.astype(np.float32), unit="fraction")
    fraction = resample(occupancy, grid, None, "linear", default_value=0.0)
    return np.asarray(fraction.array >= 0.5, dtype=bool)


def _mask_volumes(
    masks: Mapping[str, npt.NDArray[Any] | Volume], dose: Volume
) -> dict[str, Volume]:
    """Masks as Volumes: an array is on the dose grid (:attr:`CycleResult.map_vois`)."""
    volumes = {}
    for name, mask in masks.items():
        if isinstance(mask, Volume):
            volumes[name] = mask
        elif np.shape(mask) == dose.shape:
            volumes[name] = dose.with_array(np.asarray(mask, dtype=bool), unit="mask")
        else:
            raise GeometryError(
                f"The mask of VOI {name!r} has shape {np.shape(mask)}, the dose map "
                f"{dose.shape}: a mask given as an array must be on the dose grid. "
                "Pass it as a Volume with its own geometry."
            )
    return volumes


def _voi_kind(result: CycleResult, name: str) -> VoiKind:
    try:
        return result.voi(name).kind
    except KeyError:
        return VoiKind.ORGAN


def build_scene(
    result: CycleResult,
    masks: Mapping[str, npt.NDArray[Any] | Volume],
    reference_ct: Volume | None,
    max_voxels: int = MAX_DISPLAY_VOXELS,
) -> Scene | None:
    """The result's dose map, the CT and the VOI masks on one display grid.

    ``None`` when the result has no dose map.
    """
    dose = result.dose_map
    if dose is None:
        return None
    grid = display_grid(reference_ct if reference_ct is not None else dose, max_voxels)
    ct = (
        on_display_grid(reference_ct, grid, default_value=-1000.0)
        if reference_ct is not None
        else None
    )
    dose_array = on_display_grid(dose, grid)
    outlines = []
    for name, mask in _mask_volumes(masks, dose).items():
        on_grid = mask_on_display_grid(mask, grid)
        if on_grid.any():
            outlines.append(VoiOutline(name, _voi_kind(result, name), on_grid))
    return Scene(grid, ct, dose_array, tuple(outlines))


# -- where to cut ------------------------------------------------------------------
def mask_centroid_mm(mask: Volume) -> Vector3:
    """The patient position (mm) of the centre of the mask's voxels."""
    k, j, i = np.nonzero(np.asarray(mask.array, dtype=bool))
    if k.size == 0:
        raise GeometryError("An empty mask has no centroid; draw the VOI or leave it out.")
    x, y, z = mask.index_to_patient(np.array([i.mean(), j.mean(), k.mean()]))
    return float(x), float(y), float(z)


def _grid_mask(scene: Scene, names: set[str]) -> npt.NDArray[np.bool_] | None:
    chosen = [o.mask for o in scene.outlines if o.name in names]
    if not chosen:
        return None
    return np.asarray(np.logical_or.reduce(chosen), dtype=bool)


def kidneys_point_mm(result: CycleResult, scene: Scene) -> Vector3 | None:
    """Centroid of the kidney VOIs together (left, right or both), or ``None``."""
    names = {v.name for v in result.vois if v.organ in KIDNEY_ORGANS}
    union = _grid_mask(scene, names)
    if union is None or not union.any():
        return None
    return mask_centroid_mm(scene.grid.with_array(union))


def hottest_lesion(result: CycleResult, scene: Scene) -> tuple[str, Vector3]:
    """The lesion of highest mean AD (not excluded) and its centroid; without one,
    ``("hottest voxel", its position)``."""
    lesions = sorted(
        (v for v in result.vois if v.kind is VoiKind.LESION and not v.excluded),
        key=lambda v: v.mean_gy,
        reverse=True,
    )
    for lesion in lesions:
        mask = _grid_mask(scene, {lesion.name})
        if mask is not None and mask.any():
            return lesion.name, mask_centroid_mm(scene.grid.with_array(mask))
    k, j, i = np.unravel_index(int(np.argmax(scene.dose)), scene.dose.shape)
    x, y, z = scene.grid.index_to_patient(np.array([i, j, k], dtype=float))
    return "hottest voxel", (float(x), float(y), float(z))


def slice_indices(grid: Volume, point_mm: Vector3) -> tuple[int, int, int]:
    """The ``(i, j, k)`` voxel of ``grid`` nearest ``point_mm``, clipped into the grid."""
    ijk = np.rint(grid.patient_to_index(np.asarray(point_mm, dtype=float)))
    nz, ny, nx = grid.shape
    upper = np.array([nx - 1, ny - 1, nz - 1])
    i, j, k = (int(v) for v in np.clip(ijk, 0, upper))
    return i, j, k


def oriented_slice(
    array: npt.NDArray[Any], view: View, ijk: tuple[int, int, int]
) -> npt.NDArray[Any]:
    """The slice of a display-grid array (``[z, y, x]``, LPS axes) through voxel ``ijk``,
    oriented for ``imshow(origin="upper")`` in the radiological convention."""
    i, j, k = ijk
    if view is View.AXIAL:
        return array[k, :, :]  # rows anterior → posterior, columns right → left
    if view is View.CORONAL:
        return array[::-1, j, :]  # rows superior → inferior, columns right → left
    return array[::-1, :, i]  # rows superior → inferior, columns anterior → posterior


def coronal_projection(array: npt.NDArray[Any], how: str = "max") -> npt.NDArray[Any]:
    """Projection along the anterior-posterior axis, oriented as a coronal view."""
    projected = array.max(axis=1) if how == "max" else array.mean(axis=1)
    return np.asarray(projected[::-1, :])


# -- drawing -------------------------------------------------------------------------
def _dose_colormap() -> Colormap:
    return mpl.colormaps[DOSE_COLORMAP].with_extremes(under=(0.0, 0.0, 0.0, 0.0))


def _label_edges(ax: Axes, view: View) -> None:
    left, right, top, bottom = view.edges
    style: dict[str, Any] = {"transform": ax.transAxes, "fontsize": 7, "color": "yellow",
                             "weight": "bold"}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _grey(ax: Axes, image: npt.NDArray[Any], window: tuple[float, float]) -> None:
    ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], origin="upper",
              interpolation="nearest", aspect="equal")


def _dose_wash(ax: Axes, dose2d: npt.NDArray[Any], vmax: float) -> Any:
    return ax.imshow(
        dose2d, cmap=_dose_colormap(), vmin=DOSE_FLOOR_FRACTION * vmax, vmax=vmax,
        origin="upper", interpolation="nearest", aspect="equal", alpha=DOSE_ALPHA,
    )


def _contours(ax: Axes, scene: Scene, view: View, ijk: tuple[int, int, int]) -> None:
    for outline in scene.outlines:
        cut = oriented_slice(outline.mask, view, ijk)
        if cut.any() and not cut.all():
            ax.contour(cut.astype(np.float32), levels=[0.5], linewidths=0.6,
                       colors=CONTOUR_COLOURS[outline.kind])


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")


def draw_dose_view(
    ax: Axes, scene: Scene, view: View, ijk: tuple[int, int, int], vmax: float
) -> Any:
    """One slice: the CT in grey (:data:`CT_WINDOW_HU`), the dose washed over it in
    colour, the VOI contours and the patient directions. Returns the dose image."""
    _bare(ax)
    if scene.ct is not None:
        _grey(ax, oriented_slice(scene.ct, view, ijk), CT_WINDOW_HU)
    wash = _dose_wash(ax, oriented_slice(scene.dose, view, ijk), vmax)
    _contours(ax, scene, view, ijk)
    _label_edges(ax, view)
    ax.set_title(_slice_title(scene, view, ijk), fontsize=7)
    return wash


def _slice_title(scene: Scene, view: View, ijk: tuple[int, int, int]) -> str:
    x, y, z = scene.grid.index_to_patient(np.array(ijk, dtype=float))
    position = {View.AXIAL: f"z {z:.0f}", View.CORONAL: f"y {y:.0f}",
                View.SAGITTAL: f"x {x:.0f}"}[view]
    return f"{view.label}, {position} mm"


def dose_colorbar(fig: Figure, cax: Axes, image: Any) -> None:
    """A colour bar in Gy, numbers written without exponent or offset."""
    bar = fig.colorbar(image, cax=cax)
    formatter = ScalarFormatter(useOffset=False)
    formatter.set_scientific(False)
    bar.formatter = formatter
    bar.ax.tick_params(labelsize=6)
    bar.set_label("absorbed dose (Gy)", fontsize=7)
    bar.update_ticks()


def views_maximum(scene: Scene, ijk: tuple[int, int, int]) -> float:
    """The largest dose on the three slices through ``ijk`` (the colour scale's top)."""
    peak = max(float(np.max(oriented_slice(scene.dose, v, ijk))) for v in View)
    return peak if peak > 0 else 1.0


def draw_dose_row(
    fig: Figure, rect: tuple[float, float, float, float], scene: Scene, point_mm: Vector3,
    title: str,
) -> None:
    """Axial, coronal and sagittal views through ``point_mm`` with a colour bar, in
    ``rect`` (figure fraction: left, bottom, width, height)."""
    left, bottom, width, height = rect
    ijk = slice_indices(scene.grid, point_mm)
    vmax = views_maximum(scene, ijk)
    panel = (width - 0.06) / 3.0
    image = None
    for n, view in enumerate(View):
        ax = fig.add_axes((left + n * panel, bottom, panel * 0.96, height * 0.88))
        image = draw_dose_view(ax, scene, view, ijk, vmax)
    cax = fig.add_axes((left + 3 * panel + 0.01, bottom + 0.1 * height, 0.015, height * 0.7))
    dose_colorbar(fig, cax, image)
    fig.text(left, bottom + height * 0.97, title, fontsize=8, weight="bold", va="top")


def draw_dose_mip(
    ax: Axes, scene: Scene, title: str = "coronal maximum-intensity projection of the dose"
) -> Any:
    """Coronal maximum-intensity projection of the dose over the CT's mean projection."""
    _bare(ax)
    if scene.ct is not None:
        attenuation = coronal_projection(np.clip(scene.ct, -1000.0, 1000.0) + 1000.0, "mean")
        inside = attenuation[attenuation > 0]
        low, high = np.percentile(inside, (5.0, 99.5)) if inside.size else (0.0, 1.0)
        _grey(ax, attenuation, (float(low), max(float(high), float(low) + 1e-6)))
    mip = coronal_projection(scene.dose, "max")
    peak = float(mip.max()) if mip.max() > 0 else 1.0
    wash = _dose_wash(ax, mip, peak)
    _label_edges(ax, View.CORONAL)
    ax.set_title(title, fontsize=7)
    return wash


# -- registration QA -------------------------------------------------------------------
def checkerboard(
    first: npt.NDArray[Any], second: npt.NDArray[Any], square: int
) -> npt.NDArray[Any]:
    """``first`` on the white squares, ``second`` on the black ones (squares of ``square``
    pixels, the top-left square white)."""
    if first.shape != second.shape:
        raise GeometryError(
            f"A checkerboard needs two images of one shape, got {first.shape} and {second.shape}."
        )
    rows, cols = np.indices(first.shape)
    white = ((rows // square) + (cols // square)) % 2 == 0
    return np.where(white, first, second)


@dataclass(frozen=True, eq=False)
class RegistrationScene:
    """The reference CT and one later CT moved onto it, on one display grid."""

    grid: Volume
    reference: npt.NDArray[np.float32]
    moved: npt.NDArray[np.float32]
    elapsed_h: float


def registration_scene(
    reference_ct: Volume,
    registered: RegisteredCt,
    grid: Volume | None = None,
    reference_on_grid: npt.NDArray[np.float32] | None = None,
) -> RegistrationScene:
    """``registered.ct`` moved by its registration onto the reference CT's display grid
    (``reference_on_grid``: the reference CT already on ``grid``, to reuse it)."""
    grid = grid if grid is not None else display_grid(reference_ct)
    reference = (
        reference_on_grid
        if reference_on_grid is not None
        else on_display_grid(reference_ct, grid, default_value=-1000.0)
    )
    moved = on_display_grid(registered.ct, grid, registered.registration, default_value=-1000.0)
    return RegistrationScene(grid, reference, moved, registered.elapsed_h)


def draw_checkerboard(
    ax: Axes, scene: RegistrationScene, view: View, ijk: tuple[int, int, int]
) -> None:
    """Reference and moved CT in alternating squares of :data:`CHECKER_MM`: an edge that
    steps at a square's border shows a misregistration."""
    _bare(ax)
    square = max(1, round(CHECKER_MM / scene.grid.spacing_mm[0]))
    board = checkerboard(
        oriented_slice(scene.reference, view, ijk), oriented_slice(scene.moved, view, ijk),
        square,
    )
    _grey(ax, board, CT_WINDOW_HU)
    _label_edges(ax, view)
    ax.set_title(f"{view.label}: reference | {scene.elapsed_h:g} h moved", fontsize=7)


def registration_point_mm(
    result: CycleResult, scene: Scene | None, registered: Sequence[RegisteredCt]
) -> Vector3 | None:
    """Where the checkerboards cut: the kidneys' centroid, else the registration's centre
    of rotation (the reference body's centre), else ``None`` (the grid's centre)."""
    if scene is not None:
        kidneys = kidneys_point_mm(result, scene)
        if kidneys is not None:
            return kidneys
    for item in registered:
        return item.registration.center_mm
    return None


def grid_centre_mm(grid: Volume) -> Vector3:
    """The patient position of the grid's central voxel."""
    nz, ny, nx = grid.shape
    x, y, z = grid.index_to_patient(np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2]))
    return float(x), float(y), float(z)
