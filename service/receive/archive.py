"""The on-disk archive: durable, atomic writes of received bytes.

Layout below ``data_dir``::

    incoming/     temporary files being written (removed at start-up); with a shared
                  archive, incoming/<node name>/ per node, so that a node's start-up
                  removes only its own
    archive/<patient key>/<study UID>/<series UID>/<SOP instance UID>.dcm
    conflicts/<SOP instance UID>.<sha256[:12]>.dcm   same UID, other bytes
    quarantine/<UTC time>-<sha256[:12]>.dcm           could not be filed

Every path component comes from a validated UID or a hex digest, never from
patient-supplied text. A file is in its final place only after its bytes were
written, flushed, fsynced, renamed atomically and the directory fsynced.

An instance is placed by ``link(2)``, which fails when the name exists, not by a rename,
which would replace it: two nodes (or listener processes) filing one SOP Instance UID at
the same moment cannot overwrite each other's file, on a local disk or on NFS, where
``link`` is the atomic exclusive create (Linux ``open(2)``, O_EXCL: "programs which rely
on it for performing locking tasks will contain a race condition" on NFS; the portable
way is a unique file and ``link(2)``). The second finds :class:`AlreadyPlaced` and files
its bytes as a duplicate. On a file system without hard links (some SMB and FUSE mounts)
the file is renamed into place when its name is free, as before: safe for one node, not
for several sharing that folder (docs/scale-out.md).

Only the node's user may read any of it: files are created with mode
:data:`FILE_MODE` (0600) and folders with :data:`DIR_MODE` (0700), whatever
the process umask (the command line also sets umask 077).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

from theranode.dicomio.headers import InstanceHeader, is_valid_uid
from theranode.service.errors import ServiceError

logger = logging.getLogger(__name__)

#: Mode of every file the node writes into its data folder (owner read/write only).
FILE_MODE = 0o600
#: Mode of every folder the node makes in its data folder (owner only).
DIR_MODE = 0o700

_PATIENT_KEY = re.compile(r"^[0-9a-f]{16}$")
#: ``link(2)`` errors of a file system without hard links (Linux man page).
_NO_HARD_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP)


class ArchiveError(ServiceError):
    """The archive could not write or refused to write (disk full, I/O error)."""


class DiskFullError(ArchiveError):
    """Free space on the archive's disk is below the configured minimum."""


class AlreadyPlaced(ArchiveError):
    """An instance's archive path holds a file already (another association or node)."""

    def __init__(self, path: Path, sha256: str) -> None:
        super().__init__(f"{path.name} is archived already")
        self.path = path
        self.sha256 = sha256


@dataclass(frozen=True)
class Staged:
    """Bytes written and fsynced in ``incoming/``, not yet in their place."""

    path: Path
    size: int


