"""The regrouper finds series that no node grouped, on SQLite and on PostgreSQL.

Two index stores on one database stand for two nodes: node A indexes the first instance
of a new series and is "killed" before its regrouper runs; node B's regrouper must group
that series on its own, without a new series of the patient or a restart.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

import pytest

from tests.service import factory
from tests.service.keys import TEST_KEYER
from tests.waiting import wait_for
from theranode.config.schema import GroupingSettings
from theranode.dicomio.headers import instance_header
from theranode.service.plan import regroup
from theranode.service.plan.regroup import Regrouper, rules_from_settings
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

INJECTION = datetime(2024, 5, 7, 9, 15)
RULES = rules_from_settings(GroupingSettings())


def index_spect(index: IndexStore, patient_id: str) -> str:
    """Index one SPECT instance (as a node does before its Success); return its series UID."""
    ds = factory.nm(patient_id, INJECTION, INJECTION + timedelta(hours=4))
    data = factory.encode(ds)
    index.add_instance(instance_header(ds, TEST_KEYER), path=f"archive/{ds.SOPInstanceUID}.dcm",
                       sha256=sha256_hex(data), size=len(data),
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                       received=INJECTION + timedelta(hours=5), calling_ae="CAMERA", peer="")
    return str(ds.SeriesInstanceUID)


def grouped_series(index: IndexStore) -> set[str]:
    return {row["series_uid"] for row in index.db.query("select series_uid from grouping")}


def test_a_series_indexed_by_a_node_killed_before_grouping_is_grouped_by_another(
    database_url: str,
) -> None:
    node_a = IndexStore(open_database(database_url))
    node_b = IndexStore(open_database(database_url))
    series = index_spect(node_a, "P1")  # node A is killed here: its regrouper never runs
    assert node_b.ungrouped_patient_keys() == [TEST_KEYER("P1", "")]
    grouped: list[str] = []
    regrouper = Regrouper(node_b, RULES, on_grouped=grouped.append, check_every_s=0.1)
    regrouper.start()
    try:
        wait_for(lambda: series in grouped_series(node_b), 10, "node B to group the series")
    finally:
        regrouper.stop()
    assert grouped == [TEST_KEYER("P1", "")], "the planner hears of the patient too"
    assert node_b.ungrouped_patient_keys() == []


def test_a_patient_whose_grouping_fails_is_logged_once_then_grouped_at_its_next_series(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    index = IndexStore(open_database(database_url))
    index_spect(index, "P1")
    patient = TEST_KEYER("P1", "")

    def broken(*args: object) -> None:
        raise ValueError("a grouping bug")

    monkeypatch.setattr(regroup, "group_patient", broken)
    regrouper = Regrouper(index, RULES, check_every_s=0.05)
    with caplog.at_level(logging.ERROR):
        regrouper.start()
        try:
            wait_for(lambda: "Grouping failed" in caplog.text, 10, "the grouping error")
            time.sleep(0.5)  # ten periods
            assert caplog.text.count("Grouping failed for patient") == 1
            assert index.ungrouped_patient_keys() == [patient]
            monkeypatch.undo()  # the bug is fixed; the patient's next series arrives
            regrouper.request(patient)
            assert regrouper.wait_idle()
        finally:
            regrouper.stop()
    assert index.ungrouped_patient_keys() == []
