"""How close VOI mean doses come to the analytic truth, and what stops them.

The engine's VOI mean absorbed dose is compared with the analytic mean of the
synthetic phantom (``dosimetry.phantom.mean_dose_gy``) for cycle 1 (four
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

from dosimetry import phantom as ph
from dosimetry.cycle import (
    CycleInputs,
    EngineSettings,
    TimePointImages,
    VoiMask,
    compute_multi_time_point_cycle,
)
from dosimetry.registration import RigidRegistration
from dosimetry.results import CycleResult

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
           floors: dict[float, tuple[float, float]]) -> str:
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
    return "\n".join(lines)


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
    text = render(course, results, floors)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
