"""The simulator's model of a host's guests: what it keeps of each guest (power state,
definition, a kept old definition while a resize awaits confirmation, boot counter, disk
generation), its operations' names, the simulated host's size, and its scripted faults."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vmledger.adapters.hypervisor import HypervisorError, PowerState, Result

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
        "prepare_migration",
        "migrate_disk",
        "finish_migration",
        "live_migrate",
        "abort_migration",
        "force_complete_migration",
        "finish_live_migration",
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


@dataclass(frozen=True)
class _Definition:
    """A guest's flavor and image: shared by the guests defined alike."""

    flavor_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_id: str


@functools.lru_cache(maxsize=256)
def _definition(flavor_id: str, vcpus: int, ram_mb: int, disk_gb: int, image_id: str
                ) -> _Definition:
    """The one shared :class:`_Definition` of these values (kept for the 256 most
    recently asked: sharing saves memory, it is never needed for correctness)."""
    return _Definition(flavor_id, vcpus, ram_mb, disk_gb, image_id)


class _Rare:
    """The fields of a guest that are usually empty (a pending resize, a rescue, NMI
    panics): kept apart, so that a guest without any holds one empty slot for them."""

    __slots__ = ("old_definition", "panicked_boots", "rescue_image_id")

    def __init__(self) -> None:
        self.old_definition: _OldDefinition | None = None
        self.rescue_image_id: str | None = None
        self.panicked_boots: tuple[int, ...] = ()


class _Guest:
    """One defined guest.

    The embedded hypervisor keeps one per server, so a guest's size is the process's
    size per server: its fields are slots, its flavor and image one definition shared
    with the guests defined alike, and its usually empty fields (a pending resize's old
    definition, a rescue image, NMI panics) one slot that stays None until one is set.
    About 120 bytes, its id and name apart.
    """

    __slots__ = ("_definition", "_rare", "boot_count", "generation", "incoming", "mac",
                 "name", "power_state", "server_id")

    def __init__(self, *, server_id: str, name: str, flavor_id: str, vcpus: int,
                 ram_mb: int, disk_gb: int, image_id: str,
                 power_state: PowerState = PowerState.SHUTDOWN,
                 old_definition: _OldDefinition | None = None, boot_count: int = 0,
                 generation: int = 0, rescue_image_id: str | None = None,
                 panicked_boots: tuple[int, ...] = (), mac: str | None = None,
                 incoming: bool = False) -> None:
        self.server_id = server_id
        self.name = name
        self._definition = _definition(flavor_id, vcpus, ram_mb, disk_gb, image_id)
        self._rare: _Rare | None = None
        self.power_state = power_state
        self.boot_count = boot_count
        self.generation = generation
        #: the MAC of its NIC, as the engine asked (None: not given)
        self.mac = mac
        self.old_definition = old_definition
        self.rescue_image_id = rescue_image_id
        self.panicked_boots = panicked_boots
        #: a copy defined to receive a live migration, not yet running (QEMU's -incoming)
        self.incoming = incoming

    def _rare_fields(self) -> _Rare:
        if self._rare is None:
            self._rare = _Rare()
        return self._rare

    @property
    def old_definition(self) -> _OldDefinition | None:
        """What a resize awaiting confirmation replaced."""
        return None if self._rare is None else self._rare.old_definition

    @old_definition.setter
    def old_definition(self, value: _OldDefinition | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().old_definition = value

    @property
    def rescue_image_id(self) -> str | None:
        """The rescue image the guest runs, its own disk attached as the second."""
        return None if self._rare is None else self._rare.rescue_image_id

    @rescue_image_id.setter
    def rescue_image_id(self, value: str | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().rescue_image_id = value

    @property
    def panicked_boots(self) -> tuple[int, ...]:
        """The boots an NMI ended (the simulated kernel dumps and restarts)."""
        return () if self._rare is None else self._rare.panicked_boots

    @panicked_boots.setter
    def panicked_boots(self, value: tuple[int, ...]) -> None:
        if value or self._rare is not None:
            self._rare_fields().panicked_boots = tuple(value)

    def _redefine(self, **changes: Any) -> None:
        fields = {**self._definition.__dict__, **changes}
        self._definition = _definition(**fields)

    @property
    def flavor_id(self) -> str:
        return self._definition.flavor_id

    @flavor_id.setter
    def flavor_id(self, value: str) -> None:
        self._redefine(flavor_id=value)

    @property
    def vcpus(self) -> int:
        return self._definition.vcpus

    @vcpus.setter
    def vcpus(self, value: int) -> None:
        self._redefine(vcpus=value)

    @property
    def ram_mb(self) -> int:
        return self._definition.ram_mb

    @ram_mb.setter
    def ram_mb(self, value: int) -> None:
        self._redefine(ram_mb=value)

    @property
    def disk_gb(self) -> int:
        return self._definition.disk_gb

    @disk_gb.setter
    def disk_gb(self, value: int) -> None:
        self._redefine(disk_gb=value)

    @property
    def image_id(self) -> str:
        return self._definition.image_id

    @image_id.setter
    def image_id(self, value: str) -> None:
        self._redefine(image_id=value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Guest) and self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"_Guest({self.snapshot()!r})"

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
            "incoming": self.incoming,
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
            panicked_boots=tuple(int(b) for b in data.get("panicked_boots", [])),
            mac=data.get("mac"),
            incoming=bool(data.get("incoming", False)),
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


_HARD_REBOOTABLE = frozenset(
    {
        PowerState.RUNNING,
        PowerState.PAUSED,
        PowerState.SHUTDOWN,
        PowerState.SUSPENDED,
        PowerState.CRASHED,
    }
)
