"""How close VOI mean doses come to the analytic truth, and what stops them.

The engine's VOI mean absorbed dose is compared with the analytic mean of the
synthetic phantom (``theranode.dosimetry.synthetic.phantom.mean_dose_gy``) for cycle 1 (four
time points, noise-free, no blur) on clinical grids: CT 0.977 × 0.977 ×
2.5 mm, SPECT 4.42 mm, field of view cropped to the phantom. Lesion doses
are compared before recovery correction (RC belongs to blurred imaging).

Scenarios:

- **ideal, static**: every image samples the phantom at voxel centres (no
  partial volume inside an image), the patient does not move;
- **ideal, moved (true)**: the same with the phantom's sub-voxel shifts and
  small rotations between time points, registration given the true poses;
- **ideal, moved (registered)**: the same, registration estimated (the
  engine as deployed);
- **voxel-averaged, moved (registered)**: images average the phantom over
  each voxel (27 samples), as a real scanner integrates, no blur.

Then the *VOI sampling floor*: spheres at random sub-voxel positions, the VOI
known exactly in-plane but only on 2.5 mm CT slices (as an RTSTRUCT is) and
evaluated at 4.42 mm SPECT voxel centres: the share of VOI voxels whose
centre lies outside the sphere. Each such voxel carries the background's
value, so a VOI mean is biased by about −(that share) × (1 − background /
VOI concentration) whatever the engine does.

Then the *restated criterion* (clean margins): the four-cycle course of
``theranode.dosimetry.synthetic.phantom.clean_margin_model``, whose VOI contours lie
``clean_margin_mm`` (≥ one SPECT voxel) inside uniform activity, voxel-
averaged images, sub-voxel repositioning, registration estimated; cycles 3–4
scaled from cycle 2 by the paper's formula (exact for this phantom, whose
effective half-lives do not change between cycles). VOI masks are the
contour shapes rasterised at CT voxel centres, as an RT Structure Set is.

Then *realistic imaging* (:mod:`theranode.dosimetry.synthetic.realistic`): cycle 1
of the default patient on the same clinical grids, voxel-averaged, blurred by a
Gaussian PSF of 10 and 15 mm FWHM, Poisson noise at 15 cps/MBq over 30 min per
scan, the patient repositioned between scans (registration estimated once per
resolution from the noise-free CTs and shared by every run), VOIs rasterised
from the true edges at CT voxel centres, warm body and bone background. Each
partial-volume method the engine offers is run on the same noise realisations
(``--realisations N``; seeds 0 … N − 1) and its reported VOI mean (lesions
RC-corrected where the method says so) compared with the analytic truth. The
paper's method uses an RC curve measured the way a site would: the NEMA IEC
spheres plus 47 and 57 mm ones, cold background, the same PSF, grid and count
level, VOIs on the true edges, a sigmoid fitted to the points
(:mod:`theranode.dosimetry.synthetic.spheres`). Where the engine states an
uncertainty per VOI, the share of realisations whose truth lies in its k = 2
interval is the coverage: over the noise-only realisations, and over *site*
realisations that also draw the errors the budget states for a site (a
calibration error, a misstated PSF FWHM, an RC curve measured on that
realisation's noisy spheres), each with the budget's default spread.

Run: ``.venv/bin/python -m benchmarks.accuracy [--out docs/accuracy.md] [--realisations N]``
(N ≥ 50 for the published document; the default is small)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from theranode.dosimetry.cycle import (
    CycleInputs,
    EngineSettings,
    TimePointImages,
    VoiMask,
    compute_multi_time_point_cycle,
    compute_single_time_point_cycle,
    register_time_points,
)
from theranode.dosimetry.recovery import SigmoidRecoveryFit
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import CycleResult
from theranode.dosimetry.synthetic import phantom as ph
from theranode.dosimetry.synthetic import realistic as rl
from theranode.dosimetry.synthetic import spheres as sp

FOV_MM = (360.0, 260.0, 160.0)
CENTRE_MM = (0.0, 0.0, -5.0)
CT_SPACING_MM = (0.977, 0.977, 2.5)
SPECT_SPACING_MM = 4.42
SEED = 11


def _grid(spacing: Sequence[float]) -> ph.ImageGrid:
    shape = tuple(round(f / s) for f, s in zip(FOV_MM, spacing, strict=True))
    return ph.ImageGrid.centred(shape, tuple(spacing), CENTRE_MM)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Scenario:
    label: str
    moved: bool
    supersampling: int
    true_registration: bool


SCENARIOS = (
    Scenario("ideal, static", False, 1, True),
    Scenario("ideal, moved (true)", True, 1, True),
    Scenario("ideal, moved (registered)", True, 1, False),
    Scenario("voxel-averaged, moved (registered)", True, 3, False),
)


def run_scenario(course: ph.CourseSpec, scenario: Scenario) -> tuple[CycleResult, float]:
    """Cycle 1 of ``course`` imaged as ``scenario`` says; returns the result and seconds."""
    ct_grid, spect_grid = _grid(CT_SPACING_MM), _grid((SPECT_SPACING_MM,) * 3)
    cycle = course.cycle(1)
    poses = [
        tp.transform if scenario.moved else ph.RigidTransform()
        for tp in ph.course_time_points(course, seed=SEED)
        if tp.cycle_number == 1
    ]
    ct_voxelisations = [
        ph.voxelise(course.model, ct_grid, pose, scenario.supersampling) for pose in poses
    ]
    images = []
    for elapsed_h, pose, ct_vox in zip(cycle.scan_elapsed_h, poses, ct_voxelisations,
                                       strict=True):
        spect_vox = ph.voxelise(course.model, spect_grid, pose, scenario.supersampling)
        images.append(TimePointImages(
            elapsed_h,
            ph.render_ct(course.model, ct_grid, voxelisation=ct_vox),
            ph.render_activity(course.model, spect_grid, elapsed_h, cycle=cycle,
                               voxelisation=spect_vox),
        ))
    reference_vox = ct_voxelisations[0]  # the VOIs are drawn on the first CT
    vois = tuple(
        VoiMask(v.name, v.kind,
                ct_grid.volume(reference_vox.fraction(course.model.voi_labels(v.name)) >= 0.5,
                               "mask"),
                v.organ)
        for v in course.model.vois
    )
    registrations = None
    if scenario.true_registration:
        registrations = [
            None if i == 0 else RigidRegistration.known(ph.relative_affine(poses[0], pose))
            for i, pose in enumerate(poses)
        ]
    start = time.perf_counter()
    result = compute_multi_time_point_cycle(
        CycleInputs(1, tuple(images), vois, 7400.0), EngineSettings(voxelwise_map=False),
        registrations,
    )
    return result, time.perf_counter() - start


def clean_course() -> ph.CourseSpec:
    """The clean-margin four-cycle course for the clinical grids (module docstring)."""
    margin = ph.clean_margin_mm(CT_SPACING_MM, (SPECT_SPACING_MM,) * 3)
    course = ph.default_course(ph.clean_margin_model(margin))
    return ph.with_subvoxel_motion(course, SPECT_SPACING_MM)


def _clean_cycle_inputs(course: ph.CourseSpec, number: int) -> CycleInputs:
    ct_grid, spect_grid = _grid(CT_SPACING_MM), _grid((SPECT_SPACING_MM,) * 3)
    model, cycle = course.model, course.cycle(number)
    points = [tp for tp in ph.course_time_points(course, seed=SEED) if tp.cycle_number == number]
    images = tuple(
        TimePointImages(
            tp.elapsed_h,
            ph.render_ct(model, ct_grid, tp.transform),
            ph.render_activity(model, spect_grid, tp.elapsed_h, tp.transform, cycle=cycle),
        )
        for tp in points
    )
    vois = tuple(
        VoiMask(v.name, v.kind,
                ct_grid.volume(ph.voi_contour_mask(model, v.name, ct_grid, points[0].transform),
                               "mask"),
                v.organ)
        for v in model.vois
    )
    return CycleInputs(number, images, vois, cycle.injected_activity_mbq)


def run_clean_course(course: ph.CourseSpec) -> tuple[dict[int, CycleResult], float]:
    """Every cycle of the clean-margin course through the engine; results and seconds."""
    settings = EngineSettings(voxelwise_map=False)
    results: dict[int, CycleResult] = {}
    seconds = 0.0
    for cycle in course.cycles:
        inputs = _clean_cycle_inputs(course, cycle.number)
        start = time.perf_counter()
        if cycle.is_multi_time_point:
            results[cycle.number] = compute_multi_time_point_cycle(inputs, settings)
        else:
            results[cycle.number] = compute_single_time_point_cycle(
                inputs, settings, reference=results[course.stp_reference_cycle])
        seconds += time.perf_counter() - start
    return results, seconds


def _uncorrected_gy(result: CycleResult, name: str) -> float:
    found = result.voi(name)
    return found.mean_gy * found.recovery_coefficient


def render_clean(
    course: ph.CourseSpec, results: dict[int, CycleResult], seconds: float
) -> list[str]:
    """The restated-criterion section of the report."""
    model = course.model
    numbers = [c.number for c in course.cycles]
    lines = [
        "## Restated criterion: clean margins, every cycle and the course",
        "",
        (f"The four-cycle course of `clean_margin_model`: every VOI contour lies "
         f"{model.contour_margin_mm:.2f} mm (√3/2 × (SPECT + CT voxel) + 1 mm, at least one "
         f"{SPECT_SPACING_MM:g} mm SPECT voxel) inside uniform activity of uniform density, "
         "so no VOI voxel straddles an activity edge; voxel-averaged images, noise-free, no "
         f"blur; repositioning below one SPECT voxel between any two scans (shifts ≤ "
         f"{course.max_shift_mm:.2f} mm per axis, rotations ≤ {course.max_rotation_deg:.2f}° per "
         "axis), registration estimated. Cycles 1–2 at 4, 24, 72, 192 h; cycle 3 once at 26 h "
         "and cycle 4 once at 24 h, scaled from cycle 2 by the paper's formula. Every VOI keeps "
         "its effective half-life in every cycle (lesion uptake falls 1.0, 0.85, 0.75, 0.65), "
         "so the scaling is exact and the truth of cycles 3–4 is the phantom's own kinetics: "
         "this tests the pipeline, not the scaling's validity in patients. Lesions before "
         "recovery correction."),
        "",
        "Error of the VOI mean absorbed dose against the analytic truth (%), CT "
        f"{' × '.join(f'{s:g}' for s in CT_SPACING_MM)} mm, SPECT {SPECT_SPACING_MM:g} mm:",
        "",
        "| VOI | contour volume (mL) | " + " | ".join(f"cycle {n}" for n in numbers)
        + " | course total | tolerance |",
        "|---|---:|" + "---:|" * (len(numbers) + 2),
    ]
    worst = 0.0
    for voi in model.vois:
        cells, total, truth_total = [], 0.0, 0.0
        for cycle in course.cycles:
            found = _uncorrected_gy(results[cycle.number], voi.name)
            truth = ph.mean_dose_gy(model, voi.name, cycle)
            total, truth_total = total + found, truth_total + truth
            cells.append(100.0 * (found / truth - 1.0))
        cells.append(100.0 * (total / truth_total - 1.0))
        worst = max(worst, *(abs(c) for c in cells))
        tolerance = "3 %" if voi.kind.value == "lesion" else "1 %"
        lines.append(f"| {voi.name} | {model.voi_contour_volume_ml(voi.name):.1f} | "
                     + " | ".join(f"{c:+.3f}" for c in cells) + f" | {tolerance} |")
    lines += [
        "",
        f"Largest error {worst:.1e} %; engine time for the four cycles {seconds:.1f} s.",
        "",
        ("The same criterion end to end, through a real PACS, is "
         "`tests/service/test_accuracy_orthanc.py`: the clean-margin course (CT 4 mm, SPECT "
         "8 mm, SPECT voxels aligned on 2 × 2 × 2 CT voxels, contours 11.4 mm inside, shifts "
         "≤ 1.2 mm, rotations ≤ 0.18°) written as DICOM, uploaded to Orthanc, routed to theranode "
         "by `config/orthanc-route-to-theranode.lua`, computed, stored back into Orthanc, and "
         "every cycle SR and the course SR read back from Orthanc's REST API: each VOI of each "
         "cycle and each course total within 1 % (organs, marrow) or 3 % (lesions of 4.8–7.2 mL), "
         "the SR stating RC 1 (unblurred images: the node is given a recovery curve of 1). When "
         "this section was written it measured at most 0.04 % (L2–L4 marrow) and 0.003 % for "
         "lesions. That remainder, absent from the table above, is the 16-bit storage of the SPECT "
         "pixels (Real World Value slope = image maximum / 60000): a uniform VOI's voxels share "
         "one rounding, up to 0.4 % of the marrow's concentration at 192 h, which the fit over "
         "four time points brings to ≤ 0.04 %. On one shared grid with no motion the engine "
         "reproduces every VOI within 0.1 % (`tests/dosimetry/test_cycle.py::"
         "test_digital_phantom_without_partial_volume_gives_the_analytic_dose`)."),
        "",
        ("What clean margins take away is the VOI sampling of the tables above (border "
         "voxels that hold another compartment); what remains is the engine itself — "
         "density and LED, registration carrying the VOIs, fits, the single-time-point "
         "scaling and the course sum — and it stays far inside the criterion. Realistic "
         "imaging (blur, noise, VOIs drawn on the organ's edge) is a separate question: the "
         "first table and the floor table bound it."),
        "",
    ]
    return lines


def sampling_floor(volume_ml: float, trials: int, rng: np.random.Generator) -> tuple[float, float]:
    """Mean and 95th percentile share of VOI voxels centred outside a sphere (see module)."""
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)
    half = int(radius / SPECT_SPACING_MM) + 2
    axis = np.arange(-half, half + 1) * SPECT_SPACING_MM
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    slice_mm = CT_SPACING_MM[2]
    shares = []
    for _ in range(trials):
        offset = rng.uniform(0.0, SPECT_SPACING_MM, 3)
        slice_offset = rng.uniform(0.0, slice_mm)
        dx, dy, dz = x - offset[0], y - offset[1], z - offset[2]
        inside = dx**2 + dy**2 + dz**2 <= radius**2
        on_slice = np.round((dz - slice_offset) / slice_mm) * slice_mm + slice_offset
        voi = dx**2 + dy**2 + on_slice**2 <= radius**2
        shares.append(np.count_nonzero(voi & ~inside) / max(1, np.count_nonzero(voi)))
    return float(np.mean(shares)), float(np.percentile(shares, 95))


# -- realistic imaging -------------------------------------------------------------
REALISTIC_FWHM_MM = (10.0, 15.0)
#: Criteria of the realistic-imaging issue, per FWHM: (organs, marrow, lesions ≥ 4 mL), %.
REALISTIC_TARGETS = {10.0: (5.0, 10.0, 10.0), 15.0: (8.0, None, 15.0)}


def partial_volume_methods() -> list[Any]:
    """The engine's partial-volume methods, or ``[None]`` (its default) before it has any."""
    try:
        from theranode.dosimetry.cycle import PartialVolumeMethod  # type: ignore[attr-defined]
    except ImportError:
        return [None]
    return list(PartialVolumeMethod)


