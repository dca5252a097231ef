"""Analytic Lu-177 patient phantom with exact absorbed-dose truth.

The phantom is a set of ellipsoids in a *model* frame (DICOM LPS axes, mm,
origin at the phantom centre): a body, optional lungs, a two-lobed liver, two
kidneys, a spleen, L2–L4 vertebral bodies (cortical shell around a trabecular
interior, the bone-marrow VOI) and spherical lesions. Each structure has one
CT number and mono-exponential kinetics with instantaneous uptake::

    C(t) = C0 · exp(−λ_eff · t)      [MBq/mL],  λ_eff ≥ λ_phys

Structures are painted in order; a structure is fully contained in its
``parent`` (checked) and disjoint from every structure that is neither its
ancestor nor its descendant (checked by sampling), so the region of a
structure is its ellipsoid minus its children's ellipsoids and every volume
is analytic. A VOI is a union of structure regions sharing one CT number and
one kinetics, so its mean absorbed dose under local energy deposition is
exact::

    D = k_LED · C0 / (ρ · λ_eff)      [Gy]

with ``k_LED`` = :attr:`NuclearData.led_gy_per_h_per_mbq_per_ml` and ρ the
density of the VOI's CT number through the calibration curve.

Rendering samples the continuous model on any grid after a rigid transform
(patient repositioning between time points). Voxels crossed by a surface are
supersampled (n×n×n sub-voxels), so partial-volume values are the average of
the model over the voxel.

References
----------
Hebert K, et al. J Nucl Med 2024;65:923-930 (protocol, VOIs, single-time-point
formula). Schneider W, et al. Phys Med Biol 2000;45:459-478 (HU → density).
EANM Dosimetry Committee, Sjögreen Gleisner K, et al. EJNMMI Phys 2022;9:30
(mono-exponential time-integration with instantaneous uptake).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from theranode.dosimetry.density import SCHNEIDER_2000, DensityCalibration
from theranode.dosimetry.errors import DosimetryError, GeometryError
from theranode.dosimetry.radionuclides import Radionuclide, nuclear_data
from theranode.dosimetry.results import Organ, VoiKind
from theranode.dosimetry.volume import IDENTITY, Matrix3, Vector3, Volume

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: CT number outside the body (air).
AIR_HU = -1000.0
#: Points evaluated per block when voxelising (bounds memory to ~100 MB).
_POINTS_PER_BLOCK = 2_000_000


class PhantomError(DosimetryError):
    """The phantom description is geometrically or physically inconsistent."""


def density_of(calibration: DensityCalibration, hu: float) -> float:
    """Mass density (g/mL) of one CT number through ``calibration``."""
    return float(calibration.density(np.array([hu], dtype=np.float64))[0])


# --------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned ellipsoid of the model frame.

    Parameters
    ----------
    center_mm:
        Centre in model coordinates (mm).
    semi_axes_mm:
        Semi-axes along model x, y, z (mm).
    """

    center_mm: Vector3
    semi_axes_mm: Vector3

    def __post_init__(self) -> None:
        if len(self.semi_axes_mm) != 3 or min(self.semi_axes_mm) <= 0:
            raise PhantomError(
                f"An ellipsoid needs three positive semi-axes, got {self.semi_axes_mm}."
            )

    @property
    def volume_ml(self) -> float:
        """Analytic volume 4/3 π a b c, in mL."""
        a, b, c = self.semi_axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0

    def level(self, points_mm: FloatArray) -> FloatArray:
        """Σ((p − c)/a)² of model points ``(..., 3)``; ≤ 1 means inside."""
        scaled = (points_mm - np.asarray(self.center_mm)) / np.asarray(
            self.semi_axes_mm
        )
        return np.asarray(np.einsum("...i,...i->...", scaled, scaled), dtype=np.float64)

    def contains(self, points_mm: FloatArray) -> npt.NDArray[np.bool_]:
        """True for model points inside or on the surface."""
        return self.level(points_mm) <= 1.0

    def scaled(self, factor: float) -> Ellipsoid:
        """The ellipsoid scaled about its centre by ``factor``."""
        return Ellipsoid(
            self.center_mm,
            tuple(a * factor for a in self.semi_axes_mm),  # type: ignore[arg-type]
        )

    def inset(self, margin_mm: float) -> Ellipsoid:
        """An ellipsoid every point of which lies at least ``margin_mm`` inside this one.

        Scaling about the centre by ``s = 1 − m / a_min`` guarantees it: the
        support functions differ by ``(1 − s) h(u) ≥ (1 − s) a_min = m`` in
        every direction ``u``. (Shrinking each semi-axis by ``m`` does not: an
        elongated ellipsoid's surfaces then come closer than ``m`` obliquely.)

        Raises
        ------
        PhantomError
            ``margin_mm`` is not smaller than the smallest semi-axis.
        """
        smallest = min(self.semi_axes_mm)
        if margin_mm >= smallest:
            raise PhantomError(
                f"A margin of {margin_mm:g} mm leaves nothing of an ellipsoid whose smallest "
                f"semi-axis is {smallest:g} mm; enlarge the structure or lower the margin."
            )
        return self.scaled(1.0 - margin_mm / smallest)

    def outset(self, margin_mm: float) -> Ellipsoid:
        """An ellipsoid holding every point within ``margin_mm`` of this one.

        Scaled about the centre by ``1 + m / a_min`` (see :meth:`inset`);
        ``e.outset(m).inset(m) == e`` up to rounding.
        """
        return self.scaled(1.0 + margin_mm / min(self.semi_axes_mm))

    def corners_mm(self) -> FloatArray:
        """The eight corners of the bounding box, ``(8, 3)``."""
        c = np.asarray(self.center_mm)
        a = np.asarray(self.semi_axes_mm)
        signs = np.array(
            [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
        )
        return np.asarray(c + signs * a, dtype=np.float64)

    def sample_points(self, n_per_axis: int = 14) -> FloatArray:
        """Regular interior points plus surface points, for containment checks."""
        t = np.linspace(-1.0, 1.0, n_per_axis)
        cube = np.stack(np.meshgrid(t, t, t, indexing="ij"), axis=-1).reshape(-1, 3)
        interior = cube[np.einsum("ij,ij->i", cube, cube) <= 1.0]
        theta, phi = np.meshgrid(
            np.linspace(0.0, math.pi, 2 * n_per_axis),
            np.linspace(0.0, 2 * math.pi, 4 * n_per_axis),
            indexing="ij",
        )
        sphere = np.stack(
            [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)],
            axis=-1,
        ).reshape(-1, 3)
        unit = np.concatenate([interior, sphere])
        return np.asarray(
            np.asarray(self.center_mm) + unit * np.asarray(self.semi_axes_mm),
            dtype=np.float64,
        )


