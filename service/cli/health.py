"""``theranode health``: is the node on this machine alive? (the Docker health check).

Two checks, both local:

1. The database in the data folder opens read-only and answers a query.
2. The DICOM listener answers on the loopback address, the way the node is
   configured: dcmtk's ``echoscu`` sends a C-ECHO to the node's port and AE
   title, over TLS when ``security.tls_cert`` is set (the check
   presents the node's own certificate and key, so a node that requires
   client certificates accepts it when its certificate is signed by a CA of
   ``security.tls_ca`` and allows client authentication; the node's
   certificate itself is not verified: this is a liveness check of the local
   process, and a C-ECHO carries no patient data). An A-ASSOCIATE-RJ also
   counts as alive: the node read the request and answered (e.g. calling AE
   ``HEALTHCHECK`` is not in ``security.allowed_calling_ae_titles``, or every
   association slot is busy). When ``security.allowed_hosts`` does not admit
   the loopback address, the node closes the connection at once by design;
   that prompt close is the check.

A bare ``echoscu -aec THERANODE 127.0.0.1 11112`` cannot know any of this,
so the Docker image runs ``theranode health``, which reads the configuration
file and gives ``echoscu`` the port, AE title and TLS options.

References
----------
DICOM PS3.7 9.1.5 (C-ECHO), PS3.8 9.3.4 (A-ASSOCIATE-RJ),
PS3.15 B.1 (Basic TLS Secure Transport Connection Profile).
"""

from __future__ import annotations

import ipaddress
import math
import shutil
import socket
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from theranode.config.schema import SecuritySettings, Settings

#: Calling AE title of the health check.
CALLING_AE = "HEALTHCHECK"


@dataclass(frozen=True)
class Check:
    """One finding: ``ok`` and what was seen (one line for the operator)."""

    ok: bool
    message: str


def check_health(settings: Settings, timeout_s: float = 10.0) -> list[Check]:
    """Run both checks against the node ``settings`` describe."""
    return [check_database(settings.database_path) if not settings.database.url
            else check_shared_database(settings.database.url),
            check_listener(settings, timeout_s)]


def check_database(path: Path) -> Check:
    """The database opens read-only and answers a query."""
    if not path.is_file():
        return Check(False, f"database: {path} does not exist (has the node started?)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            conn.execute("select count(*) from sqlite_master").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return Check(False, f"database: {path} cannot be read: {exc}")
    return Check(True, f"database: {path} readable")


def check_shared_database(url: str) -> Check:
    """A PostgreSQL database (``[database] url``) accepts a connection and answers a query."""
    from theranode.service.store.database import connect, parse_url

    try:
        shown = parse_url(url).redacted
        db = connect(url, application_name="theranode health")
        try:
            db.execute("select 1").fetchone()
        finally:
            db.close()
    except Exception as exc:  # DatabaseError, or psycopg's error naming the server's reason
        return Check(False, f"database: {exc}")
    return Check(True, f"database: {shown} answers")


def local_address(bind: str) -> str:
    """Where to reach a listener bound to ``bind`` from this machine."""
    if bind in ("", "0.0.0.0"):
        return "127.0.0.1"
    if bind == "::":
        return "::1"
    return bind


def admits(security: SecuritySettings, address: str) -> bool:
    """True when ``security.allowed_hosts`` lets ``address`` connect (empty: every host)."""
    if not security.allowed_hosts:
        return True
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(h, strict=False) for h in security.allowed_hosts)


def check_listener(settings: Settings, timeout_s: float = 10.0) -> Check:
    """The listener answers: C-ECHO (or A-ASSOCIATE-RJ), or closes a refused host at once."""
    address = local_address(settings.node.bind)
    port = settings.node.port
    if not admits(settings.security, address):
        return _closed_at_once(address, port, timeout_s)
    return _echo(settings, address, timeout_s)


def _closed_at_once(address: str, port: int, timeout_s: float) -> Check:
    where = f"listener {address}:{port}"
    try:
        with socket.create_connection((address, port), timeout=timeout_s) as sock:
            data = sock.recv(1)
    except TimeoutError:
        return Check(False, f"{where}: connected but not closed within {timeout_s:g} s "
                            f"although {address} is not in security.allowed_hosts")
    except ConnectionResetError:
        data = b""
    except OSError as exc:
        return Check(False, f"{where}: {exc.strerror or exc}")
    if data:
        return Check(False, f"{where}: answered a host security.allowed_hosts refuses")
    return Check(True, f"{where}: alive (closed this connection at once: {address} is not in "
                       "security.allowed_hosts, as configured)")


def echoscu_command(settings: Settings, address: str, timeout_s: float,
                    echoscu: str = "echoscu") -> list[str]:
    """The ``echoscu`` (dcmtk) command line that echoes the node as it is configured.

    Calling AE :data:`CALLING_AE`, the node's AE title and port; over TLS
    with the node's own key pair when it serves TLS (``+tls key cert``), the
    node's certificate not verified (``-ic``): a liveness check of the local
    process; a C-ECHO carries no patient data.
    """
    seconds = str(max(1, math.ceil(timeout_s)))
    command = [echoscu, "-aet", CALLING_AE, "-aec", settings.node.ae_title,
               "-to", seconds, "-ta", seconds, "-td", seconds, "-ts", seconds]
    security = settings.security
    if security.tls_cert:
        command += ["+tls", security.tls_key or security.tls_cert, security.tls_cert, "-ic"]
    return [*command, address, str(settings.node.port)]


def _echo(settings: Settings, address: str, timeout_s: float) -> Check:
    port = settings.node.port
    where = f"listener {address}:{port}"
    echoscu = shutil.which("echoscu")
    if echoscu is None:
        return Check(False, f"{where}: echoscu not found; install dcmtk (the Docker image has it)")
    command = echoscu_command(settings, address, timeout_s, echoscu)
    try:
        run = subprocess.run(command, capture_output=True, text=True, check=False,
                             timeout=4 * timeout_s + 5)
    except subprocess.TimeoutExpired:
        return Check(False, f"{where}: echoscu did not finish within {4 * timeout_s + 5:g} s")
    said = (run.stdout + run.stderr).strip()
    if "Association Rejected" in said:
        return Check(True, f"{where}: alive (refused calling AE {CALLING_AE} with "
                           "A-ASSOCIATE-RJ: AE title not allowed or all slots busy)")
    if run.returncode != 0:
        last = said.splitlines()[-1] if said else f"exit code {run.returncode}"
        return Check(False, f"{where}: no C-ECHO ({_hint(settings.security)}); echoscu: {last}")
    tls = " over TLS" if settings.security.tls_cert else ""
    return Check(True, f"{where}: C-ECHO succeeded{tls}")


def _hint(security: SecuritySettings) -> str:
    if security.tls_cert and security.tls_ca:
        return ("not listening, or the node refused the health check's TLS client "
                "certificate (its own tls_cert: it must be signed by a CA in tls_ca and "
                "allow client authentication)")
    if security.tls_cert:
        return "not listening, or the TLS handshake failed"
    return "not listening, or the connection was aborted"
