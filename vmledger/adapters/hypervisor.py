"""The hypervisor port: what the host agent needs from any hypervisor driver.

Drivers (the simulator, libvirt) implement :class:`Hypervisor`. Every operation is
expected to be *idempotent from the caller's point of view*: the agent always asks
:meth:`Hypervisor.observe` first and only calls an operation whose effect is not yet
visible, so a step repeated after a crash is harmless.

Each operation returns a small JSON-able mapping describing what the hypervisor
answered (for instance ``{"method": "acpi"}`` for a soft reboot); the agent records it
in the audit trail. A refusal or failure raises :class:`HypervisorError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from vmledger.domain.power import PowerState as PowerState  # part of the port


@dataclass(frozen=True)
class GuestSpec:
    """What a guest is built from: the server's identity, flavor and image."""

    server_id: str
    name: str
    flavor_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_id: str
    #: the MAC address the API shows for the server's port (None: the driver picks one)
    mac: str | None = None


@dataclass(frozen=True)
class Observation:
    """Where a guest really is, as the hypervisor reports it."""

    exists: bool
    power_state: PowerState = PowerState.NOSTATE
    flavor_id: str | None = None
    image_id: str | None = None
    #: an old definition is kept for a revert (resized, not yet confirmed/reverted)
    resize_pending: bool = False
    #: the guest runs a rescue image (its own disk attached as the second)
    rescued: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exists": self.exists,
            "power_state": int(self.power_state),
            "flavor_id": self.flavor_id,
            "image_id": self.image_id,
            "resize_pending": self.resize_pending,
            "rescued": self.rescued,
        }


