"""The DICOM listener: Verification and Storage SCP on pynetdicom.

Handlers run on each association's thread. They never raise to the peer:
every C-STORE is answered with the status :class:`~theranode.service.receive.ingest.Ingest`
decided, and the log gets one line per association and one per series
received in it.

What a peer can hold is bounded by ``[security]`` settings before pynetdicom
sees it (:class:`GuardedServer`: hosts, connections, TLS handshake and
A-ASSOCIATE-RQ time and size, PDU length) and after (an idle association's
slot, a C-STORE's size); ``docs/conformance.md`` section 4 lists them and
``tests/reliability/test_hostile_peers.py`` tries each.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from io import BytesIO
from socketserver import BaseServer
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    evt,
)
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from theranode.config.schema import SecuritySettings
from theranode.dicomio.headers import SOP_CLASS_KINDS
from theranode.dicomio.part10 import file_header
from theranode.service.receive.ingest import Ingest, Outcome, Peer
from theranode.service.receive.reactors import make_event_driven

logger = logging.getLogger(__name__)

#: The Verification SOP Class (PS3.4 Annex A.4). pynetdicom's
#: ``sop_class.Verification`` is the same UID, but that module makes its names
#: when imported, so mypy cannot see them.
VERIFICATION = UID("1.2.840.10008.1.1")


@dataclass
class _AssociationTally:
    """What one association stored, for its closing log line."""

    stored: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, str] = field(default_factory=dict)
    failed: Counter[int] = field(default_factory=Counter)
    duplicates: int = 0


def rejection_reason(assoc: Any, max_associations: int) -> str:
    """Why pynetdicom rejected ``assoc``, by its own rules in its own order (the last wins).

    pynetdicom's EVT_REJECTED carries no reason; these are the checks of its
    ``ACSE._negotiate_as_acceptor`` (pynetdicom 3.0), re-evaluated on the
    request: calling AE title, called AE title, user identity, then the
    association limit.
    """
    ae, request = assoc.ae, assoc.requestor.primitive
    calling, called = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
    acceptor = str(assoc.acceptor.ae_title).strip()
    active = [a for a in ae.active_associations if a.is_acceptor]
    if len(active) > ae.maximum_associations:
        return f"all {max_associations} association slots are in use"
    if ae.require_called_aet and called != acceptor:
        return f"it called AE title {called!r}, and this node is {acceptor!r}"
    allowed = [t.strip() for t in ae.require_calling_aet]
    if allowed and calling not in allowed:
        return (f"calling AE title {calling!r} is not in security.allowed_calling_ae_titles "
                f"({', '.join(allowed)})")
    return "the peer's user identity was not accepted"


class SlotCountingAE(AE):
    """An AE whose association limit counts only associations that exist.

    pynetdicom checks ``maximum_associations`` against every acceptor thread,
    including TCP connections that never sent an A-ASSOCIATE-RQ (a health
    check, a port scan, a peer that connected and closed): each held a slot
    until the 30 s ACSE timeout, so a few of them locked modalities out with
    "local limit exceeded". (Connections that have not sent a whole
    A-ASSOCIATE-RQ no longer reach pynetdicom: :class:`GuardedServer`; this
    still keeps associations that are ending from holding a slot.) During
    negotiation (the only caller that is itself an unestablished association)
    the list holds the established acceptors and the one asking; everywhere
    else it is unchanged. Two peers negotiating
    at the same instant may both see one slot free (a limit overshoot of one,
    never a lock-out).
    """

    @property
    def active_associations(self) -> list[Any]:
        associations: list[Any] = super().active_associations
        current = threading.current_thread()
        if current in associations and not getattr(current, "is_established", True):
            return [a for a in associations if a.is_established or a is current]
        return associations


class _PrefixedSocket(AssociationSocket):
    """pynetdicom's socket, serving first the A-ASSOCIATE-RQ the listener already read.

    It also refuses to read a PDU longer than the maximum length the node
    offered (PS3.8 Annex D.1): pynetdicom reads any declared length whole.
    Its reader asks for the six-byte PDU header, then for the rest; a longer
    rest is not read, and the short answer makes pynetdicom close.
    """

    _prefix: bytearray

    @classmethod
    def adopt(cls, sock: AssociationSocket | None, prefix: bytes) -> None:
        """Make ``sock``, the socket pynetdicom made for an association, one of this class.

        The object keeps its identity and state and changes only its class:
        pynetdicom's request handler makes the socket itself (there is no
        setting for its class), and making a second one would queue a second
        "transport connection open" event (Evt5) on the association's state
        machine. Only this class's methods are added; its attributes are
        pynetdicom's own plus ``_prefix``.
        """
        if not isinstance(sock, AssociationSocket):
            raise TypeError(f"expected pynetdicom's AssociationSocket, found {sock!r}")
        sock.__class__ = cls
        assert isinstance(sock, cls)
        sock._prefix = bytearray(prefix)

    @property
    def ready(self) -> bool:
        return bool(self._prefix) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._prefix:
            limit = self.assoc.acceptor.maximum_length
            if limit and nr_bytes > limit:
                logger.warning(
                    "Closed the association from %s: a PDU of %d bytes, more than the maximum "
                    "length (%d) it was given; not read", self.assoc.requestor.address,
                    nr_bytes, limit,
                )
                return bytearray()
            return self._recv_exactly(nr_bytes)
        taken = self._prefix[:nr_bytes]
        del self._prefix[:nr_bytes]
        if len(taken) < nr_bytes:
            taken += self._recv_exactly(nr_bytes - len(taken))
        return taken

    def _recv_exactly(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` read straight into one buffer (fewer, if the peer closes first).

        pynetdicom's reader asks the socket for 4 KiB at a time and appends
        each piece: 128 system calls and copies for a 0.5 MB slice. Reading
        into one preallocated buffer takes what the kernel holds at each call.
        Afterwards the peer is acknowledged at once (TCP_QUICKACK, Linux): a
        sender that leaves Nagle's algorithm on holds the next small segment
        until this side acknowledges the last, and delayed ACKs would make it
        wait up to 40 ms per C-STORE (RFC 1122 4.2.3.2, RFC 896).
        """
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        got = 0
        while got < nr_bytes:
            count = sock.recv_into(view[got:], nr_bytes - got)
            if not count:  # the peer closed: pynetdicom sees the short read
                del view
                return buffer[:got]
            got += count
        del view
        _acknowledge_now(sock)
        return buffer


