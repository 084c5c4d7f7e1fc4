"""Each action is declared once, in its lifecycle row: the row's facts (API keys, Nova's
instance-action and event names, what an outcome changes, how the ledger tells it) agree
with each other and with the API's parsers; the outcome events record exactly what the
rows declare; and an action name no row has fails loudly wherever it is read."""

from __future__ import annotations

import string
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vmledger import FakeClock, Simulator
from vmledger.api.server_actions import ACTION_PARSERS
from vmledger.domain import lifecycle as lc
from vmledger.domain.changes import Field
from vmledger.domain.server import Context, Server
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"
ASYNCHRONOUS = [a for a in lc.ACTIONS.values() if a.asynchronous]


# --- the rows agree with each other ---------------------------------------------------

@pytest.mark.parametrize("action", ASYNCHRONOUS, ids=lambda a: a.name)
def test_every_asynchronous_row_names_its_instance_action_and_event(action: lc.Action
                                                                    ) -> None:
    assert action.instance_action, "os-instance-actions needs the action's Nova name"
    assert action.event, "the host agent's work is shown as this instance-action event"


def test_a_row_without_an_instance_action_records_no_event() -> None:
    silent = [a for a in lc.ACTIONS.values() if not a.instance_action]
    assert {a.name for a in silent} == {"update_metadata", "delete_metadata", "update_tag",
                                        "update_tags", "delete_tag", "delete_tags"}
    assert all(not a.event and not a.api_keys for a in silent)


def test_api_keys_are_unique_across_rows_and_variants_have_none() -> None:
    owners: dict[str, str] = {}
    for action in lc.ACTIONS.values():
        for key in action.api_keys:
            assert key not in owners, f"{key!r} is declared by {owners[key]} and {action.name}"
            owners[key] = action.name
        if action.variant_of is not None:
            assert not action.api_keys, f"{action.name} is requested as {action.variant_of}"
            parent = lc.row(action.variant_of)
            assert parent.variant_of is None
            assert parent.instance_action == action.instance_action
            assert parent.asynchronous and action.asynchronous
    assert owners["forceDelete"] == "delete"
    assert owners["os-resetState"] == "reset_state"


def test_every_api_action_key_is_a_row_or_a_declared_non_lifecycle_key() -> None:
    declared = {key for a in lc.ACTIONS.values() for key in a.api_keys}
    for key in ACTION_PARSERS:
        assert key in declared or key in lc.NON_LIFECYCLE_KEYS, (
            f"POST /servers/{{id}}/action {{{key!r}: …}} has a parser but no row declares it")
    assert declared <= set(ACTION_PARSERS), "a row declares an API key nobody parses"
    assert set(lc.NON_LIFECYCLE_KEYS) <= set(ACTION_PARSERS)
    assert not declared & set(lc.NON_LIFECYCLE_KEYS)


def test_outcome_changes_name_fields_of_the_server() -> None:
    fields = set(Server.__annotations__)
    for action in lc.ACTIONS.values():
        changes = {**action.on_complete, **action.on_fail}
        if changes:
            assert action.asynchronous, f"{action.name} has no outcome to change anything"
        for name, change in changes.items():
            assert name in fields, f"{action.name} changes {name!r}, no field of a server"
            if isinstance(change, Field):
                assert change.name in fields


def test_ledger_stories_and_timer_texts_are_well_formed() -> None:
    for action in lc.ACTIONS.values():
        # a story names only parameters (no positional fields)
        for _, name, _, _ in string.Formatter().parse(action.story):
            assert name is None or (name and not name[0].isdigit()), action.name
        assert bool(action.timer_story) == bool(action.timer_reason), action.name


def test_an_unknown_name_is_refused_with_its_name() -> None:
    with pytest.raises(lc.UnknownAction, match="unknown action 'frobnicate'"):
        lc.row("frobnicate")
    assert lc.row("reboot_hard") is lc.ACTIONS["reboot_hard"]


# --- the outcome events record what the rows declare ------------------------------------

AT = datetime(2026, 1, 2, tzinfo=UTC)
CTX = Context(request_id="req-1", user_id="alice", project_id="p1", is_admin=True)
SMALL = {"id": "2", "name": "m1.small"}
MEDIUM = {"id": "3", "name": "m1.medium"}


