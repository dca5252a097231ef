"""A sender's association hands a response its reactor took in the pause race back to the sender.

The race (service/deliver/requestor.py) needs the reactor thread preempted in a
window of a few bytecodes; the test plays the reactor's part by hand: with a
user operation in progress (checkpoint cleared), a C-STORE response reaches
``_serve_request`` as the reactor would hand it.
"""

from __future__ import annotations

import queue

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.peers import free_port
from theranode.service.deliver.requestor import SenderAE, keep_responses


@pytest.fixture
def peer_port():  # type: ignore[no-untyped-def]
    ae = AE("PEER")
    ae.add_supported_context(Verification)
    ae.add_supported_context(CTImageStorage)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000)])
    yield port
    server.shutdown()


def _response() -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = CTImageStorage
    rsp.Status = 0x0000
    return rsp


def _reactor_takes_a_response_mid_operation(assoc: Association) -> tuple[int, C_STORE] | None:
    assoc._reactor_checkpoint.clear()  # what send_c_store does first
    try:
        assoc._serve_request(_response(), 1)  # what the resumed reactor does with it
        return assoc.dimse.msg_queue.get(timeout=0.5)  # what the waiting sender gets
    except queue.Empty:
        return None
    finally:
        assoc._reactor_checkpoint.set()


def test_a_response_taken_by_the_reactor_mid_operation_goes_back_to_the_sender(
    peer_port: int,
) -> None:
    ae = SenderAE("SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", peer_port)
    assert assoc.is_established
    try:
        got = _reactor_takes_a_response_mid_operation(assoc)
        assert got is not None and got[0] == 1 and got[1].Status == 0x0000
        assert assoc.send_c_echo().Status == 0x0000, "the association still works"
    finally:
        assoc.release()


def test_pynetdicom_alone_drops_it_which_is_what_made_senders_wait_30_s(
    peer_port: int, caplog: pytest.LogCaptureFixture,
) -> None:
    ae = AE("SENDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", peer_port)
    try:
        assert _reactor_takes_a_response_mid_operation(assoc) is None
        assert "Received unexpected C-STORE service message" in caplog.text
    finally:
        assoc.release()


def test_only_requestor_associations_are_changed() -> None:
    with pytest.raises(TypeError, match="requestor"):
        keep_responses(object())  # type: ignore[arg-type]
