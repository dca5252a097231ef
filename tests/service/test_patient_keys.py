"""Patient keys: keyed by the site secret, made once, re-keyed on upgrade (issue #12, item 10)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import pickle
import stat
import threading
from datetime import datetime
from pathlib import Path

import pytest

from tests.service import factory
from tests.service.nodes import make_settings, running_node, send
from theranode.dicomio.headers import PatientKeyer, instance_header, patient_key
from theranode.service.cli.jobs_view import request_reprocess
from theranode.service.errors import StartupError
from theranode.service.plan.planner import cycle_target
from theranode.service.receive.archive import Archive
from theranode.service.receive.site_secret import SECRET_FILE, load_or_create
from theranode.service.store import open_database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobState, JobStore

WHEN = datetime(2024, 5, 7, 9, 0)
MRN = "123456"


def unkeyed_digest(patient_id: str, issuer: str = "") -> str:
    """The key before the site secret: a truncated, unkeyed SHA-256 (the weakness)."""
    return hashlib.sha256(f"{issuer}\\{patient_id}".encode()).hexdigest()[:16]


def test_keys_are_the_same_under_one_secret_and_differ_between_secrets():
    first, second = PatientKeyer(b"a" * 32), PatientKeyer(b"b" * 32)
    assert first(MRN) == first(MRN) == patient_key(MRN, "", b"a" * 32)
    assert first(MRN) != second(MRN)
    assert first(MRN, "HOSPITAL-A") != first(MRN, "HOSPITAL-B") != first(MRN)
    assert len(first(MRN)) == 16 and int(first(MRN), 16) >= 0


def test_a_short_secret_is_refused():
    with pytest.raises(ValueError, match="at least 16"):
        PatientKeyer(b"short")


def test_a_six_digit_mrn_is_not_recovered_from_the_key_the_node_stores(tmp_path: Path):
    """Before: the stored key was sha256(PatientID)[:16]; all 10⁶ MRNs tried in about a second."""
    with running_node(make_settings(tmp_path / "data")) as node:
        assert send(node.port, [factory.ct(MRN, WHEN, frame="1.2.3")]) == [0]
        (stored,) = node.index.patient_keys()
    recovered = [f"{n:06d}" for n in range(10**6) if unkeyed_digest(f"{n:06d}") == stored]
    assert recovered == []
    assert stored == PatientKeyer(load_or_create(tmp_path / "data"))(MRN)


def test_the_secret_is_made_once_with_mode_0600_and_kept(tmp_path: Path):
    secret = load_or_create(tmp_path)
    path = tmp_path / SECRET_FILE
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(tmp_path) == secret
    other = tmp_path / "other"
    other.mkdir()
    assert load_or_create(other) != secret
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", SECRET_FILE]  # no temporaries


def test_processes_starting_at_once_agree_on_one_secret(tmp_path: Path):
    found: list[bytes] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        found.append(load_or_create(tmp_path))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1
    assert (tmp_path / SECRET_FILE).read_bytes() == found[0]


def test_an_empty_or_unreadable_secret_stops_the_node_with_a_clear_message(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / SECRET_FILE).write_bytes(b"")
    with pytest.raises(StartupError, match="holds 0 bytes.*Restore it from the data folder"):
        running_node(make_settings(data)).__enter__()
    assert (data / SECRET_FILE).read_bytes() == b""  # never replaced silently
    (data / SECRET_FILE).unlink()
    (data / SECRET_FILE).mkdir()  # unreadable as a file, even for root
    with pytest.raises(StartupError, match="exists but cannot be read"):
        load_or_create(data)


def _old_node_database(data_dir: Path, url: str) -> tuple[str, str, str]:
    """A data folder and database (at ``url``) as the node wrote them before the site secret:
    unkeyed keys everywhere.

    Returns the old key, the archived file's old relative path and the cycle job's target.
    """
    archive = Archive(data_dir, min_free_disk_mb=0)
    db = open_database(url)
    index, jobs = IndexStore(db), JobStore(db)
    ds = factory.ct(MRN, WHEN, frame="1.2.3")
    data = factory.encode(ds)
    header = instance_header(ds, PatientKeyer(b"x" * 32))
    old_key = unkeyed_digest(MRN)
    header = dataclasses.replace(header, patient_key=old_key)
    staged = archive.stage(data)
    stored = archive.store_instance(staged, header, hashlib.sha256(data).hexdigest())
    relative = archive.relative(stored.path)
    assert relative.startswith(f"archive/{old_key}/")
    index.add_instance(header, path=relative, sha256=stored.sha256, size=stored.size,
                       transfer_syntax=str(ds.file_meta.TransferSyntaxUID), received=WHEN,
                       calling_ae="OLD", peer="")
    target = cycle_target(old_key, WHEN)
    jobs.submit(kind="cycle", target=target, patient_key=old_key, label="1.1",
                fingerprint="inputs", payload=pickle.dumps({"files": (relative,)}),
                created_at=WHEN.isoformat(), state=JobState.INCOMPLETE)
    jobs.bump_generation(target)
    db.close()
    return old_key, relative, target


def test_start_up_rekeys_a_database_and_archive_written_with_unkeyed_keys(
    tmp_path: Path, database_url: str
):
    """The index tables (patients, series, grouping, instance paths) and the jobs tables
    (patient key, targets, generations, archive paths inside the stored inputs)."""
    data_dir = tmp_path / "data"
    settings = make_settings(data_dir, database={"url": database_url})
    old_key, old_path, old_target = _old_node_database(data_dir, database_url)
    with running_node(settings) as node:
        new_key = node.keyer(MRN)
        assert new_key != old_key
        assert node.index.patient_keys() == [new_key]
        assert node.index.patient_id(new_key) == MRN
        assert {r["patient_key"] for r in node.index.series_of_patient(new_key)} == {new_key}
        new_path = old_path.replace(old_key, new_key)
        assert node.index.archived_paths() == {new_path}
        assert (data_dir / new_path).is_file()
        assert not (data_dir / "archive" / old_key).exists()  # the old digest is no folder name
        assert node.reconcile() == {}  # nothing left unindexed by the move
        (job,) = node.jobs.of_target(cycle_target(new_key, WHEN))
        assert job.patient_key == new_key and node.jobs.of_target(old_target) == []
        assert pickle.loads(job.payload) == {"files": (new_path,)}
        assert node.jobs.generation(cycle_target(new_key, WHEN)) == 1
        assert request_reprocess(node.db, MRN) == [cycle_target(new_key, WHEN)]
        assert not any(old_key in str(p) for p in data_dir.rglob("*"))
    with running_node(settings) as node:  # a second start changes nothing
        assert node.index.patient_keys() == [new_key]
        assert node.index.archived_paths() == {new_path}


def test_a_filesystem_without_hard_links_still_gets_one_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    secret = load_or_create(tmp_path)
    assert len(secret) == 32 and load_or_create(tmp_path) == secret
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]
