"""Hostile peers on raw sockets: idle connections, partial and oversized A-ASSOCIATE-RQs.

What a peer on the hospital network can do to the listener without ever
completing an association. The tests in ``test_hostile_peers.py`` use these;
a benchmark can time a legitimate sender while they run.

References
----------
DICOM PS3.8 Section 9.3.2 (A-ASSOCIATE-RQ PDU structure) and 9.3.8 (A-ABORT).
"""

from __future__ import annotations

import socket
import struct
import time

#: PS3.7 Annex A.2.1 DICOM Application Context Name.
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16)


def association_request(called: str, calling: str) -> bytes:
    """A complete, valid A-ASSOCIATE-RQ PDU proposing Verification (Implicit VR LE)."""
    context = _item(0x20, bytes([1, 0, 0, 0])
                    + _item(0x30, VERIFICATION.encode())
                    + _item(0x40, IMPLICIT_VR_LITTLE_ENDIAN.encode()))
    user_information = _item(0x50, _item(0x51, struct.pack(">L", 16384))
                             + _item(0x52, b"1.2.826.0.1.3680043.9.7433"))
    body = (struct.pack(">HH", 1, 0) + _ae(called) + _ae(calling) + bytes(32)
            + _item(0x10, APPLICATION_CONTEXT.encode()) + context + user_information)
    return pdu_header(0x01, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    """The six bytes that start every PDU: type, reserved, length (PS3.8 Section 9.3.1)."""
    return struct.pack(">BBL", pdu_type, 0, length)


def connect(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the listener that sends nothing yet."""
    return socket.create_connection((host, port), timeout=5)


def wait_closed(sock: socket.socket, within_s: float) -> float | None:
    """Seconds until the node closed ``sock`` (reading and discarding what it sent).

    None when it was still open after ``within_s``.
    """
    start = time.monotonic()
    while True:
        remaining = within_s - (time.monotonic() - start)
        if remaining <= 0:
            return None
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            return None
        except OSError:  # reset: closed too
            return time.monotonic() - start


def received_before_close(sock: socket.socket, within_s: float) -> bytes:
    """Everything the node sent on ``sock`` until it closed it (or ``within_s`` passed)."""
    data = bytearray()
    deadline = time.monotonic() + within_s
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)
