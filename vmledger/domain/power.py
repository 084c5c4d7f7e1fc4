"""A guest's power state, numbered as Nova numbers it (the domain's word for what a
hypervisor reports; the lifecycle's drift rules and the audit read it)."""

from __future__ import annotations

from enum import IntEnum


class PowerState(IntEnum):
    """Nova's power_state numbering (2 and 5 are unused slots)."""

    NOSTATE = 0
    RUNNING = 1
    PAUSED = 3
    SHUTDOWN = 4
    CRASHED = 6
    SUSPENDED = 7
