"""Crash safety at scale: SIGKILL ``theranode serve`` at random moments under parallel senders.

:func:`run_kills` starts the node as a real process, lets several pynetdicom
senders store their own series in parallel, kills the node with SIGKILL once
a random number of instances has been acknowledged in the round (so the kill
lands mid-transfer however loaded the machine is), restarts it and checks that every instance any sender saw
acknowledged so far is indexed and archived whole (the bytes hash as indexed
and the pixel data equals what was sent). The senders then resume with what
was not acknowledged (resending may hit an instance that was stored but not
acknowledged: an identical duplicate, answered Success). After the last kill
everything left is sent and the whole set is verified. Shared by the CI test
(5 kills) and ``benchmarks/reliability.py`` (50 kills).

The senders, the retrying store loop (:func:`keep_sending`) and the checks
(:func:`verify`, :func:`check_all_filed`) are also those of the combined run
(:mod:`tests.reliability.combined_kills`), where the senders store courses
while jobs run.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event

from tests.reliability.processes import NodeProcess, start_node, write_config
from tests.service import factory
from tests.service.nodes import scu
from theranode.service.receive.archive import sha256_hex
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore

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
class Sender:
    """One sender's files and which of them the node acknowledged."""

    name: str
    files: list[tuple[str, Path, str]]  # SOP Instance UID, file, its content_digest
    acknowledged: dict[str, str] = field(default_factory=dict)
    connected: bool = False  # holds an association (perhaps to a node just killed)
    answered_at: float = 0.0  # time.monotonic() of the association or the last Success

    def pending(self) -> list[tuple[str, Path, str]]:
        return [f for f in self.files if f[0] not in self.acknowledged]

    def storing(self, within_s: float = 1.0) -> bool:
        """A transfer is under way: an association, and an answer within ``within_s``."""
        return self.connected and time.monotonic() - self.answered_at < within_s


def content_digest(ds: Dataset) -> str:
    """sha256 of an instance's pixel data, or of its data set re-encoded when it has none."""
    if "PixelData" in ds:
        return sha256_hex(ds.PixelData)
    encoded = BytesIO()
    dcmwrite(encoded, Dataset(ds), implicit_vr=False, little_endian=True)  # without file meta
    return sha256_hex(encoded.getvalue())


def sender_of_files(name: str, paths: Iterable[Path]) -> Sender:
    """A sender (AE title ``name``) of existing DICOM files."""
    files = []
    for path in paths:
        ds = dcmread(path)
        files.append((str(ds.SOPInstanceUID), path, content_digest(ds)))
    return Sender(name, files)


def write_senders(folder: Path, senders: int, per_sender: int, size: int = 64) -> list[Sender]:
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
        out.append(Sender(f"KILL{s}", files))
    return out


