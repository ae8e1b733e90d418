"""pynetdicom's association threads sleep until they have work (mammo_scp.reactors)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

from mammo_scp import reactors
from mammo_scp.dicom import SopClass, make_ae
from mammo_scp.reactors import _Checkpoint, wake_on_work
from tests.support.peers import free_port

VERIFICATION = SopClass.VERIFICATION.value


@pytest.fixture
def server() -> Iterator[tuple[ThreadedAssociationServer, int]]:
    assert wake_on_work()
    port = free_port()
    ae = make_ae("REACTORS")
    ae.add_supported_context(VERIFICATION)
    scp = ae.start_server(("127.0.0.1", port), block=False)
    assert scp is not None
    yield scp, port
    scp.shutdown()


def _client() -> AE:
    ae = AE(ae_title="CLIENT")
    ae.add_requested_context(VERIFICATION)
    return ae


def test_an_idle_association_costs_almost_no_cpu(
        server: tuple[ThreadedAssociationServer, int]) -> None:
    """Four threads (two per side) that polled every millisecond took ~0.2 s of CPU per
    second doing nothing; now they sleep until their socket or their user has work
    (~0.02 s: they still look at their timers every MAX_WAIT_S)."""
    _, port = server
    assoc = _client().associate("127.0.0.1", port, ae_title="REACTORS")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0
        started = time.process_time()
        time.sleep(1.0)
        idle_cpu_s = time.process_time() - started
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()
    assert idle_cpu_s < 0.06, f"an idle association used {idle_cpu_s:.3f} s of CPU in 1 s"


def test_round_trips_stay_fast_and_leave_nothing_open(
        server: tuple[ThreadedAssociationServer, int]) -> None:
    """Associate, echo and release, 30 times: no wake-up is missed (a missed one costs up
    to MAX_WAIT_S, 100 ms; the typical round trip stays far below) and every wake-up
    socket is closed."""
    scp, port = server
    ae = _client()
    fds_before = len(os.listdir("/proc/self/fd"))
    times = []
    for _ in range(30):
        started = time.perf_counter()
        assoc = ae.associate("127.0.0.1", port, ae_title="REACTORS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        times.append(time.perf_counter() - started)
    deadline = time.monotonic() + 5
    while scp.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not scp.active_associations
    assert sorted(times)[len(times) // 2] < 0.04, times
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_no_response_is_taken_by_the_reactor(
        server: tuple[ThreadedAssociationServer, int]) -> None:
    """2,000 C-ECHOs in a row on one association, each answered within a second. Before
    the checkpoint was made atomic (_Checkpoint), a reactor just let through could take
    a quick response off the queue as "unexpected", and the request then waited out its
    DIMSE timeout: ~3 in 3,000 (8 with delayed acknowledgements)."""
    _, port = server
    ae = _client()
    ae.dimse_timeout = 1
    assoc = ae.associate("127.0.0.1", port, ae_title="REACTORS")
    assert assoc.is_established
    unanswered = 0
    try:
        for _ in range(2000):
            status = assoc.send_c_echo()
            if not status or "Status" not in status:
                unanswered += 1
                assoc = ae.associate("127.0.0.1", port, ae_title="REACTORS")
    finally:
        assoc.release()
    assert unanswered == 0


def test_the_checkpoint_is_passed_and_the_pause_left_in_one_step() -> None:
    """After the user clears the checkpoint, a reactor either waits at it or shows that
    it runs (``_is_paused`` False): it is never let through while still looking paused."""
    assoc = SimpleNamespace(_is_paused=True)
    checkpoint = _Checkpoint(assoc)
    checkpoint.set()
    assert checkpoint.wait() and assoc._is_paused is False

    assoc._is_paused = True
    checkpoint.clear()
    passed = threading.Event()

    def reactor() -> None:
        checkpoint.wait()
        passed.set()

    thread = threading.Thread(target=reactor, daemon=True)
    thread.start()
    assert not passed.wait(0.2) and assoc._is_paused is True
    checkpoint.set()
    assert passed.wait(5) and assoc._is_paused is False
    thread.join(5)


def test_a_release_does_not_sleep_out_pynetdicom_s_10_ms(
        server: tuple[ThreadedAssociationServer, int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Association.kill`` slept 10 ms whenever its first look found the DUL not yet in
    Sta1, which was most releases: 10 ms more for every delivery the node made. Now it
    looks again every half millisecond. Counted here: the sleeps of 10 ms taken, on both
    sides, while 20 associations are released."""
    slept: list[float] = []

    class CountingTime:
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            slept.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(reactors, "time", CountingTime())
    scp, port = server
    ae = _client()
    for _ in range(20):
        assoc = ae.associate("127.0.0.1", port, ae_title="REACTORS")
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()
        assert not assoc.is_established
    deadline = time.monotonic() + 5
    while scp.active_associations and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not scp.active_associations
    # without the wait for Sta1, 35 of these 40 kills (both sides) slept 10 ms
    assert slept.count(0.01) == 0, f"{slept.count(0.01)} sleeps of 10 ms"
