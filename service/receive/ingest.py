"""What happens to one received instance, from bytes to a DICOM status.

:meth:`Ingest.receive` decides the C-STORE status. Success is returned only
after the bytes are durably in the archive and the index row is committed.
Objects that cannot be filed are kept in quarantine with the reason, and the
status says why; nothing received is dropped silently.

Statuses (PS3.4 Annex B.2.3, and theranode's own codes in the 0xC000 range):

====== ==============================================================
0x0000 stored (or an identical duplicate already stored)
0xA700 out of resources: disk below the configured minimum, write error, an
       object refused while the quarantine is at ``quarantine_quota_mb`` (not
       kept), or (from the listener) a data set over ``max_instance_mb``
0xA900 data set does not match the SOP class of its presentation context
0xC100 cannot understand: not a decodable data set, or impossible pixel dimensions
0xC101 cannot understand: truncated (an element or the pixel data is short)
0xC102 cannot understand: decoding would exceed a configured limit — the
       inflated size of a Deflated data set (``max_inflated_mb``), the number
       of data elements (``max_elements``) or of sequence items
       (``max_sequence_items``), an RT Structure Set's contour points
       (``max_contour_points``) or contours in one ROI (``max_contours_per_roi``);
       checked before the data set is parsed
0xC110 cannot file: a UID or PatientID is missing or invalid, or the series
       UID already belongs to another patient
0xC120 cannot file: SOP class not stored by theranode
0xC130 cannot use: a SPECT (reconstructed NM, PT, Enhanced PET) whose values
       cannot be read to Bq/mL — units other than Bq/mL or counts (SUV, an
       unknown RWVM code, PT Units not BQML), an unknown or missing decay
       correction, or what that decay reference needs
0xC131 cannot use: a SPECT in counts (nothing declares Bq/mL) from a camera
       with no ``[calibration]`` sensitivity (same matching as the pipeline)
====== ==============================================================

The 0xC13x checks read headers only (:mod:`theranode.dicomio.spect_units`, no pixel
decoding); their Error Comment starts with the attribute to fix. 0xC131 is
checked only when the listener is given the calibration settings.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom.dataset import Dataset

from theranode.config.schema import CalibrationSettings, SecuritySettings
from theranode.dicomio.errors import (
    DicomInputError,
    InconsistentPixelDataError,
    MissingAttributeError,
    TruncatedObjectError,
    UnsupportedObjectError,
)
from theranode.dicomio.headers import InstanceHeader, PatientKeyer, instance_header
from theranode.dicomio.integrity import DecodeLimits, ObjectTooLargeError, check_pixel_data, decode
from theranode.dicomio.spect_units import acquisition_duration_s, declared_values, is_read_as_spect
from theranode.service.clock import utc_now
from theranode.service.receive.archive import (
    AlreadyPlaced,
    Archive,
    ArchiveError,
    DiskFullError,
    Staged,
    StoredFile,
    sha256_hex,
)
from theranode.service.receive.calibration import camera_facts, counts_calibration
from theranode.service.store.index import AlreadyIndexed, IndexStore, SeriesOwnerError

logger = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
SOP_CLASS_MISMATCH = 0xA900
UNDECODABLE = 0xC100
TRUNCATED = 0xC101
LIMIT_EXCEEDED = 0xC102
MISSING_ATTRIBUTE = 0xC110
UNSUPPORTED_SOP_CLASS = 0xC120
UNREADABLE_SPECT_VALUES = 0xC130
UNCALIBRATED_COUNTS = 0xC131


@dataclass(frozen=True)
class Outcome:
    """The C-STORE answer for one instance."""

    status: int
    comment: str = ""
    header: InstanceHeader | None = None
    new_series: bool = False
    duplicate: bool = False


@dataclass(frozen=True)
class Peer:
    """Who sent an instance."""

    calling_ae: str
    address: str


#: The comment of the outcome of an identical duplicate (stored once, not again).
IDENTICAL_DUPLICATE = "identical duplicate"

#: The sender recorded for archive files re-indexed at start-up.
RECOVERED = Peer(calling_ae="(recovered)", address="")


class Rejected(Exception):
    """An instance that cannot be filed; carries its status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def decode_limits(security: SecuritySettings) -> DecodeLimits:
    """The per-object decoding limits of the ``[security]`` settings."""
    return DecodeLimits(
        max_inflated_bytes=security.max_inflated_mb * 2**20,
        max_elements=security.max_elements,
        max_sequence_items=security.max_sequence_items,
        max_contour_points=security.max_contour_points,
        max_contours_per_roi=security.max_contours_per_roi,
    )


