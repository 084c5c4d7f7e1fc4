"""What the lifecycle table says about a request, read directly from a row's fields.

The tests compare the guard (which runs the transitions machine) against this reading.
"""

from __future__ import annotations

from vmledger.domain import lifecycle as lc
from vmledger.domain.errors import BadRequest, Forbidden, InvalidState, Locked


def expected_refusal(action: lc.Action, s: lc.Subject, admin: bool) -> type[Exception] | None:
    if action.admin_only and not admin:
        return Forbidden
    if action.checks_lock and s.locked and not admin:
        return Locked
    allowed_vm = action.vm_states if action.vm_states is not None else (
        set(lc.VM_STATES) - {lc.DELETED})
    if s.vm_state not in allowed_vm:
        return InvalidState
    if action.task_states is not None and s.task_state not in action.task_states:
        return InvalidState
    if action.needs_launched and not s.launched:
        return InvalidState
    if action.needs_finished_resize and s.migration_status != "finished":
        return BadRequest
    return None