def _no_delay(event: Event) -> None:
    """TCP_NODELAY on the sender's socket, as the suite's dcmtk senders (``TCP_NODELAY=1``):
    without it each C-STORE waits about 40 ms for a delayed ACK."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _send_until_broken(port: int, sender: Sender, no_delay: bool = False) -> None:
    ae = scu(sender.name)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2  # notice a killed peer soon
    handlers = [(evt.EVT_CONN_OPEN, _no_delay)] if no_delay else []
    assoc = ae.associate("127.0.0.1", port, ae_title="THERANODE", evt_handlers=handlers)
    if not assoc.is_established:
        return
    sender.answered_at = time.monotonic()
    sender.connected = True
    try:
        for uid, path, pixels in sender.pending():
            try:
                answer = assoc.send_c_store(path)
            except Exception:
                return
            if "Status" in answer and answer.Status == 0x0000:
                sender.acknowledged[uid] = pixels
                sender.answered_at = time.monotonic()
            if not assoc.is_established:
                return
        assoc.release()
    finally:
        sender.connected = False


def keep_sending(port: int, sender: Sender, retry_s: float = 0.3) -> None:
    """Store every file of ``sender``, reconnecting after a broken association.

    As a modality or PACS retries: whatever was not acknowledged is sent again
    on a new association ``retry_s`` after the node went away, until the node
    has acknowledged every file. The socket has TCP_NODELAY (about 150
    instances/s on one association instead of about 20).
    """
    while sender.pending():
        _send_until_broken(port, sender, no_delay=True)
        if sender.pending():
            time.sleep(retry_s)


def verify(data_dir: Path, senders: list[Sender]) -> list[str]:
    """Every acknowledged instance indexed and archived whole; every indexed file whole.

    Safe while the senders store: each sender's acknowledgements are copied
    first, and only then is the index read.
    """
    acknowledged = [dict(sender.acknowledged) for sender in senders]
    problems = []
    index = IndexStore(open_database(data_dir / "theranode.db"))
    try:
        for uid, pixels in (item for seen in acknowledged for item in seen.items()):
            row = index.instance(uid)
            if row is None:
                problems.append(f"acknowledged {uid} is not indexed")
                continue
            stored = (data_dir / row["path"]).read_bytes()
            if sha256_hex(stored) != row["sha256"] or \
                    content_digest(dcmread(BytesIO(stored))) != pixels:
                problems.append(f"acknowledged {uid} is not archived whole")
        with index.lock:
            rows = list(index.db.query("select sop_instance_uid, path, sha256 from instances"))
    finally:
        index.db.conn.close()
    for row in rows:
        path = data_dir / row["path"]
        if not path.is_file() or sha256_hex(path.read_bytes()) != row["sha256"]:
            problems.append(f"indexed {row['sop_instance_uid']} is missing or half-written "
                            f"in the archive")
    return problems


def check_all_filed(data_dir: Path, senders: list[Sender]) -> list[str]:
    """After the last restart: every file acknowledged and indexed once, nothing else kept."""
    problems = verify(data_dir, senders)
    sent = sum(len(s.files) for s in senders)
    acknowledged = sum(len(s.acknowledged) for s in senders)
    index = IndexStore(open_database(data_dir / "theranode.db"))
    counts = index.counts()
    index.db.conn.close()
    if acknowledged != sent or counts["instances"] != sent:
        problems.append(f"{acknowledged} acknowledged and {counts['instances']} "
                        f"indexed of {sent} sent")
    if counts["quarantine"] or counts["conflicts"]:
        problems.append(f"after kills: {counts['quarantine']} quarantined, "
                        f"{counts['conflicts']} conflicts (expected none)")
    if list((data_dir / "incoming").iterdir()):
        problems.append("half-written files left in incoming/ after a clean restart")
    return problems


def _round(port: int, senders: list[Sender], kill_after: int, node_kill: object) -> int:
    """Send until ``kill_after`` more instances are acknowledged, then kill the node.

    Returns how many were acknowledged before the kill.
    """
    def acknowledged() -> int:
        return sum(len(s.acknowledged) for s in senders)

    before = acknowledged()
    threads = [threading.Thread(target=_send_until_broken, args=(port, s)) for s in senders]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 120
    while acknowledged() - before < kill_after and time.monotonic() < deadline:
        time.sleep(0.005)
    during = acknowledged()
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
        for done in range(kills):
            # Leave instances for the rounds still to come and for the last send.
            left = sum(len(s.pending()) for s in team)
            acked = _round(port, team, rng.randint(1, max(1, left // (kills - done + 1))),
                           node.kill)
            report.kills += 1
            report.kills_mid_transfer += int(acked > 0 and any(s.pending() for s in team))
            node = start_node(config, port)  # restart: recovery runs before it listens
            report.problems += verify(data_dir, team)
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
    report.problems += check_all_filed(data_dir, team)
    report.duplicates_after_restart = identical_duplicates(node)
    return report


def identical_duplicates(node: NodeProcess) -> int:
    """How many resent instances the node answered as identical duplicates (from its log)."""
    return node.log.read_text(errors="replace").count("Identical duplicate of")