#: Linux's TCP_QUICKACK (``socket.TCP_QUICKACK`` where Python exposes it).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


def _acknowledge_now(sock: socket.socket) -> None:
    """Turn off delayed ACKs for what arrives next (the kernel clears it again itself)."""
    if _TCP_QUICKACK is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:  # closing, or not TCP: nothing to acknowledge
        pass


class _GuardedHandler(RequestHandler):
    """pynetdicom's request handler, given the A-ASSOCIATE-RQ read by :class:`GuardedServer`.

    It extends pynetdicom's private ``_create_association``, where the
    association and its socket are made: pynetdicom has no public way to
    choose the socket's class or the association's reactors
    (:func:`~theranode.service.receive.reactors.make_event_driven`).
    """

    def __init__(self, request: Any, client_address: Any, server: Any, prefix: bytes) -> None:
        self._prefix = prefix
        super().__init__(request, client_address, server)

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        _PrefixedSocket.adopt(assoc.dul.socket, self._prefix)
        make_event_driven(assoc)
        return assoc


@dataclass
class _Opening:
    """A connection accepted and not yet handed to pynetdicom."""

    raw: socket.socket
    host: str
    opened_at: float
    #: What ``raw`` became: itself, or the TLS socket that took it over.
    connection: socket.socket = field(init=False)
    evicted: bool = False

    def __post_init__(self) -> None:
        self.connection = self.raw


class RefusedConnection(Exception):
    """A connection closed before association negotiation; the message says why."""