@dataclass(frozen=True)
class MethodRun:
    """One column: an engine method and the PSF FWHM the engine is told."""

    label: str
    method: Any
    fwhm_error_mm: float = 0.0


#: The PSF stated to the engine this much too small in the extra GTM column, mm.
PSF_MISSTATED_MM = -1.0


def method_runs() -> list[MethodRun]:
    """Every engine method with the true PSF, and GTM told a PSF 1 mm too small."""
    methods = partial_volume_methods()
    runs = [MethodRun("default (paper)" if m is None else str(m.value), m) for m in methods]
    gtm = [m for m in methods if m is not None and m.value == "gtm"]
    if gtm:
        runs.append(MethodRun(f"gtm, PSF {PSF_MISSTATED_MM:+g} mm", gtm[0], PSF_MISSTATED_MM))
    return runs


def _sphere_setup(fwhm_mm: float) -> sp.SphereSetup:
    return sp.SphereSetup(
        fwhm_mm=fwhm_mm,
        spacing_mm=SPECT_SPACING_MM,
        diameters_mm=sp.NEMA_SPHERE_DIAMETERS_MM + sp.LARGE_SPHERE_DIAMETERS_MM,
        counting=rl.CLINICAL_COUNTING,
    )


def site_recovery_curve(fwhm_mm: float) -> tuple[SigmoidRecoveryFit, tuple[sp.SphereRecovery, ...]]:
    """RC(V) as a site measures it: spheres in a cold background, this PSF, grid and counts."""
    measured = sp.measure_sphere_recovery(_sphere_setup(fwhm_mm), seed=SEED)
    return sp.recovery_fit(measured), measured


