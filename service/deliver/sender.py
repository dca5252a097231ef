"""Sending result files to a destination: one interface, a DICOM and a folder implementation.

Like dicomweb-client's ``DICOMClient`` protocol, :class:`Sender` is the small
surface the outbox needs: send these files, tell me per file what the
destination answered. :class:`DicomSender` sends by C-STORE on one
association per batch (pynetdicom SCU, TCP_NODELAY on its socket so small
objects are not held back by Nagle's algorithm, see docs/interoperability.md), over TLS
when the destination has ``tls_ca`` (:func:`theranode.service.tls.client_context`: the
destination's certificate verified against that CA and its host name, the
node's client certificate presented when given); :class:`FolderSender`
copies into a folder (write, fsync, rename).

Outcomes
--------
* ``SENT`` — status Success (0x0000) or a Warning (0x0001, 0xB000-0xBFFF);
* ``REFUSED`` — any failure status (0xA7xx, 0xA9xx, 0xCxxx, …): the
  destination understood and said no; resending will not help;
* ``UNREACHABLE`` — no association, aborted, or no answer, or a TLS
  handshake that fails (the destination's certificate does not verify, or it
  refuses the node's): retry later, the reason in the result's detail.

References
----------
DICOM PS3.4 B.2.3 (Storage Service statuses), PS3.7 9.1.1 (C-STORE),
PS3.15 B.1 and B.9 (TLS secure transport connection profiles).
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.events import Event

from theranode.config.schema import Destination
from theranode.service.deliver.requestor import SenderAE
from theranode.service.receive.archive import write_durably
from theranode.service.tls import client_context

logger = logging.getLogger(__name__)

RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"
COMPREHENSIVE_3D_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.34"
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
#: The optional organ-dose report for dose registries (theranode.dicomio.rrd_sr).
RRD_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.68"
RESULT_SOP_CLASSES = (
    RT_DOSE_STORAGE, COMPREHENSIVE_3D_SR_STORAGE, ENCAPSULATED_PDF_STORAGE, RRD_SR_STORAGE
)


class SendState(str, enum.Enum):
    SENT = "sent"
    REFUSED = "refused"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class SendResult:
    """The destination's answer for one file."""

    path: Path
    state: SendState
    status: int | None = None
    detail: str = ""


OnResult = Callable[[SendResult], None]


def _ignore(result: SendResult) -> None:
    return None


class Sender(Protocol):
    """Delivers files to one destination."""

    name: str

    def send(self, paths: Sequence[Path], on_result: OnResult = _ignore) -> list[SendResult]:
        """Send ``paths`` in order; stop at the first UNREACHABLE (later files not tried).

        ``on_result`` is called with each answer as soon as it arrives, so the
        caller can record a delivery before the next object goes out.
        """
        ...


def classify_status(status: int) -> SendState:
    """PS3.4 B.2.3: success and warnings are delivered; every failure is a refusal."""
    if status == 0x0000 or status == 0x0001 or 0xB000 <= status <= 0xBFFF:
        return SendState.SENT
    return SendState.REFUSED


def _nodelay(event: Event) -> None:
    """Turn Nagle's algorithm off on the association's socket (docs/interoperability.md)."""
    sock = getattr(event.assoc.dul, "socket", None)
    raw = getattr(sock, "socket", None)
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DicomSender:
    """C-STORE SCU to a ``[[destinations]]`` entry."""

    def __init__(self, destination: Destination, calling_ae_title: str, timeout_s: float = 30.0):
        self.name = destination.name
        self.destination = destination
        self.ae = SenderAE(ae_title=calling_ae_title)
        for sop_class in RESULT_SOP_CLASSES:
            self.ae.add_requested_context(sop_class, [ExplicitVRLittleEndian,
                                                      ImplicitVRLittleEndian])
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = timeout_s
        # bounds the TCP connect and, with TLS, the handshake (none by default)
        self.ae.connection_timeout = timeout_s

    def send(self, paths: Sequence[Path], on_result: OnResult = _ignore) -> list[SendResult]:
        if not paths:
            return []
        d = self.destination
        try:
            context = client_context(d)
        except (OSError, ssl.SSLError) as exc:
            return _unreachable(paths[0], f"TLS settings of destination {d.name} do not load: "
                                f"{exc}; run theranode check-config", on_result)
        try:
            assoc = self.ae.associate(d.host, d.port, ae_title=d.ae_title,
                                      evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)],
                                      tls_args=(context, d.host) if context else None)
        except (OSError, RuntimeError) as exc:
            return _unreachable(paths[0], str(exc), on_result)
        if not assoc.is_established:
            return _unreachable(paths[0], _why_not_associated(assoc, context), on_result)
        results: list[SendResult] = []
        try:
            for path in paths:
                result = self._store(assoc, path)
                results.append(result)
                on_result(result)
                if result.state is SendState.UNREACHABLE:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    @staticmethod
    def _store(assoc: object, path: Path) -> SendResult:
        try:
            answer = assoc.send_c_store(dcmread(path))  # type: ignore[attr-defined]
        except (OSError, RuntimeError, ValueError) as exc:
            return SendResult(path, SendState.UNREACHABLE, detail=str(exc))
        if "Status" not in answer:
            return SendResult(path, SendState.UNREACHABLE,
                              detail="no C-STORE response (timeout or abort)")
        status = int(answer.Status)
        comment = str(answer.get("ErrorComment", "") or "")
        return SendResult(path, classify_status(status), status, comment)


class FolderSender:
    """Copies result files into a folder (for a shared drive or a test)."""

    def __init__(self, destination: Destination):
        self.name = destination.name
        self.folder = Path(destination.folder)

    def send(self, paths: Sequence[Path], on_result: OnResult = _ignore) -> list[SendResult]:
        results = []
        for path in paths:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                write_durably(self.folder / f"{path.parent.name}-{path.name}", path.read_bytes())
            except OSError as exc:
                results.append(SendResult(path, SendState.UNREACHABLE, detail=str(exc)))
                on_result(results[-1])
                break
            results.append(SendResult(path, SendState.SENT, 0x0000))
            on_result(results[-1])
        return results


def _why_not_associated(assoc: object, context: ssl.SSLContext | None) -> str:
    if getattr(assoc, "is_rejected", False):
        return "association rejected"
    tls_error = getattr(context, "tls_error", "")
    return f"TLS failed: {tls_error}" if tls_error else "no association"


def _unreachable(path: Path, why: str, on_result: OnResult) -> list[SendResult]:
    result = SendResult(path, SendState.UNREACHABLE, detail=why)
    on_result(result)
    return [result]


def sender_for(destination: Destination, calling_ae_title: str) -> Sender:
    """The sender a destination's settings call for."""
    if destination.folder:
        return FolderSender(destination)
    return DicomSender(destination, calling_ae_title)
