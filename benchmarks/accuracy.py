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

Run: ``.venv/bin/python -m benchmarks.accuracy [--out docs/accuracy.md]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
)
from theranode.dosimetry.registration import RigidRegistration
from theranode.dosimetry.results import CycleResult
from theranode.dosimetry.synthetic import phantom as ph

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
    text = render(course, results, floors, render_clean(restated, clean_results, clean_seconds))
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
