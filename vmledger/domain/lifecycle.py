"""The server lifecycle: one declarative table, the single source of truth.

Everything that decides or describes a server's state reads :data:`ACTIONS` and
:data:`STATUS_MAP` from here: the command guard (:func:`check`), the host agent's
outcomes (:func:`outcome`), the API status (:func:`status_of`), the generated state
diagram (``docs/lifecycle.md``) and the tests. The rules follow Nova (see
``nova/compute/api.py`` decorators and ``nova/api/openstack/common.py``); the facts are
restated in the project's reference notes.

The table is held by one module-level :class:`transitions.Machine` with no model bound
(``model=None``): aggregates are never bound to it. Its states are composite
``vm_state`` or ``vm_state/task_state`` names; its triggers are ``request:<action>``,
``advance:<action>``, ``complete:<action>``, ``fail:<action>`` and ``rollback:<action>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from transitions import Machine, MachineError

from vmledger.domain.changes import CLEAR, CONFIRM_DEADLINE, NOW, Change, Field, Param
from vmledger.domain.errors import BadRequest, Forbidden, InvalidState, Locked

# --- vm_state (stable) ---------------------------------------------------------------
BUILDING = "building"
ACTIVE = "active"
PAUSED = "paused"
SUSPENDED = "suspended"
STOPPED = "stopped"
RESIZED = "resized"
ERROR = "error"
DELETED = "deleted"
SHELVED = "shelved"
SHELVED_OFFLOADED = "shelved_offloaded"
RESCUED = "rescued"
#: Nova's ``vm_states.SOFT_DELETED``
SOFT_DELETED = "soft-delete"

VM_STATES: tuple[str, ...] = (
    BUILDING, ACTIVE, PAUSED, SUSPENDED, STOPPED, RESIZED, RESCUED, SHELVED, SHELVED_OFFLOADED,
    ERROR, SOFT_DELETED, DELETED,
)

# --- task_state (transient; None when idle) ------------------------------------------
SCHEDULING = "scheduling"
NETWORKING = "networking"
BLOCK_DEVICE_MAPPING = "block_device_mapping"
SPAWNING = "spawning"
REBOOTING = "rebooting"
REBOOT_PENDING = "reboot_pending"
REBOOT_STARTED = "reboot_started"
REBOOTING_HARD = "rebooting_hard"
REBOOT_PENDING_HARD = "reboot_pending_hard"
REBOOT_STARTED_HARD = "reboot_started_hard"
REBUILDING = "rebuilding"
REBUILD_BLOCK_DEVICE_MAPPING = "rebuild_block_device_mapping"
REBUILD_SPAWNING = "rebuild_spawning"
RESIZE_PREP = "resize_prep"
RESIZE_MIGRATING = "resize_migrating"
RESIZE_MIGRATED = "resize_migrated"
RESIZE_FINISH = "resize_finish"
RESIZE_REVERTING = "resize_reverting"
MIGRATING = "migrating"
PAUSING = "pausing"
UNPAUSING = "unpausing"
SUSPENDING = "suspending"
RESUMING = "resuming"
POWERING_OFF = "powering-off"
POWERING_ON = "powering-on"
DELETING = "deleting"
IMAGE_SNAPSHOT = "image_snapshot"
IMAGE_SNAPSHOT_PENDING = "image_snapshot_pending"
IMAGE_PENDING_UPLOAD = "image_pending_upload"
IMAGE_UPLOADING = "image_uploading"
IMAGE_BACKUP = "image_backup"
SHELVING = "shelving"
SHELVING_IMAGE_PENDING_UPLOAD = "shelving_image_pending_upload"
SHELVING_IMAGE_UPLOADING = "shelving_image_uploading"
SHELVING_OFFLOADING = "shelving_offloading"
UNSHELVING = "unshelving"
RESCUING = "rescuing"
UNRESCUING = "unrescuing"
SOFT_DELETING = "soft-deleting"
RESTORING = "restoring"

#: task states from which a HARD reboot is accepted (Nova's ``ALLOW_REBOOT``)
ALLOW_REBOOT: frozenset[str | None] = frozenset(
    {None, REBOOTING, REBOOT_PENDING, REBOOT_STARTED, RESUMING, REBOOTING_HARD,
     UNPAUSING, PAUSING, SUSPENDING}
)

# --- end-state rules -------------------------------------------------------------------
#: keep the vm_state the server had when the action was requested
SAME = "(same)"
#: the vm_state stashed when the action was requested (Nova's ``old_vm_state``)
STASHED = "(stashed)"

ANY: None = None


@dataclass(frozen=True)
class Action:
    """One row of the lifecycle table."""

    #: command name, unique in the table (``reboot_hard``)
    name: str
    #: the name Nova prints in refusals (``reboot``, ``stop``, ``confirmResize``)
    api_name: str
    #: the os-instance-actions name (``reboot``, ``stop``, ``confirmResize``)
    instance_action: str
    #: vm_states it is allowed from; ``None`` = any
    vm_states: frozenset[str] | None
    #: task_states it is allowed from; ``None`` = any
    task_states: frozenset[str | None] | None
    #: task_states while in flight, in order; the first is set when accepted
    steps: tuple[str, ...] = ()
    #: the host agent enacts it (else it is decided and done in the request)
    asynchronous: bool = True
    #: vm_state on success: a state, SAME, STASHED, or a mapping from the starting state
    success: str | Mapping[str, str] = SAME
    #: vm_state on a generic failure
    failure: str = ERROR
    #: vm_state when the hypervisor left the guest untouched (Nova's rollback)
    rollback: str = SAME
    checks_lock: bool = True
    needs_launched: bool = True
    admin_only: bool = False
    #: a finished resize must be waiting (else 400 "Instance has not been resized.")
    needs_finished_resize: bool = False
    #: remember the vm_state at request time for later (resize → confirm/revert)
    stashes_vm_state: bool = False
    #: Nova's instance-action event for the work (``compute_reboot_instance``, or
    #: ``api_lock`` for a synchronous lock); "" when none is recorded
    event: str = ""
    #: the keys of a ``POST /servers/{id}/action`` body that request it; none when it has
    #: another route (create, delete, metadata, tags) or is a variant
    api_keys: tuple[str, ...] = ()
    #: the row whose request the command turns into this one when it must (a HARD
    #: reboot, a shelve that offloads at once, a soft delete, an evacuate left stopped)
    variant_of: str | None = None
    #: what else a success changes on the server (see :mod:`vmledger.domain.changes`)
    on_complete: Mapping[str, Change] = field(default_factory=dict)
    #: what else a failure or a rollback changes on the server
    on_fail: Mapping[str, Change] = field(default_factory=dict)
    #: how the audit ledger tells a request for it: a :meth:`str.format` template over
    #: its parameters; a parameter missing, None or "" tells the plain name instead
    #: (unless the field gives a default: ``{backup_type:or no}``)
    story: str = ""
    #: how the ledger tells the timer's request for it, and the reason it gives
    timer_story: str = ""
    timer_reason: str = ""
    #: whose host agent enacts it first: the server's own host (``host``), the host a
    #: move goes to (``destination``: the request's ``dest_host``), or the host that
    #: keeps the old copy of a moved server (``source``: its ``migration_source``);
    #: each falls back on the server's own host when there is no other
    acts_on: str = "host"
    doc: str = field(default="", compare=False)


def _states(*names: str) -> frozenset[str]:
    return frozenset(names)


IDLE: frozenset[str | None] = frozenset({None})
#: where a server's metadata may change (Nova's ``update_instance_metadata`` states)
_METADATA_STATES = _states(ACTIVE, PAUSED, SUSPENDED, STOPPED, RESIZED)
#: where a server's tags may change (Nova's ``server_tags`` states; not RESIZED)
_TAG_STATES = _states(ACTIVE, PAUSED, SUSPENDED, STOPPED)

#: changes shared by several rows (never mutated)
_LAUNCHED: Mapping[str, Change] = {"launched_at": NOW}
_EVACUATED: Mapping[str, Change] = {"launched_at": NOW, "migration_status": "done"}
_EVACUATION_FAILED: Mapping[str, Change] = {"migration_status": "failed"}
_SHELVED: Mapping[str, Change] = {"shelved_image_id": Param("image_id")}
_MIGRATION_FAILED: Mapping[str, Change] = {"migration_status": "error",
                                           "confirm_deadline": None}
_SETTLED_RESIZE: Mapping[str, Change] = {"old_flavor": None, "old_vm_state": None,
                                         "confirm_deadline": None, "migration_source": CLEAR}
#: a move that ended: the host it went to is no longer held
_MOVE_ENDED: Mapping[str, Change] = {"migration_dest": CLEAR}
#: a resize or cold migration that finished: on its destination (its own host when it
#: stayed), the old copy kept on the host it left until confirmed or reverted
_RESIZE_FINISHED: Mapping[str, Change] = {
    "old_flavor": Field("flavor"), "flavor": Param("flavor"),
    "migration_status": "finished", "launched_at": NOW,
    "confirm_deadline": CONFIRM_DEADLINE,
    "host": Field("migration_dest", skip_empty=True),
    "migration_source": Param("source_host", skip_empty=True), **_MOVE_ENDED}

ACTIONS: dict[str, Action] = {a.name: a for a in (
    Action("create", "create", "create", vm_states=_states(), task_states=IDLE,
           steps=(SCHEDULING, NETWORKING, BLOCK_DEVICE_MAPPING, SPAWNING),
           success=ACTIVE, failure=ERROR, rollback=ERROR, needs_launched=False,
           event="compute__do_build_and_run_instance", on_complete=_LAUNCHED,
           doc="build and boot a new server"),
    Action("reboot_soft", "reboot", "reboot", vm_states=_states(ACTIVE), task_states=IDLE,
           steps=(REBOOTING, REBOOT_PENDING, REBOOT_STARTED),
           success=ACTIVE, failure=ERROR, rollback=ACTIVE,
           event="compute_reboot_instance", api_keys=("reboot",), story="reboot (soft)",
           doc="ACPI reboot; the guest still running after a failure stays ACTIVE"),
    Action("reboot_hard", "reboot", "reboot",
           vm_states=_states(ACTIVE, STOPPED, PAUSED, SUSPENDED, ERROR),
           task_states=ALLOW_REBOOT,
           steps=(REBOOTING_HARD, REBOOT_PENDING_HARD, REBOOT_STARTED_HARD),
           success=ACTIVE, failure=ERROR, rollback=ACTIVE,
           event="compute_reboot_instance", variant_of="reboot_soft", story="reboot (hard)",
           doc="reset; the standard recovery path, may override a reboot or pause in flight"),
    Action("rebuild", "rebuild", "rebuild", vm_states=_states(ACTIVE, STOPPED, ERROR),
           task_states=IDLE, steps=(REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING),
           success={ACTIVE: ACTIVE, STOPPED: STOPPED, ERROR: ACTIVE},
           failure=ERROR, rollback=SAME,
           event="compute_rebuild_instance", api_keys=("rebuild",), on_complete=_LAUNCHED,
           story="rebuild with image {image[name]}",
           doc="new disk from an image; keeps id and addresses"),
    Action("evacuate", "evacuate", "evacuate", vm_states=_states(ACTIVE, STOPPED, ERROR),
           task_states=ANY, steps=(REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING),
           success={ACTIVE: ACTIVE, STOPPED: STOPPED, ERROR: ACTIVE}, failure=ERROR,
           rollback=ERROR, checks_lock=False, admin_only=True,
           event="compute_rebuild_instance", api_keys=("evacuate",),
           on_complete=_EVACUATED, on_fail=_EVACUATION_FAILED,
           doc="admin: rebuilt from its image on another host, its own host being down;"
               " any task in flight there is abandoned"),
    Action("evacuate_stopped", "evacuate", "evacuate", vm_states=_states(ACTIVE, STOPPED, ERROR),
           task_states=ANY, steps=(REBUILDING, REBUILD_BLOCK_DEVICE_MAPPING, REBUILD_SPAWNING),
           success=STOPPED, failure=ERROR, rollback=ERROR, checks_lock=False, admin_only=True,
           event="compute_rebuild_instance", variant_of="evacuate",
           on_complete=_EVACUATED, on_fail=_EVACUATION_FAILED,
           doc="an evacuate from microversion 2.95: the server is left stopped"),
    Action("resize", "resize", "resize", vm_states=_states(ACTIVE, STOPPED), task_states=IDLE,
           steps=(RESIZE_PREP, RESIZE_MIGRATING, RESIZE_MIGRATED, RESIZE_FINISH),
           success=RESIZED, failure=ERROR, rollback=SAME, stashes_vm_state=True,
           event="compute_resize_instance", api_keys=("resize",),
           on_complete=_RESIZE_FINISHED,
           on_fail={**_MIGRATION_FAILED, "old_vm_state": None, **_MOVE_ENDED},
           story="resize to flavor {flavor[name]}", acts_on="destination",
           doc="new flavor, on its own host or another the scheduler picks; waits in"
               " VERIFY_RESIZE for confirm, revert or the deadline"),
    Action("migrate", "migrate", "migrate", vm_states=_states(ACTIVE, STOPPED),
           task_states=IDLE,
           steps=(RESIZE_PREP, RESIZE_MIGRATING, RESIZE_MIGRATED, RESIZE_FINISH),
           success=RESIZED, failure=ERROR, rollback=SAME, stashes_vm_state=True,
           admin_only=True, event="compute_resize_instance", api_keys=("migrate",),
           on_complete=_RESIZE_FINISHED,
           on_fail={**_MIGRATION_FAILED, "old_vm_state": None, **_MOVE_ENDED},
           story="migrate it to {dest_host}", acts_on="destination",
           doc="admin: cold migration, a resize to the same flavor on another host: the"
               " destination prepares, the source powers the guest off and sends its"
               " disk, the destination defines it; VERIFY_RESIZE as a resize"),
    Action("live_migrate", "os-migrateLive", "live-migration",
           vm_states=_states(ACTIVE, PAUSED), task_states=IDLE, steps=(MIGRATING,),
           success=SAME, failure=ERROR, rollback=SAME, admin_only=True,
           event="compute_live_migration", api_keys=("os-migrateLive",),
           on_complete={"host": Field("migration_dest", skip_empty=True),
                        "migration_status": "completed", **_MOVE_ENDED},
           on_fail={"migration_status": "failed", **_MOVE_ENDED},
           story="live-migrate it to {dest_host}", acts_on="destination",
           doc="admin: the running guest moves to another host and keeps running: the"
               " destination prepares, the source sends, the destination takes it over"),
    Action("confirm_resize", "confirmResize", "confirmResize", vm_states=_states(RESIZED),
           task_states=IDLE, steps=(), success=STASHED, failure=ERROR, rollback=ERROR,
           needs_finished_resize=True, acts_on="source",
           event="compute_confirm_resize", api_keys=("confirmResize",),
           on_complete={"migration_status": "confirmed", **_SETTLED_RESIZE},
           on_fail=_MIGRATION_FAILED,
           timer_story="the timer confirmed the resize automatically: its confirmation"
                       " deadline had passed",
           timer_reason="resize confirmation",
           doc="drop the old definition; no task_state is shown while it runs"),
    Action("revert_resize", "revertResize", "revertResize", vm_states=_states(RESIZED),
           task_states=IDLE, steps=(RESIZE_REVERTING,), success=STASHED, failure=ERROR,
           rollback=ERROR, needs_finished_resize=True,
           event="compute_revert_resize", api_keys=("revertResize",),
           on_complete={"migration_status": "reverted",
                        "host": Field("migration_source", skip_empty=True),
                        **_SETTLED_RESIZE, "flavor": Field("old_flavor", skip_empty=True)},
           on_fail=_MIGRATION_FAILED, doc="restore the old flavor"),
    Action("pause", "pause", "pause", vm_states=_states(ACTIVE), task_states=IDLE,
           steps=(PAUSING,), success=PAUSED, failure=SAME, rollback=SAME,
           event="compute_pause_instance", api_keys=("pause",)),
    Action("unpause", "unpause", "unpause", vm_states=_states(PAUSED), task_states=IDLE,
           steps=(UNPAUSING,), success=ACTIVE, failure=SAME, rollback=SAME,
           event="compute_unpause_instance", api_keys=("unpause",)),
    Action("suspend", "suspend", "suspend", vm_states=_states(ACTIVE), task_states=IDLE,
           steps=(SUSPENDING,), success=SUSPENDED, failure=ERROR, rollback=SAME,
           event="compute_suspend_instance", api_keys=("suspend",)),
    Action("resume", "resume", "resume", vm_states=_states(SUSPENDED), task_states=IDLE,
           steps=(RESUMING,), success=ACTIVE, failure=ERROR, rollback=SAME,
           event="compute_resume_instance", api_keys=("resume",)),
    Action("stop", "stop", "stop", vm_states=_states(ACTIVE, ERROR), task_states=IDLE,
           steps=(POWERING_OFF,), success=STOPPED, failure=SAME, rollback=SAME,
           event="compute_stop_instance", api_keys=("os-stop",),
           doc="graceful shutdown with a timeout, then power off"),
    Action("start", "start", "start", vm_states=_states(STOPPED), task_states=IDLE,
           steps=(POWERING_ON,), success=ACTIVE, failure=SAME, rollback=SAME,
           event="compute_start_instance", api_keys=("os-start",)),
    Action("create_image", "createImage", "createImage",
           vm_states=_states(ACTIVE, STOPPED, PAUSED, SUSPENDED), task_states=IDLE,
           steps=(IMAGE_SNAPSHOT, IMAGE_SNAPSHOT_PENDING, IMAGE_PENDING_UPLOAD,
                  IMAGE_UPLOADING),
           success=SAME, failure=SAME, rollback=SAME,
           event="compute_snapshot_instance", api_keys=("createImage",),
           story="snapshot it as {name!r}",
           doc="snapshot the disk into a new image; the status does not change"),
    Action("rescue", "rescue", "rescue", vm_states=_states(ACTIVE, STOPPED, ERROR),
           task_states=IDLE, steps=(RESCUING,), success=RESCUED, failure=ERROR,
           rollback=SAME,
           event="compute_rescue_instance", api_keys=("rescue",),
           story="rescue it with image {image_name}",
           doc="boot a rescue image with the server's own disk attached as the second"),
    Action("unrescue", "unrescue", "unrescue", vm_states=_states(RESCUED), task_states=IDLE,
           steps=(UNRESCUING,), success=ACTIVE, failure=ERROR, rollback=SAME,
           event="compute_unrescue_instance", api_keys=("unrescue",),
           doc="boot the server's own disk again"),
    Action("trigger_crash_dump", "trigger_crash_dump", "trigger_crash_dump",
           vm_states=_states(ACTIVE, PAUSED, RESCUED, RESIZED, ERROR), task_states=IDLE,
           steps=(), success=SAME, failure=SAME, rollback=SAME,
           event="compute_trigger_crash_dump", api_keys=("trigger_crash_dump",),
           doc="an NMI to the guest, whose kernel dumps and restarts if it is set to;"
               " no task_state is shown"),
    Action("create_backup", "createBackup", "createBackup",
           vm_states=_states(ACTIVE, STOPPED, PAUSED, SUSPENDED), task_states=IDLE,
           steps=(IMAGE_BACKUP, IMAGE_PENDING_UPLOAD, IMAGE_UPLOADING),
           success=SAME, failure=SAME, rollback=SAME,
           event="compute_backup_instance", api_keys=("createBackup",),
           story="back it up as {name!r} ({backup_type:or no} type, keeping the newest"
                 " {rotation})",
           doc="snapshot into a backup image, then keep only the newest `rotation`"
               " backups of its type"),
    Action("shelve", "shelve", "shelve", vm_states=_states(ACTIVE, STOPPED, PAUSED, SUSPENDED),
           task_states=IDLE,
           steps=(SHELVING, SHELVING_IMAGE_PENDING_UPLOAD, SHELVING_IMAGE_UPLOADING),
           success=SHELVED, failure=ERROR, rollback=SAME,
           event="compute_shelve_instance", api_keys=("shelve",), on_complete=_SHELVED,
           story="shelve it (saved as {name!r})",
           doc="power off and snapshot the disk into a '<name>-shelved' image; the guest"
               " stays defined (a shelved offload time other than 0)"),
    Action("shelve_and_offload", "shelve", "shelve",
           vm_states=_states(ACTIVE, STOPPED, PAUSED, SUSPENDED), task_states=IDLE,
           steps=(SHELVING, SHELVING_IMAGE_PENDING_UPLOAD, SHELVING_IMAGE_UPLOADING,
                  SHELVING_OFFLOADING),
           success=SHELVED_OFFLOADED, failure=ERROR, rollback=SAME,
           event="compute_shelve_instance", variant_of="shelve", on_complete=_SHELVED,
           story="shelve it (saved as {name!r}, then remove it from the host)",
           doc="a shelve when the shelved offload time is 0 (the default, as Nova): the"
               " guest is removed in the same action"),
    Action("shelve_offload", "shelveOffload", "shelveOffload", vm_states=_states(SHELVED),
           task_states=IDLE, steps=(SHELVING_OFFLOADING,), success=SHELVED_OFFLOADED,
           failure=ERROR, rollback=SAME, admin_only=True,
           event="compute_shelve_offload_instance", api_keys=("shelveOffload",),
           timer_story="the timer removed the shelved server from its host: it had been"
                       " shelved for the shelved offload time",
           timer_reason="offload of the shelved server",
           doc="admin: remove a shelved guest from the hypervisor"),
    Action("unshelve", "unshelve", "unshelve", vm_states=_states(SHELVED, SHELVED_OFFLOADED),
           task_states=IDLE, steps=(UNSHELVING, SPAWNING), success=ACTIVE, failure=ERROR,
           rollback=SAME,
           event="compute_unshelve_instance", api_keys=("unshelve",),
           on_complete={"launched_at": NOW, "shelved_image_id": None},
           doc="power the shelved guest on, or spawn it again from its shelved image"),
    Action("delete", "delete", "delete", vm_states=ANY, task_states=ANY, steps=(DELETING,),
           success=DELETED, failure=ERROR, rollback=ERROR, needs_launched=False,
           event="compute_terminate_instance", api_keys=("forceDelete",),
           on_complete={"terminated_at": NOW, "migration_status": None,
                        "confirm_deadline": None, "migration_source": CLEAR,
                        **_MOVE_ENDED},
           timer_story="the timer deleted the soft-deleted server: it had been kept for the"
                       " reclaim interval",
           timer_reason="reclaim of the soft-deleted server",
           doc="allowed in any state; a repeated delete while deleting is ignored"),
    Action("soft_delete", "delete", "delete", vm_states=ANY, task_states=ANY,
           steps=(SOFT_DELETING,), success=SOFT_DELETED, failure=ERROR, rollback=ERROR,
           event="compute_soft_delete_instance", variant_of="delete",
           doc="a delete when the reclaim interval is above 0 (Nova's"
               " reclaim_instance_interval): the guest is powered off, kept until restored,"
               " force-deleted or reclaimed"),
    Action("restore", "restore", "restore", vm_states=_states(SOFT_DELETED),
           task_states=IDLE, steps=(RESTORING,), success=ACTIVE, failure=ERROR,
           rollback=SAME, event="compute_restore_instance", api_keys=("restore",),
           doc="undo a soft delete: the guest is powered on"),
    Action("update_metadata", "update_metadata", "", vm_states=_METADATA_STATES,
           task_states=IDLE, asynchronous=False,
           doc="set or replace metadata items (no instance action is recorded)"),
    Action("delete_metadata", "delete_metadata", "", vm_states=_METADATA_STATES,
           task_states=IDLE, asynchronous=False, doc="delete a metadata item"),
    *(Action(name, api_name, "", vm_states=_TAG_STATES, task_states=IDLE,
             asynchronous=False, checks_lock=False, needs_launched=False, doc=doc)
      for name, api_name, doc in (
          ("update_tag", "update tag", "add one tag (no instance action is recorded)"),
          ("update_tags", "update tags", "replace every tag"),
          ("delete_tag", "delete tag", "remove one tag"),
          ("delete_tags", "delete tags", "remove every tag"))),
    Action("lock", "lock", "lock", vm_states=ANY, task_states=ANY, asynchronous=False,
           checks_lock=False, needs_launched=False, event="api_lock", api_keys=("lock",),
           doc="no state checks at all"),
    Action("unlock", "unlock", "unlock", vm_states=ANY, task_states=ANY, asynchronous=False,
           checks_lock=False, needs_launched=False, event="api_unlock",
           api_keys=("unlock",)),
    Action("reset_state", "os-resetState", "resetState", vm_states=ANY, task_states=ANY,
           asynchronous=False, checks_lock=False, needs_launched=False, admin_only=True,
           success=ACTIVE, api_keys=("os-resetState",),
           doc="admin: set vm_state active or error, clear task_state"),
)}

#: keys of a ``POST /servers/{id}/action`` body that request no lifecycle action (no
#: row): what each does instead
NON_LIFECYCLE_KEYS: dict[str, str] = {
    "os-getConsoleOutput": "reads the guest's console log; the server does not change",
}


class UnknownAction(LookupError):
    """A name that is no row of the lifecycle table (a bug, or a log from elsewhere)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown action {name!r}: the lifecycle table"
                         " (vmledger/domain/lifecycle.py) has no row of this name")
        self.name = name