class GuardedServer(ThreadedAssociationServer):
    """An association server that checks a connection before pynetdicom sees it.

    pynetdicom's server wraps each accepted socket in TLS on the listener
    thread, with no timeout (one peer that connects and sends nothing holds
    every other handshake), hands every connection two threads until the
    peer goes, and reads an A-ASSOCIATE-RQ of any declared length whole. Here
    the listener thread only accepts, drops hosts outside ``allowed_networks``
    and connections beyond ``max_connections`` (closed at once, logged with
    the address only); the connection's own thread then does the TLS
    handshake within ``handshake_timeout_s`` and reads the A-ASSOCIATE-RQ
    within ``request_timeout_s`` from the end of the handshake, refusing a
    first PDU that is not an A-ASSOCIATE-RQ (PS3.8 Section 9.3.2) or declares
    more than ``max_request_bytes``, before reading its body. Only then is the
    connection given to pynetdicom (which checks the AE titles), with the
    request bytes it would have read. Accepted sockets get TCP_NODELAY so our
    small PDUs (C-STORE responses) are never held back by Nagle's algorithm.
    """

    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_connections: int = 32
    handshake_timeout_s: float = 10.0
    request_timeout_s: float = 30.0
    max_request_bytes: int = 128 * 1024
    #: After the A-ASSOCIATE-RQ, a read or write that stalls this long closes the connection.
    stall_timeout_s: float = 300.0
    #: Bind with SO_REUSEPORT: other listener processes share the port
    #: (:mod:`theranode.service.receive.listeners`).
    reuse_port: bool = False
    #: At the connection limit, a connection this long without an
    #: A-ASSOCIATE-RQ is closed for a new one (see _evict_oldest_opening).
    EVICT_AFTER_S = 1.0

    def server_bind(self) -> None:
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()  # no TLS here: see process_request_thread
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return client, address

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Connections accepted and not yet handed to pynetdicom, by raw socket.
        self._opening: dict[socket.socket, _Opening] = {}
        self._opening_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if self.allowed_networks and not self._allowed(host):
            logger.warning("Refused connection from %s: host not in allowed_hosts", host)
            return False
        with self._opening_lock:
            held = len(self._opening) + len(self.active_associations)
            if held >= self.max_connections and not self._evict_oldest_opening():
                logger.warning(
                    "Refused connection from %s: %d connections open, the limit "
                    "(max_connections) is %d", host, held, self.max_connections,
                )
                return False
            self._opening[request] = _Opening(request, host, time.monotonic())
        return True

    def _allowed(self, host: str) -> bool:
        try:  # an IPv6 link-local address carries its zone: "fe80::1%eth0"
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(address in network for network in self.allowed_networks)

    def _evict_oldest_opening(self) -> bool:
        """Close the connection longest without an A-ASSOCIATE-RQ, if that is ``EVICT_AFTER_S``.

        A modality sends its request within milliseconds of connecting; the
        connections still silent after a second are what holds the slots when
        an idle-connection attack has filled them. Called with the lock held.
        """
        if not self._opening:
            return False
        oldest = min(self._opening.values(), key=lambda o: o.opened_at)
        waited = time.monotonic() - oldest.opened_at
        if waited < self.EVICT_AFTER_S:
            return False
        logger.warning(
            "Connection limit (max_connections %d) reached: closing the connection from %s, "
            "%.1f s without an association request, for a new one",
            self.max_connections, oldest.host, waited,
        )
        oldest.evicted = True
        del self._opening[oldest.raw]
        try:
            oldest.connection.shutdown(socket.SHUT_RDWR)  # its thread wakes and closes it
        except OSError:
            pass
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._opening_lock:
            opening = self._opening.get(request) or _Opening(request, client_address[0], 0.0)
        try:
            try:
                connection, association_request = self._open(opening)
            except Exception as exc:  # refused, or a socket or TLS error: log, close, go on
                if not opening.evicted:
                    logger.warning("Closed connection from %s: %s", client_address[0], exc)
                self.shutdown_request(opening.connection)
                return
            try:
                _GuardedHandler(connection, client_address, self, association_request)
            except Exception:
                self.handle_error(connection, client_address)
                self.shutdown_request(connection)
        finally:
            with self._opening_lock:
                self._opening.pop(request, None)

    def _open(self, opening: _Opening) -> tuple[socket.socket, bytes]:
        """TLS handshake and A-ASSOCIATE-RQ, each within its time limit (this thread)."""
        connection = opening.raw
        if self.ssl_context is not None:
            opening.raw.settimeout(self.handshake_timeout_s)
            with self._opening_lock:  # wrapping takes over (detaches) the raw socket
                if opening.evicted:
                    raise RefusedConnection("closed for a newer connection")
                connection = self.ssl_context.wrap_socket(
                    opening.raw, server_side=True, do_handshake_on_connect=False
                )
                opening.connection = connection
            try:
                connection.do_handshake()
            except TimeoutError as exc:
                raise RefusedConnection(
                    f"no TLS handshake within handshake_timeout_s ({self.handshake_timeout_s:g} s)"
                ) from exc
            except (ssl.SSLError, OSError) as exc:
                raise RefusedConnection(f"TLS handshake failed ({exc})") from exc
        deadline = time.monotonic() + self.request_timeout_s
        header = _read_within(connection, 6, deadline, self.request_timeout_s)
        pdu_type, _, length = struct.unpack(">BBL", header)
        if pdu_type != 0x01:
            _send_abort(connection, reason=0x02)  # unexpected PDU
            raise RefusedConnection(f"first PDU is of type 0x{pdu_type:02X}, not A-ASSOCIATE-RQ")
        if length > self.max_request_bytes:
            _send_abort(connection, reason=0x06)  # invalid PDU parameter value
            raise RefusedConnection(
                f"A-ASSOCIATE-RQ declares {length} bytes, more than max_association_request_kb "
                f"({self.max_request_bytes // 1024} KiB); not read"
            )
        body = _read_within(connection, length, deadline, self.request_timeout_s)
        connection.settimeout(self.stall_timeout_s)
        with self._opening_lock:  # from here on, the association limits apply
            if opening.evicted:
                raise RefusedConnection("closed for a newer connection")
            self._opening.pop(opening.raw, None)
        return connection, header + body

    def shutdown(self) -> None:
        """Stop serving and close the listening socket.

        pynetdicom's ``ThreadedAssociationServer.shutdown`` also removes the
        server from its AE's list of servers, which only ``AE.start_server``
        fills (it takes no server class); this server, made by
        ``AE.make_server``, is never in it.
        """
        BaseServer.shutdown(self)
        self.server_close()

    def server_close(self) -> None:
        # Unblock connections still in their handshake or request, so that
        # shutting down does not wait for their time limits.
        with self._opening_lock:
            opening = [o.connection for o in self._opening.values()]
        for sock in opening:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().server_close()