def _settings(method: Any, fwhm_mm: float, curve: Any) -> EngineSettings:
    extra: dict[str, Any] = {}
    if method is not None:
        extra = {"partial_volume": method, "spect_fwhm_mm": fwhm_mm}
    return EngineSettings(voxelwise_map=False, recovery_curve=curve, **extra)


@dataclass
class RealisticRuns:
    """Per method, per VOI: relative errors and whether the truth was covered.

    ``covered`` holds the noise-only realisations; ``covered_site`` those
    that also draw the site's errors the budget states (:func:`site_errors`).
    """

    fwhm_mm: float
    truth_gy: dict[str, float]
    volumes_ml: dict[str, float]
    curve: SigmoidRecoveryFit
    spheres: tuple[sp.SphereRecovery, ...]
    errors: dict[str, dict[str, list[float]]]
    covered: dict[str, dict[str, list[bool]]]
    covered_site: dict[str, dict[str, list[bool]]]
    seconds: float


def site_errors() -> tuple[float, float] | None:
    """(relative calibration sd, PSF FWHM sd in mm) the engine's budget states, if any."""
    stated = getattr(EngineSettings(), "uncertainty", None)
    if stated is None:
        return None
    return float(stated.calibration_relative), float(stated.psf_fwhm_sd_mm)


