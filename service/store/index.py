"""Index of received instances and series, conflicts, quarantine and grouping.

Tables
------
patients      patient_key → PatientID (+ issuer); the ID is stored, never logged.
series        one row per series with the header facts grouping needs.
instances     one row per archived SOP instance (path, hash, size, peer).
conflicts     same SOP Instance UID with different bytes, kept aside.
quarantine    objects that could not be filed, with the reason.
grouping      the persisted result of :func:`theranode.service.plan.grouping.group_patient`.

Patient keys are HMAC-SHA-256 of the PatientID under the site secret
(:mod:`theranode.service.receive.site_secret`). Databases written before (keys were an unkeyed
SHA-256) or with another secret are re-keyed at start-up:
:meth:`IndexStore.stale_patient_keys` finds them from the PatientID and
issuer stored here, and :meth:`IndexStore.rekey` rewrites them everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from theranode.dicomio.headers import InstanceHeader, PatientKeyer
from theranode.service.errors import ServiceError
from theranode.service.store import Store
from theranode.service.store.database import Database
from theranode.service.store.migrations import Migrations

MIGRATIONS = Migrations("theranode.index")


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db.create_table(
        "patients",
        {"patient_key": str, "patient_id": str, "issuer": str, "first_seen": str}, pk="patient_key"
    )
    db.create_table(
        "series",
        {
            "series_uid": str,
            "study_uid": str,
            "patient_key": str,
            "kind": str,
            "modality": str,
            "sop_class_uid": str,
            "frame_of_reference_uid": str,
            "referenced_frames": str,  # JSON list
            "acquired": str,
            "injection_start": str,
            "injection_time": str,
            "injection_event_uid": str,
            "injected_activity_mbq": float,
            "radionuclide": str,
            "description": str,
            "series_number": int,
            "instance_count": int,
            "first_received": str,
            "last_received": str,
        },
        pk="series_uid",
        foreign_keys=[("patient_key", "patients", "patient_key")],
    )
    db.create_index("series", ["patient_key"])
    db.create_table(
        "instances",
        {
            "sop_instance_uid": str,
            "sop_class_uid": str,
            "series_uid": str,
            "path": str,
            "sha256": str,
            "size": int,
            "transfer_syntax": str,
            "received": str,
            "calling_ae": str,
            "peer": str,
        },
        pk="sop_instance_uid",
        foreign_keys=[("series_uid", "series", "series_uid")],
    )
    db.create_index("instances", ["series_uid"])
    db.create_table(
        "conflicts",
        {
            "id": int,
            "sop_instance_uid": str,
            "path": str,
            "sha256": str,
            "received": str,
            "calling_ae": str,
            "peer": str,
        },
        pk="id",
    )
    db.create_table(
        "quarantine",
        {
            "id": int,
            "path": str,
            "sha256": str,
            "status": int,
            "reason": str,
            "received": str,
            "calling_ae": str,
            "peer": str,
        },
        pk="id",
    )
    db.create_table(
        "grouping",
        {
            "series_uid": str,
            "patient_key": str,
            "course": int,
            "cycle": int,
            "injection": str,
            "injection_source": str,
            "time_point_h": float,
            "elapsed_h": float,
            "role": str,
            "state": str,
            "note": str,
        },
        pk="series_uid",
    )
    db.create_index("grouping", ["patient_key"])


class SeriesOwnerError(ServiceError):
    """The series UID of an instance already names another patient's series."""


class AlreadyIndexed(ServiceError):
    """The SOP Instance UID was indexed meanwhile (by another association or node)."""

    def __init__(self, sop_instance_uid: str, sha256: str, path: str) -> None:
        super().__init__(f"{sop_instance_uid} is indexed already")
        self.sha256 = sha256
        self.path = path


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