def parse(
    data: bytes,
    context_sop_class: str | None,
    calibration: CalibrationSettings | None = None,
    limits: DecodeLimits | None = None,
    *,
    keyer: PatientKeyer,
) -> tuple[Dataset, InstanceHeader]:
    """Decode the header of received bytes and check they can be filed.

    ``keyer`` computes the header's pseudonymous patient key (the site secret).

    A SPECT must also be readable to Bq/mL (:func:`check_spect_values`);
    ``calibration`` (the node's ``[calibration]``) lets counts be judged.
    ``limits`` bound the work of decoding (0xC102 beyond them).

    Raises
    ------
    Rejected
        With the status and reason when the object cannot be filed.
    """
    try:
        ds = decode(data, limits)
    except ObjectTooLargeError as exc:
        raise Rejected(LIMIT_EXCEEDED, str(exc)) from exc
    except TruncatedObjectError as exc:
        raise Rejected(TRUNCATED, str(exc)) from exc
    except DicomInputError as exc:
        raise Rejected(UNDECODABLE, str(exc)) from exc
    try:
        header = instance_header(ds, keyer)
    except MissingAttributeError as exc:
        raise Rejected(MISSING_ATTRIBUTE, str(exc)) from exc
    except UnsupportedObjectError as exc:
        raise Rejected(UNSUPPORTED_SOP_CLASS, str(exc)) from exc
    except Exception as exc:  # a malformed value deep in the header
        raise Rejected(UNDECODABLE, f"header could not be read: {exc!r}") from exc
    if context_sop_class and header.sop_class_uid != context_sop_class:
        raise Rejected(
            SOP_CLASS_MISMATCH,
            f"SOPClassUID {header.sop_class_uid} does not match the presentation context's "
            f"abstract syntax {context_sop_class}",
        )
    try:
        check_pixel_data(ds, header.kind)
    except TruncatedObjectError as exc:
        raise Rejected(TRUNCATED, str(exc)) from exc
    except InconsistentPixelDataError as exc:
        raise Rejected(UNDECODABLE, str(exc)) from exc
    except Exception as exc:  # a malformed value among the image attributes
        raise Rejected(UNDECODABLE, f"pixel data attributes could not be read: {exc!r}") from exc
    check_spect_values(ds, calibration)
    return ds, header


def check_spect_values(ds: Dataset, calibration: CalibrationSettings | None) -> None:
    """Refuse a SPECT whose values the pipeline could not read to Bq/mL (headers only).

    Objects the pipeline never reads as a SPECT volume (CT, RTSTRUCT, NM
    projections and statics) pass. Counts are refused only when
    ``calibration`` is given and no camera entry (nor a default) matches.

    Raises
    ------
    Rejected
        0xC130 for unreadable declared units or decay reference, 0xC131 for
        counts from an uncalibrated camera.
    """
    if not is_read_as_spect(ds):
        return
    try:
        declaration = declared_values(ds)
    except DicomInputError as exc:
        raise Rejected(UNREADABLE_SPECT_VALUES, str(exc)) from exc
    except Exception as exc:  # a malformed value among the SPECT attributes
        raise Rejected(
            UNREADABLE_SPECT_VALUES, f"SPECT value attributes could not be read: {exc!r}"
        ) from exc
    if not declaration.is_counts or calibration is None:
        return
    if counts_calibration(ds, calibration) is None:
        facts = camera_facts(ds)
        raise Rejected(
            UNCALIBRATED_COUNTS,
            "Units/RealWorldValueMappingSequence: counts, camera uncalibrated. Nothing in "
            "the header declares Bq/mL and no [[calibration.cameras]] entry matches "
            f"Manufacturer {facts['manufacturer']!r}, ManufacturerModelName "
            f"{facts['model_name']!r}, StationName {facts['station_name']!r} "
            "(default_cps_per_mbq is 0): configure this camera's sensitivity, or export the "
            "SPECT in Bq/mL, then send it again.",
        )
    if acquisition_duration_s(ds) is None:
        raise Rejected(
            UNREADABLE_SPECT_VALUES,
            "ActualFrameDuration (0018,1242) missing: counts need the acquisition duration "
            "(RotationInformationSequence or ActualFrameDuration) to become activity.",
        )


@dataclass(frozen=True)
class _Examined:
    """What the parsing worker found in received bytes."""

    digest: str
    header: InstanceHeader | None = None
    rejection: Rejected | None = None
    transfer_syntax: str = ""


