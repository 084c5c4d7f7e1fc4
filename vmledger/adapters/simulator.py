"""A deterministic, in-process hypervisor for tests, demos and the embedded default.

:class:`Simulator` implements the :class:`~vmledger.adapters.hypervisor.Hypervisor` port
without touching a real hypervisor. It keeps a table of guests (power state, flavor,
image, a kept "old definition" while a resize awaits confirmation, a boot counter and a
disk generation) and applies Nova-like rules to every operation: an impossible operation
raises :class:`HypervisorError`, and an operation whose effect is already visible answers
``{"already": True}`` instead of acting twice.

It is built for testing the host agent under adversity:

* **latency** -- ``latency`` seconds (one number for every operation, or a mapping per
  operation name) are spent in an injectable ``sleep`` before each operation;
* **random faults** -- before every *mutating* operation (never :meth:`Simulator.observe`)
  one number is drawn from ``random.Random(seed)``: with probability ``fail_rate`` the
  operation fails with ``HypervisorError("Injected failure in <op>")`` (its ``rollback``
  flag is a second draw) and nothing changes; with probability ``crash_rate`` the
  operation is carried out and then :class:`SimulatedCrash` is raised, standing for the
  agent process dying right after the hypervisor acted. For a given seed and call
  sequence the outcome is always the same;
* **scripted faults** -- :meth:`Simulator.inject` queues a failure or crash for an
  operation (optionally for one server); a matching script wins over the random draw
  (and no number is drawn for that call);
* **drift** -- :meth:`Simulator.set_power_state` and :meth:`Simulator.forget` change a
  guest behind the agent's back, as a guest shutting itself down or an operator running
  ``virsh undefine`` would;
* **restarts** -- with ``state_path`` the guest table (and the images captured) is written
  to a JSON file after every change and read back at construction, so a new process sees
  the same guests. Only those persist: the random generator, scripted faults and
  :attr:`Simulator.calls` start afresh.

:attr:`Simulator.calls` keeps the most recent operations only (``calls_kept``, 10,000 by
default): a long-running process's power-state sync asks about every guest every
pass, and a record of every call would grow without bound.

The boot counter counts every time the guest OS is started: spawn, soft and hard reboot,
power on, and a rebuild, resize or resize revert that leaves the guest running.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from vmledger.adapters.hypervisor import (
    DIAGNOSTICS_STATE,
    NO_CONSOLE,
    GuestSpec,
    HypervisorError,
    Observation,
    PowerState,
    Result,
    nic_detail,
    uptime_text,
)

__all__ = ["MUTATING_OPERATIONS", "OPERATIONS", "SimulatedCrash", "Simulator"]

#: every operation of the port that changes a guest (and so may fail or crash)
MUTATING_OPERATIONS: frozenset[str] = frozenset(
    {
        "spawn",
        "reboot",
        "rebuild",
        "resize",
        "confirm_resize",
        "revert_resize",
        "pause",
        "unpause",
        "suspend",
        "resume",
        "power_off",
        "power_on",
        "destroy",
        "snapshot",
        "rescue",
        "unrescue",
        "inject_nmi",
    }
)
#: every operation of the port
OPERATIONS: frozenset[str] = MUTATING_OPERATIONS | {"observe", "console_output",
                                                    "diagnostics", "host_info"}

#: the simulated host: a mid-sized compute node (Nova's fake driver reports one too)
HOST_VCPUS = 16
HOST_MEMORY_MB = 65536
HOST_LOCAL_GB = 1024
HOST_CPU_INFO: dict[str, Any] = {
    "arch": "x86_64", "model": "simulated", "vendor": "vmledger",
    "topology": {"cells": 1, "sockets": 1, "cores": 8, "threads": 2}, "features": []}

_STATE_VERSION = 1

FaultKind = Literal["fail", "crash"]


class SimulatedCrash(BaseException):
    """The agent process "died" right after the hypervisor carried out an operation.

    It derives from :class:`BaseException` so an agent's ordinary ``except Exception``
    does not swallow it. The hypervisor's answer is in :attr:`result`; if the operation
    itself was refused, :attr:`error` holds that refusal instead (the crash then comes
    after a call that changed nothing).
    """

    def __init__(
        self,
        op: str,
        server_id: str,
        *,
        result: Result | None = None,
        error: HypervisorError | None = None,
    ) -> None:
        super().__init__(f"Simulated agent crash after {op} of {server_id}")
        self.op = op
        self.server_id = server_id
        self.result = result
        self.error = error


@dataclass(frozen=True)
class _OldDefinition:
    """What a resize replaced, kept until it is confirmed or reverted."""

    flavor_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    power_state: PowerState

    def to_json(self) -> dict[str, Any]:
        return {
            "flavor_id": self.flavor_id,
            "vcpus": self.vcpus,
            "ram_mb": self.ram_mb,
            "disk_gb": self.disk_gb,
            "power_state": int(self.power_state),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _OldDefinition:
        return cls(
            flavor_id=str(data["flavor_id"]),
            vcpus=int(data["vcpus"]),
            ram_mb=int(data["ram_mb"]),
            disk_gb=int(data["disk_gb"]),
            power_state=PowerState(int(data["power_state"])),
        )


def _console_text(guest: _Guest) -> str:
    lines: list[str] = []
    for boot in range(1, guest.boot_count + 1):
        lines += [
            f"[    0.000000] Linux version 6.1.0-vmledger (simulated guest) #{boot}",
            "[    0.000000] Command line: console=ttyS0 root=/dev/vda1 ro",
            f"[    0.000000] Memory: {guest.ram_mb * 1024}K, {guest.vcpus} CPU(s)",
            f"[    1.204512] vda: {guest.disk_gb} GiB, image {guest.image_id}"
            f" (generation {guest.generation})",
            "[    2.418090] Run /sbin/init as init process",
            f"{guest.name} login: ",
        ]
        if boot in guest.panicked_boots:
            lines += ["[   60.000000] Kernel panic - not syncing: NMI: Not continuing",
                      "[   60.000001] kdump: saving vmcore, then rebooting"]
    if guest.boot_count and guest.power_state == PowerState.SHUTDOWN:
        lines.append("[   42.000000] reboot: Power down")
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass
class _Guest:
    """One defined guest."""

    server_id: str
    name: str
    flavor_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_id: str
    power_state: PowerState = PowerState.SHUTDOWN
    old_definition: _OldDefinition | None = None
    boot_count: int = 0
    generation: int = 0
    #: the rescue image the guest runs, its own disk attached as the second
    rescue_image_id: str | None = None
    #: the boots an NMI ended (the simulated kernel dumps and restarts)
    panicked_boots: list[int] = field(default_factory=list)
    #: the MAC of its NIC, as the engine asked (None: not given)
    mac: str | None = None

    def boot(self) -> None:
        self.power_state = PowerState.RUNNING
        self.boot_count += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "server_id": self.server_id,
            "name": self.name,
            "flavor_id": self.flavor_id,
            "vcpus": self.vcpus,
            "ram_mb": self.ram_mb,
            "disk_gb": self.disk_gb,
            "image_id": self.image_id,
            "power_state": int(self.power_state),
            "old_definition": (
                None if self.old_definition is None else self.old_definition.to_json()
            ),
            "boot_count": self.boot_count,
            "generation": self.generation,
            "rescue_image_id": self.rescue_image_id,
            "panicked_boots": list(self.panicked_boots),
            "mac": self.mac,
        }

    def snapshot(self) -> dict[str, Any]:
        data = self.to_json()
        data["power_state"] = self.power_state
        if self.old_definition is not None:
            data["old_definition"]["power_state"] = self.old_definition.power_state
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Guest:
        old = data.get("old_definition")
        return cls(
            server_id=str(data["server_id"]),
            name=str(data["name"]),
            flavor_id=str(data["flavor_id"]),
            vcpus=int(data["vcpus"]),
            ram_mb=int(data["ram_mb"]),
            disk_gb=int(data["disk_gb"]),
            image_id=str(data["image_id"]),
            power_state=PowerState(int(data["power_state"])),
            old_definition=None if old is None else _OldDefinition.from_json(old),
            boot_count=int(data["boot_count"]),
            generation=int(data["generation"]),
            rescue_image_id=data.get("rescue_image_id"),  # absent from older state files
            panicked_boots=[int(b) for b in data.get("panicked_boots", [])],
            mac=data.get("mac"),
        )


@dataclass
class _Injection:
    """A scripted fault waiting for a matching call."""

    op: str
    kind: FaultKind
    server_id: str | None
    remaining: int
    rollback: bool

    def matches(self, op: str, server_id: str) -> bool:
        return self.op == op and (self.server_id is None or self.server_id == server_id)


def _not_found() -> HypervisorError:
    return HypervisorError("Domain not found", rollback=True, code=404)


def _wrong_state(op: str, guest: _Guest, *, rollback: bool = True) -> HypervisorError:
    return HypervisorError(
        f"Cannot {op} guest {guest.server_id} in power state {guest.power_state.name}",
        rollback=rollback,
        code=409,
    )


class Simulator:
    """A deterministic in-memory hypervisor implementing the ``Hypervisor`` port.

    Thread-safe: one lock guards the guest table, the random generator, the scripted
    faults and :attr:`calls`; latency is slept outside the lock.
    """

    driver = "simulator"

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

    # ------------------------------------------------------------------ the port

    def observe(self, server_id: str) -> Observation:
        self._enter("observe")
        with self._lock:
            self.calls.append(("observe", server_id))
            guest = self._guests.get(server_id)
            if guest is None:
                return Observation(exists=False)
            return Observation(
                exists=True,
                power_state=guest.power_state,
                flavor_id=guest.flavor_id,
                image_id=guest.image_id,
                resize_pending=guest.old_definition is not None,
                rescued=guest.rescue_image_id is not None,
                details={
                    "name": guest.name,
                    "vcpus": guest.vcpus,
                    "ram_mb": guest.ram_mb,
                    "disk_gb": guest.disk_gb,
                    "boot_count": guest.boot_count,
                    "generation": guest.generation,
                },
            )

    def rescue(self, spec: GuestSpec) -> Result:
        """Boot the rescue image (any power state; a rescued guest is left alone)."""

        def apply() -> Result:
            guest = self._require(spec.server_id)
            if guest.rescue_image_id is not None:
                return {"rescue_image_id": guest.rescue_image_id, "already": True}
            guest.rescue_image_id = spec.image_id
            guest.boot()
            return {"rescue_image_id": spec.image_id, "boot_count": guest.boot_count}

        return self._mutate("rescue", spec.server_id, apply)

    def unrescue(self, server_id: str) -> Result:
        """Boot the guest's own disk again."""

        def apply() -> Result:
            guest = self._require(server_id)
            if guest.rescue_image_id is None:
                return {"already": True}
            guest.rescue_image_id = None
            guest.boot()
            return {"boot_count": guest.boot_count}

        return self._mutate("unrescue", server_id, apply)

    def inject_nmi(self, server_id: str) -> Result:
        """The simulated kernel panics, dumps and boots again (a running guest only)."""

        def apply() -> Result:
            guest = self._require(server_id)
            if guest.power_state != PowerState.RUNNING:
                raise HypervisorError(f"Instance {server_id} is not running", rollback=True,
                                      code=409)
            guest.panicked_boots.append(guest.boot_count)
            guest.boot()
            return {"nmi": True, "boot_count": guest.boot_count}

        return self._mutate("inject_nmi", server_id, apply)

    def diagnostics(self, server_id: str) -> Result:
        """The simulated guest's flavor and state. ``driver`` is ``libvirt``, as Nova's
        own fake driver says (the field admits only real drivers); ``hypervisor`` says
        it is the simulator."""
        self._enter("diagnostics")
        with self._lock:
            self.calls.append(("diagnostics", server_id))
            guest = self._guests.get(server_id)
            if guest is None:
                raise _not_found()
            running = guest.power_state == PowerState.RUNNING
            return {
                "state": DIAGNOSTICS_STATE.get(int(guest.power_state), "pending"),
                "driver": "libvirt", "hypervisor": "simulator", "hypervisor_os": None,
                "uptime": None, "config_drive": False, "num_cpus": guest.vcpus,
                "num_nics": 1, "num_disks": 1 if guest.disk_gb else 0,
                "memory_details": {"maximum": guest.ram_mb,
                                   "used": guest.ram_mb if running else 0},
                "cpu_details": [{"id": n, "time": None, "utilisation": None}
                                for n in range(guest.vcpus)] if running else [],
                "nic_details": [nic_detail(guest.mac)],
                "disk_details": [dict.fromkeys(("read_bytes", "read_requests", "write_bytes",
                                                "write_requests", "errors_count"))]
                if guest.disk_gb else [],
            }

    def host_info(self) -> Result:
        """The simulated host: fixed capacity (16 vCPUs, 64 GiB, 1 TiB), hypervisor type
        ``simulator``, up since the simulator was made, no load."""
        self._enter("host_info")
        with self._lock:
            self.calls.append(("host_info", ""))
        return {
            "hypervisor_type": "simulator", "hypervisor_version": 1000,
            "vcpus": HOST_VCPUS, "memory_mb": HOST_MEMORY_MB, "local_gb": HOST_LOCAL_GB,
            "disk_available_least": None, "host_ip": "127.0.0.1",
            "cpu_info": json.loads(json.dumps(HOST_CPU_INFO)),
            "uptime": uptime_text(datetime.now(), time.monotonic() - self._booted,
                                  (0.0, 0.0, 0.0)),
        }

    def console_output(self, server_id: str) -> str:
        """A boot log per boot of the guest (deterministic: the same history gives the
        same text), and the power-down line of a guest that is off."""
        self._enter("console_output")
        with self._lock:
            self.calls.append(("console_output", server_id))
            guest = self._guests.get(server_id)
            if guest is None:
                raise HypervisorError(NO_CONSOLE, code=404)
            return _console_text(guest)

    def spawn(self, spec: GuestSpec) -> Result:
        """Define and start the guest; a running guest is left alone."""

        def apply() -> Result:
            guest = self._guests.get(spec.server_id)
            if guest is None:
                guest = _Guest(
                    server_id=spec.server_id,
                    name=spec.name,
                    flavor_id=spec.flavor_id,
                    vcpus=spec.vcpus,
                    ram_mb=spec.ram_mb,
                    disk_gb=spec.disk_gb,
                    image_id=spec.image_id,
                    mac=spec.mac,
                )
                self._guests[spec.server_id] = guest
            elif guest.power_state == PowerState.RUNNING:
                return {"boot_count": guest.boot_count, "already": True}
            guest.boot()
            return {"boot_count": guest.boot_count}

        return self._mutate("spawn", spec.server_id, apply)

    def reboot(self, server_id: str, *, hard: bool) -> Result:
        """Soft (ACPI) reboot of a running guest, or hard reset from any settled state."""

        def apply() -> Result:
            guest = self._require(server_id)
            if hard:
                if guest.power_state not in _HARD_REBOOTABLE:
                    raise _wrong_state("hard reboot", guest)
                guest.boot()
                return {"method": "reset", "boot_count": guest.boot_count}
            if guest.power_state != PowerState.RUNNING:
                raise _wrong_state("soft reboot", guest, rollback=False)
            guest.boot()
            return {"method": "acpi", "boot_count": guest.boot_count}

        return self._mutate("reboot", server_id, apply)

    def rebuild(self, spec: GuestSpec) -> Result:
        """Re-image the guest's disk; a shut-down guest stays down, any other runs."""

        def apply() -> Result:
            guest = self._require(spec.server_id)
            guest.image_id = spec.image_id
            guest.name = spec.name
            guest.generation += 1
            if guest.power_state != PowerState.SHUTDOWN:
                guest.boot()
            return {"generation": guest.generation, "image_id": guest.image_id}

        return self._mutate("rebuild", spec.server_id, apply)

    def resize(self, spec: GuestSpec) -> Result:
        """Apply the new flavor in ``spec``, keeping the old definition for a revert."""

        def apply() -> Result:
            guest = self._require(spec.server_id)
            if guest.old_definition is not None:
                raise HypervisorError(
                    f"Guest {guest.server_id} already has a resize awaiting confirmation",
                    rollback=True,
                    code=409,
                )
            if spec.disk_gb < guest.disk_gb:
                raise HypervisorError("Unable to resize disk down.", rollback=True, code=400)
            guest.old_definition = _OldDefinition(
                flavor_id=guest.flavor_id,
                vcpus=guest.vcpus,
                ram_mb=guest.ram_mb,
                disk_gb=guest.disk_gb,
                power_state=guest.power_state,
            )
            guest.flavor_id = spec.flavor_id
            guest.vcpus = spec.vcpus
            guest.ram_mb = spec.ram_mb
            guest.disk_gb = spec.disk_gb
            if guest.power_state != PowerState.SHUTDOWN:
                guest.boot()
            return {
                "flavor_id": guest.flavor_id,
                "old_flavor_id": guest.old_definition.flavor_id,
            }

        return self._mutate("resize", spec.server_id, apply)

    def confirm_resize(self, server_id: str) -> Result:
        """Drop the kept old definition (nothing to do if there is none)."""

        def apply() -> Result:
            guest = self._require(server_id)
            if guest.old_definition is None:
                return {"already": True}
            guest.old_definition = None
            return {"confirmed": True}

        return self._mutate("confirm_resize", server_id, apply)

    def revert_resize(self, server_id: str) -> Result:
        """Restore the kept old definition, power state included (nothing to do if none)."""

        def apply() -> Result:
            guest = self._require(server_id)
            old = guest.old_definition
            if old is None:
                return {"already": True}
            guest.flavor_id = old.flavor_id
            guest.vcpus = old.vcpus
            guest.ram_mb = old.ram_mb
            guest.disk_gb = old.disk_gb
            guest.old_definition = None
            if old.power_state == PowerState.RUNNING:
                guest.boot()
            else:
                guest.power_state = old.power_state
            return {"flavor_id": guest.flavor_id, "power_state": int(guest.power_state)}

        return self._mutate("revert_resize", server_id, apply)

    def pause(self, server_id: str) -> Result:
        return self._transition("pause", server_id, {PowerState.RUNNING}, PowerState.PAUSED)

    def unpause(self, server_id: str) -> Result:
        return self._transition("unpause", server_id, {PowerState.PAUSED}, PowerState.RUNNING)

    def suspend(self, server_id: str) -> Result:
        return self._transition("suspend", server_id, {PowerState.RUNNING}, PowerState.SUSPENDED)

    def resume(self, server_id: str) -> Result:
        return self._transition("resume", server_id, {PowerState.SUSPENDED}, PowerState.RUNNING)

    def power_off(self, server_id: str) -> Result:
        return self._transition(
            "power_off",
            server_id,
            {PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED},
            PowerState.SHUTDOWN,
        )

    def power_on(self, server_id: str) -> Result:
        return self._transition(
            "power_on",
            server_id,
            {PowerState.SHUTDOWN, PowerState.CRASHED},
            PowerState.RUNNING,
            boots=True,
        )

    def snapshot(self, server_id: str, image_id: str) -> Result:
        """Capture the guest's disk (its image and generation) as the image ``image_id``.

        Deterministic: the same guest state gives the same size and checksum. A second
        call for the same image answers what the first captured.
        """

        def apply() -> Result:
            guest = self._require(server_id)
            if image_id in self._snapshots:
                return {**self._snapshots[image_id], "already": True}
            content = f"{guest.image_id}:{guest.generation}:{guest.disk_gb}"
            captured = {"size": guest.disk_gb * 1024 * 1024 * 64 + guest.generation,
                        "checksum": hashlib.sha256(content.encode()).hexdigest()[:32],
                        "source_image_id": guest.image_id, "generation": guest.generation}
            self._snapshots[image_id] = captured
            return dict(captured)

        return self._mutate("snapshot", server_id, apply)

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """The images captured so far (a copy, for tests)."""
        with self._lock:
            return {k: dict(v) for k, v in self._snapshots.items()}

    def destroy(self, server_id: str) -> Result:
        """Remove the guest; nothing to do if it does not exist."""

        def apply() -> Result:
            if self._guests.pop(server_id, None) is None:
                return {"already": True}
            return {"destroyed": True}

        return self._mutate("destroy", server_id, apply)

    # ------------------------------------------------------------------ internals

    def _require(self, server_id: str) -> _Guest:
        guest = self._guests.get(server_id)
        if guest is None:
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


_HARD_REBOOTABLE = frozenset(
    {
        PowerState.RUNNING,
        PowerState.PAUSED,
        PowerState.SHUTDOWN,
        PowerState.SUSPENDED,
        PowerState.CRASHED,
    }
)
