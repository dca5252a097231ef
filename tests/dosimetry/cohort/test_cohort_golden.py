"""Paper-sized synthetic cohort, fixed seed: every result against a committed golden file.

Regenerate (after a deliberate change of a method, never to make a failure go away) with
``THERANODE_WRITE_GOLDEN=1 pytest tests/dosimetry/cohort/test_cohort_golden.py`` and
review the diff.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.synthetic_cohort import synthetic_cohort
from theranode.dosimetry.cohort.analysis import analyse_cohort
from theranode.dosimetry.cohort.results import as_plain

GOLDEN = Path(__file__).with_name("golden_paper_cohort_seed2024.json")
RTOL = 1e-3
ATOL = 1e-6


def _compare(actual: object, expected: object, path: str = "$") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        if set(actual) != set(expected):
            return [f"{path}: keys {sorted(set(actual) ^ set(expected))} differ"]
        return [
            m for key in expected for m in _compare(actual[key], expected[key], f"{path}.{key}")
        ]
    if isinstance(expected, list) and isinstance(actual, list):
        if len(actual) != len(expected):
            return [f"{path}: length {len(actual)} != {len(expected)}"]
        return [
            m
            for i, (a, e) in enumerate(zip(actual, expected))
            for m in _compare(a, e, f"{path}[{i}]")
        ]
    if isinstance(expected, float) or isinstance(actual, float):
        if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
            if math.isclose(actual, expected, rel_tol=RTOL, abs_tol=ATOL):
                return []
        return [f"{path}: {actual!r} != {expected!r}"]
    return [] if actual == expected else [f"{path}: {actual!r} != {expected!r}"]


def test_paper_sized_cohort_matches_golden() -> None:
    report = analyse_cohort(synthetic_cohort(35, seed=2024).data)
    actual = json.loads(json.dumps(as_plain(report), allow_nan=False))
    if os.environ.get("THERANODE_WRITE_GOLDEN"):
        GOLDEN.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    differences = _compare(actual, expected)
    assert not differences, "\n".join(differences[:20])


def test_golden_has_the_paper_structure() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert expected["counts"]["patients"] == 35
    assert expected["counts"]["lesions"] == 146
    survival = {(r["endpoint"], r["index"]): r["result"]["type"] for r in expected["survival"]}
    assert len(survival) == 6
    assert expected["methods"]["cox_ties"] == "Efron"


@pytest.mark.parametrize("seed", [1, 2])
def test_report_never_holds_nan(seed: int) -> None:
    report = analyse_cohort(synthetic_cohort(35, seed=seed).data)
    json.dumps(as_plain(report), allow_nan=False)