def row(name: str) -> Action:
    """The table's row for an action name; :class:`UnknownAction` when there is none."""
    try:
        return ACTIONS[name]
    except KeyError:
        raise UnknownAction(name) from None

def acting_host(action: str | None, host: str | None, params: Mapping[str, Any] | None,
                migration_source: str | None, handed_to: str | None = None) -> str | None:
    """Whose host agent enacts the action in flight now: the host it was handed to by
    the last step (``handed_to``), else the host its row's ``acts_on`` names, else the
    server's own ``host``."""
    if handed_to:
        return handed_to
    row_ = ACTIONS.get(action or "")
    if row_ is not None and row_.acts_on == "destination":
        return str((params or {}).get("dest_host") or host or "") or None
    if row_ is not None and row_.acts_on == "source":
        return migration_source or host
    return host


#: every task_state the table can set
TASK_STATES: tuple[str, ...] = tuple(dict.fromkeys(
    itertools.chain.from_iterable(a.steps for a in ACTIONS.values())
))

# --- the machine -------------------------------------------------------------------
NEW = "new"


def state_name(vm_state: str, task_state: str | None) -> str:
    """The composite machine state for a (vm_state, task_state) pair."""
    return vm_state if task_state is None else f"{vm_state}/{task_state}"


def split_state(name: str) -> tuple[str, str | None]:
    vm_state, _, task_state = name.partition("/")
    return vm_state, task_state or None