class HypervisorError(Exception):
    """The hypervisor refused or failed an operation.

    ``rollback`` says the guest was left as it was before the call (Nova's
    "instance fault rollback": the server returns to its previous state instead of
    going to ERROR).
    """

    def __init__(self, message: str, *, rollback: bool = False, code: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.rollback = rollback
        self.code = code


Result = Mapping[str, Any]

#: Nova's message when a guest has no console to read
NO_CONSOLE = "Guest does not have a console available."

#: the diagnostics ``state`` of each power state (Nova's ``power_state.STATE_MAP``)
DIAGNOSTICS_STATE = {0: "pending", 1: "running", 3: "paused", 4: "shutdown", 6: "crashed",
                     7: "suspended"}


def nic_detail(mac: str | None) -> dict[str, Any]:
    """A NIC of a diagnostics document whose counters are not known."""
    return {"mac_address": mac, **dict.fromkeys(
        ("rx_octets", "rx_errors", "rx_drop", "rx_packets", "rx_rate", "tx_octets",
         "tx_errors", "tx_drop", "tx_packets", "tx_rate"))}


def uptime_text(clock: datetime, seconds: float, loads: tuple[float, float, float],
                users: int = 0) -> str:
    """A host's uptime as the ``uptime`` command prints it (what Nova's libvirt driver
    answers for a hypervisor's uptime): `` 10:31:02 up 3 days,  2:04,  0 users,  load
    average: 0.00, 0.01, 0.05``."""
    minutes = int(seconds) // 60
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    up = f"{days} day{'' if days == 1 else 's'}, " if days else ""
    up += f"{hours:2d}:{minutes:02d}, " if hours else f"{minutes} min, "
    return (f" {clock:%H:%M:%S} up {up}{users:2d} user{'' if users == 1 else 's'},  "
            f"load average: {loads[0]:.2f}, {loads[1]:.2f}, {loads[2]:.2f}")


def local_uptime() -> str | None:
    """This machine's uptime text (from ``/proc``), or None where there is no ``/proc``."""
    try:
        with open("/proc/uptime") as f:
            seconds = float(f.read().split()[0])
        one, five, fifteen = os.getloadavg()
    except (OSError, ValueError, IndexError):
        return None
    return uptime_text(datetime.now(), seconds, (one, five, fifteen))


@runtime_checkable
class Hypervisor(Protocol):
    """One hypervisor host, as seen by its host agent."""

    #: a short driver name recorded in the audit trail ("simulator", "libvirt")
    driver: str

    def observe(self, server_id: str) -> Observation: ...

    def spawn(self, spec: GuestSpec) -> Result: ...

    def reboot(self, server_id: str, *, hard: bool) -> Result: ...

    def rebuild(self, spec: GuestSpec) -> Result: ...

    def resize(self, spec: GuestSpec) -> Result:
        """Apply the new flavor in ``spec``, keeping the old definition for a revert."""
        ...

    def confirm_resize(self, server_id: str) -> Result: ...

    def revert_resize(self, server_id: str) -> Result: ...

    def pause(self, server_id: str) -> Result: ...

    def unpause(self, server_id: str) -> Result: ...

    def suspend(self, server_id: str) -> Result: ...

    def resume(self, server_id: str) -> Result: ...

    def power_off(self, server_id: str) -> Result: ...

    def power_on(self, server_id: str) -> Result: ...

    def destroy(self, server_id: str) -> Result: ...

    def snapshot(self, server_id: str, image_id: str) -> Result:
        """Capture the guest's disk as the new image ``image_id`` (idempotent per image).

        Answers at least ``{"size": bytes}``; a paused or stopped guest keeps its state.
        """
        ...

    def rescue(self, spec: GuestSpec) -> Result:
        """Boot the rescue image ``spec.image_id``, the guest's own disk attached as the
        second, keeping the guest's definition for :meth:`unrescue`; from any power
        state, ending RUNNING."""
        ...

    def unrescue(self, server_id: str) -> Result:
        """Back to the kept definition, booted (RUNNING)."""
        ...

    # --- moving a guest to another host (cold and live migration) ---------------------
    # Each host's agent makes the calls of its own half: the destination prepares and
    # finishes, the source sends. What one half answers reaches the other through the log
    # (the recorded result), so the two agents may run in different processes.
    def prepare_migration(self, spec: GuestSpec, *, live: bool) -> Result:
        """On the destination: get ready to take the guest ``spec`` from another host.
        Answers ``{"target": {...}}``, what the source needs to send it here (driver
        specific: the simulator's host name; libvirt's connection URI, migration URI and
        disk directory). A live migration may define an incoming, not yet running copy
        (as QEMU's ``-incoming``). Repeatable; a guest already running here is refused
        (:class:`HypervisorError` 409, rollback): never two running copies."""
        ...

    def migrate_disk(self, server_id: str, target: Mapping[str, Any]) -> Result:
        """On the source, cold: the guest powered off (when it is not) and its disk sent
        where ``target`` says. The guest stays defined here, off, for a revert; answers
        ``{"disk": {...}}``, what :meth:`finish_migration` needs. Repeatable."""
        ...

    def finish_migration(self, spec: GuestSpec, disk: Mapping[str, Any], *,
                         power_on: bool) -> Result:
        """On the destination, cold: the guest ``spec`` (its flavor may be new) defined
        on the disk :meth:`migrate_disk` sent, and started when ``power_on``. A guest
        already defined here is kept (started when ``power_on``)."""
        ...

    def live_migrate(self, server_id: str, target: Mapping[str, Any], *,
                     block_migration: bool) -> Result:
        """On the source: move the guest (running or paused) to the destination
        ``target`` while it runs. Blocks until it runs there and is gone from here, and
        answers what the destination's :meth:`finish_live_migration` needs; raises
        :class:`HypervisorError` with ``rollback`` when the move failed or was aborted
        (the guest still here, as it was). Repeated after it moved: ``{"already":
        True, ...}`` with the same answer."""
        ...

    def abort_migration(self, server_id: str) -> Result:
        """Cancel the live migration of the guest in progress here (from another
        thread); ``{"already": True}`` when none is in progress."""
        ...

    def force_complete_migration(self, server_id: str) -> Result:
        """Make the live migration in progress converge (the guest is paused for the
        rest of the copy, as Nova's libvirt driver does, and runs again on the
        destination); ``{"already": True}`` when none is in progress."""
        ...

    def finish_live_migration(self, spec: GuestSpec, moved: Mapping[str, Any]) -> Result:
        """On the destination: the guest :meth:`live_migrate` moved here (``moved``: its
        answer) is checked and settled as this host's own; its power state is as it was
        on the source."""
        ...

    def inject_nmi(self, server_id: str) -> Result:
        """A non-maskable interrupt to a running guest (Nova's ``trigger_crash_dump``);
        a guest that is not running: :class:`HypervisorError` 409."""
        ...

    def diagnostics(self, server_id: str) -> Result:
        """What the hypervisor knows of a guest, in Nova's standard diagnostics form
        (2.48): state, driver, hypervisor, hypervisor_os, uptime, config_drive,
        num_cpus/nics/disks, memory_details, cpu_details, nic_details, disk_details.
        Reading changes nothing; an unknown guest is :class:`HypervisorError` 404."""
        ...

    def console_output(self, server_id: str) -> str:
        """What the guest wrote to its serial console since it was defined (reading
        changes nothing). A guest without a console log raises
        :class:`HypervisorError` with code 404."""
        ...

    def host_info(self) -> Result:
        """The host as Nova's compute node reports it: ``hypervisor_type`` (text),
        ``hypervisor_version`` (integer), ``vcpus``, ``memory_mb``, ``local_gb`` (its
        capacity), ``disk_available_least`` (free GB on its disk, or None),
        ``host_ip``, ``cpu_info`` (arch, model, vendor, topology, features) and
        ``uptime`` (the ``uptime`` command's text, None when it cannot be known).
        Reading changes nothing."""
        ...