class IndexStore(Store):
    """Thread-safe access to the index tables of one database."""

    # -- instances -------------------------------------------------------
    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        with self.lock:
            rows = list(
                self.db.query(
                    "select * from instances where sop_instance_uid = ?", [sop_instance_uid]
                )
            )
        return rows[0] if rows else None

    def input_instances(self, series_uids: list[str]) -> list[dict[str, Any]]:
        """Archived instances of these series: SOP Instance UID, sha256, path, series."""
        if not series_uids:
            return []
        marks = ", ".join("?" for _ in series_uids)
        with self.lock:
            return list(self.db.query(
                f"select sop_instance_uid, sha256, path, series_uid from instances "
                f"where series_uid in ({marks}) order by series_uid, path",
                series_uids,
            ))
    def series_owner(self, series_uid: str) -> dict[str, Any] | None:
        """The patient key and study UID of an indexed series (None when new)."""
        with self.lock:
            rows = list(self.db.query(
                "select patient_key, study_uid from series where series_uid = ?", [series_uid]))
        return rows[0] if rows else None

    def add_instance(
        self,
        header: InstanceHeader,
        *,
        path: str,
        sha256: str,
        size: int,
        transfer_syntax: str,
        received: datetime,
        calling_ae: str,
        peer: str,
    ) -> bool:
        """Index an archived instance; returns True when its series is new.

        The series' owner is checked inside the same write transaction as the
        insert, which holds the database's write lock: two instances of different patients
        naming one new series UID, filed at the same moment by two
        associations (or two processes, or two nodes), cannot both be indexed.

        Raises
        ------
        SeriesOwnerError
            The series exists and belongs to another patient; nothing is written.
        AlreadyIndexed
            The instance has a row already; nothing is written.
        """
        now = received.isoformat()
        with self.transaction():
            indexed = self.db.execute(
                "select sha256, path from instances where sop_instance_uid = ?",
                [header.sop_instance_uid],
            ).fetchone()
            if indexed is not None:
                raise AlreadyIndexed(header.sop_instance_uid, indexed[0], indexed[1])
            owner = self.db.execute(
                "select patient_key from series where series_uid = ?",
                [header.series_instance_uid],
            ).fetchone()
            if owner is not None and owner[0] != header.patient_key:
                raise SeriesOwnerError(
                    f"series {header.series_instance_uid} belongs to another patient"
                )
            self.db.execute(
                "insert into patients (patient_key, patient_id, issuer, first_seen) "
                "values (?, ?, ?, ?) on conflict (patient_key) do nothing",
                [header.patient_key, header.patient_id, header.issuer_of_patient_id, now],
            )
            cursor = self.db.execute(
                "update series set instance_count = instance_count + 1, last_received = ? "
                "where series_uid = ?",
                [now, header.series_instance_uid],
            )
            new_series = cursor.rowcount == 0
            if new_series:
                self.db.execute(
                    "insert into series values "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    self._series_row(header, now),
                )
            self.db.execute(
                "insert into instances values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    header.sop_instance_uid,
                    header.sop_class_uid,
                    header.series_instance_uid,
                    path,
                    sha256,
                    size,
                    transfer_syntax,
                    now,
                    calling_ae,
                    peer,
                ],
            )
        return new_series

    @staticmethod
    def _series_row(header: InstanceHeader, now: str) -> list[Any]:
        inj = header.injection
        return [
            header.series_instance_uid,
            header.study_instance_uid,
            header.patient_key,
            header.kind.value,
            header.modality,
            header.sop_class_uid,
            header.frame_of_reference_uid,
            json.dumps(list(header.referenced_frame_of_reference_uids)),
            _iso(header.acquired),
            _iso(inj.start) if inj else None,
            inj.start_time.isoformat() if inj and inj.start_time else None,
            inj.event_uid if inj else None,
            inj.activity_mbq if inj else None,
            inj.radionuclide if inj else None,
            header.series_description,
            header.series_number,
            1,
            now,
            now,
        ]

    def add_conflict(
        self, sop_instance_uid: str, *, path: str, sha256: str, received: datetime,
        calling_ae: str, peer: str,
    ) -> None:
        with self.transaction():
            self.db.insert("conflicts", {
                "sop_instance_uid": sop_instance_uid,
                "path": path,
                "sha256": sha256,
                "received": received.isoformat(),
                "calling_ae": calling_ae,
                "peer": peer,
            })

    def add_quarantine(
        self, *, path: str, sha256: str, status: int, reason: str, received: datetime,
        calling_ae: str, peer: str,
    ) -> None:
        with self.transaction():
            self.db.insert("quarantine", {
                "path": path,
                "sha256": sha256,
                "status": status,
                "reason": reason,
                "received": received.isoformat(),
                "calling_ae": calling_ae,
                "peer": peer,
            })

    def archived_paths(self) -> set[str]:
        with self.lock:
            return {row["path"] for row in self.db.query("select path from instances")}

    # -- series and grouping ----------------------------------------------
    def patient_keys(self) -> list[str]:
        with self.lock:
            return [r["patient_key"] for r in self.db.query(
                "select patient_key from patients order by first_seen, patient_key")]

    def patient_id(self, patient_key: str) -> str | None:
        with self.lock:
            rows = list(self.db.query(
                "select patient_id from patients where patient_key = ?", [patient_key]))
        return rows[0]["patient_id"] if rows else None

    # -- re-keying -----------------------------------------------------------
    def stale_patient_keys(self, keyer: PatientKeyer) -> list[tuple[str, str]]:
        """``(stored key, key under keyer)`` of every patient whose stored key differs."""
        with self.lock:
            rows = list(self.db.query("select patient_key, patient_id, issuer from patients"))
        pairs = [(r["patient_key"], keyer(r["patient_id"], r["issuer"] or "")) for r in rows]
        return [(old, new) for old, new in pairs if old != new]

    def rekey(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Replace each old patient key by its new one everywhere, in one transaction.

        Index rows (patients, series, grouping), archive paths
        (``archive/<key>/…``, the folders are moved by
        :meth:`theranode.service.receive.archive.Archive.move_patient_folder`), and the jobs
        tables (:mod:`theranode.service.store.jobs`): ``patient_key``, the targets
        ``cycle|<key>|…`` and ``course|<key>|…`` in ``jobs`` and
        ``generations``, and the archive paths inside stored job inputs. Old
        and new keys have the same length (16 hex digits), so those paths are
        rewritten byte for byte whatever the inputs' serialisation.
        """
        with self.transaction():
            for old, new in pairs:
                self._rekey_one(old, new)

    def _rekey_one(self, old: str, new: str) -> None:
        assert len(old) == len(new), "patient keys have one length"
        execute = self.db.execute
        execute("insert into patients (patient_key, patient_id, issuer, first_seen) "
                "select ?, patient_id, issuer, first_seen from patients where patient_key = ?",
                [new, old])
        execute("update series set patient_key = ? where patient_key = ?", [new, old])
        execute("update grouping set patient_key = ? where patient_key = ?", [new, old])
        old_dir, new_dir = f"archive/{old}/", f"archive/{new}/"
        execute("update instances set path = ? || substr(path, ?) where substr(path, 1, ?) = ?",
                [new_dir, len(old_dir) + 1, len(old_dir), old_dir])
        execute("delete from patients where patient_key = ?", [old])
        if not self.db.table_exists("jobs"):
            return
        execute("update jobs set patient_key = ? where patient_key = ?", [new, old])
        for kind in ("cycle", "course"):
            old_target, new_target = f"{kind}|{old}|", f"{kind}|{new}|"
            for table in ("jobs", "generations"):
                execute(f"update {table} set target = ? || substr(target, ?) "
                        "where substr(target, 1, ?) = ?",
                        [new_target, len(old_target) + 1, len(old_target), old_target])
        rows = execute("select id, payload from jobs where patient_key = ? "
                       "and payload is not null", [new]).fetchall()
        for job_id, payload in rows:
            rewritten = _replace_prefix(payload, old_dir, new_dir)
            if rewritten is not None:
                execute("update jobs set payload = ? where id = ?", [rewritten, job_id])

    def series_of_patient(self, patient_key: str) -> list[dict[str, Any]]:
        with self.lock:
            return self.db.query(
                "select * from series where patient_key = ? "
                "order by acquired is not null, acquired, series_uid",  # NULLs first, as SQLite
                [patient_key],
            )

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {
                table: self.db.execute(f"select count(*) from {table}").fetchone()[0]
                for table in ("patients", "series", "instances", "conflicts", "quarantine")
            }

    def regroup(
        self, patient_key: str,
        group: Callable[[list[dict[str, Any]]], Iterable[dict[str, Any]]],
    ) -> None:
        """Replace a patient's grouping by ``group(series rows)``, read and written in one
        write transaction: a node cannot overwrite a grouping of newer series, made by
        another node meanwhile, with one of the series it read before."""
        with self.transaction():
            rows = list(group(self.series_of_patient(patient_key)))  # (the lock is reentrant)
            self.db.execute("delete from grouping where patient_key = ?", [patient_key])
            for row in rows:
                self.db.insert("grouping", row)

    def ungrouped_patient_keys(self) -> list[str]:
        """Patients with a series that has no grouping row yet.

        Every regrouping places every series of its patient, so such a series
        is either waiting for its regrouping or was indexed by a node that
        stopped (a SIGKILL, a power cut) before it regrouped: on a shared
        database no other node would otherwise look at it.
        """
        with self.lock:
            return [r["patient_key"] for r in self.db.query(
                "select distinct s.patient_key from series s where not exists "
                "(select 1 from grouping g where g.series_uid = s.series_uid) "
                "order by s.patient_key")]

    def grouping_of_patient(self, patient_key: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(
                self.db.query(
                    "select g.*, s.kind, s.modality, s.instance_count, s.description, "
                    "s.frame_of_reference_uid, s.study_uid, s.last_received "
                    "from grouping g join series s using (series_uid) "
                    "where g.patient_key = ? order by g.course, g.cycle, g.time_point_h, s.kind",
                    [patient_key],
                )
            )

    def recent_quarantine(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(
                "select * from quarantine order by id desc limit ?", [limit]))

    def recent_conflicts(self, limit: int = 20) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(
                "select * from conflicts order by id desc limit ?", [limit]))



def _replace_prefix(payload: bytes | str, old: str, new: str) -> bytes | str | None:
    """``payload`` with every ``old`` replaced by ``new`` (same length); None when absent."""
    if isinstance(payload, str):
        return payload.replace(old, new) if old in payload else None
    old_bytes, new_bytes = old.encode(), new.encode()
    return payload.replace(old_bytes, new_bytes) if old_bytes in payload else None
