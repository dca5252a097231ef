"""The outbox: result objects and their delivery to each destination.

Tables
------
result_objects   one row per written DICOM object (file path, UIDs), in the
                 order the jobs produced them.
deliveries       one row per (object, destination): ``pending`` until the
                 destination answers; ``sent`` on a success or warning status;
                 ``refused`` on a failure status (the object stays on disk and
                 the status is kept). Attempts and the last error are kept.
destinations     per destination, the persisted retry schedule (consecutive
                 failures and the time of the next attempt), so exponential
                 backoff survives a restart.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from theranode.service.store import Store
from theranode.service.store.database import Database
from theranode.service.store.migrations import Migrations

MIGRATIONS = Migrations("theranode.outbox")


@MIGRATIONS()
def m001_outbox(db: Database) -> None:
    db.create_table(
        "result_objects",
        {
            "id": int,
            "job_id": int,
            "path": str,
            "sop_class_uid": str,
            "sop_instance_uid": str,
            "series_instance_uid": str,
            "modality": str,
            "description": str,
            "created_at": str,
        },
        pk="id",
    )
    db.create_index("result_objects", ["job_id"])
    db.create_table(
        "deliveries",
        {
            "object_id": int,
            "destination": str,
            "state": str,
            "attempts": int,
            "last_status": int,
            "last_error": str,
            "updated_at": str,
        },
        pk=("object_id", "destination"),
    )
    db.create_index("deliveries", ["destination", "state"])
    db.create_table("destinations", {"name": str, "failures": int, "next_attempt_at": str},
                    pk="name")


class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    REFUSED = "refused"


@dataclass(frozen=True)
class PendingObject:
    """A result object still to be delivered to one destination."""

    object_id: int
    destination: str
    path: str
    sop_instance_uid: str
    modality: str
    attempts: int


class OutboxStore(Store):
    """All SQL on result objects and deliveries.

    The runner records a job's objects in the transaction that marks the job
    done (:meth:`add_objects` takes that transaction's connection), so the
    outbox and the job store share one connection and must share its lock:
    pass the job store's ``db`` and ``lock``.
    """

    def add_objects(
        self,
        conn: Database,
        job_id: int,
        objects: Sequence[Any],
        destinations: Sequence[str],
        now: str,
    ) -> list[int]:
        """Record ``objects`` of a job and one pending delivery per destination.

        Called inside the transaction that marks the job done, so a job is
        never done without its deliveries queued.
        """
        ids = []
        for obj in objects:
            object_id = conn.insert_returning_id(
                "insert into result_objects (job_id, path, sop_class_uid, sop_instance_uid, "
                "series_instance_uid, modality, description, created_at) "
                "values (?, ?, ?, ?, ?, ?, ?, ?)",
                [job_id, obj.path, obj.sop_class_uid, obj.sop_instance_uid,
                 obj.series_instance_uid, obj.modality, obj.description, now],
            )
            ids.append(object_id)
            for name in destinations:
                conn.execute(
                    "insert into deliveries (object_id, destination, state, attempts, "
                    "updated_at) values (?, ?, 'pending', 0, ?)",
                    [object_id, name, now],
                )
        return ids

    def add_destination_backlog(self, destinations: Sequence[str], now: str) -> int:
        """Queue every existing object for destinations added to the configuration."""
        added = 0
        with self.transaction() as conn:
            for name in destinations:
                cursor = conn.execute(
                    "insert into deliveries (object_id, destination, state, attempts, updated_at)"
                    " select id, ?, 'pending', 0, ? from result_objects where true"
                    " on conflict (object_id, destination) do nothing",  # (SQLite: "where true"
                    # parses the upsert after a select, SQLite documentation "UPSERT" 2.2)
                    [name, now],
                )
                added += cursor.rowcount
        return added

    def pending(self, destination: str, limit: int = 50) -> list[PendingObject]:
        """Objects still to deliver to ``destination``, oldest first."""
        with self.lock:
            rows = self.db.query(
                "select d.object_id, d.destination, o.path, o.sop_instance_uid, o.modality, "
                "d.attempts from deliveries d join result_objects o on o.id = d.object_id "
                "where d.destination = ? and d.state = 'pending' order by d.object_id limit ?",
                [destination, limit],
            )
            return [PendingObject(**r) for r in rows]

    def record(
        self, object_id: int, destination: str, state: DeliveryState, now: str,
        status: int | None = None, error: str = "",
    ) -> None:
        """The answer of one delivery attempt."""
        with self.transaction() as conn:
            conn.execute(
                "update deliveries set state = ?, attempts = attempts + 1, last_status = ?, "
                "last_error = ?, updated_at = ? where object_id = ? and destination = ?",
                [state.value, status, error, now, object_id, destination],
            )

    def destination_due(self, name: str) -> tuple[int, str | None]:
        """(consecutive failures, next attempt time or None) of a destination."""
        with self.lock:
            rows = list(self.db.query(
                "select failures, next_attempt_at from destinations where name = ?", [name]))
        if not rows:
            return 0, None
        return int(rows[0]["failures"]), rows[0]["next_attempt_at"]

    def destination_failed(self, name: str, next_attempt_at: str) -> int:
        """Count a failure to reach ``name``; returns the consecutive failures."""
        with self.transaction() as conn:
            conn.execute(
                "insert into destinations (name, failures, next_attempt_at) values (?, 1, ?) "
                "on conflict(name) do update set failures = destinations.failures + 1, "
                "next_attempt_at = ?",
                [name, next_attempt_at, next_attempt_at],
            )
            row = conn.execute("select failures from destinations where name = ?", [name])
            return int(row.fetchone()[0])

    def destination_reached(self, name: str) -> None:
        with self.transaction() as conn:
            conn.execute("delete from destinations where name = ?", [name])

    def summary(self) -> list[dict[str, Any]]:
        """Per destination and state, how many objects."""
        with self.lock:
            return list(self.db.query(
                "select destination, state, count(*) as n from deliveries "
                "group by destination, state order by destination, state"))

    def deliveries_of_job(self, job_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(
                "select o.modality, o.sop_instance_uid, d.destination, d.state, d.attempts, "
                "d.last_status, d.last_error from result_objects o join deliveries d "
                "on d.object_id = o.id where o.job_id = ? order by o.id, d.destination",
                [job_id]))

    def objects_of_job(self, job_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.db.query(
                "select * from result_objects where job_id = ? order by id", [job_id]))

    def problems(self, limit: int = 20) -> list[dict[str, Any]]:
        """Refused deliveries and pending ones that have failed at least once."""
        with self.lock:
            return list(self.db.query(
                "select o.job_id, o.modality, o.sop_instance_uid, d.destination, d.state, "
                "d.attempts, d.last_status, d.last_error from deliveries d join result_objects o"
                " on o.id = d.object_id where d.state = 'refused' or "
                "(d.state = 'pending' and d.attempts > 0) order by d.object_id desc limit ?",
                [limit]))
