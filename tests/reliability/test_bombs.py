"""Compression and element bombs: refused by size or count before they cost memory or CPU.

A Deflated data set is inflated incrementally up to ``security.max_inflated_mb``
and elements and sequence items are counted before pydicom parses anything
(:func:`theranode.dicomio.integrity.check_limits`); beyond a limit the C-STORE is answered
0xC102 with an Error Comment naming the setting, and the bytes as received are
kept in quarantine. Nothing here asserts on time: the refusals are by size
and count, and memory is measured with :mod:`tracemalloc`.
"""

from __future__ import annotations

import tracemalloc
from datetime import datetime
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from tests.reliability import bombs
from tests.service import factory
from tests.service.keys import TEST_KEYER
from tests.service.nodes import make_settings, running_node, send
from theranode.config.schema import SecuritySettings
from theranode.service.receive.archive import Archive, sha256_hex
from theranode.service.receive.ingest import (
    LIMIT_EXCEEDED,
    OUT_OF_RESOURCES,
    SUCCESS,
    Ingest,
    Peer,
    Rejected,
    decode_limits,
    parse,
)
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

CT = factory.CT
PEER = Peer("BOMBER", "127.0.0.1")


def _ingest(tmp_path: Path, **security: int) -> Ingest:
    archive = Archive(tmp_path / "data", min_free_disk_mb=0)
    index = IndexStore(open_database(tmp_path / "data" / "index.db"))
    return Ingest(archive, index, TEST_KEYER, security=SecuritySettings(**security))


def _quarantined(ingest: Ingest) -> list[tuple[bytes, int, str]]:
    rows = ingest.index.recent_quarantine()
    return [((ingest.archive.root / r["path"]).read_bytes(), r["status"], r["reason"])
            for r in rows]


def test_deflate_bomb_is_refused_at_the_inflated_size_with_bounded_memory():
    wire = bombs.deflate_bomb(64)  # 64 MB inflated, about 65 kB on the wire
    assert len(wire) < 2**20
    limits = decode_limits(SecuritySettings(max_inflated_mb=4))
    tracemalloc.start()
    try:
        with pytest.raises(Rejected) as refused:
            parse(wire, CT, None, limits, keyer=TEST_KEYER)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == LIMIT_EXCEEDED
    assert "max_inflated_mb" in refused.value.reason
    assert peak < 12 * 2**20, f"{peak / 2**20:.0f} MB allocated for a 4 MB inflation limit"


def test_deflated_object_within_the_limit_is_stored_as_received(tmp_path: Path):
    wire = bombs.deflate_bomb(4)
    ingest = _ingest(tmp_path, max_inflated_mb=8)
    try:
        outcome = ingest.receive(wire, PEER, DeflatedExplicitVRLittleEndian, CT)
    finally:
        ingest.close()
    assert outcome.status == SUCCESS, outcome.comment
    assert outcome.header is not None
    row = ingest.index.instance(outcome.header.sop_instance_uid)
    assert row is not None
    assert (ingest.archive.root / row["path"]).read_bytes() == wire, "archived deflated, as sent"


def test_deflate_bomb_is_quarantined_as_the_wire_bytes(tmp_path: Path):
    wire = bombs.deflate_bomb(16)
    ingest = _ingest(tmp_path, max_inflated_mb=4)
    try:
        outcome = ingest.receive(wire, PEER, DeflatedExplicitVRLittleEndian, CT)
    finally:
        ingest.close()
    assert outcome.status == LIMIT_EXCEEDED
    assert "max_inflated_mb" in outcome.comment
    assert _quarantined(ingest) == [(wire, LIMIT_EXCEEDED, outcome.comment)]
    assert ingest.index.counts()["instances"] == 0


@pytest.mark.parametrize("deflated", [False, True], ids=["uncompressed", "deflated"])
def test_many_sequence_items_are_refused_by_count(tmp_path: Path, deflated: bool):
    wire = bombs.item_bomb(200_000 if not deflated else 400_000, deflated=deflated)
    syntax = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ingest = _ingest(tmp_path)  # the shipped default: 50,000 items
    try:
        outcome = ingest.receive(wire, PEER, syntax, factory.RTSTRUCT)
    finally:
        ingest.close()
    assert outcome.status == LIMIT_EXCEEDED
    assert outcome.comment.startswith("max_sequence_items 50000 exceeded")
    assert _quarantined(ingest) == [(wire, LIMIT_EXCEEDED, outcome.comment)]


