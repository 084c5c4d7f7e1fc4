"""The lifecycle through the embedding API, on SQLite and on a real PostgreSQL.

Each scenario is a sequence a user (or Tempest) runs, checked by what a user can see:
status, task_state, flavor, image, faults, the history.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.engines import counter_ids, counter_request_ids, make_engine
from vmledger import (
    BadRequest,
    Conflict,
    Engine,
    FakeClock,
    Forbidden,
    InvalidState,
    Locked,
    NotFound,
    Simulator,
)
from vmledger.adapters.hypervisor import PowerState

IMAGE = "cirros-0.6.2-x86_64"
IMAGE2 = "debian-12-genericcloud-amd64"


def active(engine: Engine, name: str = "web-1", flavor: str = "m1.small") -> str:
    server = engine.create_server(name, flavor=flavor, image=IMAGE)
    engine.run_until_idle()
    assert engine.get_server(server.id).status == "ACTIVE"
    return server.id


def settled(engine: Engine, server_id: str) -> tuple[str, str | None]:
    engine.run_until_idle()
    s = engine.get_server(server_id)
    return s.status, s.task_state


def test_create_builds_then_becomes_active(engine: Engine) -> None:
    server = engine.create_server("web-1", flavor="m1.small", image=IMAGE)
    assert (server.status, server.vm_state, server.task_state) == ("BUILD", "building",
                                                                  "scheduling")
    assert server.power_state == 0
    engine.run_until_idle()
    s = engine.get_server(server.id)
    assert (s.status, s.task_state, s.power_state) == ("ACTIVE", None, 1)
    assert s.launched_at is not None
    assert s.flavor["name"] == "m1.small"


def test_tempest_action_sequences(engine: Engine) -> None:
    sid = active(engine)
    engine.reboot(sid, hard=True)
    assert engine.get_server(sid).status == "HARD_REBOOT"
    assert settled(engine, sid) == ("ACTIVE", None)
    engine.reboot(sid)
    assert engine.get_server(sid).status == "REBOOT"
    assert settled(engine, sid) == ("ACTIVE", None)
    engine.pause(sid)
    assert settled(engine, sid) == ("PAUSED", None)
    engine.unpause(sid)
    assert settled(engine, sid) == ("ACTIVE", None)
    engine.suspend(sid)
    assert settled(engine, sid) == ("SUSPENDED", None)
    engine.resume(sid)
    assert settled(engine, sid) == ("ACTIVE", None)
    engine.stop(sid)
    s = engine.get_server(sid)
    assert (s.status, s.task_state) == ("ACTIVE", "powering-off")  # Nova keeps ACTIVE
    assert settled(engine, sid) == ("SHUTOFF", None)
    assert engine.get_server(sid).power_state == PowerState.SHUTDOWN
    engine.start(sid)
    assert settled(engine, sid) == ("ACTIVE", None)


def test_rebuild_changes_image_keeps_addresses_and_state(engine: Engine) -> None:
    sid = active(engine)
    before = engine.get_server(sid)
    engine.rebuild(sid, image=IMAGE2, name="web-1b", metadata={"role": "db"})
    during = engine.get_server(sid)
    assert during.status == "REBUILD" and during.image["name"] == IMAGE2
    assert settled(engine, sid) == ("ACTIVE", None)
    after = engine.get_server(sid)
    assert after.name == "web-1b" and after.doc["metadata"] == {"role": "db"}
    assert after.doc["addresses"] == before.doc["addresses"]
    engine.stop(sid)
    engine.run_until_idle()
    engine.rebuild(sid, image=IMAGE)
    assert settled(engine, sid) == ("SHUTOFF", None)


def test_resize_confirm_and_revert(engine: Engine) -> None:
    sid = active(engine)
    engine.resize(sid, flavor="m1.medium")
    assert engine.get_server(sid).status == "RESIZE"
    assert settled(engine, sid) == ("VERIFY_RESIZE", None)
    assert engine.get_server(sid).flavor["name"] == "m1.medium"
    engine.confirm_resize(sid)
    # Nova: a confirm does not change the state fields until the host has done it
    assert engine.get_server(sid).status == "VERIFY_RESIZE"
    with pytest.raises(BadRequest, match=r"Instance has not been resized\."):
        engine.confirm_resize(sid)
    assert settled(engine, sid) == ("ACTIVE", None)
    assert engine.get_server(sid).flavor["name"] == "m1.medium"

    engine.resize(sid, flavor="m1.large")
    engine.run_until_idle()
    engine.revert_resize(sid)
    assert engine.get_server(sid).status == "REVERT_RESIZE"
    assert settled(engine, sid) == ("ACTIVE", None)
    assert engine.get_server(sid).flavor["name"] == "m1.medium"


def test_resize_from_stopped_ends_stopped(engine: Engine) -> None:
    sid = active(engine)
    engine.stop(sid)
    engine.run_until_idle()
    engine.resize(sid, flavor="m1.medium")
    assert engine.get_server(sid).status == "RESIZE"
    assert settled(engine, sid) == ("VERIFY_RESIZE", None)
    assert engine.get_server(sid).power_state == PowerState.SHUTDOWN
    engine.confirm_resize(sid)
    assert settled(engine, sid) == ("SHUTOFF", None)
    engine.resize(sid, flavor="m1.large")
    engine.run_until_idle()
    engine.revert_resize(sid)
    assert settled(engine, sid) == ("SHUTOFF", None)
    engine.start(sid)
    assert settled(engine, sid) == ("ACTIVE", None)


def test_refusals_write_nothing(engine: Engine) -> None:
    sid = active(engine)
    before = len(engine.history(sid))
    with pytest.raises(InvalidState, match=f"Cannot 'unpause' instance {sid} while it is "
                                           "in vm_state active"):
        engine.unpause(sid)
    with pytest.raises(BadRequest, match="When resizing, instances must change flavor!"):
        engine.resize(sid, flavor="m1.small")
    with pytest.raises(BadRequest, match=r"Flavor 99 could not be found\."):
        engine.resize(sid, flavor="99")
    with pytest.raises(BadRequest, match="Cannot find image for rebuild"):
        engine.rebuild(sid, image="no-such-image")
    with pytest.raises(BadRequest):
        engine.reboot(sid, hard=False, ctx=None, idempotency_key="")
    engine.pause(sid)
    with pytest.raises(InvalidState, match="task_state pausing"):
        engine.stop(sid)
    assert len(engine.history(sid)) == before + 1  # only the pause


def test_bad_create_arguments_write_nothing(engine: Engine) -> None:
    for kwargs, error in [
        ({"name": "x" * 256}, BadRequest), ({"name": " padded "}, BadRequest),
        ({"name": ""}, BadRequest), ({"flavor": "m9.huge"}, BadRequest),
        ({"image": "no-such-image"}, BadRequest),
        ({"metadata": {"k": 1}}, BadRequest), ({"flavor": "m1.tiny",
                                               "image": "ubuntu-24.04-server-cloudimg-amd64"},
                                              BadRequest),
    ]:
        args = {"name": "ok", "flavor": "m1.small", "image": IMAGE, **kwargs}
        with pytest.raises(error):
            engine.create_server(args.pop("name"), **args)
    assert engine.list_servers() == []
    for bad_id in ("not-a-uuid", "00000000-0000-4000-8000-000000000000"):
        with pytest.raises(NotFound, match=rf"Instance {bad_id} could not be found\."):
            engine.pause(bad_id)


def test_lock_blocks_non_admins_only(engine: Engine) -> None:
    owner = engine.context(user_id="alice", project_id="p1", is_admin=False)
    server = engine.create_server("locked", flavor="m1.small", image=IMAGE, ctx=owner)
    engine.run_until_idle()
    engine.lock(server.id, reason="maintenance", ctx=owner)
    s = engine.get_server(server.id)
    assert s.locked and s.status == "ACTIVE" and s.doc["locked_reason"] == "maintenance"
    with pytest.raises(Locked, match=f"Instance {server.id} is locked"):
        engine.stop(server.id, ctx=owner)
    with pytest.raises(Locked):
        engine.delete(server.id, ctx=owner)
    engine.unlock(server.id, ctx=owner)
    engine.stop(server.id, ctx=owner)
    assert settled(engine, server.id) == ("SHUTOFF", None)
    # a lock set by an admin cannot be lifted by the owner
    engine.lock(server.id, ctx=engine.context())
    with pytest.raises(Forbidden):
        engine.unlock(server.id, ctx=owner)


def test_projects_are_isolated(engine: Engine) -> None:
    alice = engine.context(user_id="alice", project_id="p1", is_admin=False)
    bob = engine.context(user_id="bob", project_id="p2", is_admin=False)
    server = engine.create_server("mine", flavor="m1.small", image=IMAGE, ctx=alice)
    with pytest.raises(NotFound):
        engine.get_server(server.id, ctx=bob)
    with pytest.raises(NotFound):
        engine.delete(server.id, ctx=bob)
    assert [s.id for s in engine.list_servers(ctx=bob)] == []
    assert [s.id for s in engine.list_servers(ctx=alice)] == [server.id]
    with pytest.raises(Forbidden):
        engine.reset_state(server.id, state="error", ctx=alice)


def test_delete_any_state_and_repeat_is_ignored(engine: Engine) -> None:
    sid = active(engine)
    engine.pause(sid)
    engine.delete(sid)  # while pausing: delete is allowed in any state
    repeat = engine.delete(sid)
    assert not repeat.accepted
    engine.run_until_idle()
    with pytest.raises(NotFound):
        engine.get_server(sid)
    assert engine.history(sid)[-1].details["vm_state"] == "deleted"
    assert [s.status for s in engine.list_servers(include_deleted=True)] == ["DELETED"]


def test_idempotency_key_acts_once(engine: Engine) -> None:
    a = engine.create_server("once", flavor="m1.small", image=IMAGE, idempotency_key="k-1")
    b = engine.create_server("once", flavor="m1.small", image=IMAGE, idempotency_key="k-1")
    assert a.id == b.id and len(engine.list_servers()) == 1
    with pytest.raises(Conflict):  # the same key for a different request
        engine.create_server("other", flavor="m1.small", image=IMAGE, idempotency_key="k-1")
    engine.run_until_idle()
    first = engine.stop(a.id, idempotency_key="stop-1")
    again = engine.stop(a.id, idempotency_key="stop-1")
    assert again.request_id == first.request_id and not again.accepted


def test_hypervisor_failures_follow_the_table(url: str, clock: FakeClock) -> None:
    sim = Simulator(seed=1)
    with make_engine(url, clock=clock, hypervisor=sim) as engine:
        sid = active(engine)
        sim.inject("pause", "fail", rollback=True)
        engine.pause(sid)
        assert settled(engine, sid) == ("ACTIVE", None)  # pause failure: back where it was
        sim.inject("resize", "fail", rollback=True)
        engine.resize(sid, flavor="m1.medium")
        s = engine.get_server(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.flavor["name"]) == ("ACTIVE", "m1.small")  # fault not shown
        sim.inject("suspend", "fail", rollback=False)
        engine.suspend(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert s.status == "ERROR" and s.fault is not None
        assert "Injected failure" in s.fault["message"]
        engine.reboot(sid, hard=True)  # the recovery path
        assert settled(engine, sid) == ("ACTIVE", None)
        failed = [e for e in engine.history(sid) if e.event == "ActionFailed"]
        assert [e.details["action"] for e in failed] == ["pause", "resize", "suspend"]


def test_auto_confirm_after_the_window(engine: Engine, clock: FakeClock) -> None:
    sid = active(engine)
    engine.resize(sid, flavor="m1.medium")
    engine.run_until_idle()
    deadline = engine.get_server(sid).confirm_deadline
    assert deadline == clock.now() + timedelta(hours=24)
    clock.advance(hours=23, minutes=59)
    assert settled(engine, sid) == ("VERIFY_RESIZE", None)
    clock.advance(minutes=2)
    assert settled(engine, sid) == ("ACTIVE", None)
    confirm = [e for e in engine.history(sid) if e.event == "ActionRequested"][-1]
    assert confirm.details["action"] == "confirm_resize"
    assert (confirm.cause, confirm.user_id, confirm.project_id) == ("timer", None, None)


def test_manual_revert_before_the_deadline_wins(engine: Engine, clock: FakeClock) -> None:
    sid = active(engine)
    engine.resize(sid, flavor="m1.medium")
    engine.run_until_idle()
    engine.revert_resize(sid)
    engine.run_until_idle()
    clock.advance(hours=48)
    assert settled(engine, sid) == ("ACTIVE", None)
    assert engine.get_server(sid).flavor["name"] == "m1.small"
    assert not [e for e in engine.history(sid) if e.cause == "timer"]


def test_window_zero_disables_auto_confirm(url: str, clock: FakeClock) -> None:
    with make_engine(url, clock=clock, confirm_window=timedelta(0)) as engine:
        sid = active(engine)
        engine.resize(sid, flavor="m1.medium")
        engine.run_until_idle()
        assert engine.get_server(sid).confirm_deadline is None
        clock.advance(days=30)
        assert settled(engine, sid) == ("VERIFY_RESIZE", None)


def test_deadline_survives_restart_and_racing_timers_fire_once(url: str) -> None:
    clock = FakeClock()
    sim = Simulator(seed=3)
    shared = {"ids": counter_ids(3), "request_ids": counter_request_ids()}
    with make_engine(url, clock=clock, hypervisor=sim, **shared) as first:
        sid = active(first)
        first.resize(sid, flavor="m1.medium")
        first.run_until_idle()
    clock.advance(hours=25)
    # two processes' timers, restarted after the deadline passed, race for it
    with make_engine(url, clock=clock, hypervisor=sim, **shared) as a, \
            make_engine(url, clock=clock, hypervisor=sim, **shared) as b:
        fired = a.timer.run_once() + b.timer.run_once() + a.timer.run_once()
        assert fired == 1
        a.run_until_idle()
        assert a.get_server(sid).status == "ACTIVE"
        timers = [e for e in a.history(sid) if e.cause == "timer"]
        assert len(timers) == 1


def test_history_records_who_what_and_the_hypervisor(engine: Engine) -> None:
    ctx = engine.context(user_id="alice", project_id="p1", is_admin=False,
                         request_id="req-00000000-0000-4000-8000-00000000abcd")
    server = engine.create_server("audited", flavor="m1.small", image=IMAGE, ctx=ctx)
    engine.run_until_idle()
    history = engine.history(server.id)
    assert history[0].event == "Requested"
    assert (history[0].request_id, history[0].user_id, history[0].project_id,
            history[0].cause) == (ctx.request_id, "alice", "p1", "user")
    calls = [e for e in history if e.event == "HypervisorCalled"]
    assert [c.details["call"] for c in calls] == ["observe", "spawn"]
    assert all(c.request_id == ctx.request_id and c.cause == "agent" for c in calls)
    assert calls[1].details["result"] == {"boot_count": 1}
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert all(str(e) for e in history)