def _read_within(sock: socket.socket, size: int, deadline: float, limit_s: float) -> bytes:
    """Exactly ``size`` bytes from ``sock``, all by ``deadline`` (a slow drip cannot extend it)."""
    data = bytearray()
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(min(size - len(data), 65536))
        except TimeoutError:
            break
        if not chunk:
            raise RefusedConnection(
                f"peer closed the connection after {len(data)} of {size} bytes"
            )
        data += chunk
    if len(data) < size:
        raise RefusedConnection(
            f"no complete A-ASSOCIATE-RQ within acse_timeout_s ({limit_s:g} s): "
            f"{len(data)} of {size} bytes"
        )
    return bytes(data)


def _send_abort(sock: socket.socket, reason: int) -> None:
    """Best effort A-ABORT from the service provider (PS3.8 Section 9.3.8)."""
    try:
        sock.settimeout(1.0)
        sock.sendall(struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason))
    except OSError:
        pass


_ACTIVE_ATTRIBUTE = "_theranode_active_at"
_DROPPED_ATTRIBUTE = "_theranode_dropped_bytes"


def mark_active(assoc: Any) -> None:
    """Record that ``assoc`` was accepted or stored something just now (C-ECHO does not count)."""
    setattr(assoc, _ACTIVE_ATTRIBUTE, time.monotonic())