def _server(vm_state: str = lc.ACTIVE, **fields: Any) -> Server:
    """A launched server in ``vm_state``, as its history would have left it."""
    server = Server.request(
        id=uuid.uuid4(), ctx=CTX, at=AT, name="web", flavor=SMALL, image={"id": "i"},
        host="compute-1", metadata={}, description=None, key_name=None,
        availability_zone="nova", addresses={}, attributes={})
    server.complete(CTX, AT, power_state=1)
    server.vm_state = vm_state
    for name, value in fields.items():
        setattr(server, name, value)
    server.collect_events()
    return server


def _outcome(server: Server, action: str, *, fail: bool = False, **params: Any
             ) -> dict[str, Any]:
    server.request_action(action, CTX, AT, params=params)
    at = AT + timedelta(minutes=5)
    if fail:
        server.fail(CTX, at, power_state=1, rollback=False, message="boom")
    else:
        server.complete(CTX, at, power_state=1, confirm_window=timedelta(hours=1))
    changes: dict[str, Any] = server.collect_events()[-1].changes  # type: ignore[attr-defined]
    return changes


LATER = AT + timedelta(minutes=5)


def test_successes_record_the_declared_changes_in_the_declared_order() -> None:
    """The ``changes`` of each ActionCompleted, key order included (it is recorded)."""
    cases: list[tuple[Server, str, dict[str, Any], dict[str, Any]]] = [
        (_server(lc.ERROR), "rebuild", {}, {"launched_at": LATER}),
        (_server(), "resize", {"flavor": MEDIUM},
         {"old_flavor": SMALL, "flavor": MEDIUM, "migration_status": "finished",
          "launched_at": LATER, "confirm_deadline": LATER + timedelta(hours=1)}),
        (_server(lc.RESIZED, migration_status="finished", old_flavor=SMALL,
                 old_vm_state=lc.ACTIVE), "confirm_resize", {},
         {"migration_status": "confirmed", "old_flavor": None, "old_vm_state": None,
          "confirm_deadline": None}),
        (_server(lc.RESIZED, migration_status="finished", old_flavor=SMALL,
                 old_vm_state=lc.ACTIVE), "revert_resize", {},
         {"migration_status": "reverted", "old_flavor": None, "old_vm_state": None,
          "confirm_deadline": None, "flavor": SMALL}),
        # no old flavor to restore: the flavor is left as it is
        (_server(lc.RESIZED, migration_status="finished", old_flavor=None,
                 old_vm_state=lc.ACTIVE), "revert_resize", {},
         {"migration_status": "reverted", "old_flavor": None, "old_vm_state": None,
          "confirm_deadline": None}),
        (_server(), "delete", {},
         {"terminated_at": LATER, "migration_status": None, "confirm_deadline": None}),
        (_server(), "soft_delete", {}, {}),
        (_server(), "shelve", {"image_id": "img-1", "name": "web-shelved"},
         {"shelved_image_id": "img-1"}),
        (_server(), "shelve_and_offload", {"name": "web-shelved"},
         {"shelved_image_id": None}),
        (_server(lc.SHELVED_OFFLOADED, shelved_image_id="img-1"), "unshelve", {},
         {"launched_at": LATER, "shelved_image_id": None}),
        (_server(lc.STOPPED), "evacuate", {},
         {"launched_at": LATER, "migration_status": "done"}),
        (_server(), "evacuate_stopped", {},
         {"launched_at": LATER, "migration_status": "done"}),
        (_server(), "pause", {}, {}),
    ]
    for server, action, params, expected in cases:
        changes = _outcome(server, action, **params)
        assert list(changes.items()) == list(expected.items()), action


def test_resize_without_a_confirm_window_has_no_deadline() -> None:
    server = _server()
    server.request_action("resize", CTX, AT, params={"flavor": MEDIUM})
    server.complete(CTX, LATER, power_state=1)
    assert server.confirm_deadline is None and server.flavor == MEDIUM
    assert server.old_flavor == SMALL and server.migration_status == "finished"