def _record(run: RealisticRuns, label: str, result: CycleResult, site: bool) -> None:
    for voi in result.vois:
        truth = run.truth_gy[voi.name]
        if not site:
            run.errors.setdefault(label, {}).setdefault(voi.name, []).append(
                voi.mean_gy / truth - 1.0)
        stated = getattr(voi, "uncertainty", None)
        if stated is not None:
            low, high = stated.interval(2.0)
            into = run.covered_site if site else run.covered
            into.setdefault(label, {}).setdefault(voi.name, []).append(low <= truth <= high)


def _miscalibrated(inputs: CycleInputs, factor: float) -> CycleInputs:
    points = tuple(replace(tp, spect=tp.spect.with_array(tp.spect.array * factor))
                   for tp in inputs.time_points)
    return replace(inputs, time_points=points)


def _site_realisation(
    run: RealisticRuns, rendered: rl.RealisticCycle, seed: int, registrations: Any,
    spreads: tuple[float, float],
) -> None:
    """Noise plus a drawn calibration error, a drawn PSF error and the RC curve of this seed."""
    rng = np.random.default_rng(10_000 + seed)
    factor = 1.0 + rng.normal(0.0, spreads[0])
    stated = run.fwhm_mm + rng.normal(0.0, spreads[1])
    curve = sp.recovery_fit(sp.measure_sphere_recovery(_sphere_setup(run.fwhm_mm), seed)).curve
    inputs = _miscalibrated(rendered.inputs(seed, stated_fwhm_mm=stated), factor)
    for method in partial_volume_methods():
        label = "default (paper)" if method is None else str(method.value)
        result = compute_multi_time_point_cycle(
            inputs, _settings(method, stated, curve), registrations)
        _record(run, label, result, site=True)


