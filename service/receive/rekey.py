"""Start-up re-keying: patient keys made another way become keys under the site secret.

Patient keys were an unkeyed SHA-256 of the PatientID before the site secret
(:mod:`theranode.service.receive.site_secret`); a 6-digit MRN was recovered from one by trying
every value. A database written then, or under a secret that was since lost
and remade, holds keys that differ from what the node computes now. At every
start :func:`rekey_stale_patients` recomputes each patient's key from the
PatientID (+ issuer) stored in the index, moves the patient's archive folder
and rewrites the key in the index and the jobs tables. Folders move first and
the database changes in one transaction afterwards: a start interrupted in
between repeats the (idempotent) moves and then commits.

Logs written before keep the old keys: delete or restrict them if the
pseudonymity of old log lines matters.
"""

from __future__ import annotations

import logging

from theranode.dicomio.headers import PatientKeyer
from theranode.service.receive.archive import Archive
from theranode.service.store.index import IndexStore

logger = logging.getLogger(__name__)


def rekey_stale_patients(index: IndexStore, archive: Archive, keyer: PatientKeyer) -> int:
    """Re-key every patient whose stored key is not ``keyer``'s; returns how many."""
    pairs = index.stale_patient_keys(keyer)
    if not pairs:
        return 0
    for old, new in pairs:
        archive.move_patient_folder(old, new)
    index.rekey(pairs)
    logger.warning(
        "Re-keyed %d patient(s) under the site secret (archive folders and database); "
        "patient keys in logs written before no longer match", len(pairs))
    return len(pairs)
