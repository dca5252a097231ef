"""Course-level orchestration: cumulative doses and the summed dose map.

Each cycle's dose map lies on that cycle's dose grid (its reference SPECT
grid) in that cycle's frame of reference. To sum them, each cycle's
reference CT is registered rigidly onto the first cycle's reference CT and
its map is resampled (linear) onto the first cycle's dose grid through that
transform; voxels a cycle's map does not cover add 0, and
:attr:`CourseMap.coverage` counts the cycles covering each voxel.

The sum is then scaled within each VOI of the first cycle (its masks on its
dose grid, the course grid) so that the VOI's mean is the VOI's course total,
the sum of its reported cycle means (:mod:`theranode.dosimetry.dose_map`, smallest VOI
first). Each cycle map already has its VOI means equal to the reported
ones; what the scaling corrects is how the later cycles' maps land on the
first cycle's VOIs after a cross-cycle registration and linear resampling:
each cycle map steps at its VOI borders (one factor per VOI), and a border
moved by a fraction of a voxel mixes the surroundings into the VOI. On the
four-cycle test phantom (8 mm SPECT voxels, a new pose per cycle) the plain
sum was 4-8 % off the totals for organs and marrow and 18-48 % for lesions
of 2-17 voxels; the factor per VOI is noted (``course_map_notes``) when it
exceeds 1 %. The scaling makes the VOI means hold; it cannot make the
distribution inside a lesion of a few voxels more than the resampled sum
it is. VOIs absent from the first cycle are not scaled.

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

from theranode.dosimetry.course import CourseLimits, summarize_course
from theranode.dosimetry.dose_map import (
    NOTEWORTHY_FACTOR_DEVIATION,
    VoiTarget,
    normalise_to_voi_means,
)
from theranode.dosimetry.errors import DosimetryError
from theranode.dosimetry.registration import (
    RegistrationSettings,
    RigidRegistration,
    register_rigid,
    resample_to_reference,
)
from theranode.dosimetry.results import CourseResult, CumulativeDose, CycleResult
from theranode.dosimetry.volume import Volume

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
        Each cycle's reference CT, in the same order as ``cycles``; when given
        and every cycle has a dose map, the maps are summed onto the first
        cycle's dose grid (:func:`sum_dose_maps`).
    planned_cycles, limits:
        Passed to :func:`theranode.dosimetry.course.summarize_course`.
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
    return _with_normalised_map(result, summed.dose)


#: How a course map is made (``CourseResult.course_map_method``).
COURSE_MAP_METHOD = (
    "sum of the cycles' dose maps, each registered rigidly onto the first cycle's reference "
    "CT and resampled onto its dose grid, then scaled within each VOI of the first cycle so "
    "that its mean is the VOI's course total (smallest VOI first where VOIs overlap); "
    "outside every VOI the plain sum"
)
#: The same in at most 64 characters (Dose Comment, LO).
COURSE_MAP_COMMENT = "Sum of cycle maps, scaled to the VOI course totals"


def _with_normalised_map(result: CourseResult, summed: Volume) -> CourseResult:
    """``result`` with ``summed`` scaled in the first cycle's VOIs to the course totals."""
    first = result.cycles[0]
    totals = {c.name: c for c in result.cumulative}
    targets = [
        VoiTarget(v.name, v.mask, totals[v.name].total_gy)
        for v in first.map_vois
        if v.name in totals and v.mask.shape == summed.shape
    ]
    normalised = normalise_to_voi_means(summed, targets)
    notes = [*normalised.warnings, *_factor_notes(normalised.factors, totals)]
    if not targets:
        notes.append("the first cycle carries no VOI masks on its grid; the map is the plain sum")
    return replace(
        result,
        course_map=normalised.dose.with_array(normalised.dose.array, unit="Gy"),
        course_map_method=COURSE_MAP_METHOD,
        course_map_comment=COURSE_MAP_COMMENT,
        course_map_notes=tuple(notes),
    )


def _factor_notes(
    factors: dict[str, float], totals: dict[str, CumulativeDose]
) -> list[str]:
    notes = []
    for name, factor in factors.items():
        if abs(factor - 1.0) > NOTEWORTHY_FACTOR_DEVIATION:
            notes.append(
                f"course map scaled ×{factor:.4g} in VOI {name!r} to its total "
                f"{totals[name].total_gy:.4g} Gy (the registered sum differed)"
            )
    return notes