def run_realistic(
    course: ph.CourseSpec, rendered: rl.RealisticCycle, realisations: int
) -> RealisticRuns:
    """Every partial-volume method on ``realisations`` noise realisations of ``rendered``."""
    fwhm = rendered.protocol.fwhm_mm
    curve, spheres = site_recovery_curve(fwhm)
    registrations = register_time_points(rendered.inputs(None), EngineSettings())
    volumes = {v.name: course.model.voi_contour_volume_ml(v.name) for v in course.model.vois}
    run = RealisticRuns(fwhm, dict(rendered.truth_gy), volumes, curve, spheres, {}, {}, {}, 0.0)
    spreads = site_errors()
    start = time.perf_counter()
    for seed in range(realisations):
        for column in method_runs():
            stated = fwhm + column.fwhm_error_mm
            inputs = rendered.inputs(seed, stated_fwhm_mm=stated)
            settings = _settings(column.method, stated, curve.curve)
            _record(run, column.label,
                    compute_multi_time_point_cycle(inputs, settings, registrations), site=False)
        if spreads is not None:
            _site_realisation(run, rendered, seed, registrations, spreads)
        print(f"  FWHM {fwhm:g} mm, realisation {seed + 1}/{realisations}", flush=True)
    run.seconds = time.perf_counter() - start
    return run


