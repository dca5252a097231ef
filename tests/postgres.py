"""A throw-away PostgreSQL server for the tests: Debian's ``postgresql`` package, no mock.

:func:`run_postgres` makes a cluster in a new temporary folder with the server binaries of
the highest version in ``/usr/lib/postgresql/<version>/bin`` (``initdb``, ``postgres``,
``pg_ctl``), starts it on a free loopback port and, when the block ends, stops it
(``pg_ctl stop -m fast``) and removes the folder. Each test then gets an empty database of
its own from :meth:`PostgresServer.create_database`; ``tests/conftest.py`` wraps both as the
``postgres_server`` and ``postgres_url`` fixtures. Under pytest-xdist every worker process
starts a server of its own (``initdb`` takes about a second).

The server runs on PostgreSQL's defaults (``fsync``, ``synchronous_commit`` and
``full_page_writes`` on: the code under test is durability code) except where a test server
must differ: it listens on 127.0.0.1 only, trusts every connection there and on its unix
socket (kept in the temporary folder, which only the server's user can enter), and allows
:data:`MAX_CONNECTIONS` connections.

``initdb`` and ``postgres`` refuse to run as root, and CI runs the suite as root: then they
run as the ``postgres`` system user that Debian's package creates, in a folder owned by it.

A server is never left behind. The block's end stops it, also on Ctrl-C (pytest tears its
session fixtures down on KeyboardInterrupt). Should the test process die without tearing
down (SIGKILL, a crash), the kernel sends the server SIGINT, PostgreSQL's fast shutdown:
it is started through util-linux ``setpriv --pdeathsig INT`` as a child of the thread that
called :func:`run_postgres` (Linux ``prctl(PR_SET_PDEATHSIG)``). The temporary folder is
then left behind.

A missing server package skips the tests that need it on a developer machine, and fails them
when the ``CI`` variable is set (as :func:`tests.peers.require_tool` does).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

from tests.peers import free_port, in_ci

#: Where Debian's ``postgresql-<version>`` packages put each version's server binaries.
DEBIAN_POSTGRES_ROOT = Path("/usr/lib/postgresql")
#: The binaries the test server needs from one version's ``bin`` folder.
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
#: The cluster's superuser (``initdb -U``), whoever runs the server: the URLs name it.
SUPERUSER = "postgres"
#: The system user that runs the server when the tests run as root (Debian's package makes it).
SYSTEM_USER = "postgres"
#: Four node processes and their workers with a few connections each, and the tests' own.
MAX_CONNECTIONS = 200
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: Attempts at a free port: another process may take the one picked before the server binds it.
START_ATTEMPTS = 3

PG_HBA = f"""\
# theranode's test server: trust on its own unix socket and on {HOST} only.
local all all trust
host  all all {HOST}/32 trust
"""


def server_binaries(root: Path = DEBIAN_POSTGRES_ROOT) -> Path | None:
    """The ``bin`` folder of the highest PostgreSQL version under ``root`` that has every
    one of :data:`SERVER_BINARIES`, or None."""
    found: list[tuple[tuple[int, ...], Path]] = []
    for bin_dir in root.glob("*/bin"):
        version = bin_dir.parent.name
        if re.fullmatch(r"\d+(\.\d+)*", version) and all(
            os.access(bin_dir / name, os.X_OK) for name in SERVER_BINARIES
        ):
            found.append((tuple(int(part) for part in version.split(".")), bin_dir))
    return max(found)[1] if found else None


def require_server_binaries() -> Path:
    """The ``bin`` folder of :func:`server_binaries`; skip the test (fail under CI) when
    there is none."""
    bin_dir = server_binaries()
    if bin_dir is not None:
        return bin_dir
    message = (
        f"PostgreSQL's server is not installed (no {DEBIAN_POSTGRES_ROOT}/<version>/bin/initdb); "
        ".ci/run installs Debian's postgresql (apt-get)."
    )
    if in_ci():
        pytest.fail(f"Required peer missing under CI: {message}")
    pytest.skip(message)


def server_user() -> pwd.struct_passwd | None:
    """The system user the server runs as: :data:`SYSTEM_USER` when we are root, else None
    (the server runs as we do)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"Running as root, the test PostgreSQL must run as the system user {SYSTEM_USER!r}, "
            "which does not exist; Debian's postgresql package creates it "
            "(apt-get install postgresql)."
        ) from None


