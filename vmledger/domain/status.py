"""How a server shows: its API ``status`` from (vm_state, task_state) exactly as Nova's
status map derives it, the status its current migration shows, the host it shows, and
the task states that count as a host's I/O work. The states themselves are the
lifecycle table's (:mod:`vmledger.domain.lifecycle`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmledger.domain.lifecycle import (
    ACTIVE,
    BUILDING,
    DELETED,
    ERROR,
    IMAGE_BACKUP,
    IMAGE_SNAPSHOT,
    PAUSED,
    REBOOT_PENDING,
    REBOOT_PENDING_HARD,
    REBOOT_STARTED,
    REBOOT_STARTED_HARD,
    REBOOTING,
    REBOOTING_HARD,
    REBUILD_BLOCK_DEVICE_MAPPING,
    REBUILD_SPAWNING,
    REBUILDING,
    RESCUED,
    RESCUING,
    RESIZE_FINISH,
    RESIZE_MIGRATED,
    RESIZE_MIGRATING,
    RESIZE_PREP,
    RESIZE_REVERTING,
    RESIZED,
    SCHEDULING,
    SHELVED,
    SHELVED_OFFLOADED,
    SOFT_DELETED,
    STOPPED,
    SUSPENDED,
    UNSHELVING,
)

# --- migrations (Nova's migration records of a resize) ------------------------------
#: a resize's migration status while the host agent walks its steps: recorded as
#: ``pre-migrating`` with the request, it reads ``migrating`` while the disk is moved and
#: ``post-migrating`` once it has been (Nova's resize_instance and finish_resize); the
#: outcome then records ``finished`` (or ``error``), confirm and revert ``confirming`` /
#: ``confirmed`` and ``reverting`` / ``reverted``
MIGRATION_STEP_STATUS: dict[str, str] = {
    RESIZE_MIGRATING: "migrating",
    RESIZE_MIGRATED: "post-migrating",
    RESIZE_FINISH: "post-migrating",
}
#: an evacuation's migration record: ``accepted`` with the request, then ``done`` or
#: ``failed``, and ``completed`` once the host it left has removed its old guest
EVACUATION_STATUSES = ("accepted", "done", "failed", "completed")
#: migration statuses a delete of the server leaves as they are
MIGRATION_SETTLED = frozenset({"confirmed", "reverted", "error", "done", "failed",
                               "completed"})


def migration_status_of(migration_status: str | None, task_state: str | None) -> str | None:
    """The status a server's current migration shows (see :data:`MIGRATION_STEP_STATUS`)."""
    if migration_status == "pre-migrating" and task_state in MIGRATION_STEP_STATUS:
        return MIGRATION_STEP_STATUS[task_state]
    return migration_status


# --- a host's I/O workload (Nova's compute node ``current_workload``) -------------
#: task states that count as I/O work on a host (Nova's resource tracker's
#: ``io_workload``), besides servers being built
IO_WORKLOAD_TASKS = frozenset({RESIZE_MIGRATING, REBUILDING, RESIZE_PREP, IMAGE_SNAPSHOT,
                               IMAGE_BACKUP, RESCUING, UNSHELVING})


# --- (vm_state, task_state) → API status ------------------------------------------
_RESIZE_TASKS = (RESIZE_PREP, RESIZE_MIGRATING, RESIZE_MIGRATED, RESIZE_FINISH)
_REBUILD_TASKS = (REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING)

#: Nova's ``_STATE_MAP``: per vm_state a default status and task_state overrides
STATUS_MAP: dict[str, tuple[str, dict[str, str]]] = {
    ACTIVE: ("ACTIVE", {
        REBOOTING: "REBOOT", REBOOT_PENDING: "REBOOT", REBOOT_STARTED: "REBOOT",
        REBOOTING_HARD: "HARD_REBOOT", REBOOT_PENDING_HARD: "HARD_REBOOT",
        REBOOT_STARTED_HARD: "HARD_REBOOT", "updating_password": "PASSWORD",
        **dict.fromkeys(_REBUILD_TASKS, "REBUILD"), "migrating": "MIGRATING",
        **dict.fromkeys(_RESIZE_TASKS, "RESIZE"),
    }),
    BUILDING: ("BUILD", {}),
    STOPPED: ("SHUTOFF", {**dict.fromkeys(_RESIZE_TASKS, "RESIZE"),
                          **dict.fromkeys(_REBUILD_TASKS, "REBUILD")}),
    RESIZED: ("VERIFY_RESIZE", {RESIZE_REVERTING: "REVERT_RESIZE"}),
    PAUSED: ("PAUSED", {"migrating": "MIGRATING"}),
    SUSPENDED: ("SUSPENDED", {}),
    RESCUED: ("RESCUE", {}),
    ERROR: ("ERROR", dict.fromkeys(_REBUILD_TASKS, "REBUILD")),
    DELETED: ("DELETED", {}),
    SOFT_DELETED: ("SOFT_DELETED", {}),
    SHELVED: ("SHELVED", {}),
    SHELVED_OFFLOADED: ("SHELVED_OFFLOADED", {}),
}

#: the full status enum of Nova's response schema
STATUSES: frozenset[str] = frozenset({
    "ACTIVE", "BUILD", "DELETED", "ERROR", "HARD_REBOOT", "MIGRATING", "PASSWORD",
    "PAUSED", "REBOOT", "REBUILD", "RESCUE", "RESIZE", "REVERT_RESIZE", "SHELVED",
    "SHELVED_OFFLOADED", "SHUTOFF", "SOFT_DELETED", "SUSPENDED", "UNKNOWN", "VERIFY_RESIZE",
})


def status_of(vm_state: str, task_state: str | None) -> str:
    """The API ``status`` of a server, exactly as Nova's ``status_from_state``."""
    default, overrides = STATUS_MAP.get(vm_state, ("UNKNOWN", {}))
    if task_state is None:
        return default
    return overrides.get(task_state, default)


def placed_host(doc: Mapping[str, Any]) -> str | None:
    """The host a server document shows: none before it left scheduling (Nova has
    none then), none when no host could take it, and none while it is offloaded
    without a task (its guest is gone; in Nova until unshelved)."""
    vm_state = doc.get("vm_state")
    if vm_state == BUILDING and doc.get("task_state") == SCHEDULING:
        return None
    if doc.get("unplaced"):  # no host could take it
        return None
    if vm_state == SHELVED_OFFLOADED and doc.get("task_state") is None:
        return None
    host = doc.get("host")
    return str(host) if host else None


def states_for_status(status: str) -> list[tuple[str, str | None] | tuple[str, None]]:
    """Invert the status map for the ``?status=`` filter: (vm_state, task_state) pairs.

    A task_state of ``None`` in a pair means *any* task_state when the status is the
    vm_state's default (``status=ACTIVE`` selects active servers whatever their task).
    """
    pairs: list[tuple[str, str | None] | tuple[str, None]] = []
    for vm_state, (default, overrides) in STATUS_MAP.items():
        if default == status:
            pairs.append((vm_state, None))
        else:
            pairs.extend((vm_state, t) for t, s in overrides.items() if s == status)
    return pairs
