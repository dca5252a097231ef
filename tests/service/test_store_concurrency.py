"""Two connections writing at once wait for each other instead of failing, on SQLite and on
PostgreSQL (two connections are what two processes or two nodes on one database have)."""

from __future__ import annotations

import threading
from datetime import datetime

from theranode.service.store import open_database
from theranode.service.store.index import IndexStore
from theranode.service.store.jobs import JobStore

ROUNDS = 300


def test_index_writes_wait_for_the_job_store_instead_of_failing(database_url: str) -> None:
    # The node's index and its job store use two connections to one file. A
    # deferred transaction that read first could not take the write lock after
    # the other connection committed and failed at once ("database is locked"):
    # a refused object was then answered 0xA700 and left without its row.
    index, jobs = IndexStore(open_database(database_url)), JobStore(open_database(database_url))
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def quarantine() -> None:
        start.wait()
        for i in range(ROUNDS):
            try:
                index.add_quarantine(
                    path=f"quarantine/{i}.dcm", sha256=f"{i:064x}", status=0xC110, reason="r",
                    received=datetime(2024, 1, 1), calling_ae="A", peer="127.0.0.1")
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    def bump() -> None:
        start.wait()
        for i in range(ROUNDS):
            try:
                jobs.bump_generation(f"cycle|patient|{i % 7}")
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=quarantine), threading.Thread(target=bump)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert index.counts()["quarantine"] == ROUNDS
    assert sum(jobs.generation(f"cycle|patient|{i}") for i in range(7)) == ROUNDS
