"""A value shared by the workers of a test session is computed once, by whichever asks first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.reliability.processes import ROOT
from tests.reliability.shared_runs import shared

#: One pytest-xdist worker asking for the value: computing it takes 1 s and leaves a file
#: naming the worker in the folder it was given; the worker prints the value it got.
WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from tests.reliability.shared_runs import shared

    class Factory:
        def getbasetemp(self):
            return Path(sys.argv[1])

    def compute(folder):
        (folder / sys.argv[2]).write_text("computed")
        time.sleep(1.0)
        return sys.argv[2]

    print(shared(Factory(), "value", compute))
""")


class _Factory:
    def __init__(self, base: Path) -> None:
        self.base = base

    def getbasetemp(self) -> Path:
        return self.base


def test_three_workers_asking_at_once_get_the_value_one_of_them_computed(
    tmp_path: Path,
) -> None:
    workers = []
    for name in ("gw0", "gw1", "gw2"):
        base = tmp_path / f"popen-{name}"  # as pytest-xdist lays out a session's folders
        base.mkdir()
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(base), name], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, env=dict(os.environ, PYTEST_XDIST_WORKER=name)))
    answers = {w.communicate(timeout=60)[0].strip() for w in workers}
    computed = sorted(p.name for p in (tmp_path / "shared-value" / "files").iterdir())
    assert len(computed) == 1, computed
    assert answers == set(computed)


def test_a_computation_that_fails_stores_nothing_and_the_next_caller_computes_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    factory = _Factory(tmp_path)

    def fail(folder: Path) -> int:
        (folder / "half-made").write_text("")
        raise RuntimeError("the run failed")

    with pytest.raises(RuntimeError, match="the run failed"):
        shared(factory, "run", fail)
    assert shared(factory, "run", lambda folder: len(list(folder.iterdir()))) == 0
    assert shared(factory, "run", lambda folder: 99) == 0, "computed once, then stored"
