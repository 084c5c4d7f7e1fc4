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
import itertools
import json
import time
import weakref
from collections.abc import Mapping
from datetime import datetime
from typing import Any

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
from vmledger.adapters.simulated_guests import (
    _HARD_REBOOTABLE,
    HOST_CPU_INFO,
    HOST_LOCAL_GB,
    HOST_MEMORY_MB,
    HOST_VCPUS,
    MUTATING_OPERATIONS,
    OPERATIONS,
    SimulatedCrash,
    _console_text,
    _Guest,
    _not_found,
    _OldDefinition,
    _wrong_state,
)
from vmledger.adapters.simulator_harness import DEPARTED_KEPT, SimulatorHarness

__all__ = ["HOST_CPU_INFO", "HOST_LOCAL_GB", "HOST_MEMORY_MB", "HOST_VCPUS",
           "MUTATING_OPERATIONS", "OPERATIONS", "SimulatedCrash", "Simulator"]


#: the simulators of this process, by the token their ``prepare_migration`` answers: a
#: live migration between two of them moves the guest at once, as a hypervisor does
_HERE: weakref.WeakValueDictionary[str, Simulator] = weakref.WeakValueDictionary()
#: tokens in the order simulators are first asked to prepare (the same run, the same)
_TOKENS = itertools.count(1)