@dataclass
class PostgresServer:
    """A running test server; :func:`run_postgres` makes one."""

    bin_dir: Path
    work_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    user: pwd.struct_passwd | None
    _numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    @property
    def data_dir(self) -> Path:
        return self.work_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "postgres.log"

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return self.process.pid

    def url(self, database: str = "postgres") -> str:
        """The URL of ``database`` on this server, as the superuser."""
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{database}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def create_database(self) -> str:
        """Create a new empty database ``theranode_<n>`` and return its URL."""
        name = f"theranode_{next(self._numbers)}"
        self._administer(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of ``url`` (one :meth:`create_database` made), closing any
        connection still open to it (a node a test killed or left running)."""
        name = urlsplit(url).path.lstrip("/")
        self._administer(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )

    def _administer(self, statement: sql.Composed) -> None:
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            connection.execute(statement)


@contextlib.contextmanager
def run_postgres() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server in a new temporary folder; stop it and remove the folder
    when the block ends, however it ends (see the module docstring)."""
    bin_dir = require_server_binaries()
    user = server_user()
    work_dir = Path(tempfile.mkdtemp(prefix="theranode-postgres-"))
    server: PostgresServer | None = None
    try:
        if user is not None:
            os.chown(work_dir, user.pw_uid, user.pw_gid)
        init_cluster(bin_dir, work_dir, user)
        server = start_server(bin_dir, work_dir, user)
        yield server
    finally:
        if server is not None:
            stop_server(server)
        shutil.rmtree(work_dir, ignore_errors=True)


def init_cluster(bin_dir: Path, work_dir: Path, user: pwd.struct_passwd | None) -> None:
    """``initdb`` a cluster in ``work_dir/data`` and write the test server's settings."""
    data_dir = work_dir / "data"
    run_as_server(
        [str(bin_dir / "initdb"), "--pgdata", str(data_dir), "--username", SUPERUSER,
         "--auth", "trust", "--encoding", "UTF8", "--no-locale"],
        work_dir, user,
    )
    # Rewriting the files initdb made keeps their owner (the server's user).
    (data_dir / "pg_hba.conf").write_text(PG_HBA)
    with (data_dir / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# theranode's test server (tests/postgres.py); the port is given at start.\n"
            f"listen_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{work_dir}'\n"
            f"max_connections = {MAX_CONNECTIONS}\n"
        )


def start_server(bin_dir: Path, work_dir: Path, user: pwd.struct_passwd | None) -> PostgresServer:
    """Start ``postgres`` on a free port, trying another port if the one picked was taken."""
    for _ in range(START_ATTEMPTS):
        server = launch(bin_dir, work_dir, user, free_port())
        try:
            if wait_until_ready(server):
                return server
        except BaseException:
            stop_server(server)
            raise
        if "could not bind" not in server.log():
            break
    raise RuntimeError(f"PostgreSQL did not start; its log:\n{server.log()}")


def launch(
    bin_dir: Path, work_dir: Path, user: pwd.struct_passwd | None, port: int
) -> PostgresServer:
    """Start the postmaster as our child, to receive SIGINT should we die (module docstring)."""
    command = [str(bin_dir / "postgres"), "-D", str(work_dir / "data"), "-p", str(port)]
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        command = [setpriv, "--pdeathsig", "INT", "--", *command]
    with (work_dir / "postgres.log").open("ab") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=work_dir, env=server_environment(work_dir), start_new_session=True,
            **credentials(user),
        )
    return PostgresServer(bin_dir=bin_dir, work_dir=work_dir, port=port, process=process,
                          user=user)


def wait_until_ready(server: PostgresServer) -> bool:
    """True once the server accepts connections; False if it exited first.

    Raises
    ------
    TimeoutError
        It neither accepted a connection nor exited within :data:`START_TIMEOUT_S`.
    """
    deadline = time.monotonic() + START_TIMEOUT_S
    while server.process.poll() is None:
        with contextlib.suppress(psycopg.OperationalError):
            psycopg.connect(server.url(), connect_timeout=2).close()
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"PostgreSQL did not accept connections within {START_TIMEOUT_S} s; "
                f"its log:\n{server.log()}"
            )
        time.sleep(0.05)
    return False


def stop_server(server: PostgresServer) -> None:
    """``pg_ctl stop -m fast``; signal the postmaster ourselves if that does not end it."""
    if server.process.poll() is not None:
        return
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        run_as_server(
            [str(server.bin_dir / "pg_ctl"), "stop", "--pgdata", str(server.data_dir),
             "--mode", "fast", "--wait", "--timeout", str(int(STOP_TIMEOUT_S))],
            server.work_dir, server.user,
        )
    for stop_signal in (signal.SIGINT, signal.SIGKILL):
        try:
            server.process.wait(timeout=STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            server.process.send_signal(stop_signal)
    server.process.wait()


def run_as_server(command: list[str], work_dir: Path, user: pwd.struct_passwd | None) -> None:
    """Run one of the server's tools as the server's user; its output is in the error."""
    done = subprocess.run(
        command, cwd=work_dir, env=server_environment(work_dir), capture_output=True, text=True,
        timeout=STOP_TIMEOUT_S + 30, check=False, **credentials(user),
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{Path(command[0]).name} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )


def credentials(user: pwd.struct_passwd | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a child as ``user`` (no supplementary groups)."""
    if user is None:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def server_environment(work_dir: Path) -> dict[str, str]:
    """Our environment without ``PG*`` variables (they would redirect the tools), with a
    home the server's user can enter and English messages (:func:`start_server` reads them)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    environment.update(HOME=str(work_dir), LC_ALL="C")
    return environment
