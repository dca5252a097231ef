"""Several listener processes on one port: every instance filed once, every series grouped."""

from __future__ import annotations

import logging
import os
import threading
from datetime import datetime
from pathlib import Path

import pytest

from tests.service import factory
from tests.service.nodes import make_settings, running_node, send
from theranode.config.schema import SecuritySettings
from theranode.dicomio.headers import instance_header
from theranode.service.receive.listeners import security_share

ACQUIRED = datetime(2024, 5, 7, 10, 0)
SENDERS = 16


def test_the_quarantine_is_shared_out_and_the_association_limits_apply_per_process():
    shared = security_share(SecuritySettings(max_associations=8, max_connections=31,
                                             quarantine_quota_mb=1000), 3)
    assert (shared.max_associations, shared.max_connections, shared.quarantine_quota_mb) == (
        8, 31, 334)
    assert security_share(SecuritySettings(quarantine_quota_mb=1), 4).quarantine_quota_mb == 1


def test_two_processes_share_the_port_and_file_everything_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="theranode.service.receive.scp")
    # As many senders as one process's association limit: the kernel need not spread
    # them evenly, and no association may be refused for that.
    settings = make_settings(tmp_path / "data", node={"listener_processes": 2},
                             security={"max_associations": SENDERS,
                                       "max_connections": 2 * SENDERS})
    datasets = [[factory.ct(f"LISTEN{p:02d}", ACQUIRED, frame=f"1.2.826.0.1.3680043.10.7.{p}")
                 for _ in range(3)] for p in range(SENDERS)]
    statuses: dict[int, list[int]] = {}
    with running_node(settings) as node:
        (child,) = node.listeners.pids

        def store(p: int) -> None:
            statuses[p] = send(node.port, datasets[p])

        senders = [threading.Thread(target=store, args=(p,)) for p in range(SENDERS)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(60)
        assert statuses == {p: [0x0000] * 3 for p in range(SENDERS)}
        for p in range(SENDERS):
            for ds in datasets[p]:
                assert node.index.instance(ds.SOPInstanceUID) is not None
        keys = {instance_header(ds, node.keyer).patient_key for p in datasets for ds in p}
        node.regrouper.wait_idle(30)
        grouped = {key for key in keys if node.index.grouping_of_patient(key)}
    assert grouped == keys  # series a listener process received reached the regrouper
    accepted = {r.process for r in caplog.records
                if r.getMessage().startswith("Association accepted")}
    assert accepted == {os.getpid(), child}  # the kernel gave each process some
    assert not Path(f"/proc/{child}").exists()  # stopped with the node