def _examine(
    data: bytes,
    context_sop_class: str | None,
    calibration: CalibrationSettings | None,
    limits: DecodeLimits | None,
    keyer: PatientKeyer,
) -> _Examined:
    """Hash and parse received bytes (runs on a worker thread)."""
    digest = sha256_hex(data)
    try:
        ds, header = parse(data, context_sop_class, calibration, limits, keyer=keyer)
    except Rejected as rejection:
        return _Examined(digest, rejection=rejection)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))  # decode() read a Part-10 file
    return _Examined(digest, header=header, transfer_syntax=syntax)


class _QuarantineQuota:
    """How much more the quarantine may take (none of it limited when ``quota_bytes`` is None).

    The folder is measured once, then the running total follows what
    :meth:`admit` lets in, and is measured again every
    :data:`REMEASURE_S` (an operator may have cleared it).
    """

    REMEASURE_S = 60.0

    def __init__(self, archive: Archive, quota_bytes: int | None) -> None:
        self.archive = archive
        self.quota_bytes = quota_bytes
        self._used: int | None = None
        self._measured_at = 0.0
        self._lock = threading.Lock()

    @property
    def quota_mb(self) -> int:
        return (self.quota_bytes or 0) // 2**20

    def admit(self, size: int) -> bool:
        """Count ``size`` bytes in and return True, or return False if they would exceed it."""
        if self.quota_bytes is None:
            return True
        with self._lock:
            now = time.monotonic()
            if self._used is None or now - self._measured_at > self.REMEASURE_S:
                self._used, self._measured_at = self.archive.quarantine_bytes(), now
            if self._used + size > self.quota_bytes:
                return False
            self._used += size
            return True


