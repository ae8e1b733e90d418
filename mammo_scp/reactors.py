"""pynetdicom's association threads, woken by work instead of polling every millisecond.

pynetdicom (3.0) runs two threads per association, and each polls: the DUL reactor
sleeps 1 ms between looks at its socket and its queues, and the association's reactor
sleeps 1 ms between looks at the DIMSE queue. With eight senders connected that is
~16,000 wake-ups a second, every one taking the GIL: under load, py-spy found ~45% of
``serve``'s samples in those two sleeps, and C-ECHO waited behind them.

:func:`wake_on_work` makes both threads sleep until there is something to do:

* the DUL reactor waits in ``select`` on its socket and on a wake-up socket pair, which is
  written when the local user hands it a primitive (``send_pdu``) or stops it;
* the association reactor waits on an event that the DUL sets after each state-machine
  action (which is when DIMSE messages and ACSE primitives reach the association's queues)
  and when it ends.

It also closes a race in pynetdicom's pause handshake (:class:`_Checkpoint`), which
the quicker wake-ups made frequent: a response could be taken by the reactor as
"unexpected" and the user's request then waited out the DIMSE timeout.

Both waits are capped at :data:`MAX_WAIT_S`, so the timers pynetdicom checks in its loops
(ARTIM, the network idle timeout) fire at most that late, and anything not woken still
runs. The patch replaces pynetdicom's ``time`` in its ``dul`` and ``association``
modules with one whose ``sleep`` does this for those two loops only (identified by the
calling thread and the delay); every other sleep is the real one. It is applied only to
the pynetdicom versions it was written against; on others the library polls as before.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom import fsm as _fsm

logger = logging.getLogger(__name__)

#: The longest either reactor sleeps without being woken (timers are checked this often).
MAX_WAIT_S = 0.1
#: pynetdicom versions whose reactor loops this module was checked against.
SUPPORTED = ("3.0.",)
#: The delay of the association reactor's polling sleep in pynetdicom 3.0.
_ASSOCIATION_POLL_S = 0.001
#: The delay of ``Association.kill``'s wait for its DUL to reach Sta1 in pynetdicom 3.0.
_KILL_POLL_S = 0.01
#: How often a kill looks at the DUL's state instead (it is there within a millisecond or
#: two of the release, but pynetdicom's first look is usually just too early).
_KILL_LOOK_S = 0.0005
#: The association being killed by this thread, if any (see :func:`_kill`).
_killing = threading.local()

_installed = False
_install_lock = threading.Lock()


class _Wakeup:
    """A socket pair one thread selects on and any other writes a byte to."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # full (already woken), or closed (finished)
            self.writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _dul_wakeup(dul: Any) -> _Wakeup:
    wakeup: _Wakeup | None = getattr(dul, "_mammo_wakeup", None)
    if wakeup is None:
        wakeup = dul._mammo_wakeup = _Wakeup()
    return wakeup


def _association_event(assoc: Any) -> threading.Event:
    event: threading.Event | None = getattr(assoc, "_mammo_work", None)
    if event is None:
        event = assoc._mammo_work = threading.Event()
    return event


def _wake_association(dul: Any) -> None:
    assoc = getattr(dul, "_assoc", None)
    if assoc is not None:
        _association_event(assoc).set()


def _dul_idle_wait(dul: Any) -> None:
    """The DUL reactor found nothing to do: sleep until its socket or its user has something."""
    wakeup = _dul_wakeup(dul)
    if dul._kill_thread or not dul.to_provider_queue.empty():
        return
    waiting_on: list[Any] = [wakeup.reader]
    transport = dul.socket
    sock = transport.socket if transport is not None and transport._is_connected else None
    if sock is not None:
        if getattr(sock, "pending", None) and sock.pending():  # TLS: data already decrypted
            return
        waiting_on.append(sock)
    timeout = MAX_WAIT_S
    artim = dul.artim_timer
    if artim._start_time is not None and artim._end_time is None and artim.timeout is not None:
        timeout = max(0.001, min(timeout, artim.remaining))
    # A socket closed under us raises; the reactor's loop finds that out itself.
    with contextlib.suppress(OSError, ValueError):
        select.select(waiting_on, [], [], timeout)
    wakeup.drain()


def _has_work(assoc: Any) -> bool:
    return bool(assoc._kill or not assoc.dimse.msg_queue.empty()
                or not assoc.dul.to_user_queue.empty() or not assoc.dul.is_alive())


def _association_idle_wait(assoc: Any) -> None:
    """The association reactor's poll: wait for the DUL to hand it something instead."""
    event = _association_event(assoc)
    # It touches no queue until it has passed its checkpoint, so a user waiting for it to
    # pause (send_c_*(), release()) may go ahead now instead of after the wait.
    assoc._is_paused = True
    event.clear()
    if not _has_work(assoc):
        event.wait(MAX_WAIT_S)