def _end_for(rule: str | Mapping[str, str], start: str, stashed: str) -> str:
    if isinstance(rule, Mapping):
        return rule.get(start, start)
    if rule == SAME:
        return start
    if rule == STASHED:
        return stashed
    return rule


def _allowed_sources(action: Action) -> Iterable[tuple[str, str | None]]:
    if action.name == "create":
        return []
    vm_states = action.vm_states if action.vm_states is not None else set(VM_STATES) - {DELETED}
    task_states: Iterable[str | None] = (
        action.task_states if action.task_states is not None else (None, *TASK_STATES)
    )
    return itertools.product(sorted(vm_states), sorted(task_states, key=lambda t: t or ""))


def _stash_is(value: str) -> Any:
    def condition(*_args: Any, stashed: str = ACTIVE, **_kw: Any) -> bool:
        return stashed == value

    condition.__name__ = f"stashed_{value}"
    return condition


def _build_transitions() -> list[dict[str, Any]]:
    transitions: list[dict[str, Any]] = []
    for action in ACTIONS.values():
        first = action.steps[0] if action.steps else None
        # request: accepted by the guard
        sources = [(NEW, None)] if action.name == "create" else list(_allowed_sources(action))
        for vm_state, task_state in sources:
            start = BUILDING if action.name == "create" else vm_state
            dest = state_name(start, first) if action.asynchronous else None
            if action.asynchronous:
                transitions.append({"trigger": f"request:{action.name}",
                                    "source": state_name(vm_state, task_state), "dest": dest})
            elif action.name == "reset_state":
                for target in (ACTIVE, ERROR):
                    transitions.append({
                        "trigger": f"request:{action.name}",
                        "source": state_name(vm_state, task_state), "dest": target,
                        "conditions": [_target_is(target)],
                    })
            else:  # lock/unlock: no state change
                transitions.append({"trigger": f"request:{action.name}",
                                    "source": state_name(vm_state, task_state),
                                    "dest": state_name(vm_state, task_state)})
        if not action.asynchronous:
            continue
        # the in-flight states this action passes through, per starting vm_state
        starts = {BUILDING} if action.name == "create" else {vm for vm, _ in sources}
        for start in sorted(starts):
            in_flight = [state_name(start, step) for step in action.steps] or [start]
            for earlier, later in itertools.pairwise(in_flight):
                transitions.append({"trigger": f"advance:{action.name}",
                                    "source": earlier, "dest": later})
            for outcome, rule in (("complete", action.success), ("fail", action.failure),
                                  ("rollback", action.rollback)):
                stash_values = (ACTIVE, STOPPED) if rule == STASHED else (ACTIVE,)
                for stashed in stash_values:
                    end = _end_for(rule, start, stashed)
                    for source in in_flight:
                        transitions.append({
                            "trigger": f"{outcome}:{action.name}", "source": source,
                            "dest": end,
                            "conditions": [_stash_is(stashed)] if rule == STASHED else [],
                        })
    return transitions


