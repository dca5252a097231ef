"""Start-up reconciliation: archive files a crash left without an index row.

A received instance is written, fsynced and renamed into the archive before
its index row is committed (:mod:`theranode.service.receive.ingest`), so a
crash between the two leaves a file the index does not know. At start-up
each such file is filed again by :meth:`Ingest.reindex`, with every check of
a C-STORE — there is no second way of indexing a file.
"""

from __future__ import annotations

import logging
from collections import Counter

from theranode.service.receive.archive import Archive
from theranode.service.receive.ingest import (
    IDENTICAL_DUPLICATE,
    OUT_OF_RESOURCES,
    SUCCESS,
    Ingest,
    Outcome,
)
from theranode.service.store.index import IndexStore

logger = logging.getLogger(__name__)


def reconcile_archive(archive: Archive, index: IndexStore, ingest: Ingest) -> Counter[str]:
    """File archive files a crash left unindexed (written, renamed, not committed).

    Each goes through :meth:`Ingest.reindex`, the checks of a C-STORE:
    indexed where it is, or moved to ``conflicts/`` (its SOP Instance UID
    is indexed with other bytes), to ``quarantine/`` (it cannot be filed,
    e.g. its series UID now belongs to another patient), removed as an
    identical duplicate, or left for the next start after an error. Never
    raises: one bad file must not keep the node from starting. Returns
    and logs how many files went each way.
    """
    indexed = index.archived_paths()
    tally: Counter[str] = Counter()
    for path in sorted(archive.archive.rglob("*.dcm")):
        if archive.relative(path) in indexed:
            continue
        try:
            outcome = ingest.reindex(path)
        except Exception:  # reindex does not raise; belt and braces for the start-up
            logger.exception("Archive file %s could not be reconciled", path.name)
            tally["left for the next start"] += 1
            continue
        tally[reconciled_as(outcome)] += 1
    for what, count in sorted(tally.items()):
        logger.warning("Start-up reconciliation: %d unindexed archive file(s) %s", count, what)
    return tally


def reconciled_as(outcome: Outcome) -> str:
    """What :func:`reconcile_archive` did with one file, from its filing outcome."""
    if outcome.status == OUT_OF_RESOURCES:
        return "left for the next start"
    if outcome.status != SUCCESS:
        return "quarantined"
    if not outcome.duplicate:
        return "re-indexed"
    if outcome.comment == IDENTICAL_DUPLICATE:
        return "removed (identical to an archived instance)"
    return "moved to conflicts/"