@dataclass(frozen=True)
class RigidTransform:
    """Rigid map from the model frame to patient coordinates of one scan.

    ``x_patient = R · x_model + t`` with ``R = Rz(γ) · Ry(β) · Rx(α)``
    (rotations about the patient x, y, z axes by ``rotation_deg = (α, β, γ)``,
    x applied first) and ``t = translation_mm``. It models how the patient lay
    on the table at one time point; the inverse maps scanner points back into
    the model.

    To register time point *b* onto reference time point *a*, the true map of
    *a*'s patient points to *b*'s is ``T_b ∘ T_a⁻¹`` (see :meth:`compose`,
    :meth:`inverse`).
    """

    rotation_deg: Vector3 = (0.0, 0.0, 0.0)
    translation_mm: Vector3 = (0.0, 0.0, 0.0)

    @property
    def matrix(self) -> FloatArray:
        """The 3×3 rotation matrix R."""
        ax, ay, az = (math.radians(v) for v in self.rotation_deg)
        rx = np.array(
            [
                [1, 0, 0],
                [0, math.cos(ax), -math.sin(ax)],
                [0, math.sin(ax), math.cos(ax)],
            ]
        )
        ry = np.array(
            [
                [math.cos(ay), 0, math.sin(ay)],
                [0, 1, 0],
                [-math.sin(ay), 0, math.cos(ay)],
            ]
        )
        rz = np.array(
            [
                [math.cos(az), -math.sin(az), 0],
                [math.sin(az), math.cos(az), 0],
                [0, 0, 1],
            ]
        )
        return np.asarray(rz @ ry @ rx, dtype=np.float64)

    @property
    def affine(self) -> FloatArray:
        """4×4 homogeneous matrix of the model → patient map."""
        a = np.eye(4)
        a[:3, :3] = self.matrix
        a[:3, 3] = self.translation_mm
        return a

    def to_patient(self, model_mm: FloatArray) -> FloatArray:
        """Patient coordinates of model points ``(..., 3)``."""
        return np.asarray(model_mm @ self.matrix.T + np.asarray(self.translation_mm))

    def to_model(self, patient_mm: FloatArray) -> FloatArray:
        """Model coordinates of patient points ``(..., 3)``."""
        return np.asarray((patient_mm - np.asarray(self.translation_mm)) @ self.matrix)

    def is_identity(self) -> bool:
        """True when the transform does nothing."""
        return bool(np.allclose(self.affine, np.eye(4)))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description including the 4×4 affine."""
        return {
            "rotation_deg": list(self.rotation_deg),
            "translation_mm": list(self.translation_mm),
            "convention": "x_patient = Rz(g) Ry(b) Rx(a) x_model + t",
            "affine_model_to_patient": self.affine.round(9).tolist(),
        }


def relative_affine(reference: RigidTransform, moving: RigidTransform) -> FloatArray:
    """4×4 map of reference-scan patient points to moving-scan patient points.

    ``T_moving ∘ T_reference⁻¹``: the same anatomical point seen at
    ``x_ref`` in the reference scan lies at ``A @ x_ref`` in the moving one
    (ITK's resampling transform when the reference is the fixed image).
    """
    return np.asarray(moving.affine @ np.linalg.inv(reference.affine), dtype=np.float64)


# --------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Kinetics:
    """Mono-exponential concentration with instantaneous uptake.

    Parameters
    ----------
    c0_mbq_per_ml:
        Concentration extrapolated to the injection time, MBq/mL.
    lambda_eff_per_h:
        Effective elimination rate, 1/h (never below the physical rate).
    """

    c0_mbq_per_ml: float
    lambda_eff_per_h: float

    def concentration_mbq_per_ml(self, elapsed_h: float) -> float:
        """C(t) = C0 e^(−λ_eff t)."""
        return self.c0_mbq_per_ml * math.exp(-self.lambda_eff_per_h * elapsed_h)

    @property
    def time_integrated_mbq_h_per_ml(self) -> float:
        """∫₀^∞ C dt = C0 / λ_eff (EANM 2022, instantaneous uptake)."""
        return self.c0_mbq_per_ml / self.lambda_eff_per_h

    @property
    def effective_half_life_h(self) -> float:
        """ln 2 / λ_eff."""
        return math.log(2.0) / self.lambda_eff_per_h


@dataclass(frozen=True)
class Structure:
    """One uniform compartment of the phantom.

    ``kinetics`` holds for the reference administered activity of the model;
    ``parent`` names the structure that fully contains this one and is
    painted before it.
    """

    name: str
    shape: Ellipsoid
    hu: float
    kinetics: Kinetics
    parent: str | None = None


@dataclass(frozen=True)
class VoiSpec:
    """A volume of interest: the union of some structures' regions.

    ``name`` is the ROI name written into the RT Structure Set.
    """

    name: str
    kind: VoiKind
    structures: tuple[str, ...]
    organ: Organ | None = None
    site: str | None = None


@dataclass(frozen=True)
class PhantomModel:
    """Structures (in paint order), VOIs, density curve and nuclear data.

    ``contour_margin_mm`` > 0 draws every VOI contour that far *inside* the
    uniform region it samples (clean margins): each member structure's
    outline is :meth:`Ellipsoid.inset` and each child's hole
    :meth:`Ellipsoid.outset` by the margin. The activity and CT are
    unchanged; the VOI is a smaller sample of the same uniform region, so
    its analytic mean dose is unchanged too.
    """

    structures: tuple[Structure, ...]
    vois: tuple[VoiSpec, ...]
    density: DensityCalibration = SCHNEIDER_2000
    radionuclide: Radionuclide = Radionuclide.LU177
    reference_activity_mbq: float = 7400.0
    contour_margin_mm: float = 0.0

    def structure(self, name: str) -> Structure:
        """The structure called ``name``."""
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(name)

    def voi(self, name: str) -> VoiSpec:
        """The VOI called ``name``."""
        for v in self.vois:
            if v.name == name:
                return v
        raise KeyError(name)

    def children(self, name: str) -> tuple[Structure, ...]:
        """Structures whose parent is ``name``."""
        return tuple(s for s in self.structures if s.parent == name)

    def structure_region_ml(self, name: str) -> float:
        """Analytic volume of a structure's region (ellipsoid minus children)."""
        own = self.structure(name).shape.volume_ml
        return own - sum(c.shape.volume_ml for c in self.children(name))

    def voi_volume_ml(self, voi: str) -> float:
        """Analytic volume of a VOI, in mL."""
        return sum(self.structure_region_ml(s) for s in self.voi(voi).structures)

    def voi_contour_shapes(
        self, voi: str
    ) -> tuple[tuple[Ellipsoid, tuple[Ellipsoid, ...]], ...]:
        """Per member structure of ``voi``: its contour outline and its holes.

        With ``contour_margin_mm`` 0 these are the structures' own ellipsoids;
        otherwise the outline is inset and each child's hole outset by the
        margin (see the class docstring).
        """
        margin = self.contour_margin_mm
        return tuple(
            (
                self.structure(name).shape.inset(margin),
                tuple(c.shape.outset(margin) for c in self.children(name)),
            )
            for name in self.voi(voi).structures
        )

    def voi_contour_volume_ml(self, voi: str) -> float:
        """Analytic volume inside the VOI's contours, in mL.

        Equal to :meth:`voi_volume_ml` without a contour margin; exact when
        every hole lies inside its outline (:func:`validate_model` checks it).
        """
        return sum(
            outline.volume_ml - sum(h.volume_ml for h in holes)
            for outline, holes in self.voi_contour_shapes(voi)
        )

    def voi_structure(self, voi: str) -> Structure:
        """A representative structure (all of a VOI's share HU and kinetics)."""
        return self.structure(self.voi(voi).structures[0])

    def voi_density_g_per_ml(self, voi: str) -> float:
        """Mass density of a VOI through the model's calibration curve."""
        return density_of(self.density, self.voi_structure(voi).hu)

    def voi_labels(self, voi: str) -> tuple[int, ...]:
        """Voxelisation labels (structure index + 1) making up a VOI."""
        names = [s.name for s in self.structures]
        return tuple(names.index(s) + 1 for s in self.voi(voi).structures)


# --------------------------------------------------------------------------
# Course (cycles and time points)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CycleSpec:
    """One treatment cycle.

    Parameters
    ----------
    number:
        Cycle number (1-based).
    injected_activity_mbq:
        Administered activity; concentrations scale with it.
    injection_datetime:
        Start of the administration (naive local time).
    scan_elapsed_h:
        Acquisition start of each SPECT/CT after injection, hours.
    lesion_uptake_scale, lesion_lambda_scale:
        Multipliers of every lesion's C0 and λ_eff in this cycle (tumour
        response across cycles); λ_eff is floored at λ_phys.
    """

    number: int
    injected_activity_mbq: float
    injection_datetime: datetime
    scan_elapsed_h: tuple[float, ...]
    lesion_uptake_scale: float = 1.0
    lesion_lambda_scale: float = 1.0

    @property
    def is_multi_time_point(self) -> bool:
        """True when the cycle has more than one scan."""
        return len(self.scan_elapsed_h) > 1


@dataclass(frozen=True)
class TimePoint:
    """One SPECT/CT acquisition of the course."""

    cycle_number: int
    index: int
    elapsed_h: float
    injection_datetime: datetime
    acquisition_datetime: datetime
    transform: RigidTransform

    @property
    def label(self) -> str:
        """Short name such as ``c1_t24h``."""
        return f"c{self.cycle_number}_t{self.elapsed_h:g}h"


@dataclass(frozen=True)
class CourseSpec:
    """A whole treatment course of the phantom patient."""

    model: PhantomModel
    cycles: tuple[CycleSpec, ...]
    stp_reference_cycle: int = 2
    max_shift_mm: float = 6.0
    max_rotation_deg: float = 2.0

    def cycle(self, number: int) -> CycleSpec:
        """The cycle numbered ``number``."""
        for c in self.cycles:
            if c.number == number:
                return c
        raise KeyError(number)


def cycle_kinetics(model: PhantomModel, cycle: CycleSpec) -> dict[str, Kinetics]:
    """Per-structure kinetics of ``cycle``.

    C0 scales with injected activity / reference activity; lesions also by
    the cycle's uptake scale. λ_eff of lesions is scaled and floored at λ_phys.
    """
    lam_phys = nuclear_data(model.radionuclide).decay_constant_per_h
    lesion_structures = {
        s for v in model.vois if v.kind is VoiKind.LESION for s in v.structures
    }
    activity_scale = cycle.injected_activity_mbq / model.reference_activity_mbq
    out: dict[str, Kinetics] = {}
    for s in model.structures:
        c0 = s.kinetics.c0_mbq_per_ml * activity_scale
        lam = s.kinetics.lambda_eff_per_h
        if s.name in lesion_structures:
            c0 *= cycle.lesion_uptake_scale
            lam = max(lam_phys, lam * cycle.lesion_lambda_scale)
        out[s.name] = Kinetics(c0, lam)
    return out


def mean_dose_gy(model: PhantomModel, voi: str, cycle: CycleSpec) -> float:
    """Exact mean LED absorbed dose of ``voi`` in ``cycle``.

    D = k_LED · C0 / (ρ · λ_eff), k_LED from ICRP-107 electron energy.

    References
    ----------
    Hebert et al. 2024 (LED); EANM 2022 (mono-exponential integral C0/λ).
    """
    k = cycle_kinetics(model, cycle)[model.voi(voi).structures[0]]
    factor = nuclear_data(model.radionuclide).led_gy_per_h_per_mbq_per_ml
    return factor * k.time_integrated_mbq_h_per_ml / model.voi_density_g_per_ml(voi)


def stp_formula_dose_gy(
    model: PhantomModel,
    voi: str,
    cycle: CycleSpec,
    reference: CycleSpec,
    elapsed_h: float,
    reference_elapsed_h: float,
) -> float:
    """What the paper's single-time-point formula yields for ``cycle``.

    AD_c = AD_ref · (C_c(t_c) / C_ref(t_ref)) · e^(λ_eff,ref · (t_c − t_ref)),
    with the concentration ratio standing for counts/volume ratios. Equal to
    :func:`mean_dose_gy` whenever λ_eff of the cycle equals the reference's.

    References
    ----------
    Hebert et al. 2024, Methods (cycles 3–4).
    """
    name = model.voi(voi).structures[0]
    k_c = cycle_kinetics(model, cycle)[name]
    k_r = cycle_kinetics(model, reference)[name]
    ratio = k_c.concentration_mbq_per_ml(elapsed_h) / k_r.concentration_mbq_per_ml(
        reference_elapsed_h
    )
    delta_h = elapsed_h - reference_elapsed_h
    return (
        mean_dose_gy(model, voi, reference)
        * ratio
        * math.exp(k_r.lambda_eff_per_h * delta_h)
    )


def course_time_points(course: CourseSpec, seed: int) -> tuple[TimePoint, ...]:
    """All acquisitions of the course with seeded repositioning transforms.

    The first scan of the course is in the model frame (identity); every
    other scan gets a uniform random shift within ±``max_shift_mm`` and
    rotation within ±``max_rotation_deg`` per axis.
    """
    rng = np.random.default_rng(seed)
    points: list[TimePoint] = []
    for cycle in course.cycles:
        for index, elapsed_h in enumerate(cycle.scan_elapsed_h):
            if not points:
                transform = RigidTransform()
            else:
                rot = rng.uniform(-course.max_rotation_deg, course.max_rotation_deg, 3)
                shift = rng.uniform(-course.max_shift_mm, course.max_shift_mm, 3)
                transform = RigidTransform(
                    tuple(round(float(v), 3) for v in rot),  # type: ignore[arg-type]
                    tuple(round(float(v), 2) for v in shift),  # type: ignore[arg-type]
                )
            points.append(
                TimePoint(
                    cycle_number=cycle.number,
                    index=index,
                    elapsed_h=elapsed_h,
                    injection_datetime=cycle.injection_datetime,
                    acquisition_datetime=cycle.injection_datetime
                    + timedelta(hours=elapsed_h),
                    transform=transform,
                )
            )
    return tuple(points)


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------
def validate_model(model: PhantomModel) -> None:
    """Check paint order, containment, disjointness and VOI uniformity.

    Raises
    ------
    PhantomError
        With the offending structures named.
    """
    lam_phys = nuclear_data(model.radionuclide).decay_constant_per_h
    names = [s.name for s in model.structures]
    if len(set(names)) != len(names):
        raise PhantomError(f"Structure names must be unique, got {names}.")
    for i, s in enumerate(model.structures):
        if s.kinetics.lambda_eff_per_h < lam_phys * (1 - 1e-12):
            raise PhantomError(
                f"{s.name}: λ_eff {s.kinetics.lambda_eff_per_h} /h is below the physical "
                f"decay constant {lam_phys:.6f} /h; raise it."
            )
        if s.parent is not None:
            _check_contained(model, s, names[:i])
    _check_disjoint(model)
    _check_vois(model)
    _check_contour_margins(model)


def _check_contained(model: PhantomModel, s: Structure, earlier: list[str]) -> None:
    if s.parent not in earlier:
        raise PhantomError(
            f"{s.name}: parent {s.parent!r} must be a structure listed before it."
        )
    parent = model.structure(s.parent)
    if not bool(np.all(parent.shape.level(s.shape.sample_points()) <= 1.0)):
        raise PhantomError(f"{s.name} is not fully inside its parent {parent.name}.")


def _ancestors(model: PhantomModel, name: str) -> set[str]:
    out: set[str] = set()
    parent = model.structure(name).parent
    while parent is not None:
        out.add(parent)
        parent = model.structure(parent).parent
    return out


def _check_disjoint(model: PhantomModel) -> None:
    for i, a in enumerate(model.structures):
        for b in model.structures[i + 1 :]:
            if a.name in _ancestors(model, b.name) or b.name in _ancestors(
                model, a.name
            ):
                continue
            small, big = sorted((a, b), key=lambda s: s.shape.volume_ml)
            if bool(np.any(big.shape.contains(small.shape.sample_points()))):
                raise PhantomError(
                    f"Structures {a.name} and {b.name} overlap; move or shrink one."
                )


def _check_vois(model: PhantomModel) -> None:
    for voi in model.vois:
        members = [model.structure(n) for n in voi.structures]
        if any(
            m.hu != members[0].hu or m.kinetics != members[0].kinetics for m in members
        ):
            raise PhantomError(
                f"VOI {voi.name}: its structures must share HU and kinetics so that the "
                "VOI is uniform."
            )


def _check_contour_margins(model: PhantomModel) -> None:
    """Contour outlines exist and hold their holes (analytic contour volumes)."""
    if model.contour_margin_mm < 0:
        raise PhantomError(
            f"The contour margin must be ≥ 0 mm, got {model.contour_margin_mm:g} mm."
        )
    if model.contour_margin_mm == 0:
        return
    for voi in model.vois:
        try:
            shapes = model.voi_contour_shapes(voi.name)
        except PhantomError as error:
            raise PhantomError(f"VOI {voi.name}: {error}") from None
        for outline, holes in shapes:
            for hole in holes:
                if not bool(np.all(outline.contains(hole.sample_points()))):
                    raise PhantomError(
                        f"VOI {voi.name}: a hole grown by the {model.contour_margin_mm:g} mm "
                        "contour margin reaches outside the inset outline; move the child "
                        "structure inwards or lower the margin."
                    )


# --------------------------------------------------------------------------
# Default patient
# --------------------------------------------------------------------------
#: Per-VOI design of the default patient: (HU, target dose per reference
#: cycle in Gy, effective half-life in h). Doses follow Hebert 2024 Table 5.
DEFAULT_DESIGN: Mapping[str, tuple[float, float, float]] = {
    "Liver": (55.0, 1.1, 80.0),
    "Kidney_L": (30.0, 2.7, 50.0),
    "Kidney_R": (30.0, 2.7, 50.0),
    "Spleen": (45.0, 3.5, 70.0),
    "BoneMarrow_L2-L4": (200.0, 0.3, 40.0),
    "Lesion_01": (40.0, 60.0, 110.0),
    "Lesion_02": (40.0, 30.0, 100.0),
    "Lesion_03": (40.0, 20.0, 90.0),
    "Lesion_04": (40.0, 90.0, 120.0),
    "Lesion_05": (40.0, 15.0, 90.0),
}

#: Background compartments: (HU, C0 MBq/mL at 7.4 GBq, effective half-life h).
BACKGROUND_DESIGN: Mapping[str, tuple[float, float, float]] = {
    "Body": (40.0, 0.008, 30.0),
    "Lung": (-800.0, 0.002, 30.0),
    "CorticalBone": (700.0, 0.004, 40.0),
}


def _kinetics_for_dose(
    dose_gy: float, hu: float, half_life_h: float, density: DensityCalibration
) -> Kinetics:
    lam = math.log(2.0) / half_life_h
    rho = density_of(density, hu)
    factor = nuclear_data(Radionuclide.LU177).led_gy_per_h_per_mbq_per_ml
    return Kinetics(c0_mbq_per_ml=dose_gy * rho * lam / factor, lambda_eff_per_h=lam)


def _body() -> Structure:
    """The patient's outline: soft tissue with the background kinetics."""
    return Structure(
        "Body",
        Ellipsoid((0.0, 0.0, 0.0), (165.0, 115.0, 600.0)),
        BACKGROUND_DESIGN["Body"][0],
        _background_kinetics("Body"),
    )


def _background_kinetics(name: str) -> Kinetics:
    _, c0, half_life_h = BACKGROUND_DESIGN[name]
    return Kinetics(c0, math.log(2.0) / half_life_h)


def default_model(
    density: DensityCalibration = SCHNEIDER_2000, lungs: bool = True
) -> PhantomModel:
    """The default abdominal patient (see :data:`DEFAULT_DESIGN`).

    Lesions: Lesion_01 liver 7.2 mL, Lesion_02 liver 3.1 mL, Lesion_03 lymph
    node 2.6 mL, Lesion_04 pancreas 5.6 mL, Lesion_05 mesentery 1.2 mL (below
    the 2 cm³ threshold of Hebert 2024, to test exclusion). The liver lesions
    make holes in the Liver VOI (healthy liver); the liver has two disjoint
    lobes, so some slices carry two liver contours.
    """

    def organ(
        name: str, structure: str, center: Vector3, axes: Vector3, parent: str
    ) -> Structure:
        hu, dose, t_half = DEFAULT_DESIGN[name]
        return Structure(
            structure,
            Ellipsoid(center, axes),
            hu,
            _kinetics_for_dose(dose, hu, t_half, density),
            parent,
        )

    structures: list[Structure] = [_body()]
    if lungs:
        for side, x in (("R", -85.0), ("L", 85.0)):
            structures.append(
                Structure(
                    f"Lung_{side}",
                    Ellipsoid((x, 10.0, 150.0), (55.0, 70.0, 80.0)),
                    BACKGROUND_DESIGN["Lung"][0],
                    _background_kinetics("Lung"),
                    "Body",
                )
            )
    structures += [
        organ(
            "Liver",
            "Liver_right_lobe",
            (-65.0, -20.0, 15.0),
            (75.0, 60.0, 50.0),
            "Body",
        ),
        organ(
            "Liver", "Liver_left_lobe", (42.0, -55.0, 35.0), (30.0, 25.0, 22.0), "Body"
        ),
        organ("Kidney_L", "Kidney_L", (75.0, 62.0, -22.0), (28.0, 22.0, 38.0), "Body"),
        organ("Kidney_R", "Kidney_R", (-75.0, 65.0, -30.0), (28.0, 22.0, 38.0), "Body"),
        organ("Spleen", "Spleen", (108.0, 25.0, 22.0), (32.0, 26.0, 42.0), "Body"),
    ]
    cortical_hu = BACKGROUND_DESIGN["CorticalBone"][0]
    for level, z in (("L2", 24.0), ("L3", -8.0), ("L4", -40.0)):
        structures.append(
            Structure(
                f"Vertebra_{level}",
                Ellipsoid((0.0, 70.0, z), (24.0, 18.0, 13.0)),
                cortical_hu,
                _background_kinetics("CorticalBone"),
                "Body",
            )
        )
        structures.append(
            organ(
                "BoneMarrow_L2-L4",
                f"Marrow_{level}",
                (0.0, 70.0, z),
                (19.0, 13.5, 9.0),
                f"Vertebra_{level}",
            )
        )
    lesions = (
        ("Lesion_01", (-85.0, -30.0, 25.0), 12.0, "Liver_right_lobe", "liver"),
        ("Lesion_02", (-40.0, 0.0, -5.0), 9.0, "Liver_right_lobe", "liver"),
        ("Lesion_03", (-32.0, 45.0, -20.0), 8.5, "Body", "lymph node"),
        ("Lesion_04", (20.0, 10.0, 0.0), 11.0, "Body", "pancreas"),
        ("Lesion_05", (40.0, -40.0, -45.0), 6.5, "Body", "mesentery"),
    )
    for name, centre, radius, parent, _ in lesions:
        structures.append(organ(name, name, centre, (radius, radius, radius), parent))
    vois = [
        VoiSpec(
            "Liver", VoiKind.ORGAN, ("Liver_right_lobe", "Liver_left_lobe"), Organ.LIVER
        ),
        VoiSpec("Kidney_L", VoiKind.ORGAN, ("Kidney_L",), Organ.KIDNEY_LEFT),
        VoiSpec("Kidney_R", VoiKind.ORGAN, ("Kidney_R",), Organ.KIDNEY_RIGHT),
        VoiSpec("Spleen", VoiKind.ORGAN, ("Spleen",), Organ.SPLEEN),
        VoiSpec(
            "BoneMarrow_L2-L4",
            VoiKind.MARROW,
            ("Marrow_L2", "Marrow_L3", "Marrow_L4"),
            Organ.BONE_MARROW,
        ),
    ] + [
        VoiSpec(name, VoiKind.LESION, (name,), site=site)
        for name, _, _, _, site in lesions
    ]
    model = PhantomModel(tuple(structures), tuple(vois), density=density)
    validate_model(model)
    return model


def default_course(
    model: PhantomModel | None = None,
    first_injection: datetime = datetime(2024, 1, 8, 9, 30),
    activity_mbq: float = 7400.0,
    third_cycle_scan_h: float = 26.0,
) -> CourseSpec:
    """Four cycles 8 weeks apart, as in Hebert 2024.

    Cycles 1–2 scanned at 4, 24, 72 and 192 h; cycles 3–4 once at 24 h,
    except cycle 3 at ``third_cycle_scan_h`` (26 h) to exercise the Δt
    correction. Lesion uptake falls 1.0, 0.85, 0.75, 0.65 across cycles.
    """
    model = model if model is not None else default_model()
    scales = (1.0, 0.85, 0.75, 0.65)
    scans: tuple[tuple[float, ...], ...] = (
        (4.0, 24.0, 72.0, 192.0),
        (4.0, 24.0, 72.0, 192.0),
        (third_cycle_scan_h,),
        (24.0,),
    )
    cycles = tuple(
        CycleSpec(
            number=i + 1,
            injected_activity_mbq=activity_mbq,
            injection_datetime=first_injection + timedelta(weeks=8 * i),
            scan_elapsed_h=scans[i],
            lesion_uptake_scale=scales[i],
        )
        for i in range(4)
    )
    return CourseSpec(model=model, cycles=cycles)


# --------------------------------------------------------------------------
# Clean-margin patient (accuracy of the pipeline without VOI sampling error)
# --------------------------------------------------------------------------
#: VOI contours of the clean-margin patient: name → (structure name, centre,
#: semi-axes of the *contour*, parent, lesion site). Each structure is the
#: contour grown by the margin (:meth:`Ellipsoid.outset`), so its uniform
#: activity extends at least the margin beyond the contour everywhere.
CLEAN_MARGIN_LAYOUT: Mapping[str, tuple[str, Vector3, Vector3, str, str | None]] = {
    "Liver": ("Liver", (-55.0, -25.0, 5.0), (64.0, 52.0, 46.0), "Body", None),
    "Kidney_L": ("Kidney_L", (75.0, 68.0, -10.0), (16.0, 13.0, 28.0), "Body", None),
    "Kidney_R": ("Kidney_R", (-75.0, 68.0, -10.0), (16.0, 13.0, 28.0), "Body", None),
    "Spleen": ("Spleen", (110.0, 0.0, 15.0), (22.0, 18.0, 30.0), "Body", None),
    "BoneMarrow_L2-L4": (
        "Marrow_L2-L4",
        (0.0, 65.0, 0.0),
        (10.0, 9.0, 22.0),
        "Spine_L2-L4",
        None,
    ),
    "Lesion_01": ("Lesion_01", (-70.0, -35.0, 5.0), (11.0, 11.0, 11.0), "Liver", "liver"),
    "Lesion_02": ("Lesion_02", (25.0, 15.0, -40.0), (10.5, 10.5, 10.5), "Body", "pancreas"),
    "Lesion_03": ("Lesion_03", (50.0, -55.0, -25.0), (12.0, 12.0, 12.0), "Body", "mesentery"),
}
#: Cortical shell of the L2–L4 column around its trabecular (marrow) region, mm.
CLEAN_MARGIN_CORTEX_MM = 5.0
#: Organ of each organ or marrow VOI of the clean-margin patient.
_CLEAN_MARGIN_ORGANS: Mapping[str, Organ] = {
    "Liver": Organ.LIVER,
    "Kidney_L": Organ.KIDNEY_LEFT,
    "Kidney_R": Organ.KIDNEY_RIGHT,
    "Spleen": Organ.SPLEEN,
    "BoneMarrow_L2-L4": Organ.BONE_MARROW,
}


def clean_margin_mm(
    ct_spacing_mm: Sequence[float],
    spect_spacing_mm: Sequence[float],
    slack_mm: float = 1.0,
) -> float:
    """Contour margin that keeps every SPECT voxel of a VOI inside uniform activity.

    ``m = √3/2 · (s_SPECT + s_CT) + slack``, with ``s`` the largest spacing of
    each grid. A SPECT voxel lies wholly inside a region when its centre is
    at least its half-diagonal (√3/2 · s_SPECT) inside. The VOI mask reaches
    the SPECT grid from a CT-grid rasterisation of the contours (voxel
    centres inside the polygon), carried through the registration and
    thresholded at half occupancy, so a SPECT voxel centre in the mask may
    lie up to about a CT half-diagonal outside the contour. ``slack_mm``
    covers registration error (sub-millimetre on the phantom) and the
    polygon approximation of the contours. The result is never below one
    SPECT voxel.
    """
    spect, ct = max(spect_spacing_mm), max(ct_spacing_mm)
    return max(spect, math.sqrt(3.0) / 2.0 * (spect + ct) + slack_mm)


def clean_margin_model(
    margin_mm: float, density: DensityCalibration = SCHNEIDER_2000
) -> PhantomModel:
    """A patient whose VOI contours lie ``margin_mm`` inside uniform activity.

    The VOIs of :func:`default_model` (same names, CT numbers, doses and
    half-lives from :data:`DEFAULT_DESIGN`), laid out compactly
    (:data:`CLEAN_MARGIN_LAYOUT`) so that every contour can be inset:
    liver (one lobe, with a liver lesion as a hole), kidneys, spleen, an
    L2–L4 trabecular column inside a cortical shell (the marrow VOI), and
    three lesions of 4.8–7.2 mL (contour volumes). Each structure is its
    contour grown by ``margin_mm``; the model's ``contour_margin_mm`` draws the
    contours back on the grown structures, and a liver lesion's hole in the
    liver contour is grown by the margin too. Use :func:`clean_margin_mm` for
    the margin of a pair of grids.

    Raises
    ------
    PhantomError
        When the grown structures no longer fit (overlap, leave the body).
    """
    structures: list[Structure] = [_body()]
    for voi, (name, centre, axes, parent, _) in CLEAN_MARGIN_LAYOUT.items():
        hu, dose, t_half = DEFAULT_DESIGN[voi]
        shape = Ellipsoid(centre, axes).outset(margin_mm)
        if voi == "BoneMarrow_L2-L4":
            structures.append(
                Structure(
                    parent,
                    shape.outset(CLEAN_MARGIN_CORTEX_MM),
                    BACKGROUND_DESIGN["CorticalBone"][0],
                    _background_kinetics("CorticalBone"),
                    "Body",
                )
            )
        kinetics = _kinetics_for_dose(dose, hu, t_half, density)
        structures.append(Structure(name, shape, hu, kinetics, parent))
    vois = tuple(
        VoiSpec(
            voi,
            VoiKind.LESION if site else (
                VoiKind.MARROW if voi.startswith("BoneMarrow") else VoiKind.ORGAN
            ),
            (name,),
            _CLEAN_MARGIN_ORGANS.get(voi),
            site,
        )
        for voi, (name, _, _, _, site) in CLEAN_MARGIN_LAYOUT.items()
    )
    model = PhantomModel(
        tuple(structures), vois, density=density, contour_margin_mm=margin_mm
    )
    validate_model(model)
    return model


def with_subvoxel_motion(course: CourseSpec, voxel_mm: float) -> CourseSpec:
    """``course`` with patient repositioning below one voxel of ``voxel_mm``.

    Each scan's pose moves every VOI point by less than half a voxel from
    the model, so any two scans differ by less than one voxel: shifts within
    ±0.15 voxel per axis (≤ 0.26 voxel in length) and rotations within ±θ
    per axis with ``3θ·R`` = 0.2 voxel, ``R`` the farthest point of any VOI
    structure from the model origin (three composed axis rotations move a
    point by at most the sum of the angles times its radius).
    """
    vois = {s for v in course.model.vois for s in v.structures}
    radius = max(
        float(np.linalg.norm(course.model.structure(s).shape.corners_mm(), axis=1).max())
        for s in vois
    )
    theta_deg = math.degrees(0.2 * voxel_mm / (3.0 * radius))
    return replace(course, max_shift_mm=0.15 * voxel_mm, max_rotation_deg=theta_deg)


# --------------------------------------------------------------------------
# Grids and voxelisation
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageGrid:
    """Geometry of an image without its voxels (same conventions as Volume)."""

    shape_zyx: tuple[int, int, int]
    spacing_mm: Vector3
    origin_mm: Vector3
    direction: Matrix3 = IDENTITY

    @classmethod
    def centred(
        cls,
        shape_xyz: tuple[int, int, int],
        spacing_mm: Vector3,
        centre_mm: Vector3 = (0.0, 0.0, 0.0),
    ) -> ImageGrid:
        """An axial grid whose centre is at ``centre_mm``."""
        nx, ny, nz = shape_xyz
        origin = tuple(
            c - (n - 1) * s / 2.0
            for c, n, s in zip(centre_mm, (nx, ny, nz), spacing_mm)
        )
        return cls((nz, ny, nx), spacing_mm, origin)  # type: ignore[arg-type]

    @classmethod
    def of(cls, volume: Volume) -> ImageGrid:
        """The grid of an existing volume."""
        return cls(volume.shape, volume.spacing_mm, volume.origin_mm, volume.direction)

    def volume(self, array: npt.NDArray[Any], unit: str) -> Volume:
        """A :class:`Volume` with this geometry."""
        return Volume(array, self.spacing_mm, self.origin_mm, self.direction, unit)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel, mL."""
        return float(np.prod(self.spacing_mm)) / 1000.0

    @property
    def _index_matrix(self) -> FloatArray:
        matrix = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return np.asarray(matrix * np.asarray(self.spacing_mm), dtype=np.float64)

    def index_to_patient(self, ijk: FloatArray) -> FloatArray:
        """Patient coordinates of continuous indices ``(..., 3)`` (i, j, k)."""
        return np.asarray(ijk @ self._index_matrix.T + np.asarray(self.origin_mm))

    def patient_to_index(self, xyz: FloatArray) -> FloatArray:
        """Continuous (i, j, k) indices of patient points ``(..., 3)``."""
        return np.asarray(
            (xyz - np.asarray(self.origin_mm)) @ np.linalg.inv(self._index_matrix).T
        )


@dataclass(frozen=True, eq=False)
class Voxelisation:
    """Which structure fills each voxel (and each sub-voxel at surfaces).

    Label 0 is outside the body (air); label *i* + 1 is ``structures[i]``.
    Voxels away from every surface are labelled once at their centre; voxels
    crossed by a surface carry ``n³`` sub-voxel labels.
    """

    grid: ImageGrid
    centre_labels: npt.NDArray[np.uint8]
    edge_index: npt.NDArray[np.int64]
    edge_labels: npt.NDArray[np.uint8]

    def render(self, values_per_label: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Voxel averages of a per-label property (partial volume exact to n³)."""
        table = np.asarray(values_per_label, dtype=np.float64)
        out = table[self.centre_labels]
        out.reshape(-1)[self.edge_index] = table[self.edge_labels].mean(axis=1)
        return out.astype(np.float32)

    def fraction(self, labels: Sequence[int]) -> npt.NDArray[np.float32]:
        """Fraction of each voxel occupied by the given labels."""
        table = np.zeros(
            int(max(self.centre_labels.max(), self.edge_labels.max(initial=0))) + 2
        )
        table[list(labels)] = 1.0
        return self.render(table)

    def centre_mask(self, labels: Sequence[int]) -> npt.NDArray[np.bool_]:
        """Voxels whose centre lies in the given labels."""
        return np.isin(self.centre_labels, list(labels))


def _paint(model: PhantomModel, model_points: FloatArray) -> npt.NDArray[np.uint8]:
    labels = np.zeros(model_points.shape[:-1], dtype=np.uint8)
    for index, s in enumerate(model.structures):
        labels[s.shape.contains(model_points)] = index + 1
    return labels


def _index_box(
    grid: ImageGrid, shape: Ellipsoid, transform: RigidTransform
) -> tuple[slice, slice, slice] | None:
    corners = grid.patient_to_index(transform.to_patient(shape.corners_mm()))
    lo = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    nz, ny, nx = grid.shape_zyx
    hi = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, (nx, ny, nz))
    if np.any(hi <= lo):
        return None
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _box_blocks(
    box: tuple[slice, slice, slice],
) -> Iterator[tuple[slice, slice, slice]]:
    zs, ys, xs = box
    per_slice = (ys.stop - ys.start) * (xs.stop - xs.start)
    step = max(1, _POINTS_PER_BLOCK // max(per_slice, 1))
    for z0 in range(zs.start, zs.stop, step):
        yield slice(z0, min(z0 + step, zs.stop)), ys, xs


def _block_points(grid: ImageGrid, block: tuple[slice, slice, slice]) -> FloatArray:
    zs, ys, xs = block
    k, j, i = np.meshgrid(
        np.arange(zs.start, zs.stop),
        np.arange(ys.start, ys.stop),
        np.arange(xs.start, xs.stop),
        indexing="ij",
    )
    ijk = np.stack([i, j, k], axis=-1).astype(np.float64)
    return grid.index_to_patient(ijk)


def voxelise(
    model: PhantomModel,
    grid: ImageGrid,
    transform: RigidTransform,
    supersampling: int = 3,
) -> Voxelisation:
    """Label every voxel of ``grid`` with the phantom seen through ``transform``.

    A voxel is a surface voxel of an ellipsoid E when its centre x satisfies
    ``|sqrt(level(x)) − 1| ≤ r / a_min`` (r the half-diagonal of the voxel,
    a_min the smallest semi-axis): outside that band the ball of radius r
    around x, and so the voxel, is wholly inside or wholly outside E (E is
    convex: ``sE ⊕ (1−s)E = E``). Surface voxels are supersampled.
    """
    if supersampling < 1:
        raise PhantomError(f"Supersampling must be ≥ 1, got {supersampling}.")
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
    edge = np.zeros(grid.shape_zyx, dtype=bool)
    half_diagonal = 0.5 * float(np.linalg.norm(grid.spacing_mm))
    for index, s in enumerate(model.structures):
        box = _index_box(grid, s.shape, transform)
        if box is None:
            continue
        band = half_diagonal / min(s.shape.semi_axes_mm)
        for block in _box_blocks(box):
            radius = np.sqrt(
                s.shape.level(transform.to_model(_block_points(grid, block)))
            )
            labels[block][radius <= 1.0] = index + 1
            edge[block] |= np.abs(radius - 1.0) <= band
    edge_index = np.flatnonzero(edge).astype(np.int64)
    edge_labels = _edge_labels(model, grid, transform, edge_index, supersampling)
    logger.debug(
        "Voxelised %d structures: %d surface voxels of %d",
        len(model.structures),
        edge_index.size,
        labels.size,
    )
    return Voxelisation(grid, labels, edge_index, edge_labels)


def _edge_labels(
    model: PhantomModel,
    grid: ImageGrid,
    transform: RigidTransform,
    edge_index: npt.NDArray[np.int64],
    n: int,
) -> npt.NDArray[np.uint8]:
    offsets_1d = (np.arange(n) + 0.5) / n - 0.5
    offsets = np.stack(
        np.meshgrid(offsets_1d, offsets_1d, offsets_1d, indexing="ij"), -1
    ).reshape(-1, 3)
    k, j, i = np.unravel_index(edge_index, grid.shape_zyx)
    centres = np.stack([i, j, k], axis=-1).astype(np.float64)
    out = np.zeros((edge_index.size, offsets.shape[0]), dtype=np.uint8)
    batch = max(1, _POINTS_PER_BLOCK // offsets.shape[0])
    for start in range(0, edge_index.size, batch):
        ijk = centres[start : start + batch, None, :] + offsets[None, :, :]
        out[start : start + batch] = _paint(
            model, transform.to_model(grid.index_to_patient(ijk))
        )
    return out


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------
def hu_table(model: PhantomModel) -> FloatArray:
    """CT number per voxelisation label (label 0 is air)."""
    return np.array([AIR_HU] + [s.hu for s in model.structures], dtype=np.float64)


def concentration_table_bq_per_ml(
    model: PhantomModel, cycle: CycleSpec, elapsed_h: float
) -> FloatArray:
    """Activity concentration (Bq/mL) per voxelisation label at ``elapsed_h``."""
    kinetics = cycle_kinetics(model, cycle)
    values = [
        kinetics[s.name].concentration_mbq_per_ml(elapsed_h) * 1e6
        for s in model.structures
    ]
    return np.array([0.0] + values, dtype=np.float64)


def render_ct(
    model: PhantomModel,
    grid: ImageGrid,
    transform: RigidTransform = RigidTransform(),
    *,
    supersampling: int = 3,
    voxelisation: Voxelisation | None = None,
) -> Volume:
    """CT image (HU, float32) of the phantom on ``grid``."""
    vox = (
        voxelisation
        if voxelisation is not None
        else voxelise(model, grid, transform, supersampling)
    )
    return grid.volume(vox.render(hu_table(model)), "HU")


def render_activity(
    model: PhantomModel,
    grid: ImageGrid,
    elapsed_h: float,
    transform: RigidTransform = RigidTransform(),
    *,
    cycle: CycleSpec | None = None,
    supersampling: int = 3,
    voxelisation: Voxelisation | None = None,
) -> Volume:
    """Activity concentration (Bq/mL, float32) at ``elapsed_h`` after injection.

    ``cycle`` defaults to one reference-activity cycle without lesion change.
    """
    if cycle is None:
        cycle = CycleSpec(
            1, model.reference_activity_mbq, datetime(2000, 1, 1), (elapsed_h,)
        )
    vox = (
        voxelisation
        if voxelisation is not None
        else voxelise(model, grid, transform, supersampling)
    )
    return grid.volume(
        vox.render(concentration_table_bq_per_ml(model, cycle, elapsed_h)), "Bq/mL"
    )


@dataclass(frozen=True)
class CountingStatistics:
    """Camera model for Poisson noise.

    Expected counts of a voxel = C[Bq/mL] · V[mL] · 1e-6 · ``cps_per_mbq`` ·
    ``duration_s`` · (1 − e^(−λT))/(λT), the last factor being the decay of
    the activity during the acquisition (λ physical).
    """

    cps_per_mbq: float
    duration_s: float

    def expected_counts_per_bq_per_ml(
        self, voxel_ml: float, decay_per_h: float
    ) -> float:
        """Counts per unit concentration (Bq/mL) in one voxel."""
        lam_t = decay_per_h * self.duration_s / 3600.0
        decay = (1.0 - math.exp(-lam_t)) / lam_t if lam_t > 0 else 1.0
        return voxel_ml * 1e-6 * self.cps_per_mbq * self.duration_s * decay


def spect_blur(volume: Volume, fwhm_mm: float) -> Volume:
    """Isotropic Gaussian blur of FWHM ``fwhm_mm`` (σ = FWHM / 2√(2 ln 2))."""
    if fwhm_mm <= 0:
        return volume
    sigma_mm = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    sigma_vox = [sigma_mm / s for s in reversed(volume.spacing_mm)]
    blurred = ndimage.gaussian_filter(
        volume.array.astype(np.float64), sigma_vox, mode="constant"
    )
    return volume.with_array(blurred.astype(np.float32))


def expected_counts(
    activity: Volume,
    statistics: CountingStatistics,
    radionuclide: Radionuclide = Radionuclide.LU177,
) -> Volume:
    """Noise-free counts of an activity image (Bq/mL), per :class:`CountingStatistics`."""
    if activity.unit != "Bq/mL":
        raise GeometryError(
            f"Expected an activity image in Bq/mL, got unit {activity.unit!r}."
        )
    per = statistics.expected_counts_per_bq_per_ml(
        activity.voxel_volume_ml, nuclear_data(radionuclide).decay_constant_per_h
    )
    return activity.with_array(
        (activity.array.astype(np.float64) * per).astype(np.float32), "counts"
    )


def poisson_counts(expected: Volume, rng: np.random.Generator) -> Volume:
    """Poisson realisation of an expected-counts image (seeded by ``rng``)."""
    return expected.with_array(
        rng.poisson(np.clip(expected.array, 0, None)).astype(np.float32)
    )


# --------------------------------------------------------------------------
# Contours (for the RT Structure Set of a scan)
# --------------------------------------------------------------------------
def ellipsoid_section(
    shape: Ellipsoid, transform: RigidTransform, z_mm: float, max_edge_mm: float = 1.5
) -> FloatArray | None:
    """Polygon (N, 3) where the transformed ellipsoid meets the plane z = ``z_mm``.

    In patient coordinates the ellipsoid is ``(x − x_c)ᵀ Q (x − x_c) ≤ 1``
    with ``Q = R diag(a⁻²) Rᵀ``. Fixing z leaves a 2-D ellipse with centre
    ``w₀ = −Δz Q₂⁻¹ q`` and matrix ``Q₂ / (1 − Δz² (Q₂₂ − qᵀ Q₂⁻¹ q))``.
    The polygon is counter-clockwise and radially scaled so that its area
    equals the ellipse's (factor √(θ / sin θ), θ = 2π/N). ``None`` when the
    plane misses the ellipsoid.
    """
    rot = transform.matrix
    q_full = rot @ np.diag(1.0 / np.asarray(shape.semi_axes_mm) ** 2) @ rot.T
    centre = transform.to_patient(np.asarray(shape.center_mm, dtype=np.float64))
    dz = z_mm - centre[2]
    q2 = q_full[:2, :2]
    q = q_full[:2, 2]
    q2_inv_q = np.linalg.solve(q2, q)
    rhs = 1.0 - dz * dz * (q_full[2, 2] - float(q @ q2_inv_q))
    if rhs <= 1e-9:
        return None
    eigval, eigvec = np.linalg.eigh(q2 / rhs)
    semi = 1.0 / np.sqrt(eigval)
    perimeter = math.pi * (
        3 * (semi[0] + semi[1])
        - math.sqrt((3 * semi[0] + semi[1]) * (semi[0] + 3 * semi[1]))
    )
    n = int(min(512, max(24, math.ceil(perimeter / max_edge_mm))))
    theta = 2.0 * math.pi / n
    scale = math.sqrt(theta / math.sin(theta))
    angles = np.arange(n) * theta
    unit = np.stack([np.cos(angles), np.sin(angles)], axis=-1) * semi * scale
    xy = centre[:2] - dz * q2_inv_q + unit @ eigvec.T
    if np.linalg.det(eigvec) < 0:
        xy = xy[::-1]
    return np.column_stack([xy, np.full(n, z_mm)])


def voi_contours(
    model: PhantomModel, voi: str, transform: RigidTransform, z_mm: float
) -> list[FloatArray]:
    """Closed planar contours of ``voi`` on the axial plane z = ``z_mm``.

    Each member structure contributes its outline and, clockwise, the
    outlines of its children (holes, e.g. liver lesions in the healthy
    liver): the even-odd rule over all contours gives the VOI's region.
    With a contour margin the outlines are inset and the holes outset
    (:meth:`PhantomModel.voi_contour_shapes`).
    """
    contours: list[FloatArray] = []
    for shape, holes in model.voi_contour_shapes(voi):
        outline = ellipsoid_section(shape, transform, z_mm)
        if outline is None:
            continue
        contours.append(outline)
        for child in holes:
            hole = ellipsoid_section(child, transform, z_mm)
            if hole is not None:
                contours.append(hole[::-1])
    return contours


def voi_contour_mask(
    model: PhantomModel, voi: str, grid: ImageGrid, transform: RigidTransform
) -> npt.NDArray[np.bool_]:
    """Voxels of ``grid`` whose centre lies inside the VOI's contour shapes.

    The exact counterpart of rasterising the RT Structure Set contours at
    voxel centres (in-plane and through-plane), for engine-level studies that
    skip DICOM (:meth:`PhantomModel.voi_contour_shapes`).
    """
    mask = np.zeros(grid.shape_zyx, dtype=bool)
    for outline, holes in model.voi_contour_shapes(voi):
        box = _index_box(grid, outline, transform)
        if box is None:
            continue
        for block in _box_blocks(box):
            points = transform.to_model(_block_points(grid, block))
            inside = outline.contains(points)
            for hole in holes:
                inside &= ~hole.contains(points)
            mask[block] |= inside
    return mask


# --------------------------------------------------------------------------
# Truth
# --------------------------------------------------------------------------
def analytic_truth(
    course: CourseSpec, time_points: Sequence[TimePoint]
) -> dict[str, Any]:
    """JSON-ready analytic truth of a course (no voxelised quantities).

    Schema (keys): ``radionuclide``, ``led_gy_per_h_per_mbq_per_ml``,
    ``lambda_phys_per_h``, ``density_curve``, ``stp_reference_cycle``,
    ``vois`` {name: {kind, organ, site, structures, hu, density_g_per_ml,
    volume_ml, contour_volume_ml}}, ``cycles`` [{number, injected_activity_mbq,
    injection_datetime, multi_time_point, vois {name: {c0_mbq_per_ml,
    lambda_eff_per_h, effective_half_life_h, time_integrated_mbq_h_per_ml,
    mean_dose_gy[, stp_formula_dose_gy]}}}], ``time_points`` [{label, cycle,
    index, elapsed_h, injection_datetime, acquisition_datetime, transform,
    concentration_mbq_per_ml {voi: value}}], ``contour_margin_mm``,
    ``course_total_gy`` {voi: Σ over the cycles of mean_dose_gy}.
    """
    model = course.model
    data = nuclear_data(model.radionuclide)
    return {
        "contour_margin_mm": model.contour_margin_mm,
        "course_total_gy": {
            v.name: sum(mean_dose_gy(model, v.name, c) for c in course.cycles)
            for v in model.vois
        },
        "radionuclide": model.radionuclide.value,
        "led_gy_per_h_per_mbq_per_ml": data.led_gy_per_h_per_mbq_per_ml,
        "lambda_phys_per_h": data.decay_constant_per_h,
        "density_curve": {
            "name": model.density.name,
            "points_hu": list(model.density.points_hu),
            "points_g_per_ml": list(model.density.points_g_per_ml),
        },
        "stp_reference_cycle": course.stp_reference_cycle,
        "vois": {v.name: _voi_truth(model, v) for v in model.vois},
        "cycles": [_cycle_truth(course, c, time_points) for c in course.cycles],
        "time_points": [_time_point_truth(course, tp) for tp in time_points],
    }


def _voi_truth(model: PhantomModel, voi: VoiSpec) -> dict[str, Any]:
    return {
        "kind": voi.kind.value,
        "organ": voi.organ.value if voi.organ else None,
        "site": voi.site,
        "structures": list(voi.structures),
        "hu": model.voi_structure(voi.name).hu,
        "density_g_per_ml": model.voi_density_g_per_ml(voi.name),
        "volume_ml": model.voi_volume_ml(voi.name),
        "contour_volume_ml": model.voi_contour_volume_ml(voi.name),
    }


def _cycle_truth(
    course: CourseSpec, cycle: CycleSpec, time_points: Sequence[TimePoint]
) -> dict[str, Any]:
    model = course.model
    kinetics = cycle_kinetics(model, cycle)
    reference = _stp_reference(course, cycle, time_points)
    vois: dict[str, Any] = {}
    for voi in model.vois:
        k = kinetics[voi.structures[0]]
        entry: dict[str, Any] = {
            "c0_mbq_per_ml": k.c0_mbq_per_ml,
            "lambda_eff_per_h": k.lambda_eff_per_h,
            "effective_half_life_h": k.effective_half_life_h,
            "time_integrated_mbq_h_per_ml": k.time_integrated_mbq_h_per_ml,
            "mean_dose_gy": mean_dose_gy(model, voi.name, cycle),
        }
        if reference is not None:
            ref_cycle, ref_h = reference
            entry["stp_formula_dose_gy"] = stp_formula_dose_gy(
                model, voi.name, cycle, ref_cycle, cycle.scan_elapsed_h[0], ref_h
            )
        vois[voi.name] = entry
    return {
        "number": cycle.number,
        "injected_activity_mbq": cycle.injected_activity_mbq,
        "injection_datetime": cycle.injection_datetime.isoformat(),
        "multi_time_point": cycle.is_multi_time_point,
        "lesion_uptake_scale": cycle.lesion_uptake_scale,
        "lesion_lambda_scale": cycle.lesion_lambda_scale,
        "stp_reference": (
            {"cycle": reference[0].number, "elapsed_h": reference[1]}
            if reference
            else None
        ),
        "vois": vois,
    }


def _stp_reference(
    course: CourseSpec, cycle: CycleSpec, time_points: Sequence[TimePoint]
) -> tuple[CycleSpec, float] | None:
    """Reference cycle and its scan nearest in time, for single-scan cycles."""
    if cycle.is_multi_time_point:
        return None
    try:
        ref = course.cycle(course.stp_reference_cycle)
    except KeyError:
        return None
    target = cycle.scan_elapsed_h[0]
    ref_h = min(ref.scan_elapsed_h, key=lambda t: abs(t - target))
    return ref, ref_h


def _time_point_truth(course: CourseSpec, tp: TimePoint) -> dict[str, Any]:
    kinetics = cycle_kinetics(course.model, course.cycle(tp.cycle_number))
    return {
        "label": tp.label,
        "cycle": tp.cycle_number,
        "index": tp.index,
        "elapsed_h": tp.elapsed_h,
        "injection_datetime": tp.injection_datetime.isoformat(),
        "acquisition_datetime": tp.acquisition_datetime.isoformat(),
        "transform": tp.transform.as_dict(),
        "concentration_mbq_per_ml": {
            v.name: kinetics[v.structures[0]].concentration_mbq_per_ml(tp.elapsed_h)
            for v in course.model.vois
        },
    }


def with_lesion_lambda_change(
    course: CourseSpec, cycle_number: int, scale: float
) -> CourseSpec:
    """A copy of ``course`` whose lesions clear faster/slower in one cycle.

    Useful to show where the single-time-point formula departs from truth.
    """
    cycles = tuple(
        replace(c, lesion_lambda_scale=scale) if c.number == cycle_number else c
        for c in course.cycles
    )
    return replace(course, cycles=cycles)


__all__ = [
    "AIR_HU",
    "CountingStatistics",
    "CourseSpec",
    "CycleSpec",
    "Ellipsoid",
    "ImageGrid",
    "Kinetics",
    "PhantomError",
    "PhantomModel",
    "RigidTransform",
    "Structure",
    "TimePoint",
    "VoiSpec",
    "Voxelisation",
    "analytic_truth",
    "concentration_table_bq_per_ml",
    "clean_margin_mm",
    "clean_margin_model",
    "course_time_points",
    "cycle_kinetics",
    "default_course",
    "default_model",
    "ellipsoid_section",
    "expected_counts",
    "hu_table",
    "mean_dose_gy",
    "poisson_counts",
    "relative_affine",
    "render_activity",
    "render_ct",
    "spect_blur",
    "stp_formula_dose_gy",
    "validate_model",
    "voi_contour_mask",
    "voi_contours",
    "voxelise",
    "with_lesion_lambda_change",
    "with_subvoxel_motion",
]