@dataclass(frozen=True)
class StoredFile:
    """A file durably in place."""

    path: Path
    sha256: str
    size: int


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (fsync of the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` with mode 0700, or tighten it (with a warning) if others have access.

    Data folders made before theranode restricted them were world-readable
    (archive, database, reports); making the top folder 0700 closes every
    path below it to other users at once.
    """
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(folder.stat().st_mode)
    if not mode & 0o077:
        return
    try:
        folder.chmod(DIR_MODE)
    except PermissionError:  # another user's folder: say so, but do not refuse to start
        logger.warning("Folder %s is open to other users (mode %03o) and this user may not "
                       "change it: make it 0700 (chmod 700)", folder, mode)
        return
    logger.warning("Folder %s was open to other users (mode %03o); made it 0700", folder, mode)


def make_private_file(path: Path) -> None:
    """Create an empty ``path`` with mode 0600, or make an existing one 0600.

    For files another library creates by name with its own mode: SQLite makes
    a database 0644 and gives its ``-wal`` and ``-shm`` files the database
    file's mode, so an empty 0600 file made first keeps all three private.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _create_private(path: Path) -> BinaryIO:
    """Open ``path`` for writing, created (or truncated) with mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # an existing file keeps its mode through O_CREAT
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after return it survives a crash or power cut.

    A temporary sibling is written, flushed and fsynced, renamed over ``path``
    and the directory fsynced (the rename itself is only durable then). A
    reader never sees a partial file at ``path``.
    """
    temporary = path.with_name(path.name + ".tmp")
    try:
        with _create_private(temporary) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


class Archive:
    """Durable file storage under one data folder."""

    def __init__(
        self, data_dir: Path, min_free_disk_mb: int = 0, node_name: str | None = None
    ) -> None:
        self.root = data_dir
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        #: This node's temporary files (``incoming/<node_name>/`` on a shared archive).
        self.incoming = data_dir / "incoming" / node_name if node_name else data_dir / "incoming"
        self.archive = data_dir / "archive"
        self.conflicts = data_dir / "conflicts"
        self.quarantine = data_dir / "quarantine"
        self._known_dirs: set[Path] = set()
        self._dir_lock = threading.Lock()
        for folder in (self.incoming, self.archive, self.conflicts, self.quarantine):
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)

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

    def move_patient_folder(self, old_key: str, new_key: str) -> None:
        """Move ``archive/<old_key>/`` to ``archive/<new_key>/`` (re-keying,
        :mod:`theranode.service.receive.rekey`).

        Idempotent, so a start-up interrupted half-way repeats it: nothing to
        move when the old folder is gone; merged file by file when both exist
        (a file already at its new place is left where it was).
        """
        for key in (old_key, new_key):
            if not _PATIENT_KEY.match(key):  # defence in depth: keys are hex digests
                raise ArchiveError(f"Refusing to build a path from patient key {key[:40]!r}")
        source, target = self.archive / old_key, self.archive / new_key
        if source.is_dir():
            _merge_folder(source, target)
            fsync_directory(self.archive)
        self._known_dirs.clear()

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
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            for new_dir in reversed(created):
                fsync_directory(new_dir.parent)
            self._known_dirs.add(directory)

    def stage(self, data: bytes) -> Staged:
        """Write ``data`` to a temporary file in ``incoming/`` and fsync it.

        The GIL is released during the write and the fsync, so a worker thread
        parses and hashes the instance meanwhile (:meth:`Ingest.receive`).
        A staged file becomes visible only through :meth:`place`.
        """
        temporary = self.incoming / f"{uuid.uuid4().hex}.tmp"
        try:
            with _create_private(temporary) as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise ArchiveError(f"Could not write to {self.incoming}: {exc}") from exc
        return Staged(path=temporary, size=len(data))

    def place(self, staged: Staged, final_path: Path, sha256: str) -> StoredFile:
        """Atomically rename a staged file to ``final_path`` and make it durable."""
        try:
            self._ensure_dir(final_path.parent)
            os.replace(staged.path, final_path)
            fsync_directory(final_path.parent)
        except OSError as exc:
            staged.path.unlink(missing_ok=True)
            raise ArchiveError(f"Could not place {final_path.name}: {exc}") from exc
        return StoredFile(path=final_path, sha256=sha256, size=staged.size)

    def discard(self, staged: Staged) -> None:
        """Remove a staged file that will not be kept (e.g. an identical duplicate)."""
        staged.path.unlink(missing_ok=True)

    def store_instance(self, staged: Staged, header: InstanceHeader, sha256: str) -> StoredFile:
        """Place a staged instance at its archive path, never over an existing file.

        Raises
        ------
        AlreadyPlaced
            A file is at that path already; the staged file is left for the caller.
        """
        final_path = self.instance_path(header)
        try:
            self._ensure_dir(final_path.parent)
            os.link(staged.path, final_path)
        except FileExistsError:
            raise AlreadyPlaced(final_path, sha256_hex(final_path.read_bytes())) from None
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:  # e.g. an SMB mount: one node, rename as before
                if final_path.exists():
                    raise AlreadyPlaced(final_path,
                                        sha256_hex(final_path.read_bytes())) from None
                return self.place(staged, final_path, sha256)
            staged.path.unlink(missing_ok=True)
            raise ArchiveError(f"Could not place {final_path.name}: {exc}") from exc
        staged.path.unlink(missing_ok=True)
        fsync_directory(final_path.parent)
        return StoredFile(path=final_path, sha256=sha256, size=staged.size)

    def store_conflict(self, staged: Staged, header: InstanceHeader, sha256: str) -> StoredFile:
        """Keep a conflicting duplicate aside, never overwriting the archived one."""
        path = self.conflicts / f"{header.sop_instance_uid}.{sha256[:12]}.dcm"
        return self.place(staged, path, sha256)

    def store_quarantine(self, staged: Staged, sha256: str) -> StoredFile:
        """Keep bytes that could not be filed; named by time and content hash."""
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        return self.place(staged, self.quarantine / f"{stamp}-{sha256[:12]}.dcm", sha256)

    def quarantine_bytes(self) -> int:
        """Disk space the files in ``quarantine/`` take now (their sizes, summed)."""
        total = 0
        with os.scandir(self.quarantine) as entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:  # removed meanwhile
                    continue
        return total


def _merge_folder(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, or move its content into an existing ``target``."""
    if not target.exists():
        os.rename(source, target)
        return
    for child in source.iterdir():
        destination = target / child.name
        if child.is_dir() and not child.is_symlink():
            _merge_folder(child, destination)
        elif not destination.exists():
            os.replace(child, destination)
        else:
            logger.warning("Re-keying left %s in place: %s exists", child, destination)
    try:
        source.rmdir()
    except OSError:  # something was left in place (logged above)
        pass
