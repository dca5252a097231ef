"""Associations theranode opens as a sender never drop the response they wait for.

pynetdicom (3.0) runs a reactor thread beside every requestor association; it
takes DIMSE messages off the association's queue and serves the requests
among them. Before a ``send_c_store`` the user's thread pauses that reactor:
it clears ``_reactor_checkpoint`` and waits until ``_is_paused`` is true. The
reactor sets ``_is_paused`` *before* it waits at the checkpoint and clears it
*after*, so the sender can see the flag of a pass that has already gone
through the checkpoint: it sends, the peer answers at once (a refusal takes
milliseconds), and the reactor, resumed, takes the C-STORE response off the
queue, logs "Received unexpected C-STORE service message" and drops it. The
sender then waits for its DIMSE timeout and aborts. The same symptom is
reported upstream for C-FIND (pynetdicom issue 875). It shows under load, when
the reactor thread is preempted in that window; the listener's hostile-corpus
and bad-cycle tests met it about once in ten runs as a 30 s stall.

:func:`keep_responses` changes a requestor association's class to one whose
``_serve_request`` puts a response back on the queue when a user operation is
in progress (the checkpoint is cleared), where the waiting ``send_*`` takes
it. Everything else is pynetdicom's own behaviour.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association

logger = logging.getLogger(__name__)


class ResponseKeepingAssociation(Association):
    """A requestor association whose reactor hands responses back to the waiting sender."""

    def _serve_request(self, msg: Any, context_id: int) -> None:
        if (self.is_requestor and not msg.is_valid_request
                and not self._reactor_checkpoint.is_set()):
            logger.debug("Returned a %s to the sender waiting for it", msg.msg_type)
            self.dimse.msg_queue.put((context_id, msg))
            return
        super()._serve_request(msg, context_id)


def keep_responses(assoc: Association) -> Association:
    """Make ``assoc`` (a requestor, from ``AE.associate``) a :class:`ResponseKeepingAssociation`.

    Only a method is added; the object keeps its identity and state, so it can
    be applied to a running association.

    Raises
    ------
    TypeError
        ``assoc`` is not one of pynetdicom's requestor associations.
    """
    if not isinstance(assoc, Association) or not assoc.is_requestor:
        raise TypeError(f"expected a pynetdicom requestor Association, found {assoc!r}")
    if type(assoc) is Association:
        assoc.__class__ = ResponseKeepingAssociation
    return assoc


class SenderAE(AE):
    """pynetdicom's AE whose associations keep their responses (:func:`keep_responses`)."""

    def associate(self, *args: Any, **kwargs: Any) -> Association:
        return keep_responses(super().associate(*args, **kwargs))