class Simulator(SimulatorHarness):
    """A deterministic in-memory hypervisor implementing the ``Hypervisor`` port.

    Thread-safe: one lock guards the guest table, the random generator, the scripted
    faults and :attr:`calls`; latency is slept outside the lock.

    Live migration: between two simulators of one process the guest moves from one
    table to the other in one step (it runs on the destination as it is gone from the
    source); between processes the guest travels in the source's answer, recorded in
    the log, and the destination takes it over from there
    (:meth:`finish_live_migration`), its incoming copy standing in meanwhile.
    """

    driver = "simulator"

    def _token(self) -> str:
        token = self.__dict__.get("_migration_token")
        if token is None:
            token = self.__dict__["_migration_token"] = f"simulator-{next(_TOKENS)}"
            _HERE[token] = self
        return str(token)

    # ------------------------------------------------------------------ the port

    def observe(self, server_id: str) -> Observation:
        self._enter("observe")
        with self._lock:
            self.calls.append(("observe", server_id))
            guest = self._guests.get(server_id)
            if guest is None:
                return Observation(exists=False)
            if guest.incoming:  # waiting for a live migration: no guest runs here yet
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
            guest.panicked_boots += (guest.boot_count,)
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
            if guest is None or guest.incoming:
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
            if guest is None or guest.incoming:
                raise HypervisorError(NO_CONSOLE, code=404)
            return _console_text(guest)

    def spawn(self, spec: GuestSpec) -> Result:
        """Define and start the guest; a running guest is left alone."""

        def apply() -> Result:
            guest = self._guests.get(spec.server_id)
            if guest is None or guest.incoming:
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

    def destroy(self, server_id: str) -> Result:
        """Remove the guest; nothing to do if it does not exist."""

        def apply() -> Result:
            if self._guests.pop(server_id, None) is None:
                return {"already": True}
            return {"destroyed": True}

        return self._mutate("destroy", server_id, apply)

    # ------------------------------------------------------------------ migrations

    def prepare_migration(self, spec: GuestSpec, *, live: bool) -> Result:
        """Ready to take the guest: for a live migration an incoming copy is defined
        (paused, not shown by :meth:`observe` until the guest moves). A guest of this
        server already here and not incoming is refused."""

        def apply() -> Result:
            guest = self._guests.get(spec.server_id)
            if guest is not None and not guest.incoming:
                raise HypervisorError(
                    f"Guest {spec.server_id} is already defined on the destination",
                    rollback=True, code=409)
            if live and guest is None:
                self._guests[spec.server_id] = _Guest(
                    server_id=spec.server_id, name=spec.name, flavor_id=spec.flavor_id,
                    vcpus=spec.vcpus, ram_mb=spec.ram_mb, disk_gb=spec.disk_gb,
                    image_id=spec.image_id, mac=spec.mac, power_state=PowerState.PAUSED,
                    incoming=True)
            return {"target": {"driver": self.driver, "simulator": self._token()}}

        return self._mutate("prepare_migration", spec.server_id, apply)

    def migrate_disk(self, server_id: str, target: Mapping[str, Any]) -> Result:
        """Power the guest off (when it is not) and answer its disk; it stays here."""

        def apply() -> Result:
            guest = self._require(server_id)
            if guest.power_state != PowerState.SHUTDOWN:
                guest.power_state = PowerState.SHUTDOWN
            disk = guest.to_json()
            disk["old_definition"] = None
            return {"disk": disk}

        return self._mutate("migrate_disk", server_id, apply)

    def finish_migration(self, spec: GuestSpec, disk: Mapping[str, Any], *,
                         power_on: bool) -> Result:
        """Define the guest on the disk received, with the flavor of ``spec``."""

        def apply() -> Result:
            guest = self._guests.get(spec.server_id)
            already = guest is not None and not guest.incoming
            if guest is None or guest.incoming:
                guest = _Guest.from_json({**disk, "power_state": int(PowerState.SHUTDOWN),
                                          "old_definition": None, "incoming": False})
                guest.name, guest.mac = spec.name, spec.mac
                guest.flavor_id, guest.vcpus = spec.flavor_id, spec.vcpus
                guest.ram_mb, guest.disk_gb = spec.ram_mb, spec.disk_gb
                self._guests[spec.server_id] = guest
            if power_on and guest.power_state != PowerState.RUNNING:
                guest.boot()
            return {"power_state": int(guest.power_state), "boot_count": guest.boot_count,
                    **({"already": True} if already else {})}

        return self._mutate("finish_migration", spec.server_id, apply)

    def live_migrate(self, server_id: str, target: Mapping[str, Any], *,
                     block_migration: bool) -> Result:
        """Copy for :attr:`live_migration_seconds` (an abort or a force-complete may
        arrive meanwhile), then move the guest: it is gone from here, and the answer
        carries it (its power state, boot counter and console unchanged)."""
        with self._lock:
            departed = self._departed.get(server_id)
            if departed is not None and server_id not in self._guests:
                self.calls.append(("live_migrate", server_id))
                return {**departed, "already": True}
            guest = self._require(server_id)
            if guest.power_state not in (PowerState.RUNNING, PowerState.PAUSED):
                raise _wrong_state("live migrate", guest)
            self._migrating[server_id] = "running"
        forced = False
        try:
            deadline = time.monotonic() + self.live_migration_seconds
            while time.monotonic() < deadline:
                with self._lock:
                    wish = self._migrating.get(server_id)
                if wish == "abort":
                    raise HypervisorError("Migration was cancelled by a request to abort it",
                                          rollback=True, code=409)
                if wish == "force":
                    forced = True
                    break
                self._sleep(min(0.01, max(deadline - time.monotonic(), 0.0)))
            with self._lock:
                if self._migrating.get(server_id) == "abort":
                    raise HypervisorError("Migration was cancelled by a request to abort it",
                                          rollback=True, code=409)

            def apply() -> Result:
                moving = self._require(server_id)
                moved = {"guest": moving.to_json(), "forced": forced,
                         "block_migration": block_migration}
                there = _HERE.get(str(target.get("simulator", "")))
                if there is not None and there is not self:
                    there.receive(moving)  # it runs there as it leaves here
                del self._guests[server_id]
                self._departed[server_id] = moved
                self._departed.move_to_end(server_id)
                while len(self._departed) > DEPARTED_KEPT:
                    self._departed.popitem(last=False)
                return dict(moved)

            return self._mutate("live_migrate", server_id, apply)
        finally:
            with self._lock:
                self._migrating.pop(server_id, None)

    def _wish(self, op: str, server_id: str, wish: str) -> Result:
        def apply() -> Result:
            if server_id not in self._migrating:
                return {"already": True}
            self._migrating[server_id] = wish
            return {wish: True}

        return self._mutate(op, server_id, apply)

    def abort_migration(self, server_id: str) -> Result:
        return self._wish("abort_migration", server_id, "abort")

    def force_complete_migration(self, server_id: str) -> Result:
        return self._wish("force_complete_migration", server_id, "force")

    def receive(self, guest: _Guest) -> None:
        """A guest live-migrated here by a simulator of this process: it takes the place
        of the incoming copy, running (or paused) as it was."""
        with self._lock:
            self._guests[guest.server_id] = _Guest.from_json(
                {**guest.to_json(), "incoming": False})
            self._persist()

    def finish_live_migration(self, spec: GuestSpec, moved: Mapping[str, Any]) -> Result:
        """The guest moved here takes the place of the incoming copy, as it ran there."""

        def apply() -> Result:
            guest = self._guests.get(spec.server_id)
            if guest is not None and not guest.incoming:
                return {"power_state": int(guest.power_state), "already": True}
            data = moved.get("guest")
            if not isinstance(data, Mapping):
                raise HypervisorError(
                    f"No guest {spec.server_id} was moved here", rollback=True, code=404)
            guest = _Guest.from_json({**data, "incoming": False})
            guest.name = spec.name
            self._guests[spec.server_id] = guest
            return {"power_state": int(guest.power_state), "boot_count": guest.boot_count}

        return self._mutate("finish_live_migration", spec.server_id, apply)
