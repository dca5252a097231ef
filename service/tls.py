"""TLS contexts for sending results, and the check of every TLS file before the node starts.

The listener serves TLS with ``[security] tls_cert``/``tls_key`` (and
requires client certificates signed by ``tls_ca``); a ``[[destinations]]``
entry with ``tls_ca`` receives results over TLS, its certificate verified
against that CA and its host name, the node presenting ``tls_cert``/``tls_key``
when the destination asks for a client certificate.

A path that does not exist, a certificate that does not match its key or a
CA file that holds no certificate would otherwise surface only when the
first peer connects or the first result goes out. :func:`check_tls` loads
every file as the listener and the outbox will, and raises one
:class:`~theranode.config.schema.ConfigError` listing each problem, named by its
setting. ``check-config`` and ``serve`` call it at start-up (with
:func:`theranode.service.jobs.engine_settings.build_engine_settings`).

References
----------
DICOM PS3.15 Annex B.1 (Basic TLS Secure Transport Connection Profile) and
B.9 (BCP 195 TLS Secure Transport Connection Profile): X.509 certificates,
the peer verified against the site's certificate authority.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from theranode.config.schema import ConfigError, Destination, SecuritySettings, Settings

_KEY_HINT = ("give the PEM certificate and the unencrypted PEM private key it was issued for")
_CA_HINT = "give a PEM file holding the CA certificate(s)"


class TlsErrorRecordingSocket(ssl.SSLSocket):
    """An :class:`ssl.SSLSocket` that keeps why TLS failed on its context (``tls_error``).

    pynetdicom only logs a failed TLS handshake; the outbox wants the reason
    (``certificate verify failed``, a destination that wants a client
    certificate) in the delivery's last error, which ``theranode status`` and
    ``jobs`` show. With TLS 1.3 a refused client certificate arrives as an
    alert on the first read after the handshake, hence :meth:`recv` too.
    """

    def _record(self, exc: OSError) -> None:
        if not getattr(self.context, "tls_error", ""):
            self.context.tls_error = str(exc)  # type: ignore[attr-defined]

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as exc:
            self._record(exc)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as exc:
            self._record(exc)
            raise


def _no_password() -> bytes:
    """An encrypted key fails to load instead of prompting on the terminal."""
    return b""


def client_context(destination: Destination) -> ssl.SSLContext | None:
    """The TLS context to send to ``destination`` (``None``: plain TCP, no ``tls_ca``).

    Certificate and host name are verified (:func:`ssl.create_default_context`,
    TLS 1.2 or later); the client certificate is loaded when given. Built per
    association, so renewed files on disk are used without a restart.
    """
    if not destination.tls_ca:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=destination.tls_ca)
    if destination.tls_cert:
        context.load_cert_chain(destination.tls_cert, destination.tls_key, _no_password)
    context.sslsocket_class = TlsErrorRecordingSocket
    return context


def _readable(where: str, name: str, path: str, problems: list[str]) -> bool:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as exc:
        problems.append(f"{where}.{name}: cannot read {path!r} ({exc.strerror or exc}); give "
                        "the path of a PEM file the node's user can read")
        return False
    return True


def _loads(where: str, names: str, load: Callable[[], object], hint: str,
           problems: list[str]) -> None:
    try:
        load()
    except (ssl.SSLError, OSError, ValueError) as exc:
        problems.append(f"{where}.{names}: does not load ({exc}); {hint}")


def _check_pair(where: str, cert: str, key: str, protocol: int,
                problems: list[str]) -> None:
    """A certificate and its key: both readable, and they load together."""
    if not cert or not key:
        return
    cert_ok = _readable(where, "tls_cert", cert, problems)
    key_ok = _readable(where, "tls_key", key, problems)
    if cert_ok and key_ok:
        context = ssl.SSLContext(protocol)
        _loads(where, "tls_cert / tls_key",
               lambda: context.load_cert_chain(cert, key, _no_password), _KEY_HINT, problems)


def _check_ca(where: str, ca: str, problems: list[str]) -> None:
    if ca and _readable(where, "tls_ca", ca, problems):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        _loads(where, "tls_ca", lambda: context.load_verify_locations(cafile=ca), _CA_HINT,
               problems)


def tls_problems(security: SecuritySettings, destinations: list[Destination]) -> list[str]:
    """Every TLS file that cannot be read or loaded, one message each."""
    problems: list[str] = []
    _check_pair("security", security.tls_cert, security.tls_key, ssl.PROTOCOL_TLS_SERVER,
                problems)
    _check_ca("security", security.tls_ca, problems)
    for i, destination in enumerate(destinations):
        where = f"destinations[{i}]"
        _check_ca(where, destination.tls_ca, problems)
        _check_pair(where, destination.tls_cert, destination.tls_key, ssl.PROTOCOL_TLS_CLIENT,
                    problems)
    return problems


def check_tls(settings: Settings) -> None:
    """Raise :class:`ConfigError` when a TLS file of the listener or a destination fails."""
    problems = tls_problems(settings.security, settings.destinations)
    if problems:
        raise ConfigError(problems, settings.source)
