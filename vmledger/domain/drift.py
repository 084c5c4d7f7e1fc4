"""Drift: what the power-state sync does when the hypervisor disagrees with the record
(Nova's ``_sync_instance_power_state``), as data beside the lifecycle table."""

from __future__ import annotations

from vmledger.domain.lifecycle import (
    ACTIVE,
    BUILDING,
    DELETED,
    PAUSED,
    SHELVED_OFFLOADED,
    STOPPED,
)
from vmledger.domain.power import PowerState

#: Nova's ``_sync_instance_power_state`` for a server with no task in flight: the
#: (vm_state, power state the hypervisor reports) pairs on which the server is stopped
#: (the vm_state becomes ``stopped`` and a guest still running is powered off). Any other
#: difference only updates the recorded power state. Servers in building, resized,
#: suspended, error or deleted are never changed (Nova: "nothing").
DRIFT_STOPS: frozenset[tuple[str, int]] = frozenset({
    (ACTIVE, PowerState.SHUTDOWN), (ACTIVE, PowerState.CRASHED),
    (ACTIVE, PowerState.SUSPENDED), (STOPPED, PowerState.RUNNING),
    (PAUSED, PowerState.SHUTDOWN), (PAUSED, PowerState.CRASHED),
})


def drift(vm_state: str, task_state: str | None, observed_power: int) -> str | None:
    """What a power-state sync does: ``"stop"``, ``"record"`` or None (skip the server)."""
    if task_state is not None or vm_state in (BUILDING, DELETED, SHELVED_OFFLOADED):
        return None  # an offloaded server has no guest (Nova: no host to sync it)
    return "stop" if (vm_state, observed_power) in DRIFT_STOPS else "record"