class _Checkpoint(threading.Event):
    """The association reactor's checkpoint, passed atomically with leaving the pause.

    pynetdicom pauses the reactor while a local user exchanges DIMSE messages: the user
    clears the checkpoint, then waits for ``_is_paused``; the reactor sets ``_is_paused``,
    waits on the checkpoint, then clears ``_is_paused`` and reads the DIMSE queue. A
    reactor that has just been let through (``wait`` returned) but has not yet cleared
    ``_is_paused`` looks paused, so the user goes ahead, and the reactor can then take the
    user's response off the queue ("Received unexpected C-STORE service message"; the
    user waits out the DIMSE timeout: ~3 C-ECHOs in 3,000 here). Here the reactor passes
    only while holding the lock that ``clear`` takes, and clears ``_is_paused`` as it
    passes: after ``clear`` returns, a reactor either has not passed (and will not until
    ``set``) or already shows that it is running.
    """

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc
        self._gate = threading.Lock()

    def clear(self) -> None:
        with self._gate:
            super().clear()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not super().wait(left):
                return False
            with self._gate:
                if self.is_set():
                    self._assoc._is_paused = False
                    return True


def _checkpointed(original: Callable[..., None]) -> Callable[..., None]:
    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        checkpoint = _Checkpoint(self)
        if self._reactor_checkpoint.is_set():
            checkpoint.set()
        self._reactor_checkpoint = checkpoint

    return init


class _ReactorTime:
    """Stands in for ``time`` in pynetdicom's dul and association modules."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, _dul.DULServiceProvider) and seconds == thread._run_loop_delay:
            _dul_idle_wait(thread)
        elif (isinstance(thread, _association.Association)
              and seconds == _ASSOCIATION_POLL_S):
            _association_idle_wait(thread)
        elif seconds == _KILL_POLL_S and getattr(_killing, "assoc", None) is not None:
            _kill_wait(_killing.assoc, seconds)
        else:
            time.sleep(seconds)


def _kill_wait(assoc: Any, seconds: float) -> None:
    """``Association.kill``'s wait for the DUL to reach Sta1 (after a release, the transport
    closed): at most ``seconds`` as before, but ending as soon as it is there. pynetdicom's
    own 10 ms sleep added 10 ms to every association this node releases."""
    deadline = time.monotonic() + seconds
    dul = assoc.dul
    while (dul.is_alive() and dul.state_machine.current_state != "Sta1"
           and time.monotonic() < deadline):
        time.sleep(_KILL_LOOK_S)


def _after(original: Callable[..., Any], then: Callable[[Any], None]) -> Callable[..., Any]:
    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        finally:
            then(self)

    return wrapped


def _kill(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def kill(self: Any) -> None:
        _association_event(self).set()
        _killing.assoc = self
        try:
            original(self)
        finally:
            _killing.assoc = None
            _association_event(self).set()

    return kill


def _stop_dul(original: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def stop_dul(self: Any) -> bool:
        if self.state_machine.current_state == "Sta1":
            self._kill_thread = True
            _dul_wakeup(self).set()
        return original(self)

    return stop_dul


def _run_reactor(original: Callable[[Any], None]) -> Callable[[Any], None]:
    def run_reactor(self: Any) -> None:
        try:
            original(self)
        finally:
            _wake_association(self)
            wakeup = getattr(self, "_mammo_wakeup", None)
            if wakeup is not None:  # later wake-ups write to closed sockets: ignored
                wakeup.close()

    return run_reactor


def wake_on_work() -> bool:
    """Patch pynetdicom (once per process) so its association threads stop polling.

    Returns whether the patch is in place: False on a pynetdicom version it was not
    written against (which then polls as it always did).
    """
    global _installed
    with _install_lock:
        if _installed:
            return True
        version = pynetdicom.__version__
        if not version.startswith(SUPPORTED):
            logger.warning("pynetdicom %s: association threads keep polling every 1 ms "
                           "(the wake-on-work patch covers %s)", version, ", ".join(SUPPORTED))
            return False
        dul_class: Any = _dul.DULServiceProvider
        dul_class.send_pdu = _after(dul_class.send_pdu, lambda dul: _dul_wakeup(dul).set())
        dul_class.kill_dul = _after(dul_class.kill_dul, lambda dul: _dul_wakeup(dul).set())
        dul_class.stop_dul = _stop_dul(dul_class.stop_dul)
        dul_class.run_reactor = _run_reactor(dul_class.run_reactor)
        machine: Any = _fsm.StateMachine
        machine.do_action = _after(machine.do_action,
                                   lambda fsm: _wake_association(fsm.dul))
        assoc_class: Any = _association.Association
        assoc_class.kill = _kill(assoc_class.kill)
        assoc_class.__init__ = _checkpointed(assoc_class.__init__)
        reactor_time: Any = _ReactorTime()
        _dul.time = reactor_time  # type: ignore[attr-defined]
        _association.time = reactor_time  # type: ignore[attr-defined]
        _installed = True
        logger.debug("pynetdicom %s: association threads wake on work", version)
        return True


__all__ = ["MAX_WAIT_S", "wake_on_work"]