def last_activity(assoc: Any) -> float:
    """When ``assoc`` was accepted or last stored something (``time.monotonic``)."""
    return float(getattr(assoc, _ACTIVE_ATTRIBUTE, time.monotonic()))


def reclaimable(ae: AE, idle_s: float) -> Any | None:
    """The established association to abort for a new one, or None.

    Only when all ``ae.maximum_associations`` slots are held by established
    acceptors: the one that has gone longest without storing anything, if
    that is at least ``idle_s``. A peer transferring keeps its slot.
    """
    current = threading.current_thread()
    established = [
        a for a in ae.active_associations
        if a.is_acceptor and a.is_established and a is not current
    ]
    if len(established) < ae.maximum_associations:
        return None
    oldest = min(established, key=last_activity)
    if time.monotonic() - last_activity(oldest) < idle_s:
        return None
    return oldest


def evict(assoc: Any, grace_s: float = 0.5) -> None:
    """Abort ``assoc`` from another thread, without waiting on its peer.

    pynetdicom's blocking ``abort()`` waits until the association's reader
    thread has sent the A-ABORT, but that thread may be blocked reading a PDU
    the peer never finishes; then it would wait for ever. The A-ABORT is
    queued, and if the association is still up after ``grace_s`` its
    connection is shut down, which wakes the reader.
    """
    assoc.abort(block=False)
    deadline = time.monotonic() + grace_s
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)
    sock = getattr(assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.01)