def test_failures_record_the_declared_changes_in_the_declared_order() -> None:
    cases: list[tuple[Server, str, dict[str, Any]]] = [
        (_server(), "resize",
         {"migration_status": "error", "confirm_deadline": None, "old_vm_state": None}),
        (_server(lc.RESIZED, migration_status="finished"), "confirm_resize",
         {"migration_status": "error", "confirm_deadline": None}),
        (_server(lc.RESIZED, migration_status="finished"), "revert_resize",
         {"migration_status": "error", "confirm_deadline": None}),
        (_server(), "evacuate", {"migration_status": "failed"}),
        (_server(), "evacuate_stopped", {"migration_status": "failed"}),
        (_server(), "reboot_hard", {}),
    ]
    for server, action, expected in cases:
        params = {"flavor": MEDIUM} if action == "resize" else {}
        changes = _outcome(server, action, fail=True, **params)
        assert list(changes.items()) == list(expected.items()), action


def test_a_new_server_no_host_could_take_is_marked_unplaced_first() -> None:
    server = Server.request(
        id=uuid.uuid4(), ctx=CTX, at=AT, name="web", flavor=SMALL, image={"id": "i"},
        host="", metadata={}, description=None, key_name=None,
        availability_zone="nova", addresses={}, attributes={})
    server.fail(CTX, AT, power_state=0, rollback=False, message="No valid host",
                unplaced=True)
    assert server.collect_events()[-1].changes == {"unplaced": True}  # type: ignore[attr-defined]


# --- an unknown action name fails loudly where it is read ------------------------------

def _record_unknown(engine: Engine, sid: str, event: type[Server.Event], **fields: Any
                    ) -> None:
    """Write an event naming an action no row has, as a log from elsewhere might hold
    (in the request of the action in flight, if any)."""
    server = engine.service.get(uuid.UUID(sid))
    ctx = Context(request_id=server.pending_request_id or "req-elsewhere",
                  user_id="alice", project_id="p1")
    server.trigger_event(event, timestamp=engine.clock.now(), **ctx.fields(), **fields)
    engine.service.save(server)


def test_the_instance_actions_refuse_an_unknown_request() -> None:
    with Engine("memory", clock=FakeClock(), hypervisor=Simulator()) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        _record_unknown(engine, sid, Server.ActionRequested, action="frobnicate",
                        vm_state=lc.ACTIVE, task_state=None, params={}, changes={},
                        supersedes=None)
        with pytest.raises(lc.UnknownAction, match="'frobnicate'"):
            engine.updater.catch_up()
        with pytest.raises(lc.UnknownAction, match="'frobnicate'"):
            engine.explain(sid)


def test_the_instance_actions_refuse_an_unknown_step_instead_of_skipping_it() -> None:
    with Engine("memory", clock=FakeClock(), hypervisor=Simulator()) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        # a step of the create in flight, naming another action
        _record_unknown(engine, sid, Server.TaskAdvanced, action="frobnicate",
                        task_state=lc.NETWORKING)
        with pytest.raises(lc.UnknownAction, match="'frobnicate'"):
            engine.updater.catch_up()


def test_a_call_recorded_with_no_action_in_flight_still_folds() -> None:
    """Logs hold hypervisor calls made after a reset abandoned the action (no name)."""
    with Engine("memory", clock=FakeClock(), hypervisor=Simulator()) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        engine.reset_state(sid, "error")
        before = engine.instance_actions(sid)
        server = engine.service.get(uuid.UUID(sid))
        server.record_call(Context(request_id=before[-1]["request_id"], user_id=None,
                                   project_id=None, cause="agent"), engine.clock.now(),
                           host="compute-1", driver="simulator", call="spawn",
                           arguments={}, result=None, error=None, duration_ms=1.0)
        engine.service.save(server)
        engine.updater.catch_up()
        assert engine.instance_actions(sid) == before


# --- the ledger tells each request as its row says --------------------------------------

def test_the_ledger_tells_the_timers_reclaim_as_a_reclaim() -> None:
    clock = FakeClock()
    with Engine("memory", clock=clock, hypervisor=Simulator(),
                reclaim_interval=timedelta(hours=1)) as engine:
        sid = engine.create_server("web", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        engine.delete(sid)
        engine.run_until_idle()
        clock.advance(timedelta(hours=2))
        engine.run_until_idle()
        told = engine.explain(sid)
    assert any("the timer deleted the soft-deleted server: it had been kept for the"
               " reclaim interval" in line for line in told), told
    assert told[-1].startswith("Why: the automatic reclaim of the soft-deleted server by"
                               " the timer"), told[-1]
