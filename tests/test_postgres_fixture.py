"""The tests' PostgreSQL (tests/postgres.py): it answers, hands out empty databases of
their own, runs as a user other than root, and never outlives the tests."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.postgres import (
    PostgresServer,
    require_server_binaries,
    run_postgres,
    server_binaries,
)

ROOT = Path(__file__).resolve().parents[1]

USER_TABLES = (
    "select table_name from information_schema.tables "
    "where table_schema not in ('pg_catalog', 'information_schema')"
)


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while process_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_server_answers_with_the_highest_installed_version(
    postgres_server: PostgresServer,
) -> None:
    with psycopg.connect(postgres_server.url()) as connection:
        row = connection.execute("select version()").fetchone()
    assert row is not None
    bin_dir = server_binaries()
    assert bin_dir is not None
    assert row[0].startswith(f"PostgreSQL {bin_dir.parent.name}"), row[0]


def test_the_server_keeps_the_durability_defaults(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url()) as connection:
        settings = {
            name: connection.execute(f"show {name}").fetchone()
            for name in ("fsync", "synchronous_commit", "full_page_writes",
                         "listen_addresses", "max_connections")
        }
    assert settings == {
        "fsync": ("on",), "synchronous_commit": ("on",), "full_page_writes": ("on",),
        "listen_addresses": ("127.0.0.1",), "max_connections": ("200",),
    }


def test_two_fresh_databases_are_distinct_and_empty(postgres_server: PostgresServer) -> None:
    first, second = postgres_server.create_database(), postgres_server.create_database()
    try:
        assert urlsplit(first).path != urlsplit(second).path
        with psycopg.connect(first, autocommit=True) as connection:
            assert connection.execute(USER_TABLES).fetchall() == []
            connection.execute("create table marker (id integer)")
        with psycopg.connect(second) as connection:
            assert connection.execute(USER_TABLES).fetchall() == []
    finally:
        postgres_server.drop_database(first)
        postgres_server.drop_database(second)


def test_a_dropped_database_is_gone_even_with_a_connection_open(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database()
    name = urlsplit(url).path.lstrip("/")
    left_open = psycopg.connect(url)
    try:
        postgres_server.drop_database(url)
    finally:
        left_open.close()
    with psycopg.connect(postgres_server.url()) as connection:
        rows = connection.execute("select 1 from pg_database where datname = %s", [name])
        assert rows.fetchall() == []


def test_postgres_url_is_an_empty_database_of_its_own(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        row = connection.execute("select current_database()").fetchone()
        assert row is not None and row[0].startswith("theranode_")
        assert connection.execute(USER_TABLES).fetchall() == []


def test_database_url_names_a_fresh_database(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite:///"):
        path = Path(database_url.removeprefix("sqlite:///"))
        assert path.parent == tmp_path and not path.exists()
        with sqlite3.connect(path) as connection:
            assert connection.execute("select name from sqlite_master").fetchall() == []
    else:
        assert database_url.startswith("postgresql://")
        with psycopg.connect(database_url) as connection:
            assert connection.execute(USER_TABLES).fetchall() == []


def test_the_server_runs_as_a_user_other_than_root(postgres_server: PostgresServer) -> None:
    pid_file = (postgres_server.data_dir / "postmaster.pid").read_text().split()
    assert int(pid_file[0]) == postgres_server.pid
    owner = Path(f"/proc/{postgres_server.pid}").stat().st_uid
    if os.geteuid() == 0:
        assert owner == pwd.getpwnam("postgres").pw_uid
        assert Path(postgres_server.data_dir).stat().st_uid == owner
    else:
        assert owner == os.geteuid()


def test_the_server_stops_and_its_folder_goes_when_the_block_ends_by_ctrl_c() -> None:
    with pytest.raises(KeyboardInterrupt), run_postgres() as server:
        pid, work_dir = server.pid, server.work_dir
        assert process_alive(pid)
        raise KeyboardInterrupt
    assert not process_alive(pid)
    assert not work_dir.exists()


def test_the_server_stops_when_the_test_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves no teardown: the kernel's parent-death signal stops the server."""
    script = (
        "import sys, time\n"
        "from tests.postgres import run_postgres\n"
        "with run_postgres() as server:\n"
        "    print(server.pid, server.work_dir, flush=True)\n"
        "    time.sleep(600)\n"
    )
    require_server_binaries()
    holder = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    if not line:
        pytest.fail(f"The server did not start in a child process (exit {holder.wait()})")
    pid_text, work_dir = line.split()
    pid = int(pid_text)
    try:
        assert process_alive(pid)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert wait_for_exit(pid, timeout_s=30), "the server outlived the killed process"
    finally:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work_dir, ignore_errors=True)
