"""What a dosimetry job refuses, holds or warns about.

Inputs that would give silently wrong doses are refused with a message that
says what to check (:func:`check_plausible_spect`, :func:`check_plausible_ct`);
a result no patient can have is held, not sent (:func:`hold_if_implausible`);
disagreeing records are written into the result's warnings
(:func:`frame_mismatch_note`, :func:`administered_activity`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from theranode.config.schema import Settings
from theranode.dicomio.headers import injection as recorded_injection
from theranode.dosimetry.plausibility import (
    MAX_PLAUSIBLE_ACTIVITY_MBQ,
    PlausibilityLimits,
    implausible_doses,
)
from theranode.dosimetry.results import CycleResult
from theranode.dosimetry.volume import Volume
from theranode.service.errors import ImplausibleResultError, PipelineError
from theranode.service.jobs.spec import TimePointInput

#: Median CT numbers outside this range are not Hounsfield units: the CT scale
#: (−1024 … 3071 HU in 12-bit images) with a margin (PS3.3 C.11.1.1.2).
MIN_HU, MAX_HU = -1100.0, 3100.0


def check_plausible_spect(spect: Volume, nominal_h: float) -> None:
    """Refuse a SPECT whose field of view holds no activity or more than any treatment.

    Counts scaled by a wrong RescaleSlope or Real World Value Mapping (or
    never calibrated) would otherwise give absorbed doses of 10^30 Gy or NaN
    that are sent to the PACS as results.

    References
    ----------
    theranode.dosimetry.plausibility.MAX_PLAUSIBLE_ACTIVITY_MBQ (100 GBq: no PRRT cycle
    administers more).
    """
    total_mbq = float(np.sum(spect.array, dtype=np.float64)) * spect.voxel_volume_ml / 1e6
    if not math.isfinite(total_mbq) or not 0 < total_mbq <= MAX_PLAUSIBLE_ACTIVITY_MBQ:
        raise PipelineError(
            f"The SPECT at {nominal_h:g} h holds {total_mbq:.3g} MBq in its field of view; "
            f"expected more than 0 and at most {MAX_PLAUSIBLE_ACTIVITY_MBQ:g} MBq (the most a "
            f"Lu-177 treatment administers). Check "
            f"the SPECT's units and scaling (Real World Value Mapping, RescaleSlope) and resend it."
        )


def check_plausible_ct(ct: Volume, nominal_h: float) -> None:
    """Refuse a CT whose numbers are not Hounsfield units (median outside air…bone).

    Densities derived from such a CT would silently change every dose.

    References
    ----------
    DICOM PS3.3 C.11.1.1.2 (Rescale Intercept/Slope to HU); the CT scale spans
    −1024 HU (air) to 3071 HU in 12-bit images.
    """
    median_hu = float(np.median(ct.array))
    if not MIN_HU <= median_hu <= MAX_HU:
        raise PipelineError(
            f"The CT at {nominal_h:g} h has a median of {median_hu:.0f} HU; CT numbers lie "
            f"between {MIN_HU:g} (air) and {MAX_HU:g} HU. Check its RescaleSlope and "
            f"RescaleIntercept and resend it."
        )


def frame_mismatch_note(
    tp: TimePointInput, ct_ds: list[Dataset], spect_ds: list[Dataset]
) -> list[str]:
    """A warning when a time point's SPECT and CT are in different frames of reference.

    The completion rules take another CT of the time point when none shares
    the SPECT's frame (service/plan/completion.py); the SPECT is then placed on
    that CT by patient coordinates, which only a hybrid scanner guarantees,
    so the result says so (PS3.3 C.7.4.1: one frame of reference, one
    patient coordinate system).
    """
    spect_frame = str(spect_ds[0].get("FrameOfReferenceUID", ""))
    ct_frame = str(ct_ds[0].get("FrameOfReferenceUID", ""))
    if spect_frame == ct_frame:
        return []
    note = (f"The SPECT at {tp.nominal_h:g} h is not in its CT's frame of reference "
            f"(SPECT {spect_frame or 'none'}, CT {ct_frame or 'none'}); it was placed on the CT "
            f"by patient coordinates without registration: check the fusion before using the "
            f"doses.")
    return [note]


#: SPECT headers of one cycle naming administered activities further apart than this
#: (relative) are reported: they should all record the same administration.
ACTIVITY_AGREEMENT = 0.01


def header_activity_mbq(spect_ds: Sequence[Dataset]) -> float | None:
    """RadionuclideTotalDose of a SPECT, in MBq (PS3.3 C.8.4.10.1.7, C.8.9.1.1.4)."""
    shot = recorded_injection(spect_ds[0]) if spect_ds else None
    return shot.activity_mbq if shot is not None else None


def administered_activity(
    header_mbq: Sequence[tuple[float, float | None]],
) -> tuple[float | None, list[str]]:
    """The cycle's administered activity and a warning when its records disagree.

    ``header_mbq`` holds (nominal hours, RadionuclideTotalDose in MBq or
    ``None``) per time point, earliest first; the earliest recorded value is
    used. Every time point of a cycle records the same administration, so
    values more than :data:`ACTIVITY_AGREEMENT` apart mean a header was
    edited or belongs to another cycle.
    """
    recorded = [(h, a) for h, a in header_mbq if a is not None]
    chosen = recorded[0][1] if recorded else None
    if chosen is None:
        return None, ["No administered activity (RadionuclideTotalDose) in the cycle's SPECT "
                      "headers: doses per administered activity are not checked or reported."]
    values = [a for _, a in recorded]
    if not values or max(abs(a - chosen) for a in values) <= ACTIVITY_AGREEMENT * chosen:
        return chosen, []
    listed = ", ".join(f"{a:.6g} MBq at {h:g} h" for h, a in recorded)
    return chosen, [f"The SPECT headers of this cycle disagree on the administered activity "
                    f"({listed}); {chosen:.6g} MBq was used. Check RadionuclideTotalDose."]


def hold_if_implausible(result: CycleResult, settings: Settings) -> None:
    """Refuse to write (and so to send) a cycle whose doses no patient can have.

    Raises
    ------
    ImplausibleResultError
        A VOI's mean dose per administered activity exceeds the configured
        bound, or is not a dose at all (see :mod:`theranode.dosimetry.plausibility`).
    """
    limits = PlausibilityLimits(
        settings.dosimetry.max_organ_gy_per_gbq, settings.dosimetry.max_lesion_gy_per_gbq
    )
    included = [v for v in result.vois if not v.excluded]
    reasons = implausible_doses(included, result.administered_activity_mbq, limits)
    if not reasons:
        return
    raise ImplausibleResultError(
        f"Held, not sent: the doses of cycle {result.cycle_number} are outside physical "
        f"plausibility ({'; '.join(reasons)}). A SPECT read in the wrong units or with a "
        "wrong calibration does this: check its Real World Value Mapping, Units, "
        "RescaleSlope or camera sensitivity and the administered activity "
        "(RadionuclideTotalDose), then resend or reprocess. If the doses are real, raise "
        "[dosimetry] max_organ_gy_per_gbq / max_lesion_gy_per_gbq and run theranode "
        "reprocess for this patient."
    )
