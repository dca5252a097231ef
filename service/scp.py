"""The DICOM listener: Verification and Storage SCP on pynetdicom.

Handlers run on each association's thread. They never raise to the peer:
every C-STORE is answered with the status :class:`~service.ingest.Ingest`
decided, and the log gets one line per association and one per series
received in it.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    evt,
)
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from config.schema import SecuritySettings
from dicomio.headers import SOP_CLASS_KINDS
from dicomio.part10 import file_header
from service import polling
from service.ingest import Ingest, Outcome, Peer

logger = logging.getLogger(__name__)


@dataclass
class _AssociationTally:
    """What one association stored, for its closing log line."""

    stored: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, str] = field(default_factory=dict)
    failed: Counter[int] = field(default_factory=Counter)
    duplicates: int = 0


class SlotCountingAE(AE):
    """An AE whose association limit counts only associations that exist.

    pynetdicom checks ``maximum_associations`` against every acceptor thread,
    including TCP connections that never sent an A-ASSOCIATE-RQ (a health
    check, a port scan, a peer that connected and closed): each held a slot
    until the 30 s ACSE timeout, so a few of them locked modalities out with
    "local limit exceeded". During negotiation (the only caller that is itself
    an unestablished association) the list holds the established acceptors
    and the one asking; everywhere else it is unchanged. Two peers negotiating
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


class HostFilteringServer(ThreadedAssociationServer):
    """An association server that drops connections from hosts not allowed.

    The TCP connection from a host outside ``allowed_hosts`` is closed before
    any association negotiation (like a firewall would), and the refusal is
    logged. Accepted sockets get TCP_NODELAY so that our small PDUs (C-STORE
    responses) are never held back by Nagle's algorithm.
    """

    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        try:
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self.allowed_networks:
            return True
        host = ipaddress.ip_address(client_address[0])
        if any(host in network for network in self.allowed_networks):
            return True
        logger.warning("Refused connection from %s: host not in allowed_hosts", client_address[0])
        return False


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
    """Verification + Storage SCP feeding an :class:`Ingest`."""

    def __init__(
        self, ingest: Ingest, ae_title: str, security: SecuritySettings
    ) -> None:
        self.ingest = ingest
        self.security = security
        polling.install()
        self.ae = SlotCountingAE(ae_title=ae_title)
        self.ae.maximum_associations = security.max_associations
        self.ae.require_calling_aet = list(security.allowed_calling_ae_titles)
        self.ae.require_called_aet = True
        self.ae.network_timeout = 300
        self.ae.dimse_timeout = 300
        # 1 MiB: lets a sender put a 0.5 MB CT slice in one P-DATA PDU rather
        # than many small ones, each of which the Python DUL handles in a loop.
        self.ae.maximum_pdu_size = 1024 * 1024
        self.ae.add_supported_context(Verification)
        for sop_class in SOP_CLASS_KINDS:
            self.ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
        self._tallies: dict[int, _AssociationTally] = {}
        self._lock = threading.Lock()
        self.server: ThreadedAssociationServer | None = None

    # -- lifecycle -------------------------------------------------------
    def start(self, bind: str, port: int) -> ThreadedAssociationServer:
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        server_class = type(
            "ConfiguredServer",
            (HostFilteringServer,),
            {
                "allowed_networks": tuple(
                    ipaddress.ip_network(h, strict=False) for h in self.security.allowed_hosts
                )
            },
        )
        server = self.ae.make_server(
            (bind, port),
            evt_handlers=handlers,
            ssl_context=tls_context(self.security),
            server_class=server_class,
        )
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        self.ae._servers.append(server)
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
        self.ae.shutdown()

    # -- handlers ----------------------------------------------------------
    @staticmethod
    def _peer(event: Event) -> Peer:
        requestor = event.assoc.requestor
        return Peer(calling_ae=str(requestor.ae_title).strip(), address=str(requestor.address))

    def _on_echo(self, event: Event) -> int:
        return 0x0000

    def _on_accepted(self, event: Event) -> None:
        peer = self._peer(event)
        polling.mark_busy(event.assoc)
        with self._lock:
            self._tallies[id(event.assoc)] = _AssociationTally()
        logger.info("Association accepted from %s (%s)", peer.calling_ae, peer.address)

    def _on_rejected(self, event: Event) -> None:
        peer = self._peer(event)
        logger.warning(
            "Association rejected from %s (%s): AE title not allowed or association limit (%d) "
            "reached", peer.calling_ae, peer.address, self.security.max_associations,
        )

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
        polling.mark_busy(event.assoc)
        peer = self._peer(event)
        try:
            data = received_file(event)
            outcome = self.ingest.receive(
                data,
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
    request = event.request
    header = file_header(
        str(request.AffectedSOPClassUID),
        str(request.AffectedSOPInstanceUID),
        str(event.context.transfer_syntax),
        PYNETDICOM_IMPLEMENTATION_UID,
        PYNETDICOM_IMPLEMENTATION_VERSION,
    )
    if header is None:
        return event.encoded_dataset(include_meta=True)
    return header + request.DataSet.getvalue()


def _error_comment(text: str) -> str:
    """An Error Comment (LO: ≤ 64 characters, no backslash or control characters)."""
    clean = "".join(c if c.isprintable() and c != "\\" else " " for c in text)
    return clean[:64]
