"""The on-disk archive: durable, atomic writes of received bytes.

Layout below ``data_dir``::

    incoming/     temporary files being written (removed at start-up)
    archive/<patient key>/<study UID>/<series UID>/<SOP instance UID>.dcm
    conflicts/<SOP instance UID>.<sha256[:12]>.dcm   same UID, other bytes
    quarantine/<UTC time>-<sha256[:12]>.dcm           could not be filed

Every path component comes from a validated UID or a hex digest, never from
patient-supplied text. A file is in its final place only after its bytes were
written, flushed, fsynced, renamed atomically and the directory fsynced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dicomio.headers import InstanceHeader, is_valid_uid

logger = logging.getLogger(__name__)


class ArchiveError(Exception):
    """The archive could not write or refused to write (disk full, I/O error)."""


class DiskFullError(ArchiveError):
    """Free space on the archive's disk is below the configured minimum."""


@dataclass(frozen=True)
class StoredFile:
    """A file durably in place."""

    path: Path
    sha256: str
    size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Archive:
    """Durable file storage under one data folder."""

    def __init__(self, data_dir: Path, min_free_disk_mb: int = 0) -> None:
        self.root = data_dir
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        self.incoming = data_dir / "incoming"
        self.archive = data_dir / "archive"
        self.conflicts = data_dir / "conflicts"
        self.quarantine = data_dir / "quarantine"
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        for folder in (self.incoming, self.archive, self.conflicts, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)

    # -- maintenance ---------------------------------------------------------
    def clean_incoming(self) -> int:
        """Delete half-written temporary files left by a crash; returns how many."""
        removed = 0
        for leftover in self.incoming.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.warning("Removed %d half-written file(s) left in %s", removed, self.incoming)
        return removed

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def check_space(self, needed_bytes: int) -> None:
        """Raise :class:`DiskFullError` when writing ``needed_bytes`` breaks the limit."""
        free = self.free_bytes()
        if free - needed_bytes < self.min_free_bytes:
            raise DiskFullError(
                f"Only {free // (1024 * 1024)} MB free on {self.root}; the configured minimum "
                f"is {self.min_free_bytes // (1024 * 1024)} MB. Free space or raise the disk."
            )

    # -- paths -----------------------------------------------------------
    def instance_path(self, header: InstanceHeader) -> Path:
        """Final archive path of an instance, from validated UIDs only."""
        for uid in (
            header.study_instance_uid,
            header.series_instance_uid,
            header.sop_instance_uid,
        ):
            if not is_valid_uid(uid):  # defence in depth: headers are validated already
                raise ArchiveError(f"Refusing to build a path from invalid UID {uid[:80]!r}")
        return (
            self.archive
            / header.patient_key
            / header.study_instance_uid
            / header.series_instance_uid
            / f"{header.sop_instance_uid}.dcm"
        )

    def relative(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    # -- writing ---------------------------------------------------------
    def _ensure_dir(self, directory: Path) -> None:
        if directory in self._known_dirs:
            return
        with self._dir_lock:
            created: list[Path] = []
            probe = directory
            while not probe.exists():
                created.append(probe)
                probe = probe.parent
            directory.mkdir(parents=True, exist_ok=True)
            for new_dir in reversed(created):
                _fsync_dir(new_dir.parent)
            self._known_dirs.add(directory)

    def write_atomic(self, data: bytes, final_path: Path, *, check_space: bool = True) -> StoredFile:
        """Write ``data`` to ``final_path`` durably; never leaves a partial file there.

        Raises
        ------
        DiskFullError
            Free space would drop below the configured minimum.
        ArchiveError
            Any I/O error (the temporary file is removed).
        """
        if check_space:
            self.check_space(len(data))
        temporary = self.incoming / f"{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._ensure_dir(final_path.parent)
            os.replace(temporary, final_path)
            _fsync_dir(final_path.parent)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ArchiveError(f"Could not write {final_path.name}: {exc}") from exc
        return StoredFile(path=final_path, sha256=sha256_hex(data), size=len(data))

    def store_instance(self, data: bytes, header: InstanceHeader) -> StoredFile:
        """Write an instance at its archive path."""
        return self.write_atomic(data, self.instance_path(header))

    def store_conflict(self, data: bytes, header: InstanceHeader) -> StoredFile:
        """Keep a conflicting duplicate aside, never overwriting the archived one."""
        digest = sha256_hex(data)
        path = self.conflicts / f"{header.sop_instance_uid}.{digest[:12]}.dcm"
        return self.write_atomic(data, path)

    def store_quarantine(self, data: bytes) -> StoredFile:
        """Keep bytes that could not be filed; named by time and content hash."""
        digest = sha256_hex(data)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.quarantine / f"{stamp}-{digest[:12]}.dcm"
        # Quarantine ignores the free-space margin: keeping what we received
        # matters more than the margin, and OSError still reports a full disk.
        return self.write_atomic(data, path, check_space=False)
