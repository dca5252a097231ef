"""The site secret that keys pseudonymous patient keys, kept in the data folder.

``<data_dir>/site-secret`` holds 32 random bytes (:func:`secrets.token_bytes`),
made at the node's first start with mode 0600. Patient keys are
HMAC-SHA-256 of the PatientID under this secret
(:func:`theranode.dicomio.headers.patient_key`): without the file nobody can compute the
key of a given PatientID, nor test guesses against a key seen in a log or an
archive path. Back it up with the data folder: a node that finds it missing
makes a new one, and every patient key changes (the index and the archive are
re-keyed at start-up, :mod:`theranode.service.receive.rekey`; keys in older logs then no longer
match anything).

The file is created atomically: the bytes are written and fsynced under a
temporary name, then hard-linked to the final name, which fails if the name
exists. Of two processes starting at once, one links its secret and the other
reads it; both use the same one. A file that exists but cannot be read, or is
too short, stops the start: replacing it silently would change every key.

References
----------
RFC 2104 (HMAC); Python :mod:`secrets` (a cryptographically strong source).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import uuid
from pathlib import Path

from theranode.dicomio.headers import MIN_SECRET_BYTES, PatientKeyer
from theranode.service.errors import StartupError
from theranode.service.receive.archive import fsync_directory

logger = logging.getLogger(__name__)

#: File name of the secret inside the data folder.
SECRET_FILE = "site-secret"

#: Bytes of a new secret.
SECRET_BYTES = 32


def load_or_create(data_dir: Path) -> bytes:
    """The site secret of ``data_dir``, made (mode 0600) when there is none yet.

    Raises
    ------
    StartupError
        The file exists but cannot be read or holds fewer than
        :data:`~theranode.dicomio.headers.MIN_SECRET_BYTES` bytes, or cannot be created.
    """
    path = data_dir / SECRET_FILE
    if not os.path.lexists(path):
        _create(path)
    return _read(path)


def patient_keyer(data_dir: Path) -> PatientKeyer:
    """The :class:`~theranode.dicomio.headers.PatientKeyer` of the node whose data
    folder is ``data_dir``."""
    return PatientKeyer(load_or_create(data_dir))


def _read(path: Path) -> bytes:
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise StartupError(
            f"The site secret {path} exists but cannot be read ({exc.strerror}). It keys "
            "every pseudonymous patient key: give the node's user read access to it "
            "(chmod 600, owned by that user) or restore it from the data folder's backup. "
            "Do not delete it unless you accept that every patient key changes."
        ) from exc
    if len(secret) < MIN_SECRET_BYTES:
        raise StartupError(
            f"The site secret {path} holds {len(secret)} bytes; at least {MIN_SECRET_BYTES} "
            "were expected (the node writes 32 random bytes). Restore it from the data "
            "folder's backup; only if there is none, delete it (a new one is made at the "
            "next start and every patient key changes)."
        )
    return secret


def _create(path: Path) -> None:
    """Write a new secret under a temporary name, then link it into place unless one exists."""
    temporary = path.with_name(f".{SECRET_FILE}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_bytes(SECRET_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:  # another process made it first: use that one
            return
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            _create_exclusively(path)  # a filesystem without hard links
            return
        fsync_directory(path.parent)
        logger.warning("Created a new site secret %s; back it up with the data folder "
                       "(losing it changes every patient key)", path)
    except OSError as exc:
        raise StartupError(f"Cannot create the site secret {path}: {exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def _create_exclusively(path: Path) -> None:
    """Create the final name itself (O_EXCL), for filesystems without hard links.

    Two processes cannot both make it; one that reads it in the instant
    before its bytes are written stops with "holds 0 bytes" and starts the
    next time.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.write(fd, secrets.token_bytes(SECRET_BYTES))
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)
    logger.warning("Created a new site secret %s; back it up with the data folder "
                   "(losing it changes every patient key)", path)
