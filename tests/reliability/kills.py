"""Crash safety at scale: SIGKILL ``theranode serve`` at random moments under parallel senders.

:func:`run_kills` starts the node as a real process, lets several pynetdicom
senders store their own series in parallel, kills the node with SIGKILL after
a random delay, restarts it and checks that every instance any sender saw
acknowledged so far is indexed and archived whole (the bytes hash as indexed
and the pixel data equals what was sent). The senders then resume with what
was not acknowledged (resending may hit an instance that was stored but not
acknowledged: an identical duplicate, answered Success). After the last kill
everything left is sent and the whole set is verified. Shared by the CI test
(5 kills) and ``benchmarks/reliability.py`` (50 kills).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread

from service.archive import sha256_hex
from service.store import open_database
from service.store.index import IndexStore
from tests.reliability.processes import start_node, write_config
from tests.service import factory
from tests.service.nodes import scu

ACQUIRED = datetime(2024, 5, 7, 9, 15)


@dataclass
class KillReport:
    """What a kill run did and found."""

    kills: int = 0
    kills_mid_transfer: int = 0
    instances: int = 0
    acknowledged: int = 0
    duplicates_after_restart: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class _Sender:
    """One sender's files and which of them the node acknowledged."""

    name: str
    files: list[tuple[str, Path, str]]  # SOP Instance UID, file, sha256 of the pixel data
    acknowledged: dict[str, str] = field(default_factory=dict)

    def pending(self) -> list[tuple[str, Path, str]]:
        return [f for f in self.files if f[0] not in self.acknowledged]


def write_senders(folder: Path, senders: int, per_sender: int, size: int = 64) -> list[_Sender]:
    rng = np.random.default_rng(50)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in range(senders):
        study, series, frame = (factory.generate_uid() for _ in range(3))
        files = []
        for i in range(per_sender):
            ds = factory.ct(f"KILL{s}", ACQUIRED + timedelta(seconds=i), frame=frame,
                            study=study, series=series)
            ds.Rows = ds.Columns = size
            ds.PixelData = rng.integers(0, 4096, size * size, dtype=np.uint16).tobytes()
            path = folder / f"s{s}-{i:06d}.dcm"
            path.write_bytes(factory.encode(ds))
            files.append((str(ds.SOPInstanceUID), path, sha256_hex(ds.PixelData)))
        out.append(_Sender(f"KILL{s}", files))
    return out


def _send_until_broken(port: int, sender: _Sender) -> None:
    ae = scu(sender.name)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2  # notice a killed peer soon
    assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE")
    if not assoc.is_established:
        return
    for uid, path, pixels in sender.pending():
        try:
            answer = assoc.send_c_store(path)
        except Exception:
            return
        if "Status" in answer and answer.Status == 0x0000:
            sender.acknowledged[uid] = pixels
        if not assoc.is_established:
            return
    assoc.release()


def verify(data_dir: Path, senders: list[_Sender], report: KillReport) -> None:
    """Every acknowledged instance indexed and archived whole; every indexed file whole."""
    index = IndexStore(open_database(data_dir / "theranode.db"))
    for sender in senders:
        for uid, pixels in sender.acknowledged.items():
            row = index.instance(uid)
            if row is None:
                report.problems.append(f"acknowledged {uid} is not indexed")
                continue
            stored = (data_dir / row["path"]).read_bytes()
            if sha256_hex(stored) != row["sha256"] or \
                    sha256_hex(dcmread(BytesIO(stored)).PixelData) != pixels:
                report.problems.append(f"acknowledged {uid} is not archived whole")
    index.db.conn.close()


def _round(port: int, senders: list[_Sender], delay_s: float, node_kill: object) -> int:
    before = sum(len(s.acknowledged) for s in senders)
    threads = [threading.Thread(target=_send_until_broken, args=(port, s)) for s in senders]
    for thread in threads:
        thread.start()
    time.sleep(delay_s)
    during = sum(len(s.acknowledged) for s in senders)
    node_kill()  # type: ignore[operator]
    for thread in threads:
        thread.join(timeout=120)
    return during - before


def run_kills(work: Path, kills: int = 5, senders: int = 3, per_sender: int = 400,
              seed: int = 1) -> KillReport:
    """Kill the node ``kills`` times under ``senders`` parallel senders; verify after each."""
    rng = random.Random(seed)
    team = write_senders(work / "files", senders, per_sender)
    data_dir = work / "data"
    config = work / "node.toml"
    port = write_config(config, data_dir)
    report = KillReport(instances=senders * per_sender)
    started = time.monotonic()
    node = start_node(config, port)
    try:
        for _ in range(kills):
            acked = _round(port, team, rng.uniform(0.2, 1.5), node.kill)
            report.kills += 1
            report.kills_mid_transfer += int(acked > 0 and any(s.pending() for s in team))
            node = start_node(config, port)  # restart: recovery runs before it listens
            verify(data_dir, team, report)
        threads = [threading.Thread(target=_send_until_broken, args=(port, s)) for s in team]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=3600)
    finally:
        if node.stop() != 0:
            report.problems.append("the node did not stop cleanly after the last round")
    report.seconds = time.monotonic() - started
    report.acknowledged = sum(len(s.acknowledged) for s in team)
    verify(data_dir, team, report)
    index = IndexStore(open_database(data_dir / "theranode.db"))
    counts = index.counts()
    if report.acknowledged != report.instances or counts["instances"] != report.instances:
        report.problems.append(f"{report.acknowledged} acknowledged and {counts['instances']} "
                               f"indexed of {report.instances} sent")
    if counts["quarantine"] or counts["conflicts"]:
        report.problems.append(f"after kills: {counts['quarantine']} quarantined, "
                               f"{counts['conflicts']} conflicts (expected none)")
    if list((data_dir / "incoming").iterdir()):
        report.problems.append("half-written files left in incoming/ after a clean restart")
    log = node.log.read_text(errors="replace")
    report.duplicates_after_restart = log.count("Identical duplicate of")
    return report
