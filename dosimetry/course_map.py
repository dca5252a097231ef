"""Course-level orchestration: cumulative doses and the summed dose map.

Each cycle's dose map lies on that cycle's dose grid (its reference SPECT
grid) in that cycle's frame of reference. To sum them, each cycle's
reference CT is registered rigidly onto the first cycle's reference CT and
its map is resampled (linear) onto the first cycle's dose grid through that
transform; voxels a cycle's map does not cover add 0, and
:attr:`CourseMap.coverage` counts the cycles covering each voxel.

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (cumulative AD as the sum over
cycles).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from dosimetry.course import CourseLimits, summarize_course
from dosimetry.errors import DosimetryError
from dosimetry.registration import (
    RegistrationSettings,
    RigidRegistration,
    register_rigid,
    resample_to_reference,
)
from dosimetry.results import CourseResult, CycleResult
from dosimetry.volume import Volume

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CourseMap:
    """The summed dose map and how each cycle was placed on it.

    Attributes
    ----------
    dose:
        Sum of the cycles' dose maps (Gy) on the first cycle's dose grid.
    registrations:
        Per cycle (in the order given), the registration of its reference CT
        onto the first cycle's; ``None`` for the first cycle.
    coverage:
        Per voxel, the number of cycles whose map covers it.
    """

    dose: Volume
    registrations: tuple[RigidRegistration | None, ...]
    coverage: np.ndarray


def sum_dose_maps(
    dose_maps: Sequence[Volume],
    reference_cts: Sequence[Volume],
    settings: RegistrationSettings | None = None,
) -> CourseMap:
    """Sum per-cycle dose maps onto the first cycle's dose grid.

    Parameters
    ----------
    dose_maps:
        One dose map (Gy) per cycle, first cycle first.
    reference_cts:
        The reference CT of each cycle, sharing its map's frame of reference.
    settings:
        Registration settings for the cross-cycle registrations.

    Raises
    ------
    DosimetryError
        The two sequences differ in length or are empty.
    """
    if not dose_maps or len(dose_maps) != len(reference_cts):
        raise DosimetryError(
            f"Summing dose maps needs one reference CT per map, got {len(dose_maps)} maps "
            f"and {len(reference_cts)} CTs."
        )
    grid = dose_maps[0]
    total = np.zeros(grid.shape, dtype=np.float64)
    coverage = np.zeros(grid.shape, dtype=np.uint8)
    registrations: list[RigidRegistration | None] = []
    for index, (dose_map, ct) in enumerate(zip(dose_maps, reference_cts, strict=True)):
        reg = None if index == 0 else register_rigid(reference_cts[0], ct, settings)
        registrations.append(reg)
        total += resample_to_reference(dose_map, grid, reg, "linear").array
        ones = dose_map.with_array(np.ones(dose_map.shape, dtype=np.float32))
        coverage += (
            resample_to_reference(ones, grid, reg, "nearest").array > 0
        ).astype(np.uint8)
    return CourseMap(
        dose=grid.with_array(total.astype(np.float32), unit="Gy"),
        registrations=tuple(registrations),
        coverage=coverage,
    )


def compute_course(
    cycles: Sequence[CycleResult],
    reference_cts: Sequence[Volume] | None = None,
    planned_cycles: int = 4,
    limits: CourseLimits | None = None,
    registration: RegistrationSettings | None = None,
) -> CourseResult:
    """Cumulative doses, lesion indices, flags and (optionally) the summed map.

    Parameters
    ----------
    cycles:
        The cycles' results (any order; sorted by cycle number).
    reference_cts:
        Each cycle's reference CT, in the same order as ``cycles``; when given and every cycle has a dose map, the maps are summed
        onto the first cycle's dose grid (:func:`sum_dose_maps`).
    planned_cycles, limits:
        Passed to :func:`dosimetry.course.summarize_course`.
    """
    result = summarize_course(cycles, planned_cycles, limits or CourseLimits())
    if reference_cts is None:
        return result
    maps = [c.dose_map for c in result.cycles]
    if any(m is None for m in maps):
        logger.info("Course map skipped: a cycle has no dose map")
        return result
    ct_of = {c.cycle_number: ct for c, ct in zip(cycles, reference_cts, strict=True)}
    ordered_cts = [ct_of[c.cycle_number] for c in result.cycles]
    summed = sum_dose_maps(
        [m for m in maps if m is not None], ordered_cts, registration
    )
    return replace(result, course_map=summed.dose)
