"""Physical plausibility of an administered activity and of a cycle's doses.

An administered activity above :data:`MAX_PLAUSIBLE_ACTIVITY_MBQ` is a
recording error, not a treatment: one [177Lu]Lu-DOTATATE cycle is 7.4 GBq
(Hebert 2024; NETTER-1), and the usual slips are a factor 1000 or more (MBq
written where GBq is expected: 7400 "GBq"; Bq where MBq is expected). The
bound, 100 GBq, is over thirteen times a standard cycle and far below those
slips. The DICOM headers drop such a RadionuclideTotalDose, the outcome
import refuses such a cycle, and the pipeline refuses a SPECT holding more.

A wrong unit upstream (a SPECT in kBq/mL read as counts, a wrong rescale
slope) scales every dose by the same factor and leaves no other trace in the
numbers; only a comparison with an independent quantity, the administered
activity recorded at injection, shows it. A cycle whose mean absorbed dose
per administered activity lies far beyond anything published for its VOI kind
is therefore held by the node instead of being sent.

The dose bounds are deliberately loose: a few times the highest values published
for [177Lu]Lu-DOTATATE, so that real patients are never held.

* Organs and marrow: published means are below about 1.5 Gy/GBq (kidneys
  0.43 ± 0.13 Gy/GBq, range 0.27-0.91, Santoro 2018; spleen about 1 Gy/GBq;
  liver and marrow lower still). Default bound: 5 Gy/GBq.
* Lesions: tens of Gy/GBq in the most avid lesions (EANM 2022 review).
  Default bound: 100 Gy/GBq, i.e. 740 Gy from one 7.4 GBq cycle.

References
----------
Hebert K et al., J Nucl Med 2024;65:923-930 (7.4 GBq per cycle).
Strosberg J et al., Phase 3 trial of 177Lu-Dotatate for midgut neuroendocrine
tumors (NETTER-1), N Engl J Med 2017;376:125-135 (four cycles of 7.4 GBq).
Santoro L et al., EJNMMI Res 2018;8:103 (organ doses per administered
activity, 177Lu-DOTATATE, SPECT/CT at 4, 24, 72, 192 h).
Sjögreen Gleisner K et al., EANM dosimetry committee recommendations for
dosimetry of 177Lu-labelled somatostatin-receptor- and PSMA-targeting
ligands, Eur J Nucl Med Mol Imaging 2022;49:1778-1809.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from theranode.dosimetry.results import VoiDose, VoiKind

#: Largest plausible administered activity of one cycle, MBq (100 GBq; see above).
MAX_PLAUSIBLE_ACTIVITY_MBQ = 100_000.0
#: Default bound on organ and marrow mean dose per administered activity, Gy/GBq.
MAX_ORGAN_GY_PER_GBQ = 5.0
#: Default bound on lesion mean dose per administered activity, Gy/GBq.
MAX_LESION_GY_PER_GBQ = 100.0


@dataclass(frozen=True)
class PlausibilityLimits:
    """Largest plausible mean absorbed dose per administered activity (Gy/GBq)."""

    organ_gy_per_gbq: float = MAX_ORGAN_GY_PER_GBQ
    lesion_gy_per_gbq: float = MAX_LESION_GY_PER_GBQ

    def bound(self, kind: VoiKind) -> float:
        """The bound of a VOI kind (marrow counts as an organ)."""
        return self.lesion_gy_per_gbq if kind is VoiKind.LESION else self.organ_gy_per_gbq


def implausible_doses(
    vois: Sequence[VoiDose],
    administered_activity_mbq: float | None,
    limits: PlausibilityLimits = PlausibilityLimits(),
) -> list[str]:
    """Why each implausible VOI dose is implausible (empty when all are plausible).

    A mean that is not a finite number ≥ 0 is always implausible; the bound per
    administered activity applies when the activity is known.
    """
    reasons = []
    for voi in vois:
        if not (math.isfinite(voi.mean_gy) and voi.mean_gy >= 0):
            reasons.append(f"{voi.name}: mean absorbed dose {voi.mean_gy} Gy is not a dose")
            continue
        if administered_activity_mbq is None or administered_activity_mbq <= 0:
            continue
        per_gbq = voi.mean_gy / (administered_activity_mbq / 1000.0)
        bound = limits.bound(voi.kind)
        if per_gbq > bound:
            reasons.append(
                f"{voi.name} ({voi.kind.value}): {voi.mean_gy:.4g} Gy from "
                f"{administered_activity_mbq:.5g} MBq is {per_gbq:.3g} Gy/GBq, above the "
                f"{bound:.3g} Gy/GBq bound for {voi.kind.value} VOIs"
            )
    return reasons
