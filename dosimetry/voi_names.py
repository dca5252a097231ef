"""What a VOI is, from its RTSTRUCT ROI name and interpreted type: one vocabulary.

Every part of theranode that turns a VOI name into a VOI kind or an organ
uses :func:`classify_roi`: the engine (which RTSTRUCT ROIs become organ,
marrow or lesion VOIs, :mod:`theranode.service.jobs.pipeline`), the SR (its finding sites
follow the organ chosen here), the outcome CSV importer (organ names in
``doses.csv``) and the cohort analyses (organ of a dose row). A name the
engine computes a dose for is therefore a name the importer accepts, and both
map it to the same :class:`~theranode.dosimetry.results.Organ`.

The rules, applied to the name in lower case with every run of characters
other than letters and digits (blanks, ``-``, ``_``, ``.``, brackets) read as
one separator:

1. **Lesion** when the RT ROI Interpreted Type is GTV, CTV or PTV, or the
   name holds *lesion*, *tumour*/*tumor*, *GTV* or a word starting with
   *met* (``liver met 2``, ``Met_3``).
2. **Marrow** when the name holds *marrow* or the vertebrae *L2-L4* (the
   paper's marrow VOI): ``BoneMarrow``, ``BoneMarrow_L2L4``,
   ``Marrow L2-L4``, ``L2-L4``.
3. **Organ** when the name holds *liver*, *spleen* or *kidney*; a kidney's
   side comes from what surrounds the word: ``Kidney_L``, ``Left Kidney``,
   ``kidney sin`` (left), ``Kidney_R``, ``Right kidney``, ``kidney dex``
   (right), otherwise both kidneys (``Kidneys``, ``both kidneys``).
4. Anything else (``BODY``, ``EXTERNAL``, ``Aorta``) is not a VOI.

References
----------
DICOM PS3.3 C.8.8.8 (RT ROI Observations: RT ROI Interpreted Type, whose
defined terms include GTV, CTV, PTV and ORGAN).
Hebert K et al., J Nucl Med 2024;65:923-930 (VOIs: healthy liver, kidneys,
spleen, L2-L4 bone marrow, lesions).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from theranode.dosimetry.results import Organ, VoiKind

#: RT ROI Interpreted Types (PS3.3 C.8.8.8) that make a VOI a lesion.
LESION_INTERPRETED_TYPES = frozenset({"GTV", "CTV", "PTV"})

_LESION = re.compile(r"lesion|tumou?r|gtv|(^|_)met")
_MARROW = re.compile(r"marrow|(^|_)l2_?l4($|_)")
_LEFT = re.compile(r"(^|_)(l|lt|left|sin|links)($|_)|left|links")
_RIGHT = re.compile(r"(^|_)(r|rt|right|dex|rechts)($|_)|right|rechts")

#: What :func:`organ_of` accepts, for messages that refuse a name.
ORGAN_NAMES_HELP = (
    "an organ name as the dosimetry engine reads ROI names: one containing liver, "
    "spleen or kidney (a kidney's side from left/right, L/R, sin/dex: Kidney_L, "
    "Left Kidney; otherwise both kidneys), or marrow / L2-L4 (BoneMarrow, "
    "BoneMarrow_L2L4, Marrow L2-L4)"
)


class VoiClass(NamedTuple):
    """The kind of a VOI and, for organs and marrow, its organ."""

    kind: VoiKind
    organ: Organ | None


def normalised_name(name: str) -> str:
    """``name`` in lower case, every run of other than letters and digits as one ``_``."""
    words = [w for w in re.split(r"[\W_]+", name.strip().lower()) if w]
    return "_".join(words)


def classify_roi(name: str, interpreted_type: str | None = None) -> VoiClass | None:
    """Kind and organ of an ROI from its name and RT ROI Interpreted Type.

    Parameters
    ----------
    name:
        ROI Name (3006,0026) or any VOI name (a ``doses.csv`` row).
    interpreted_type:
        RT ROI Interpreted Type (3006,00A4), if known.

    Returns
    -------
    VoiClass or None
        ``None`` when the ROI is not an organ, marrow or lesion VOI.
    """
    key = normalised_name(name)
    if (interpreted_type or "").strip().upper() in LESION_INTERPRETED_TYPES or _LESION.search(key):
        return VoiClass(VoiKind.LESION, None)
    if _MARROW.search(key):
        return VoiClass(VoiKind.MARROW, Organ.BONE_MARROW)
    if "liver" in key:
        return VoiClass(VoiKind.ORGAN, Organ.LIVER)
    if "spleen" in key:
        return VoiClass(VoiKind.ORGAN, Organ.SPLEEN)
    if "kidney" in key:
        return VoiClass(VoiKind.ORGAN, _kidney(key))
    return None


def _kidney(key: str) -> Organ:
    side = key.replace("kidneys", "").replace("kidney", "")
    if _LEFT.search(side):
        return Organ.KIDNEY_LEFT
    if _RIGHT.search(side):
        return Organ.KIDNEY_RIGHT
    return Organ.KIDNEYS


def organ_of(name: str) -> Organ | None:
    """The organ an organ or marrow VOI name denotes; ``None`` for lesions and the rest."""
    voi = classify_roi(name)
    if voi is None or voi.kind is VoiKind.LESION:
        return None
    return voi.organ