def tls_context(security: SecuritySettings) -> ssl.SSLContext | None:
    """Server TLS context from the settings; client certificates when a CA is given."""
    if not security.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(security.tls_cert, security.tls_key)
    if security.tls_ca:
        context.load_verify_locations(cafile=security.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class StorageSCP:
    """Verification + Storage SCP feeding an :class:`Ingest`.

    Its associations' reactors wait for work instead of polling
    (:mod:`~theranode.service.receive.reactors`).
    """

    def __init__(
        self, ingest: Ingest, ae_title: str, security: SecuritySettings
    ) -> None:
        self.ingest = ingest
        self.security = security
        self.ae = SlotCountingAE(ae_title=ae_title)
        self.ae.maximum_associations = security.max_associations
        self.ae.require_calling_aet = list(security.allowed_calling_ae_titles)
        self.ae.require_called_aet = True
        self.ae.acse_timeout = security.acse_timeout_s
        self.ae.network_timeout = 300
        self.ae.dimse_timeout = 300
        # 1 MiB: lets a sender put a 0.5 MB CT slice in one P-DATA PDU rather
        # than many small ones, each of which the Python DUL handles in a loop.
        self.ae.maximum_pdu_size = 1024 * 1024
        self.ae.add_supported_context(VERIFICATION)
        for sop_class in SOP_CLASS_KINDS:
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._tallies: dict[int, _AssociationTally] = {}
        self._lock = threading.Lock()
        self._reclaim_lock = threading.Lock()
        self.max_instance_bytes = security.max_instance_mb * 1024 * 1024
        ingest.limit_quarantine(security.quarantine_quota_mb)
        self.server: ThreadedAssociationServer | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self, bind: str, port: int, reuse_port: bool = False) -> ThreadedAssociationServer:
        """Listen on ``bind``:``port`` (0: a free port) on a thread of its own.

        With ``reuse_port`` the port may be shared with other listener
        processes (SO_REUSEPORT).
        """
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_PDU_RECV, self._on_pdu),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        security = self.security
        server_class = type(
            "ConfiguredServer",
            (GuardedServer,),
            {
                "allowed_networks": tuple(
                    ipaddress.ip_network(h, strict=False) for h in security.allowed_hosts
                ),
                "max_connections": security.max_connections,
                "handshake_timeout_s": security.handshake_timeout_s,
                "request_timeout_s": security.acse_timeout_s,
                "max_request_bytes": security.max_association_request_kb * 1024,
                "stall_timeout_s": float(self.ae.network_timeout or 300),
                "reuse_port": reuse_port,
            },
        )
        server = self.ae.make_server(
            (bind, port),
            evt_handlers=handlers,
            ssl_context=tls_context(self.security),
            server_class=server_class,
        )
        # Not AE.start_server(block=False): it takes no server class. AE.make_server
        # leaves the server out of the AE's list of servers, so :meth:`stop` shuts
        # it down (GuardedServer.shutdown).
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        self.server = server
        logger.info(
            "DICOM listener %s on %s:%d (TLS %s)",
            self.ae.ae_title, bind, server.server_address[1],
            "on" if self.security.tls_cert else "off",
        )
        return server

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Abort the associations in progress, then close the listener."""
        self.ae.shutdown()
        if self.server is not None:
            self.server.shutdown()

    # -- handlers ----------------------------------------------------------
    @staticmethod
    def _peer(event: Event) -> Peer:
        requestor = event.assoc.requestor
        return Peer(calling_ae=str(requestor.ae_title).strip(), address=str(requestor.address))

    def _on_echo(self, event: Event) -> int:
        return 0x0000

    def _on_requested(self, event: Event) -> None:
        """Free a slot held by an idle association when all are in use.

        Runs on the new association's thread before its negotiation. Without
        it, eight associations that store nothing (kept alive by a C-ECHO now
        and then) lock every modality out for as long as they like.
        """
        limit = self.security.reclaim_idle_after_s
        with self._reclaim_lock:
            victim = reclaimable(self.ae, limit)
            if victim is None:
                return
            logger.warning(
                "All %d association slots in use: aborting the association from %s (%s), "
                "which stored nothing for %.0f s (reclaim_idle_after_s %g), for a new peer",
                self.ae.maximum_associations, str(victim.requestor.ae_title).strip(),
                victim.requestor.address, time.monotonic() - last_activity(victim), limit,
            )
            evict(victim)

    def _on_accepted(self, event: Event) -> None:
        peer = self._peer(event)
        mark_active(event.assoc)
        with self._lock:
            self._tallies[id(event.assoc)] = _AssociationTally()
        logger.info("Association accepted from %s (%s)", peer.calling_ae, peer.address)

    def _on_rejected(self, event: Event) -> None:
        peer = self._peer(event)
        logger.warning("Association rejected from %s (%s): %s", peer.calling_ae, peer.address,
                       rejection_reason(event.assoc, self.security.max_associations))

    def _on_closed(self, event: Event) -> None:
        peer = self._peer(event)
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if tally is None:
            return
        for series_uid, count in tally.stored.items():
            logger.info(
                "Series %s (%s): %d instance(s) stored from %s",
                series_uid, tally.kinds.get(series_uid, "?"), count, peer.calling_ae,
            )
        failures = ", ".join(f"0x{s:04X}×{n}" for s, n in sorted(tally.failed.items()))
        logger.info(
            "Association %s by %s (%s): %d stored, %d duplicate(s), %d failed%s",
            how, peer.calling_ae, peer.address, sum(tally.stored.values()), tally.duplicates,
            sum(tally.failed.values()), f" ({failures})" if failures else "",
        )

    def _on_store(self, event: Event) -> Dataset:
        mark_active(event.assoc)
        peer = self._peer(event)
        try:
            outcome = self._check_size(event, peer)
            if outcome is None:
                outcome = self.ingest.receive(
                    received_file(event),
                    peer,
                    transfer_syntax=str(event.context.transfer_syntax),
                    context_sop_class=str(event.context.abstract_syntax),
                )
        except Exception as exc:  # never raise to the peer
            logger.exception("Unexpected error while storing from %s", peer.calling_ae)
            outcome = Outcome(0xA700, f"unexpected error: {exc!r}")
        self._tally(event, outcome)
        status = Dataset()
        status.Status = outcome.status
        if outcome.status != 0x0000 and outcome.comment:
            status.ErrorComment = _error_comment(outcome.comment)
        return status

    def _on_pdu(self, event: Event) -> None:
        """Drop a data set's bytes beyond ``max_instance_mb`` as they arrive.

        pynetdicom gathers a DIMSE message's data set in memory until it is
        complete; this runs on the association's reader thread before each
        PDU is added to the message being gathered, so that message never
        holds more than the limit and one PDU. The C-STORE is answered
        (:meth:`_check_size`) once it is complete.
        """
        message = event.assoc.dimse.message
        data = getattr(message, "data_set", None)
        if data is None or data.tell() <= self.max_instance_bytes:
            return
        earlier = getattr(event.assoc, _DROPPED_ATTRIBUTE, None)
        dropped = earlier[1] if earlier is not None and earlier[0] is data else 0
        setattr(event.assoc, _DROPPED_ATTRIBUTE, (data, dropped + data.tell()))
        data.seek(0)
        data.truncate()

    def _check_size(self, event: Event, peer: Peer) -> Outcome | None:
        """0xA700 for a data set larger than ``max_instance_mb`` (dropped, not quarantined)."""
        _, data = _store_request(event)
        size = len(data.getbuffer())
        dropped = getattr(event.assoc, _DROPPED_ATTRIBUTE, None)
        if dropped is not None and dropped[0] is data:
            size += dropped[1]
            setattr(event.assoc, _DROPPED_ATTRIBUTE, None)
        if size <= self.max_instance_bytes:
            return None
        limit_mb = self.security.max_instance_mb
        logger.error(
            "Refused an instance of %.0f MB from %s (%s): larger than max_instance_mb (%d MB); "
            "not kept", size / 2**20, peer.calling_ae, peer.address, limit_mb,
        )
        return Outcome(0xA700, f"data set of {size / 2**20:.0f} MB exceeds max_instance_mb "
                               f"{limit_mb}; not stored")

    def _tally(self, event: Event, outcome: Outcome) -> None:
        with self._lock:
            tally = self._tallies.get(id(event.assoc))
            if tally is None:
                return
            if outcome.status != 0x0000:
                tally.failed[outcome.status] += 1
            elif outcome.duplicate:
                tally.duplicates += 1
            elif outcome.header is not None:
                uid = outcome.header.series_instance_uid
                tally.stored[uid] += 1
                tally.kinds[uid] = outcome.header.modality


def received_file(event: Event) -> bytes:
    """The PS3.10 bytes of a C-STORE request's data set, as pynetdicom would frame them.

    Byte for byte what ``event.encoded_dataset(include_meta=True)`` returns
    (so digests of what is already archived still match a resend), with the
    File Meta Information encoded directly rather than through pydicom.
    """
    request, data = _store_request(event)
    header = file_header(
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        str(event.context.transfer_syntax),
        PYNETDICOM_IMPLEMENTATION_UID,
        PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    if header is None:
        return event.encoded_dataset(include_meta=True)
    return header + data.getvalue()


def _store_request(event: Event) -> tuple[C_STORE, BytesIO]:
    """The C-STORE request of an ``EVT_C_STORE`` event, and its data set's bytes.

    pynetdicom types ``Event.request`` as any DIMSE request and ``C_STORE.DataSet``
    as optional; in a C-STORE request event they are a C-STORE and its data set.
    """
    request = event.request
    if not isinstance(request, C_STORE) or request.DataSet is None:
        raise TypeError(f"expected a C-STORE request with a data set, found {request!r}")
    return request, request.DataSet


def _error_comment(text: str) -> str:
    """An Error Comment (LO: ≤ 64 characters, no backslash or control characters)."""
    clean = "".join(c if c.isprintable() and c != "\\" else " " for c in text)
    return clean[:64]
