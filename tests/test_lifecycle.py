"""The lifecycle table: the guard decides exactly what the table says, the status map is
Nova's, refusals carry Nova's messages, and the committed diagram matches the table."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.oracle import expected_refusal
from vmledger.domain import diagram
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as st
from vmledger.domain.errors import BadRequest, InvalidState, Locked

TASKS: list[str | None] = [None, *lc.TASK_STATES]


@pytest.mark.parametrize("name", [n for n in lc.ACTIONS if n != "create"])
def test_guard_decides_exactly_what_the_table_says(name: str) -> None:
    action = lc.ACTIONS[name]
    for vm, task, locked, launched, admin, migration in itertools.product(
            lc.VM_STATES, TASKS, (False, True), (False, True), (False, True),
            (None, "finished")):
        s = lc.Subject("s1", vm, task, launched=launched, locked=locked,
                       migration_status=migration)
        refusal = expected_refusal(action, s, admin)
        if refusal is None:
            vm2, task2 = lc.check(name, s, is_admin=admin)
            if action.asynchronous:
                assert task2 == (action.steps[0] if action.steps else None)
                assert vm2 == vm
        else:
            with pytest.raises(refusal):
                lc.check(name, s, is_admin=admin)


def test_refusals_carry_novas_messages() -> None:
    stopped = lc.Subject("abc", lc.STOPPED, None, launched=True, locked=False)
    with pytest.raises(InvalidState) as e:
        lc.check("stop", stopped)
    assert e.value.message == "Cannot 'stop' instance abc while it is in vm_state stopped"
    with pytest.raises(InvalidState) as e:
        lc.check("reboot_soft", stopped)
    assert e.value.message == "Cannot 'reboot' instance abc while it is in vm_state stopped"
    busy = lc.Subject("abc", lc.ACTIVE, lc.POWERING_OFF, launched=True, locked=False)
    with pytest.raises(InvalidState) as e:
        lc.check("pause", busy)
    assert e.value.message == ("Cannot 'pause' instance abc while it is in task_state "
                               "powering-off")
    never = lc.Subject("abc", lc.ERROR, None, launched=False, locked=False)
    with pytest.raises(InvalidState) as e:
        lc.check("rebuild", never)
    assert e.value.message == "Cannot 'rebuild' instance abc while it is in launched_at None"
    locked = lc.Subject("abc", lc.ACTIVE, None, launched=True, locked=True)
    with pytest.raises(Locked) as e2:
        lc.check("stop", locked)
    assert e2.value.message == "Instance abc is locked"
    assert e2.value.code == 409
    lc.check("stop", locked, is_admin=True)  # admins bypass the lock
    resized = lc.Subject("abc", lc.RESIZED, None, launched=True, locked=False,
                         migration_status="confirming")
    with pytest.raises(BadRequest) as e3:
        lc.check("confirm_resize", resized)
    assert e3.value.message == "Instance has not been resized."


def test_nova_facts_hold_in_the_table() -> None:
    # hard reboot is the recovery path and may override a soft reboot or pause in flight
    for vm in (lc.ACTIVE, lc.STOPPED, lc.PAUSED, lc.SUSPENDED, lc.ERROR):
        assert lc.may("reboot_hard", vm, None)
    assert lc.may("reboot_hard", lc.ACTIVE, lc.REBOOTING)
    assert lc.may("reboot_hard", lc.ACTIVE, lc.PAUSING)
    assert not lc.may("reboot_hard", lc.ACTIVE, lc.REBOOT_PENDING_HARD)
    assert not lc.may("reboot_hard", lc.ACTIVE, lc.REBOOT_STARTED_HARD)
    assert not lc.may("reboot_soft", lc.ACTIVE, lc.REBOOTING)
    # stop is allowed from ERROR, delete from anywhere, lock with no state check
    assert lc.may("stop", lc.ERROR, None)
    assert lc.may("delete", lc.ACTIVE, lc.RESIZE_MIGRATING)
    assert lc.may("lock", lc.BUILDING, lc.SPAWNING)
    # VERIFY_RESIZE allows confirm, revert and delete only (besides lock, unlock, reset,
    # a crash dump and metadata changes, which Nova allows in RESIZED)
    allowed = {n for n in lc.ACTIONS if n != "create" and lc.may(n, lc.RESIZED, None)}
    assert allowed == {"confirm_resize", "revert_resize", "delete", "soft_delete", "lock",
                       "unlock", "reset_state", "update_metadata", "delete_metadata",
                       "trigger_crash_dump"}
    # RESCUE allows unrescue, delete, lock, unlock, reset and a crash dump
    allowed = {n for n in lc.ACTIONS if n != "create" and lc.may(n, lc.RESCUED, None)}
    assert allowed == {"unrescue", "delete", "soft_delete", "lock", "unlock", "reset_state",
                       "trigger_crash_dump"}
    # SOFT_DELETED: restore, or a delete (the service makes it a real one)
    allowed = {n for n in lc.ACTIONS if n != "create" and lc.may(n, lc.SOFT_DELETED, None)}
    assert allowed == {"restore", "delete", "soft_delete", "lock", "unlock", "reset_state"}
    # metadata: not while building, in ERROR or with a task in flight
    assert lc.may("update_metadata", lc.STOPPED, None)
    assert not lc.may("update_metadata", lc.ERROR, None)
    assert not lc.may("update_metadata", lc.ACTIVE, lc.REBOOTING)


def test_outcomes_follow_the_table() -> None:
    assert lc.outcome("complete", "rebuild", lc.STOPPED, lc.REBUILD_SPAWNING) == (lc.STOPPED,
                                                                                  None)
    assert lc.outcome("complete", "rebuild", lc.ERROR, lc.REBUILD_SPAWNING) == (lc.ACTIVE, None)
    assert lc.outcome("complete", "reboot_hard", lc.STOPPED, lc.REBOOT_STARTED_HARD) == (
        lc.ACTIVE, None)
    assert lc.outcome("complete", "confirm_resize", lc.RESIZED, None,
                      stashed=lc.STOPPED) == (lc.STOPPED, None)
    assert lc.outcome("complete", "revert_resize", lc.RESIZED, lc.RESIZE_REVERTING,
                      stashed=lc.ACTIVE) == (lc.ACTIVE, None)
    assert lc.outcome("fail", "pause", lc.ACTIVE, lc.PAUSING) == (lc.ACTIVE, None)
    assert lc.outcome("fail", "resize", lc.ACTIVE, lc.RESIZE_PREP) == (lc.ERROR, None)
    assert lc.outcome("rollback", "resize", lc.STOPPED, lc.RESIZE_FINISH) == (lc.STOPPED, None)
    with pytest.raises(lc.NotAllowed):  # an outcome needs its action in flight
        lc.outcome("complete", "pause", lc.PAUSED, None)


@pytest.mark.parametrize(("vm", "task", "status"), [
    (lc.ACTIVE, None, "ACTIVE"), (lc.ACTIVE, lc.POWERING_OFF, "ACTIVE"),
    (lc.ACTIVE, lc.REBOOT_PENDING, "REBOOT"), (lc.ACTIVE, lc.REBOOTING_HARD, "HARD_REBOOT"),
    (lc.STOPPED, lc.REBOOTING_HARD, "SHUTOFF"), (lc.STOPPED, lc.RESIZE_PREP, "RESIZE"),
    (lc.STOPPED, lc.POWERING_ON, "SHUTOFF"), (lc.RESIZED, None, "VERIFY_RESIZE"),
    (lc.RESIZED, lc.RESIZE_REVERTING, "REVERT_RESIZE"), (lc.ERROR, lc.REBUILDING, "REBUILD"),
    (lc.PAUSED, lc.UNPAUSING, "PAUSED"), (lc.BUILDING, lc.SPAWNING, "BUILD"),
    (lc.SUSPENDED, lc.DELETING, "SUSPENDED"), ("no-such-state", None, "UNKNOWN"),
])
def test_status_map_is_novas(vm: str, task: str | None, status: str) -> None:
    assert st.status_of(vm, task) == status


def test_every_reachable_pair_has_a_nova_status() -> None:
    for vm, task in itertools.product(lc.VM_STATES, TASKS):
        assert st.status_of(vm, task) in st.STATUSES


def test_status_filter_inverts_the_map() -> None:
    assert (lc.ACTIVE, None) in st.states_for_status("ACTIVE")
    assert set(st.states_for_status("REBOOT")) == {
        (lc.ACTIVE, lc.REBOOTING), (lc.ACTIVE, lc.REBOOT_PENDING), (lc.ACTIVE, lc.REBOOT_STARTED)}
    resize = set(st.states_for_status("RESIZE"))
    assert (lc.STOPPED, lc.RESIZE_PREP) in resize and (lc.ACTIVE, lc.RESIZE_FINISH) in resize
    assert st.states_for_status("NOT-A-STATUS") == []


def test_committed_diagram_matches_the_table() -> None:
    committed = (Path(__file__).parent.parent / "docs" / "lifecycle.md").read_text()
    assert committed == diagram.document(), (
        "docs/lifecycle.md is stale: run python -m vmledger.domain.diagram > docs/lifecycle.md")
