"""The libvirt driver's power transitions: pause/unpause, suspend/resume, power on/off,
reboot (soft and hard) and the NMI; none changes the guest's definition.

Soft reboot and graceful power-off only *ask* the guest (the ACPI power button). As
Nova does, the driver waits up to ``acpi_timeout`` for the evidence — the domain shut
off — then starts it again (soft reboot) or is done (power-off); a guest that does not
react is reset or destroyed. The test driver completes ``shutdown()`` at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vmledger.adapters.hypervisor import HypervisorError, PowerState, Result
from vmledger.adapters.libvirt.base import DriverBase, _power, _Progress, _wrong_state


class PowerMixin(DriverBase):
    """Moves a guest between power states (see the module docstring)."""

    def _transition(self, op: str, server_id: str, sources: frozenset[PowerState],
                    target: PowerState, act: Callable[[Any, PowerState, _Progress], Result]
                    ) -> Result:
        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            power = _power(dom)
            if power == target:
                return {"already": True}
            if power not in sources:
                raise _wrong_state(op.replace("_", " "), server_id, power)
            return {**act(dom, power, do), "power_state": int(target)}

        return self._act(server_id, body)

    def pause(self, server_id: str) -> Result:
        def act(dom: Any, _power: PowerState, do: _Progress) -> Result:
            do(dom.suspend)
            return {}

        return self._transition("pause", server_id, frozenset({PowerState.RUNNING}),
                                PowerState.PAUSED, act)

    def unpause(self, server_id: str) -> Result:
        def act(dom: Any, _power: PowerState, do: _Progress) -> Result:
            do(dom.resume)
            return {}

        return self._transition("unpause", server_id, frozenset({PowerState.PAUSED}),
                                PowerState.RUNNING, act)

    def suspend(self, server_id: str) -> Result:
        def act(dom: Any, _power: PowerState, do: _Progress) -> Result:
            do(dom.managedSave, 0)  # memory to disk; create() restores it
            return {}

        return self._transition("suspend", server_id, frozenset({PowerState.RUNNING}),
                                PowerState.SUSPENDED, act)

    def resume(self, server_id: str) -> Result:
        return self._transition("resume", server_id, frozenset({PowerState.SUSPENDED}),
                                PowerState.RUNNING, self._started)

    def power_on(self, server_id: str) -> Result:
        return self._transition("power_on", server_id,
                                frozenset({PowerState.SHUTDOWN, PowerState.CRASHED}),
                                PowerState.RUNNING, self._started)

    def _started(self, dom: Any, power: PowerState, do: _Progress) -> Result:
        return {"method": self._start(dom, power, do)}

    def power_off(self, server_id: str) -> Result:
        """ACPI power button, then ``destroy()`` if still running after the timeout;
        a paused or crashed guest cannot react, so it is destroyed at once."""
        return self._transition(
            "power_off", server_id,
            frozenset({PowerState.RUNNING, PowerState.PAUSED, PowerState.CRASHED}),
            PowerState.SHUTDOWN, self._power_off)

    def reboot(self, server_id: str, *, hard: bool) -> Result:
        """Soft: ACPI power-off then start, or ``reset()`` if the guest does not power off
        in time. Hard: a fresh boot from any settled state (a saved memory image is
        discarded)."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            power = _power(dom)
            if not hard:
                if power != PowerState.RUNNING:
                    raise _wrong_state("soft reboot", server_id, power, rollback=False)
                return self._soft_reboot(dom, do)
            if power == PowerState.RUNNING:
                do(dom.reset, 0)
                return {"method": "reset"}
            if power == PowerState.SUSPENDED:
                do(dom.managedSaveRemove, 0)
            elif power not in (PowerState.PAUSED, PowerState.SHUTDOWN, PowerState.CRASHED):
                raise _wrong_state("hard reboot", server_id, power)
            if dom.isActive():
                do(dom.destroy)
            do(dom.create)
            return {"method": "destroy+create" if power == PowerState.PAUSED else "create"}

        return self._act(server_id, body)

    def _soft_reboot(self, dom: Any, do: _Progress) -> Result:
        # As Nova does: ask the guest to power off (ACPI) and start it again once it has.
        # A reboot() request cannot be seen to succeed: libvirt's state does not change,
        # and REBOOT events also come from the firmware's and our own resets.
        do(dom.shutdown)
        if self._wait(lambda: not dom.isActive()):
            do(dom.create)
            return {"method": "acpi"}
        power = _power(dom)
        if power == PowerState.RUNNING:
            do(dom.reset, 0)  # also clears the power-button request the guest ignored
        else:  # it stopped in the meantime, or paused itself
            self._start(dom, power, do)
        return {"method": "reset", "acpi_timeout": self.acpi_timeout}

    def inject_nmi(self, server_id: str) -> Result:
        """``virDomainInjectNMI`` to a running guest."""

        def body(conn: Any, do: _Progress) -> Result:
            dom = self._require(conn, server_id)
            if _power(dom) != PowerState.RUNNING:
                raise HypervisorError(f"Instance {server_id} is not running", rollback=True,
                                      code=409)
            do(dom.injectNMI, 0)
            return {"nmi": True}

        return self._act(server_id, body)
