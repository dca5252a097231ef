"""Crash safety: SIGKILL during a transfer loses nothing that was acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.peers import free_port, wait_for_port
from tests.service import factory
from tests.service.nodes import scu
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

INJECTION = datetime(2024, 5, 6, 9, 15)


def start_node(config: Path) -> subprocess.Popen[bytes]:
    log = open(config.with_suffix(".log"), "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "theranode", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=log,
    )


def big_ct_series(n: int) -> list:
    study, series = factory.generate_uid(), factory.generate_uid()
    datasets = []
    for i in range(n):
        ds = factory.ct("CRASH", INJECTION + timedelta(hours=4), frame="1.2.3.9", study=study,
                        series=series)
        ds.Rows = ds.Columns = 256
        ds.PixelData = np.full(256 * 256, i, dtype=np.uint16).tobytes()
        datasets.append(ds)
    return datasets


def send_until_killed(port: int, datasets: list, acknowledged: dict[str, str]) -> None:
    ae = scu()
    assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE")
    if not assoc.is_established:
        return
    for ds in datasets:
        try:
            status = assoc.send_c_store(ds)
        except Exception:
            return
        if "Status" in status and status.Status == 0x0000:
            acknowledged[ds.SOPInstanceUID] = sha256_hex(ds.PixelData)
        if not assoc.is_established:
            return
    assoc.release()


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_during_transfer_keeps_every_acknowledged_instance(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    port = free_port()
    data_dir = tmp_path / "data"
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nbind = "127.0.0.1"\nport = {port}\ndata_dir = "{data_dir}"\n'
        "[security]\nmin_free_disk_mb = 0\n"
    )
    datasets = big_ct_series(300)
    acknowledged: dict[str, str] = {}
    node = start_node(config)
    try:
        wait_for_port(port)
        sender = threading.Thread(target=send_until_killed, args=(port, datasets, acknowledged))
        sender.start()
        time.sleep(rng.uniform(0.5, 1.5))
        node.send_signal(signal.SIGKILL)
        node.wait()
        sender.join(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
    assert acknowledged, "the kill came before anything was acknowledged; lengthen the wait"
    assert len(acknowledged) < len(datasets), "the transfer finished before the kill"

    restarted = start_node(config)
    try:
        wait_for_port(port)
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=30) == 0, "the node stops cleanly on SIGTERM"
    finally:
        if restarted.poll() is None:
            restarted.kill()

    index = IndexStore(open_database(data_dir / "theranode.db"))
    for uid, pixel_digest in acknowledged.items():
        row = index.instance(uid)
        assert row is not None, f"acknowledged {uid} is not indexed"
        stored = (data_dir / row["path"]).read_bytes()
        assert sha256_hex(stored) == row["sha256"]
        assert sha256_hex(dcmread(BytesIO(stored)).PixelData) == pixel_digest
    for path in index.archived_paths():  # nothing half-written is indexed
        ds = dcmread(data_dir / path)
        assert len(ds.PixelData) == 256 * 256 * 2
    assert list((data_dir / "incoming").iterdir()) == []
    assert os.path.exists(data_dir / "theranode.db")
