"""The simulator's model of a host's guests: what it keeps of each guest (power state,
definition, a kept old definition while a resize awaits confirmation, boot counter, disk
generation), its operations' names, the simulated host's size, and its scripted faults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
    #: a copy defined to receive a live migration, not yet running (QEMU's -incoming)
    incoming: bool = False

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
            panicked_boots=[int(b) for b in data.get("panicked_boots", [])],
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