def _target_is(value: str) -> Any:
    def condition(*_args: Any, target: str = ACTIVE, **_kw: Any) -> bool:
        return target == value

    condition.__name__ = f"target_{value}"
    return condition


def _all_states() -> list[str]:
    names = [NEW, *VM_STATES]
    names += [state_name(vm, t) for vm in VM_STATES for t in TASK_STATES]
    return names


#: The rulebook. Never bind a model to it: check with a stand-in (see ``_StandIn``).
MACHINE = Machine(model=None, states=_all_states(), transitions=_build_transitions(),
                  initial=None, auto_transitions=False, model_attribute="state",
                  send_event=False)


class _StandIn:
    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


class NotAllowed(Exception):
    """The machine has no such transition (used for outcomes, not user refusals)."""


#: what :func:`fire` answered, by its arguments: the machine and its conditions (pure
#: functions of the arguments) never change, and a command fires it once or twice
_FIRED: dict[tuple[Any, ...], tuple[str, str | None] | NotAllowed] = {}
#: the questions are few (triggers x states x targets); a bound all the same
_FIRED_MAX = 20_000


def fire(trigger: str, vm_state: str, task_state: str | None, **kwargs: Any
         ) -> tuple[str, str | None]:
    """Run ``trigger`` on the machine from (vm_state, task_state); return the new pair
    (worked out by the machine once per distinct question, then remembered)."""
    key = (trigger, vm_state, task_state, *sorted(kwargs.items()))
    try:
        found = _FIRED.get(key)
    except TypeError:  # an unhashable argument: ask the machine every time
        return _fire(trigger, vm_state, task_state, **kwargs)
    if found is None:
        try:
            found = _fire(trigger, vm_state, task_state, **kwargs)
        except NotAllowed as refused:
            found = refused
        if len(_FIRED) < _FIRED_MAX:
            _FIRED[key] = found
    if isinstance(found, NotAllowed):
        raise NotAllowed(*found.args) from None
    return found


