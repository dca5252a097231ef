"""``theranode health``: is the node on this machine alive? (the Docker health check).

Two checks, both local:

1. The database in the data folder opens read-only and answers a query.
2. The DICOM listener answers on the loopback address, the way the node is
   configured: a C-ECHO over TLS when ``security.tls_cert`` is set (the check
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

``echoscu`` (dcmtk) cannot be told any of this from the configuration file,
which is why the Docker image no longer uses it for its health check.

References
----------
DICOM PS3.7 9.1.5 (C-ECHO), PS3.8 9.3.4 (A-ASSOCIATE-RJ),
PS3.15 B.1 (Basic TLS Secure Transport Connection Profile).
"""

from __future__ import annotations

import ipaddress
import socket
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.schema import SecuritySettings, Settings

#: Calling AE title of the health check.
CALLING_AE = "HEALTHCHECK"

DATABASE_NAME = "theranode.db"


@dataclass(frozen=True)
class Check:
    """One finding: ``ok`` and what was seen (one line for the operator)."""

    ok: bool
    message: str


def check_health(settings: Settings, timeout_s: float = 10.0) -> list[Check]:
    """Run both checks against the node ``settings`` describe."""
    return [check_database(settings.data_dir / DATABASE_NAME),
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


def client_tls(security: SecuritySettings) -> ssl.SSLContext | None:
    """The health check's TLS context: the node's own key pair, no server verification."""
    if not security.tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(security.tls_cert, security.tls_key or None)
    return context


def _echo(settings: Settings, address: str, timeout_s: float) -> Check:
    port = settings.node.port
    where = f"listener {address}:{port}"
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    try:
        context = client_tls(settings.security)
    except (OSError, ssl.SSLError) as exc:
        return Check(False, f"{where}: the node's TLS key pair cannot be loaded: {exc}")
    tls_args = (context, address) if context is not None else None
    assoc = ae.associate(address, port, ae_title=settings.node.ae_title, tls_args=tls_args)
    if assoc.is_rejected:
        return Check(True, f"{where}: alive (refused calling AE {CALLING_AE} with "
                           "A-ASSOCIATE-RJ: AE title not allowed or all slots busy)")
    if not assoc.is_established:
        return Check(False, f"{where}: no association ({_hint(settings.security)})")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    if code != 0:
        return Check(False, f"{where}: C-ECHO answered {code!r}, expected 0x0000")
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
