"""Busy associations poll fast; everything else keeps pynetdicom's polls."""

from __future__ import annotations

import inspect
import threading
import time

import pynetdicom.association
import pynetdicom.dul
from pynetdicom import AE
from pynetdicom.association import Association

from tests.service.nodes import make_settings
from theranode.service.app import Node
from theranode.service.receive import polling


def test_pynetdicom_still_polls_the_way_the_shortcut_assumes() -> None:
    # If an upgrade changes these loops, theranode.service.receive.polling no longer does what
    # its docstring says: revisit it (and benchmarks/ingest.py) then.
    assert "time.sleep(0.001)" in inspect.getsource(Association._run_reactor)
    reactor = inspect.getsource(pynetdicom.dul.DULServiceProvider.run_reactor)
    assert "time.sleep(self._run_loop_delay)" in reactor
    assert "self._run_loop_delay = 0.001" in inspect.getsource(
        pynetdicom.dul.DULServiceProvider.__init__
    )


def _interval_on_thread(busy: bool, requested: float) -> float:
    """The poll a fresh reactor-like thread gets, marked busy or not."""
    seen: list[float] = []

    def reactor() -> None:
        if busy:
            polling.mark_busy(threading.current_thread())
        seen.append(polling.poll_interval(requested))

    thread = threading.Thread(target=reactor)
    thread.start()
    thread.join()
    return seen[0]


def test_a_busy_association_polls_every_tenth_of_a_millisecond() -> None:
    assert _interval_on_thread(True, 0.001) == polling.FAST_POLL_S


def test_an_idle_association_keeps_pynetdicoms_poll() -> None:
    assert _interval_on_thread(False, 0.001) == 0.001


def test_longer_sleeps_are_never_shortened() -> None:
    assert _interval_on_thread(True, 0.01) == 0.01
    assert _interval_on_thread(True, 0.00005) == 0.00005


def test_busy_ends_after_the_window(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(polling, "BUSY_WINDOW_S", 0.05)
    seen: list[float] = []

    def probe() -> None:
        polling.mark_busy(threading.current_thread())
        seen.append(polling.poll_interval(0.001))
        time.sleep(0.1)
        seen.append(polling.poll_interval(0.001))

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert seen == [polling.FAST_POLL_S, 0.001]


def test_a_dul_reactor_follows_its_association() -> None:
    assoc = Association(AE(), "acceptor")
    assert polling._association_of(assoc.dul) is assoc
    assert polling._association_of(assoc) is assoc


def test_install_replaces_only_sleep_and_is_idempotent() -> None:
    polling.install()
    proxy = pynetdicom.association.time
    polling.install()
    assert pynetdicom.association.time is proxy
    assert isinstance(pynetdicom.dul.time, polling._ReactorTime)
    assert proxy.monotonic is time.monotonic
    assert proxy.perf_counter is time.perf_counter
    start = time.perf_counter()
    proxy.sleep(0.001)  # the test thread is no busy association: a full poll
    assert time.perf_counter() - start >= 0.001


def test_only_the_nodes_start_up_installs_the_polls(
    tmp_path, monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    for module in (pynetdicom.association, pynetdicom.dul):
        monkeypatch.setattr(module, "time", time)  # as in a process that never installed them
    node = Node(make_settings(tmp_path / "data"))  # builds the listener: no patch yet
    assert pynetdicom.association.time is time and pynetdicom.dul.time is time
    node.start()
    try:
        assert isinstance(pynetdicom.association.time, polling._ReactorTime)
        assert isinstance(pynetdicom.dul.time, polling._ReactorTime)
    finally:
        node.stop()
