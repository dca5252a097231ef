"""Benchmark: one 4-time-point cycle at clinical size, DICOM files to doses.

Writes the phantom's cycle 1 as DICOM (CT 512×512×200, SPECT 128×128×100 per
time point, not timed), then times reading (dicomio readers), registration
and dose computation, and prints wall time per stage, peak memory and the
ratio to the targets (≤ 60 s, ≤ 2 GB on 2 cores).

Usage::

    python -m benchmarks.engine [--out DIR] [--keep]

Peak memory is the process's maximum resident set size
(``resource.getrusage``); the phantom is written in a child process, so it
is the engine's (readers included).
"""

from __future__ import annotations

import argparse
import logging
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pydicom

from theranode.dicomio.ct import read_ct_series
from theranode.dicomio.nm import read_spect
from theranode.dicomio.rtstruct import read_rois, roi_mask
from theranode.dicomio.synthetic_course import (
    CourseManifest,
    CourseWriteSpec,
    PhantomGrids,
    write_course,
)
from theranode.dosimetry.cycle import (
    CycleInputs,
    EngineSettings,
    TimePointImages,
    VoiMask,
    compute_multi_time_point_cycle,
    register_time_points,
)
from theranode.dosimetry.registration import crop_mask
from theranode.dosimetry.results import CycleResult, Organ, VoiKind
from theranode.dosimetry.synthetic.phantom import default_course
from theranode.dosimetry.volume import Volume

logger = logging.getLogger(__name__)

TARGET_S = 60.0
TARGET_MB = 2048.0


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextmanager
def _stage(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def _voi_mask(name: str, mask: Volume, manifest: CourseManifest) -> VoiMask:
    """A phantom ROI with its kind and organ from the truth file (by ROI name)."""
    entry = manifest.truth["vois"][name]
    organ = Organ(entry["organ"]) if entry.get("organ") else None
    return VoiMask(
        name=name, kind=VoiKind(entry["kind"]), mask=crop_mask(mask), organ=organ
    )


def load_cycle_inputs(manifest: CourseManifest, cycle_number: int) -> CycleInputs:
    """Read one cycle of a written phantom course through the dicomio readers.

    VOIs come from the RT Structure Set of the cycle's first time point,
    rasterised on that CT; kinds and organs are looked up by ROI name in the
    phantom's truth (a clinical pipeline would take them from the site's
    naming rules).
    """
    points = [
        tp for tp in manifest.time_points if tp.time_point.cycle_number == cycle_number
    ]
    images = []
    vois: tuple[VoiMask, ...] = ()
    for written in points:
        ct = read_ct_series([pydicom.dcmread(p) for p in written.ct_files])
        spect = read_spect([pydicom.dcmread(p) for p in written.spect_files])
        elapsed_h = (
            spect.elapsed_h
            if spect.elapsed_h is not None
            else written.time_point.elapsed_h
        )
        images.append(TimePointImages(elapsed_h, ct, spect.volume))
        if written.rtstruct_file is not None:
            rois = read_rois(pydicom.dcmread(written.rtstruct_file))
            vois = tuple(
                _voi_mask(roi.name, roi_mask(roi, ct), manifest) for roi in rois
            )
    return CycleInputs(cycle_number, tuple(images), vois, 7400.0)


def run(out_dir: Path, settings: EngineSettings | None = None) -> dict[str, float]:
    """Write, read and compute one clinical-size cycle; return stage timings (s)."""
    settings = settings or EngineSettings()
    spec = CourseWriteSpec(
        course=default_course(), grids=PhantomGrids.clinical(), cycles=(1,)
    )
    timings: dict[str, float] = {}
    # The phantom is written in a child process, so that the peak memory is the engine's.
    with (
        _stage(timings, "write phantom (untimed)"),
        ProcessPoolExecutor(max_workers=1) as pool,
    ):
        manifest = pool.submit(write_course, out_dir, spec, 1).result()
    with _stage(timings, "read DICOM + rasterise VOIs"):
        inputs = load_cycle_inputs(manifest, 1)
    with _stage(timings, "registration (3 CTs)"):
        registrations = register_time_points(inputs, settings)
    with _stage(timings, "dose (LED, fits, voxel map)"):
        result = compute_multi_time_point_cycle(inputs, settings, registrations)
    _report(result, manifest)
    return timings


def _report(result: CycleResult, manifest: CourseManifest) -> None:
    truth = manifest.truth["cycles"][0]["vois"]
    for voi in result.vois:
        expected = truth[voi.name]["mean_dose_gy"]
        print(
            f"  {voi.name:18s} {voi.mean_gy:8.3f} Gy  truth {expected:8.3f} Gy  "
            f"({voi.mean_gy / expected - 1:+.1%}, RC {voi.recovery_coefficient:.2f})"
        )
    for quality in result.registration:
        print(
            f"  registration {quality.elapsed_h:g} h: "
            f"t={tuple(round(v, 2) for v in quality.translation_mm)} mm "
            f"r={tuple(round(v, 2) for v in quality.rotation_deg)}° converged={quality.converged}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the DICOM files"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        timings = run(args.out or Path(tmp))
    engine_s = sum(v for k, v in timings.items() if "untimed" not in k)
    for name, seconds in timings.items():
        print(f"{name:32s} {seconds:7.1f} s")
    peak_mb = _peak_rss_mb()
    print(
        f"{'engine total':32s} {engine_s:7.1f} s  "
        f"({engine_s / TARGET_S:.2f} × the {TARGET_S:g} s target)"
    )
    print(
        f"{'peak RSS (readers + engine)':32s} {peak_mb:7.0f} MB "
        f"({peak_mb / TARGET_MB:.2f} × the 2 GB target)"
    )
    return 0 if engine_s <= TARGET_S and peak_mb <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
