"""The simulator's machinery under its port operations: the guest table, latency, random
and scripted faults (and :class:`SimulatedCrash`), the bounded call record, and the
state file that lets a new process see the same guests."""

from __future__ import annotations

import json
import os
import random
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any

from vmledger.adapters.hypervisor import (
    HypervisorError,
    PowerState,
    Result,
)
from vmledger.adapters.simulated_guests import (
    _STATE_VERSION,
    MUTATING_OPERATIONS,
    OPERATIONS,
    FaultKind,
    SimulatedCrash,
    _Guest,
    _Injection,
    _not_found,
    _wrong_state,
)

#: live migrations away from a host whose answers it keeps (for a repeated call)
DEPARTED_KEPT = 1000


class SimulatorHarness:
    """The simulator's machinery: its guest table and images, latency, faults drawn or
    scripted, the call record, persistence of its state, and the test helpers that
    change a guest behind the agent's back (see :mod:`vmledger.adapters.simulator`).

    Thread-safe: one lock guards the guest table, the random generator, the scripted
    faults and :attr:`calls`; latency is slept outside the lock.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        latency: float | Mapping[str, float] = 0.0,
        fail_rate: float = 0.0,
        crash_rate: float = 0.0,
        state_path: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
        calls_kept: int = 10_000,
        live_migration_seconds: float = 0.0,
    ) -> None:
        if calls_kept < 0:
            raise ValueError("calls_kept must not be negative")
        for label, rate in (("fail_rate", fail_rate), ("crash_rate", crash_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label} must be between 0 and 1, got {rate!r}")
        if fail_rate + crash_rate > 1.0:
            raise ValueError("fail_rate + crash_rate must not exceed 1")
        if isinstance(latency, Mapping):
            unknown = set(latency) - OPERATIONS
            if unknown:
                raise ValueError(f"latency for unknown operations: {sorted(unknown)}")
            if any(value < 0 for value in latency.values()):
                raise ValueError("latency must not be negative")
            self._latency: dict[str, float] = dict(latency)
            self._default_latency = 0.0
        else:
            if latency < 0:
                raise ValueError("latency must not be negative")
            self._latency = {}
            self._default_latency = float(latency)
        self._fail_rate = fail_rate
        self._crash_rate = crash_rate
        self._rng = random.Random(seed)
        self._sleep = sleep
        self._state_path = state_path
        self._lock = threading.RLock()
        self._guests: dict[str, _Guest] = {}
        self._snapshots: dict[str, dict[str, Any]] = {}
        self._injections: list[_Injection] = []
        #: how long a live migration copies before the guest moves (0: at once)
        self.live_migration_seconds = live_migration_seconds
        #: live migrations in progress here: server id -> "running", "abort" or "force"
        self._migrating: dict[str, str] = {}
        #: what the last live migrations away from here answered (a repeated call
        #: answers the same), the most recent ``DEPARTED_KEPT`` only
        self._departed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._booted = time.monotonic()
        #: the last ``calls_kept`` operations called, in order, as ``(op, server_id)``
        #: (observe included); older ones are dropped so the record stays bounded
        self.calls: deque[tuple[str, str]] = deque(maxlen=calls_kept)
        if state_path is not None:
            self._load(state_path)

    # ------------------------------------------------------------------ test helpers

    def inject(
        self,
        op: str,
        kind: FaultKind,
        *,
        server_id: str | None = None,
        times: int = 1,
        rollback: bool = False,
    ) -> None:
        """Make the next ``times`` calls of ``op`` (for ``server_id``, or any) fail or crash.

        ``"fail"`` raises ``HypervisorError("Injected failure in <op>", rollback=rollback)``
        and changes nothing; ``"crash"`` carries the operation out, then raises
        :class:`SimulatedCrash`. Scripts are consumed in the order they were added.
        """
        if op not in MUTATING_OPERATIONS:
            raise ValueError(f"cannot inject a fault into {op!r}")
        if kind not in ("fail", "crash"):
            raise ValueError(f"unknown fault kind {kind!r}")
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._injections.append(_Injection(op, kind, server_id, times, rollback))

    def set_power_state(self, server_id: str, power_state: PowerState) -> None:
        """Change a guest's power state out of band (it shut down or crashed by itself)."""
        with self._lock:
            guest = self._guests.get(server_id)
            if guest is None:
                raise KeyError(server_id)
            guest.power_state = PowerState(power_state)
            self._persist()

    def forget(self, server_id: str) -> None:
        """Remove a guest out of band (destroyed behind the agent's back); idempotent."""
        with self._lock:
            if self._guests.pop(server_id, None) is not None:
                self._persist()

    def guests(self) -> dict[str, dict[str, Any]]:
        """A deep snapshot of the guest table, keyed by server id."""
        with self._lock:
            return {sid: guest.snapshot() for sid, guest in sorted(self._guests.items())}


    def snapshots(self) -> dict[str, dict[str, Any]]:
        """The images captured so far (a copy, for tests)."""
        with self._lock:
            return {k: dict(v) for k, v in self._snapshots.items()}

    # ------------------------------------------------------------------ internals

    def _require(self, server_id: str) -> _Guest:
        guest = self._guests.get(server_id)
        if guest is None or guest.incoming:  # an incoming copy is no guest yet
            raise _not_found()
        return guest

    def _transition(
        self,
        op: str,
        server_id: str,
        sources: set[PowerState],
        target: PowerState,
        *,
        boots: bool = False,
    ) -> Result:
        def apply() -> Result:
            guest = self._require(server_id)
            if guest.power_state == target:
                return {"already": True}
            if guest.power_state not in sources:
                raise _wrong_state(op.replace("_", " "), guest)
            if boots:
                guest.boot()
            else:
                guest.power_state = target
            return {"power_state": int(target)}

        return self._mutate(op, server_id, apply)

    def _enter(self, op: str) -> None:
        delay = self._latency.get(op, self._default_latency)
        if delay > 0:
            self._sleep(delay)

    def _mutate(self, op: str, server_id: str, apply: Callable[[], Result]) -> Result:
        self._enter(op)
        with self._lock:
            self.calls.append((op, server_id))
            fault, rollback = self._draw_fault(op, server_id)
            if fault == "fail":
                raise HypervisorError(f"Injected failure in {op}", rollback=rollback)
            try:
                result = apply()
            except HypervisorError as error:
                if fault == "crash":
                    raise SimulatedCrash(op, server_id, error=error) from error
                raise
            self._persist()
            if fault == "crash":
                raise SimulatedCrash(op, server_id, result=result)
            return result

    def _draw_fault(self, op: str, server_id: str) -> tuple[FaultKind | None, bool]:
        for injection in self._injections:
            if injection.matches(op, server_id):
                injection.remaining -= 1
                if injection.remaining == 0:
                    self._injections.remove(injection)
                return injection.kind, injection.rollback
        draw = self._rng.random()
        if draw < self._fail_rate:
            return "fail", self._rng.random() < 0.5
        if draw < self._fail_rate + self._crash_rate:
            return "crash", False
        return None, False

    def _persist(self) -> None:
        if self._state_path is None:
            return
        payload = {
            "version": _STATE_VERSION,
            "guests": {sid: guest.to_json() for sid, guest in sorted(self._guests.items())},
            # a snapshot retried after a restart answers what the first one captured
            "snapshots": self._snapshots,
            "departed": dict(self._departed),
        }
        directory = os.path.dirname(os.path.abspath(self._state_path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".simulator-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(payload, handle, indent=1, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._state_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as handle:
                payload = json.load(handle)
        except FileNotFoundError:
            return
        if payload.get("version") != _STATE_VERSION:
            raise ValueError(f"{path}: unsupported simulator state version")
        self._guests = {
            sid: _Guest.from_json(data) for sid, data in payload.get("guests", {}).items()
        }
        self._snapshots = {k: dict(v) for k, v in payload.get("snapshots", {}).items()}
        self._departed = OrderedDict(
            (k, dict(v)) for k, v in payload.get("departed", {}).items())