def realistic_renderings(course: ph.CourseSpec) -> list[rl.RealisticCycle]:
    """Cycle 1 on the clinical grids at every FWHM of :data:`REALISTIC_FWHM_MM`."""
    ct_grid, spect_grid = _grid(CT_SPACING_MM), _grid((SPECT_SPACING_MM,) * 3)
    first = rl.render_realistic_cycle(
        course, 1, ct_grid, spect_grid, rl.ImagingProtocol(REALISTIC_FWHM_MM[0]), pose_seed=SEED)
    out = [first]
    for fwhm in REALISTIC_FWHM_MM[1:]:
        protocol = rl.ImagingProtocol(fwhm)
        out.append(replace(first, protocol=protocol, expected_spect=rl.render_spect(
            course, first.time_points, spect_grid, protocol)))
    return out


def _target(course: ph.CourseSpec, name: str, fwhm_mm: float) -> float | None:
    organs, marrow, lesions = REALISTIC_TARGETS.get(fwhm_mm, (None, None, None))
    kind = course.model.voi(name).kind.value
    if kind == "lesion":
        return lesions if course.model.voi_contour_volume_ml(name) >= 4.0 else None
    return marrow if kind == "marrow" else organs


def _error_cell(values: list[float], target: float | None) -> str:
    mean = 100.0 * float(np.mean(values))
    cell = f"{mean:+.1f}"
    if len(values) > 1:
        cell += f" ± {100.0 * float(np.std(values, ddof=1)):.1f}"
    if target is not None and abs(mean) > target:
        cell = f"**{cell}**"
    return cell


def render_realistic(course: ph.CourseSpec, runs: list[RealisticRuns], realisations: int
                     ) -> list[str]:
    """The realistic-imaging section of the report."""
    lines = [
        "## Realistic imaging: blur, noise, VOIs on the true edges",
        "",
        (f"Cycle 1 of the default patient, CT {' × '.join(f'{s:g}' for s in CT_SPACING_MM)} mm, "
         f"SPECT {SPECT_SPACING_MM:g} mm, voxel-averaged; Gaussian PSF; Poisson noise at "
         f"{rl.CLINICAL_COUNTING.cps_per_mbq:g} cps/MBq over "
         f"{rl.CLINICAL_COUNTING.duration_s / 60:g} min per scan (independent voxels: real "
         "OSEM noise is larger and correlated); repositioning between scans, registration "
         "estimated; VOIs rasterised from the true edges at CT voxel centres; warm body and "
         f"bone background. {realisations} noise realisation(s) per resolution, every method "
         "on the same ones. Cells: mean error of the reported VOI mean absorbed dose against "
         "the analytic truth (%) ± its standard deviation over the realisations; **bold** "
         "misses the issue's criterion (10 mm: organs 5 %, marrow 10 %, lesions ≥ 4 mL 10 %; "
         "15 mm: organs 8 %, lesions ≥ 4 mL 15 %). Lesion_05 (1.2 mL) is below the 2 mL "
         "minimum and excluded from the indices; its error is shown for completeness."),
        "",
    ]
    for run in runs:
        lines += _realistic_table(course, run)
    lines += [
        "### Reading",
        "",
        ("- The paper's method corrects lesions only, by design: organ and marrow VOIs drawn "
         "on the true edges keep the PSF's spill-out (about S·σ/(√(2π)·V) of the mean for a "
         "large convex organ of surface S and volume V, σ the PSF's standard deviation "
         "combined with the voxel's), and the liver keeps the spill-in from its hot lesions."),
        ("- The recovery curve is measured on spheres in a cold background; the phantom's "
         "lesions are several hundred times hotter than the body, so a cold-background RC "
         "fits them. A lesion in warm tissue of lower contrast would be over-corrected by it "
         "(`paper-contrast` accounts for the lesion's local background)."),
        ("- GTM is given what it assumes: regions of uniform activity that the VOIs and the "
         "rest of the body describe, a Gaussian PSF of exactly the configured FWHM. Real "
         "patients have non-uniform uptake and a reconstruction whose resolution varies in "
         "space; the column with the PSF stated 1 mm too small shows how its errors grow "
         "when the PSF is not known exactly."),
        ("- The noise spread is a lower bound: independent Poisson voxels with a calibration "
         "known exactly, no reconstruction (OSEM noise is larger and correlated between "
         "voxels) and no calibration error."),
        "",
    ]
    return lines


