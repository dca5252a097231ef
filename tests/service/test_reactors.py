"""The listener's associations wait for work instead of polling, and still work as before."""

from __future__ import annotations

import hashlib
import inspect
import os
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

from tests.service import factory
from tests.service.nodes import make_settings, running_node, scu
from theranode.service.receive import reactors

#: sha256 of the pynetdicom 3.0.4 loops that reactors.py copies. When a pynetdicom
#: upgrade changes either, compare the new loop with the copy, carry the change
#: over, and record the new digest here.
UPSTREAM_LOOPS = {
    "DULServiceProvider.run_reactor":
        "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "Association._run_reactor":
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee",
}


def test_the_copied_pynetdicom_loops_are_the_installed_ones():
    installed = {
        "DULServiceProvider.run_reactor": DULServiceProvider.run_reactor,
        "Association._run_reactor": Association._run_reactor,
    }
    digests = {name: hashlib.sha256(inspect.getsource(f).encode()).hexdigest()
               for name, f in installed.items()}
    assert digests == UPSTREAM_LOOPS


@pytest.fixture
def node(tmp_path: Path):
    with running_node(make_settings(tmp_path / "data")) as running:
        yield running


def acceptor_threads() -> list[threading.Thread]:
    found: list[threading.Thread] = []
    for thread in threading.enumerate():
        if isinstance(thread, reactors.EventDrivenAssociation):
            found += [thread, thread.dul]
    return found


def voluntary_switches(thread: threading.Thread) -> int:
    """How often ``thread`` has given up the CPU of its own accord (Linux)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    (line,) = [s for s in status.splitlines() if s.startswith("voluntary_ctxt_switches")]
    return int(line.split()[1])


def test_an_idle_association_does_not_wake_its_reactors_a_thousand_times_a_second(node):
    assoc = scu().associate("127.0.0.1", node.port, ae_title="THERANODE")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        (acceptor, dul) = acceptor_threads()
        before = [voluntary_switches(t) for t in (acceptor, dul)]
        time.sleep(1.0)
        woken = [voluntary_switches(t) - b for t, b in zip((acceptor, dul), before, strict=True)]
        # pynetdicom's 1 ms polls: about 1,000 each; a wait bounded by MAX_WAIT_S: about 20.
        assert all(count < 200 for count in woken), woken
        for _ in range(20):  # and it still answers at once, over and over
            assert assoc.send_c_echo().Status == 0x0000
        ct = factory.ct("REACTOR", datetime(2024, 5, 7, 10), frame="1.2.826.0.1.3680043.10.1")
        assert assoc.send_c_store(ct).Status == 0x0000
    finally:
        assoc.release()
    assert assoc.is_released


def open_file_descriptors() -> int:
    """How many file descriptors this process has open (Linux)."""
    return len(os.listdir("/proc/self/fd"))


def test_associations_end_without_leaving_threads_or_sockets(node):
    baseline = open_file_descriptors()
    for _ in range(5):
        assoc = scu().associate("127.0.0.1", node.port, ae_title="THERANODE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    aborted = scu().associate("127.0.0.1", node.port, ae_title="THERANODE")
    aborted.abort()
    deadline = time.monotonic() + 10
    while acceptor_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert acceptor_threads() == []
    assert open_file_descriptors() <= baseline


def test_the_network_timeout_still_ends_a_silent_association(tmp_path: Path):
    with running_node(make_settings(tmp_path / "data")) as running:
        running.scp.ae.network_timeout = 1  # new associations time out after 1 s of silence
        released = threading.Event()
        ae = scu()
        assoc = ae.associate("127.0.0.1", running.port, ae_title="THERANODE",
                             evt_handlers=[(evt.EVT_ABORTED, lambda e: released.set()),
                                           (evt.EVT_RELEASED, lambda e: released.set()),
                                           (evt.EVT_CONN_CLOSE, lambda e: released.set())])
        assert assoc.is_established
        assert released.wait(15), "the node kept a silent association open"


def test_only_new_acceptors_are_changed():
    ae = AE()
    requestor = Association(ae, "requestor")
    with pytest.raises(TypeError, match="acceptor"):
        reactors.make_event_driven(requestor)
