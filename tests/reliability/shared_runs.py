"""Values made once per test session, whichever pytest-xdist worker asks for them first.

The suite runs each test module whole on one of several xdist workers
(tests/conftest.py), so a module-level memo lives once per worker: the
outage, job-kill and graceful-shutdown tests all compare with one clean
two-cycle run, and each worker that ran one of them used to compute it
again (a node computing two cycles and a course, about a minute on CI).

:func:`shared` computes a value once per session. The first worker to ask
takes an exclusive lock (``fcntl.flock``) on a file in the session's shared
temporary folder (xdist gives every worker a ``popen-gwN`` folder below one
session folder; without xdist it is the session's own folder), computes the
value into a folder beside it and stores it; a worker asking meanwhile waits
for the lock, then loads what was stored. A computation that fails stores
nothing: the next caller computes again (and fails the same way, in its own
test). The stored file is Python's object serialisation, written and read
only by this test session inside its own temporary folder.
"""

from __future__ import annotations

import fcntl
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def session_folder(factory: Any) -> Path:
    """The temporary folder every worker of this session sees (``factory``: pytest's
    ``tmp_path_factory``)."""
    base = Path(factory.getbasetemp())
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def shared(factory: Any, key: str, compute: Callable[[Path], T]) -> T:
    """``compute(folder)`` once per session under ``key`` (which names its inputs); its value.

    ``folder`` is an empty folder for the files the computation writes; they
    stay for the session, so a value may hold paths into it.
    """
    root = session_folder(factory) / f"shared-{key}"
    root.mkdir(parents=True, exist_ok=True)
    stored = root / "value.pickle"
    with open(root / "lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if stored.exists():
                value: T = pickle.loads(stored.read_bytes())
                return value
            work = root / "files"
            shutil.rmtree(work, ignore_errors=True)  # left by a computation that failed
            work.mkdir()
            value = compute(work)
            partial = root / "value.pickle.partial"
            partial.write_bytes(pickle.dumps(value))
            os.replace(partial, stored)
            return value
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