def _realistic_table(course: ph.CourseSpec, run: RealisticRuns) -> list[str]:
    methods = list(run.errors)
    fit = run.curve.curve
    lines = [
        f"### FWHM {run.fwhm_mm:g} mm",
        "",
        ("The site's recovery curve (paper's method, lesions only): RC of the spheres "
         + ", ".join(f"{s.volume_ml:.2g} mL {s.rc:.3f}" for s in run.spheres)
         + f"; fitted a = {fit.plateau:.3f}, b = {fit.half_volume_ml:.2f} mL, "
         f"c = {fit.slope:.2f} (u(RC) at 4 mL {run.curve.standard_uncertainty(4.0):.3f})."),
        "",
        "| VOI | volume (mL) | truth (Gy) | " + " | ".join(methods) + " |",
        "|---|---:|---:|" + "---:|" * len(methods),
    ]
    for name, truth in run.truth_gy.items():
        target = _target(course, name, run.fwhm_mm)
        cells = [_error_cell(run.errors[m][name], target) for m in methods]
        lines.append(f"| {name} | {run.volumes_ml[name]:.1f} | {truth:.3f} | "
                     + " | ".join(cells) + " |")
    lines += ["", *_criterion_summary(course, run), "",
              f"Engine time for all methods and realisations: {run.seconds:.0f} s.", ""]
    if run.covered:
        lines += _coverage_table(run)
    else:
        lines += ["The engine states no per-VOI uncertainty yet: no coverage to report.", ""]
    return lines


def _criterion_summary(course: ph.CourseSpec, run: RealisticRuns) -> list[str]:
    """Per method: how many VOIs with a criterion meet it, and the worst mean error."""
    lines = []
    judged = [n for n in run.truth_gy if _target(course, n, run.fwhm_mm) is not None]
    for method, per_voi in run.errors.items():
        means = {n: 100.0 * float(np.mean(per_voi[n])) for n in judged}
        met = [n for n in judged if abs(means[n]) <= (_target(course, n, run.fwhm_mm) or 0.0)]
        worst = max(judged, key=lambda n: abs(means[n]))
        lines.append(f"- {method}: {len(met)} of {len(judged)} VOIs within the criterion; "
                     f"largest mean error {worst} {means[worst]:+.1f} %.")
    return lines


