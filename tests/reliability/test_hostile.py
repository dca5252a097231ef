"""Hostile input: ≥ 500 malformed or adversarial objects over real associations.

Every object is answered in bounded time, refused with a reason and kept in
quarantine, or stored and flagged where that is the documented behaviour
(docs/conformance.md section 4); nothing lands outside the data folder and
another patient's instances and grouping are untouched. The whole corpus runs
in CI (about 10 s); ``benchmarks/reliability.py`` runs it too and reports it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.corpus import Expect, Victim, hostile_corpus
from tests.reliability.hostile import run_hostile
from tests.service.nodes import make_settings


def test_corpus_has_every_family_and_at_least_500_objects():
    cases = hostile_corpus(Victim("V", "1.2.1", "1.2.2", "1.2.3", "1.2.4"))
    assert len(cases) >= 500
    assert len({c.family for c in cases}) == 14
    assert len({c.data for c in cases}) > 0.95 * len(cases), "cases differ from each other"
    assert {c.expect for c in cases} == set(Expect)


@pytest.mark.slow
def test_hostile_corpus_is_refused_or_flagged_and_harms_no_one(tmp_path: Path):
    settings = make_settings(tmp_path / "deep" / "down" / "data")
    report = run_hostile(tmp_path, settings, size=520, seed=177)
    assert report.size >= 500
    assert report.problems == [], "\n".join(report.problems[:40])
    assert report.quarantined > 250, "most of the corpus is refused and quarantined"
    assert report.seconds < 120, f"corpus took {report.seconds:.0f} s"