class Ingest:
    """Files received instances into the archive and the index.

    ``calibration`` (the node's ``[calibration]`` settings) lets a SPECT in
    counts from an uncalibrated camera be refused at C-STORE time (0xC131);
    without it such objects are stored and refused when the job reads them.
    ``security`` gives the per-object decoding limits (0xC102); without it
    the documented defaults apply. ``keyer`` computes the pseudonymous
    patient key of each instance with the site secret
    (:mod:`theranode.service.receive.site_secret`).
    """

    def __init__(
        self,
        archive: Archive,
        index: IndexStore,
        keyer: PatientKeyer,
        on_new_series: Callable[[InstanceHeader], None] = lambda header: None,
        calibration: CalibrationSettings | None = None,
        security: SecuritySettings | None = None,
    ) -> None:
        self.archive = archive
        self.index = index
        self.keyer = keyer
        self.on_new_series = on_new_series
        self.calibration = calibration
        self.limits = decode_limits(security or SecuritySettings())
        self._uid_locks = [threading.Lock() for _ in range(64)]
        self._quarantine_quota = _QuarantineQuota(archive, quota_bytes=None)
        self._examiners = ThreadPoolExecutor(max_workers=4, thread_name_prefix="examine")

    def limit_quarantine(self, quota_mb: int) -> None:
        """Keep at most ``quota_mb`` MB in quarantine; beyond, answer 0xA700 and keep nothing."""
        self._quarantine_quota = _QuarantineQuota(self.archive, quota_bytes=quota_mb * 2**20)

    def close(self) -> None:
        """Wait for examinations in progress and stop the worker threads."""
        self._examiners.shutdown(wait=True)

    def _lock_for(self, uid: str) -> threading.Lock:
        return self._uid_locks[zlib.crc32(uid.encode()) % len(self._uid_locks)]

    def receive(
        self, data: bytes, peer: Peer, transfer_syntax: str, context_sop_class: str | None = None
    ) -> Outcome:
        """Store one instance and return the C-STORE status to answer with.

        A worker thread parses and hashes the bytes while this thread writes
        and fsyncs them into ``incoming/``: the write and the fsync release
        the GIL, so the parse runs during them (the other way round, the
        parse held the GIL and the staging thread started only after it).
        Then the staged file is renamed into place and indexed.

        Free space is checked for the bytes as received: they are what the
        archive, ``conflicts/`` or ``quarantine/`` keep. A Deflated data set is
        archived deflated and inflated only in memory, at most
        ``security.max_inflated_mb`` of it (0xC102 beyond).
        """
        received = utc_now()
        try:
            self.archive.check_space(len(data))
        except DiskFullError as exc:
            logger.error("Refused an object from %s: %s", peer.calling_ae, exc)
            return Outcome(OUT_OF_RESOURCES, str(exc))
        examining = self._examiners.submit(
            _examine, data, context_sop_class, self.calibration, self.limits, self.keyer
        )
        try:
            staged = self.archive.stage(data)
        except ArchiveError as exc:
            examined = examining.result()
            logger.error("Could not stage an object from %s: %s", peer.calling_ae, exc)
            return Outcome(OUT_OF_RESOURCES, f"write error: {exc}", examined.header)
        examined = examining.result()
        return self._settle(staged, examined, peer, transfer_syntax, received)

    def reindex(self, path: Path) -> Outcome:
        """File an archive file that has no index row, through the checks of a C-STORE.

        Start-up reconciliation (:meth:`theranode.service.app.Node.reconcile`) calls
        this for files a kill left placed but unindexed (such a file may
        have been acknowledged: a committed row can roll back on a power
        cut). A copy is staged and filed like a received object: decoding
        limits, header checks, series owner, duplicates. The file stays only
        where it was indexed; else it is removed once its bytes are safe
        elsewhere: in ``conflicts/`` (its UID is indexed with other bytes),
        in ``quarantine/`` (it cannot be filed) or already archived (an
        identical duplicate). After an error (0xA700) it is left for the
        next start. Never raises.
        """
        try:
            data = path.read_bytes()
            staged = self.archive.stage(data)
        except (OSError, ArchiveError) as exc:
            logger.error("Could not re-read archive file %s: %s", path.name, exc)
            return Outcome(OUT_OF_RESOURCES, f"could not read {path.name}: {exc}")
        examined = _examine(data, None, self.calibration, self.limits, self.keyer)
        outcome = self._settle(staged, examined, RECOVERED, examined.transfer_syntax, utc_now())
        header = outcome.header
        indexed_here = (
            header is not None and outcome.status == SUCCESS and not outcome.duplicate
            and self.archive.instance_path(header) == path
        )
        if header is not None and not indexed_here:  # filed meanwhile, by another node?
            row = self.index.instance(header.sop_instance_uid)
            indexed_here = row is not None and row["path"] == self.archive.relative(path)
        if outcome.status != OUT_OF_RESOURCES and not indexed_here:
            path.unlink(missing_ok=True)
        return outcome

    def _settle(
        self, staged: Staged, examined: _Examined, peer: Peer, transfer_syntax: str,
        received: datetime,
    ) -> Outcome:
        """Quarantine, or file, staged bytes once examined; the status to answer."""
        if examined.header is None:
            assert examined.rejection is not None
            return self._quarantine(staged, examined.digest, examined.rejection, peer, received)
        header = examined.header
        try:
            with self._lock_for(header.sop_instance_uid):
                return self._file(staged, examined.digest, header, peer, transfer_syntax, received)
        except Rejected as rejection:
            return self._quarantine(staged, examined.digest, rejection, peer, received)
        except (ArchiveError, OSError) as exc:
            logger.error("Could not store %s: %s", header.sop_instance_uid, exc)
            return Outcome(OUT_OF_RESOURCES, f"write error: {exc}", header)
        except Exception as exc:  # e.g. the database: never Success without the row
            logger.exception("Could not index %s", header.sop_instance_uid)
            return Outcome(OUT_OF_RESOURCES, f"index error: {exc!r}", header)

    def _file(
        self, staged: Staged, digest: str, header: InstanceHeader, peer: Peer,
        transfer_syntax: str, received: datetime,
    ) -> Outcome:
        existing = self.index.instance(header.sop_instance_uid)
        if existing is not None:
            return self._duplicate(staged, digest, header, existing, peer, received)
        self._check_series_owner(header)
        try:
            stored = self.archive.store_instance(staged, header, digest)
        except AlreadyPlaced as placed:
            # Another association or node placed this UID between the look-up above and
            # now: identical bytes are that file (indexed here if its row is still
            # missing); other bytes are a conflicting duplicate, kept aside.
            if placed.sha256 != digest:
                existing = {"sha256": placed.sha256}
                return self._duplicate(staged, digest, header, existing, peer, received)
            self.archive.discard(staged)
            stored = StoredFile(path=placed.path, sha256=digest, size=staged.size)
            placed_here = False
        else:
            placed_here = True
        try:
            new_series = self.index.add_instance(
                header,
                path=self.archive.relative(stored.path),
                sha256=stored.sha256,
                size=stored.size,
                transfer_syntax=transfer_syntax,
                received=received,
                calling_ae=peer.calling_ae,
                peer=peer.address,
            )
        except AlreadyIndexed as indexed:
            # Filed meanwhile by another association or node: the file at this path is
            # the one indexed (placing never replaces a file), so nothing is removed.
            logger.info("%s was filed meanwhile by another association or node",
                        header.sop_instance_uid)
            if placed_here and indexed.path != self.archive.relative(stored.path):
                # Indexed at another path: the copy just placed is a duplicate.
                copy = Staged(path=stored.path, size=stored.size)
                existing = {"sha256": indexed.sha256}
                return self._duplicate(copy, digest, header, existing, peer, received)
            same = indexed.sha256 == digest
            return Outcome(SUCCESS, IDENTICAL_DUPLICATE if same else
                           "conflicting duplicate (filed meanwhile)", header, duplicate=True)
        except SeriesOwnerError:
            # Another association filed this new series for another patient
            # between the check above and this insert (which checks again,
            # atomically): the file just placed goes to quarantine.
            archived = Staged(path=stored.path, size=stored.size)
            rejection = _series_owner_rejection(header)
            return self._quarantine(archived, digest, rejection, peer, received)
        if new_series:
            self.on_new_series(header)
        return Outcome(SUCCESS, header=header, new_series=new_series)

    def _check_series_owner(self, header: InstanceHeader) -> None:
        """Refuse an instance whose series UID already names another patient's series.

        Without this, the instance would be counted in (and read with) the
        other patient's series: one patient's images in another's dosimetry.
        """
        owner = self.index.series_owner(header.series_instance_uid)
        if owner is None:
            return
        if owner["patient_key"] != header.patient_key:
            raise _series_owner_rejection(header)

    def _duplicate(
        self, staged: Staged, digest: str, header: InstanceHeader, existing: dict[str, object],
        peer: Peer, received: datetime,
    ) -> Outcome:
        if digest == existing["sha256"]:
            self.archive.discard(staged)
            logger.info("Identical duplicate of %s ignored", header.sop_instance_uid)
            return Outcome(SUCCESS, IDENTICAL_DUPLICATE, header, duplicate=True)
        kept = self.archive.store_conflict(staged, header, digest)
        self.index.add_conflict(
            header.sop_instance_uid, path=self.archive.relative(kept.path), sha256=kept.sha256,
            received=received, calling_ae=peer.calling_ae, peer=peer.address,
        )
        logger.warning(
            "Conflicting duplicate of %s from %s kept aside as %s (archived copy unchanged)",
            header.sop_instance_uid, peer.calling_ae, kept.path.name,
        )
        return Outcome(SUCCESS, "conflicting duplicate kept aside", header, duplicate=True)

    def _quarantine(
        self, staged: Staged, digest: str, rejection: Rejected, peer: Peer, received: datetime,
    ) -> Outcome:
        if not self._quarantine_quota.admit(staged.size):
            self.archive.discard(staged)
            quota_mb = self._quarantine_quota.quota_mb
            logger.error(
                "Rejected object from %s with status 0x%04X NOT kept: quarantine is at its "
                "quota (quarantine_quota_mb %d); %s", peer.calling_ae, rejection.status,
                quota_mb, rejection.reason,
            )
            return Outcome(
                OUT_OF_RESOURCES,
                f"quarantine full ({quota_mb} MB), not kept: {rejection.reason}",
            )
        try:
            kept = self.archive.store_quarantine(staged, digest)
        except (ArchiveError, OSError) as exc:
            logger.error("Could not quarantine a rejected object (%s): %s", rejection.reason, exc)
            return Outcome(OUT_OF_RESOURCES, f"{rejection.reason}; and quarantine failed: {exc}")
        self.index.add_quarantine(
            path=self.archive.relative(kept.path), sha256=kept.sha256, status=rejection.status,
            reason=rejection.reason, received=received, calling_ae=peer.calling_ae,
            peer=peer.address,
        )
        logger.warning(
            "Rejected object from %s with status 0x%04X, kept as %s: %s",
            peer.calling_ae, rejection.status, kept.path.name, rejection.reason,
        )
        return Outcome(rejection.status, rejection.reason)


def _series_owner_rejection(header: InstanceHeader) -> Rejected:
    return Rejected(
        MISSING_ATTRIBUTE,
        f"SeriesInstanceUID {header.series_instance_uid} already belongs to a series of "
        "another patient; the sender must give this series its own UID",
    )