def _coverage_table(run: RealisticRuns) -> list[str]:
    spreads = site_errors()
    kinds = [("noise", run.covered)]
    if run.covered_site and spreads is not None:
        kinds.append(("site", run.covered_site))
    columns = [(m, kind, data) for kind, data in kinds for m in data]
    lines = [
        ("Coverage: share of realisations whose truth lies in the engine's stated k = 2 "
         "interval (%). *noise*: the realisations above (Poisson noise only, the PSF "
         "stated exactly, one RC curve)."
         + ("" if spreads is None else
            f" *site*: the same noise plus, drawn per realisation, a calibration error "
            f"(sd {100 * spreads[0]:g} %, the budget's default), a stated PSF off by a "
            f"normal error (sd {spreads[1]:g} mm, the budget's default) and the RC curve "
            "measured on that realisation's spheres (their own noise and positions). "
            "Segmentation and registration errors are not drawn (VOIs on the true edges, "
            "one registration), though the budget states them: coverage above 95 % is "
            "expected where they dominate.")),
        "",
        "| VOI | " + " | ".join(f"{m} ({kind})" for m, kind, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name in run.truth_gy:
        cells = [f"{100.0 * float(np.mean(data[m][name])):.0f}" if data[m].get(name) else "–"
                 for m, _, data in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render(course: ph.CourseSpec, results: dict[str, tuple[CycleResult, float]],
           floors: dict[float, tuple[float, float]], clean: list[str] | None = None) -> str:
    cycle = course.cycle(1)
    lines = [
        "# Accuracy of VOI mean doses against the analytic phantom",
        "",
        (f"Generated by `python -m benchmarks.accuracy` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. See the module docstring for the "
        "method. Cycle 1, four time points, noise-free, no blur; CT "
        f"{' × '.join(f'{s:g}' for s in CT_SPACING_MM)} mm, SPECT {SPECT_SPACING_MM:g} mm. "
        "Lesions before recovery correction."),
        "",
        "## Error of the VOI mean absorbed dose against the analytic truth (%)",
        "",
        "| VOI | volume (mL) | truth (Gy) | " + " | ".join(results) + " |",
        "|---|---:|---:|" + "---:|" * len(results),
    ]
    for voi in course.model.vois:
        truth = ph.mean_dose_gy(course.model, voi.name, cycle)
        cells = []
        for result, _ in results.values():
            found = result.voi(voi.name)
            cells.append(f"{100.0 * (found.mean_gy * found.recovery_coefficient / truth - 1):+.2f}")
        lines.append(f"| {voi.name} | {course.model.voi_volume_ml(voi.name):.1f} | "
                     f"{truth:.3f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Engine time per scenario (s): "
        + ", ".join(f"{label} {seconds:.1f}" for label, (_, seconds) in results.items()) + ".",
        "",
        "## VOI sampling floor",
        "",
        ("Share of the VOI's SPECT voxels whose centre lies outside the object, for a sphere "
        "whose contours are exact on 2.5 mm CT slices, at random sub-voxel positions on the "
        "4.42 mm SPECT grid (200 positions each). The VOI mean is biased by about −share × "
        "(1 − background/VOI concentration); for a kidney-to-background contrast of 4 "
        "that is three quarters of the share."),
        "",
        "| sphere (mL) | mean share (%) | 95th percentile (%) |",
        "|---:|---:|---:|",
    ]
    for volume, (mean, p95) in floors.items():
        lines.append(f"| {volume:g} | {100 * mean:.1f} | {100 * p95:.1f} |")
    lines += [
        "",
        "## Reading",
        "",
        ("- With every image sampled at voxel centres and no motion, the error is the "
        "VOI's own sampling: the reference VOI is rasterised on the CT grid and carried to "
        "the SPECT grid, so SPECT voxels near the border are classified by a 1 × 1 × 2.5 mm "
        "approximation of the border. On one shared grid it vanishes "
        "(`tests/dosimetry/test_cycle.py::"
        "test_digital_phantom_without_partial_volume_gives_the_analytic_dose`, 0.1 %)."),
        ("- Motion with the true transforms changes the errors by the amount the grid samples "
        "each pose differently; estimated registration adds little to that "
        "(`test_repositioning_between_time_points_is_undone` pins registered against true "
        "within 1 % for organs and 3 % for lesions ≥ 4 mL)."),
        ("- L2–L4 marrow is a thin region inside cortical bone: on 4.42 mm voxels, border "
        "voxels of the marrow VOI hold some cortical bone (the mass of a SPECT voxel, which LED "
        "divides by, is about 3 % above trabecular bone's) and a few centres fall in the "
        "cortex, which holds less activity; both lower its mean dose by a few per cent."),
        ("- Real voxels average the object, so border voxels hold mixtures: partial volume, "
        "which the paper corrects for lesions by RC(volume) only."),
        ("- The floor table shows why no VOI method reaches 1 % for kidney-sized organs or 3 % "
        "for 4–10 mL lesions against the *continuous* truth on these grids: even exact "
        "contours leave a few per cent of the VOI's voxels centred outside the object."),
        "",
    ]
    return "\n".join(lines + (clean or []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "accuracy.md")
    parser.add_argument("--trials", type=int, default=200, help="positions per sphere")
    parser.add_argument("--realisations", type=int, default=3,
                        help="noise realisations of the realistic-imaging section (≥ 50 to publish)")
    args = parser.parse_args(argv)
    course = ph.default_course(ph.default_model(lungs=False))
    results = {}
    for scenario in SCENARIOS:
        results[scenario.label] = run_scenario(course, scenario)
        print(f"{scenario.label}: done in {results[scenario.label][1]:.1f} s", flush=True)
    rng = np.random.default_rng(SEED)
    floors = {v: sampling_floor(v, args.trials, rng) for v in (4.0, 6.0, 10.0, 30.0, 100.0, 150.0)}
    restated = clean_course()
    clean_results, clean_seconds = run_clean_course(restated)
    print(f"clean margins, four cycles: done in {clean_seconds:.1f} s", flush=True)
    realistic = [run_realistic(course, rendered, args.realisations)
                 for rendered in realistic_renderings(course)]
    text = render(course, results, floors,
                  render_clean(restated, clean_results, clean_seconds)
                  + render_realistic(course, realistic, args.realisations))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
