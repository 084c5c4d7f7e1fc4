"""Soft delete (Nova's ``reclaim_instance_interval``): a delete that powers the server
off and keeps it, restore, forceDelete, and the timer's reclaim; engine and API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.support.compute import action, active_server, built
from vmledger import Conflict, FakeClock, NotFound, Simulator
from vmledger.adapters.hypervisor import PowerState
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"
HOUR = timedelta(hours=1)



def test_delete_keeps_the_server_until_the_timer_reclaims_it(url: str) -> None:
    clock = FakeClock()
    sim = Simulator()
    with Engine(url, clock=clock, hypervisor=sim, reclaim_interval=HOUR) as engine:
        sid = built(engine)
        engine.delete(sid)
        assert engine.get_server(sid).task_state == "soft-deleting"
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.vm_state, s.power_state) == (
            "SOFT_DELETED", "soft-delete", int(PowerState.SHUTDOWN))
        assert sim.guests()[sid]["power_state"] == PowerState.SHUTDOWN  # kept, off
        assert [s.id for s in engine.list_servers()] == [sid]  # still listed
        clock.advance(timedelta(minutes=59))
        engine.run_until_idle()
        assert engine.get_server(sid).status == "SOFT_DELETED"
        clock.advance(timedelta(minutes=2))
        engine.run_until_idle()
        with pytest.raises(NotFound):
            engine.get_server(sid)
        assert sid not in sim.guests()
        reclaim = [h for h in engine.history(sid) if h.event == "ActionRequested"][-1]
        assert (reclaim.details["action"], reclaim.cause, reclaim.user_id) == (
            "delete", "timer", None)


def test_restore_and_force_delete() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim, reclaim_interval=HOUR) as engine:
        sid = built(engine)
        with pytest.raises(Conflict, match=r"restore.*vm_state active"):
            engine.restore(sid)
        engine.delete(sid)
        engine.run_until_idle()
        engine.restore(sid)
        assert engine.get_server(sid).task_state == "restoring"
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.power_state) == ("ACTIVE", int(PowerState.RUNNING))
        assert sim.guests()[sid]["boot_count"] == 2

        engine.delete(sid)
        engine.run_until_idle()
        engine.force_delete(sid)
        engine.run_until_idle()
        with pytest.raises(NotFound):
            engine.get_server(sid)
        assert sorted(a["action"] for a in engine.instance_actions(sid)) == [
            "create", "delete", "delete", "delete", "restore"]


def test_hard_deletes_a_never_launched_or_soft_deleted_server_and_without_interval() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim, reclaim_interval=HOUR) as engine:
        sim.inject("spawn", "fail")
        never = engine.create_server("never", flavor="m1.small", image=IMAGE).id
        engine.run_until_idle()
        assert engine.get_server(never).status == "ERROR"
        engine.delete(never)  # never launched: Nova deletes it at once
        engine.run_until_idle()
        with pytest.raises(NotFound):
            engine.get_server(never)
        sid = built(engine)
        engine.delete(sid)
        engine.run_until_idle()
        engine.delete(sid)  # deleting a soft-deleted server deletes it
        engine.run_until_idle()
        with pytest.raises(NotFound):
            engine.get_server(sid)
    with Engine("memory", clock=FakeClock()) as engine:  # the default: no soft delete
        sid = built(engine)
        engine.delete(sid)
        engine.run_until_idle()
        with pytest.raises(NotFound):
            engine.get_server(sid)


def test_a_suspended_server_keeps_its_memory_and_is_resumed() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim, reclaim_interval=HOUR) as engine:
        sid = built(engine)
        engine.suspend(sid)
        engine.run_until_idle()
        engine.delete(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "SOFT_DELETED"
        assert sim.guests()[sid]["power_state"] == PowerState.SUSPENDED
        engine.restore(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE"
        assert sim.guests()[sid]["boot_count"] == 1  # resumed, not booted


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        Engine("memory", reclaim_interval=-HOUR)


# --- the Compute API ---------------------------------------------------------------------
@pytest.fixture
def soft() -> Iterator[tuple[Engine, ApiClient]]:
    with Engine("memory", clock=FakeClock(), reclaim_interval=HOUR) as engine:
        yield engine, ApiClient(create_app(engine))


def test_api_delete_restore_force_delete(soft: tuple[Engine, ApiClient]) -> None:
    engine, client = soft
    sid = active_server(engine, client)
    assert client.delete(f"/v2.1/servers/{sid}").status_code == 204
    engine.run_until_idle()
    shown = client.get(f"/v2.1/servers/{sid}").json()["server"]
    assert (shown["status"], shown["OS-EXT-STS:vm_state"]) == ("SOFT_DELETED", "soft-delete")
    listed = client.get("/v2.1/servers/detail?status=SOFT_DELETED").json()["servers"]
    assert [s["id"] for s in listed] == [sid]
    r = action(client, sid, {"restore": None})
    assert (r.status_code, r.content) == (202, b"")
    engine.run_until_idle()
    assert client.get(f"/v2.1/servers/{sid}").json()["server"]["status"] == "ACTIVE"
    r = action(client, sid, {"restore": None})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'restore' instance {sid} while it is in vm_state active")
    assert client.delete(f"/v2.1/servers/{sid}").status_code == 204
    engine.run_until_idle()
    assert action(client, sid, {"forceDelete": None}).status_code == 202
    engine.run_until_idle()
    assert client.get(f"/v2.1/servers/{sid}").status_code == 404