def _fire(trigger: str, vm_state: str, task_state: str | None, **kwargs: Any
          ) -> tuple[str, str | None]:
    stand_in = _StandIn(NEW if vm_state == NEW else state_name(vm_state, task_state))
    event = MACHINE.events.get(trigger)
    if event is None:
        raise NotAllowed(f"no trigger {trigger!r}")
    try:
        ok = event.trigger(stand_in, **kwargs)
    except MachineError as e:
        raise NotAllowed(str(e.value)) from None
    if not ok:
        raise NotAllowed(f"{trigger} rejected by a condition in {stand_in.state}")
    return split_state(stand_in.state)


# --- the guard ---------------------------------------------------------------------
@dataclass(frozen=True)
class Subject:
    """What the guard needs to know about a server."""

    server_id: str
    vm_state: str
    task_state: str | None
    launched: bool
    locked: bool
    migration_status: str | None = None


def check(action_name: str, server: Subject, *, is_admin: bool = False,
          target: str = ACTIVE) -> tuple[str, str | None]:
    """Decide a request as Nova does; return the new (vm_state, task_state) or raise.

    Order of checks (Nova's): policy (403), lock (409), vm_state, task_state and
    launched_at (409), then operation-specific checks (400).
    """
    action = ACTIONS[action_name]
    if action.admin_only and not is_admin:
        raise Forbidden(f"Policy doesn't allow os_compute_api:{action.api_name} "
                        "to be performed.")
    if action.checks_lock and server.locked and not is_admin:
        raise Locked(server.server_id)
    if action.vm_states is not None and server.vm_state not in action.vm_states:
        raise InvalidState(action.api_name, server.server_id, "vm_state", server.vm_state)
    if server.vm_state == DELETED:
        raise InvalidState(action.api_name, server.server_id, "vm_state", server.vm_state)
    if action.task_states is not None and server.task_state not in action.task_states:
        raise InvalidState(action.api_name, server.server_id, "task_state", server.task_state)
    if action.needs_launched and not server.launched:
        raise InvalidState(action.api_name, server.server_id, "launched_at", None)
    if action.needs_finished_resize and server.migration_status != "finished":
        raise BadRequest("Instance has not been resized.")
    try:
        return fire(f"request:{action_name}", server.vm_state, server.task_state,
                    target=target)
    except NotAllowed:  # pragma: no cover - the table and the checks above agree
        raise InvalidState(action.api_name, server.server_id, "vm_state",
                           server.vm_state) from None


def may(action_name: str, vm_state: str, task_state: str | None) -> bool:
    """Whether the machine has a request transition from this state (no other checks)."""
    try:
        fire(f"request:{action_name}", vm_state, task_state)
    except NotAllowed:
        return False
    return True


def outcome(kind: str, action_name: str, vm_state: str, task_state: str | None, *,
            stashed: str | None = None) -> tuple[str, str | None]:
    """The state after an agent outcome: kind is advance, complete, fail or rollback."""
    return fire(f"{kind}:{action_name}", vm_state, task_state, stashed=stashed or ACTIVE)
