"""One libvirt connection for a driver: opened lazily, reopened when it drops, with events.

libvirt delivers domain events only to connections opened after an event loop
implementation was registered, and only while something runs that loop. The first
connection of the process therefore registers libvirt's default implementation and
starts one daemon thread running it (process-wide, once); it also runs the keepalive
that lets a remote connection notice a dead daemon. Each connection subscribes to
lifecycle events and hands them to :meth:`Connection.subscribe` callers.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import libvirt

from vmledger.adapters.libvirt.domain_xml import domain_name

__all__ = ["Connection", "LibvirtUnavailable", "LifecycleEvent"]

log = logging.getLogger(__name__)

_PREFIX = domain_name("")

#: names of virDomainEventType values
EVENT_NAMES: dict[int, str] = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "DEFINED",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "UNDEFINED",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "STARTED",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "SUSPENDED",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "RESUMED",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "STOPPED",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "SHUTDOWN",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "PMSUSPENDED",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "CRASHED",
}

# errors meaning the connection itself is gone (as Nova tests for them)
_CONNECTION_CODES = frozenset({libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN})
_REMOTE_CODES = frozenset({libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_INTERNAL_ERROR,
                           libvirt.VIR_ERR_RPC})
_REMOTE_DOMAINS = frozenset({libvirt.VIR_FROM_REMOTE, libvirt.VIR_FROM_RPC})


class LibvirtUnavailable(ConnectionError):
    """libvirt could not be reached; nothing is known about the guest. Retry later.

    Deliberately not a :class:`~vmledger.adapters.hypervisor.HypervisorError`: the host
    agent treats it as a transient failure and tries again on its next pass.
    """


@dataclass(frozen=True)
class LifecycleEvent:
    """A lifecycle event of a vmledger domain (``event`` is a virDomainEventType name)."""

    server_id: str
    event: str
    detail: int


_loop_lock = threading.Lock()
_loop_running: bool | None = None  # None: not tried yet


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt event loop iteration failed")
            threading.Event().wait(0.1)


def _ensure_process_setup() -> bool:
    """Silence libvirt's stderr error printer; start the default event loop; once."""
    global _loop_running
    with _loop_lock:
        if _loop_running is None:
            # errors reach us as exceptions; libvirt would also print each one to stderr
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            try:
                libvirt.virEventRegisterDefaultImpl()
            except libvirt.libvirtError as e:
                log.warning("libvirt events unavailable: %s", e)
                _loop_running = False
            else:
                threading.Thread(target=_run_event_loop, name="libvirt-events",
                                 daemon=True).start()
                _loop_running = True
        return _loop_running


class Connection:
    """A thread-safe handle on one ``virConnect``; :meth:`get` always answers a live one."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._lock = threading.Lock()
        self._conn: Any = None
        self._callback_ids: list[int] = []
        self._subscribers_lock = threading.Lock()
        self._subscribers: list[Callable[[LifecycleEvent], None]] = []
        #: whether lifecycle events are delivered on this connection
        self.events = False

    def get(self) -> Any:
        with self._lock:
            conn = self._conn
            if conn is not None:
                try:
                    if conn.isAlive():
                        return conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt connection to %s dropped; reopening", self.uri)
                self._close_locked()
            events = _ensure_process_setup()
            try:
                conn = libvirt.open(self.uri)
            except libvirt.libvirtError as e:
                raise LibvirtUnavailable(
                    f"cannot connect to {self.uri}: {e.get_error_message() or e}") from e
            self.events = events and self._subscribe(conn)
            self._conn = conn
            return conn

    def _subscribe(self, conn: Any) -> bool:
        try:
            self._callback_ids = [
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                            self._on_lifecycle, None),
            ]
        except libvirt.libvirtError as e:
            log.warning("no domain events from %s: %s", self.uri, e)
            return False
        return True

    def is_lost(self, conn: Any, error: libvirt.libvirtError) -> bool:
        """Whether ``error`` means the connection is gone; if so, drop it."""
        code, domain = error.get_error_code(), error.get_error_domain()
        lost = code in _CONNECTION_CODES or (code in _REMOTE_CODES and domain in _REMOTE_DOMAINS)
        if not lost:
            try:
                lost = not conn.isAlive()
            except libvirt.libvirtError:
                lost = True
        if lost:
            with self._lock:
                if self._conn is conn:
                    self._close_locked()
        return lost

    def close(self) -> None:
        """Deregister the event callbacks and close (a later :meth:`get` reopens)."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):  # a dropped one may refuse
            for callback_id in self._callback_ids:
                conn.domainEventDeregisterAny(callback_id)
        self._callback_ids = []
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()

    # --- events (called on the event loop thread) ---------------------------------------
    def subscribe(self, callback: Callable[[LifecycleEvent], None]) -> Callable[[], None]:
        with self._subscribers_lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._subscribers_lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _on_lifecycle(self, _conn: Any, dom: Any, event: int, detail: int,
                      _opaque: Any) -> None:
        name = dom.name()
        if not name.startswith(_PREFIX):
            return
        happened = LifecycleEvent(server_id=name[len(_PREFIX):],
                                  event=EVENT_NAMES.get(event, str(event)), detail=detail)
        with self._subscribers_lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(happened)
            except Exception:
                log.exception("lifecycle event callback %r failed", callback)
