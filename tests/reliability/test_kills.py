"""Crash safety at scale (CI: 5 SIGKILLs under 3 parallel senders; the full run kills
50 times with ``benchmarks/reliability.py``). The single-kill case is in
tests/service/test_crash.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.kills import run_kills


@pytest.mark.slow
def test_repeated_sigkills_under_parallel_senders_lose_nothing_acknowledged(tmp_path: Path):
    report = run_kills(tmp_path, kills=5, senders=3, per_sender=200, seed=5)
    assert report.problems == [], "\n".join(report.problems[:20])
    assert report.kills == 5
    assert report.kills_mid_transfer == 5, "every kill lands while instances are in flight"
    assert report.acknowledged == report.instances == 600
