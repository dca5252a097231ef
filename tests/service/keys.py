"""A fixed site secret for tests that file instances without a node (a node makes its own)."""

from __future__ import annotations

from pathlib import Path

from theranode.dicomio.headers import PatientKeyer
from theranode.service.receive.site_secret import SECRET_FILE

#: The patient keyer of tests that build :class:`~theranode.service.receive.ingest.Ingest` or
#: headers directly.
TEST_KEYER = PatientKeyer(b"theranode tests: fixed 32-byte k")


def use_test_secret(data_dir: Path) -> None:
    """Make :data:`TEST_KEYER`'s secret the site secret of a node that will use ``data_dir``.

    For tests that file instances with :data:`TEST_KEYER` before a node starts
    on the same data folder, as the node itself would have filed them.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    path.write_bytes(TEST_KEYER.secret)
    path.chmod(0o600)