def test_items_and_elements_up_to_the_limits_are_stored(tmp_path: Path):
    ingest = _ingest(tmp_path, max_sequence_items=1000, max_elements=3000)
    try:
        # 999 items + the structure set's own Referenced Frame of Reference item = 1000
        items = ingest.receive(bombs.item_bomb(999, deflated=True), PEER,
                               DeflatedExplicitVRLittleEndian, factory.RTSTRUCT)
        elements = ingest.receive(bombs.element_bomb(2900), PEER, ExplicitVRLittleEndian,
                                  factory.RTSTRUCT)
    finally:
        ingest.close()
    assert (items.status, elements.status) == (SUCCESS, SUCCESS), (items, elements)


def test_many_elements_are_refused_by_count(tmp_path: Path):
    wire = bombs.element_bomb(5000)
    ingest = _ingest(tmp_path, max_elements=3000)
    try:
        outcome = ingest.receive(wire, PEER, ExplicitVRLittleEndian, factory.RTSTRUCT)
    finally:
        ingest.close()
    assert outcome.status == LIMIT_EXCEEDED
    assert "max_elements" in outcome.comment
    assert _quarantined(ingest) == [(wire, LIMIT_EXCEEDED, outcome.comment)]


def test_free_disk_check_counts_the_bytes_archived_not_the_inflated_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The archive keeps a Deflated object deflated, so the wire size is what needs room."""
    wire = bombs.deflate_bomb(4)  # 4 MB inflated, about 5 kB archived
    ingest = _ingest(tmp_path, max_inflated_mb=8)
    ingest.archive.min_free_bytes = 100 * 2**20
    try:
        monkeypatch.setattr(ingest.archive, "free_bytes",
                            lambda: ingest.archive.min_free_bytes + len(wire) - 1)
        short = ingest.receive(wire, PEER, DeflatedExplicitVRLittleEndian, CT)
        monkeypatch.setattr(ingest.archive, "free_bytes",
                            lambda: ingest.archive.min_free_bytes + len(wire))
        room = ingest.receive(wire, PEER, DeflatedExplicitVRLittleEndian, CT)
    finally:
        ingest.close()
    assert short.status == OUT_OF_RESOURCES and "configured minimum" in short.comment
    assert room.status == SUCCESS, room.comment
    archived = list((ingest.archive.archive).rglob("*.dcm"))
    assert [p.stat().st_size for p in archived] == [len(wire)]


def test_node_refuses_the_issues_bombs_with_its_shipped_limits_and_keeps_serving(
    tmp_path: Path,
):
    """Over a real association, default settings: each bomb 0xC102 with the setting named
    in its Error Comment and its wire bytes in quarantine; then a CT is stored."""
    settings = make_settings(tmp_path / "data")
    cases = bombs.bomb_cases(inflated_mb=300)
    good = factory.ct("GOOD", datetime(2024, 5, 7, 10), frame=factory.generate_uid())
    with running_node(settings) as node:
        answers = bombs.send_bombs(node.port, cases, tmp_path)
        assert send(node.port, [good]) == [SUCCESS]
        quarantine = node.index.recent_quarantine()
    expected = {"deflate": "max_inflated_mb 256 exceeded", "items": "max_sequence_items 50000",
                "deflated items": "max_sequence_items 50000", "elements": "max_elements 500000"}
    for answer in answers:
        assert answer.status == LIMIT_EXCEEDED, answer
        assert answer.comment.startswith(expected[answer.name]), answer
    assert [r["status"] for r in quarantine] == [LIMIT_EXCEEDED] * len(cases)
    kept = {sha256_hex((settings.data_dir / r["path"]).read_bytes()[-4096:]) for r in quarantine}
    assert kept == {sha256_hex(case.data[-4096:]) for case in cases}, "the bytes as received"
