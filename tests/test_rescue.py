"""Rescue and unrescue: a rescue image booted with the server's own disk attached as the
second, and back; engine, audit trail and Compute API."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.compute import action, active_server, assert_bad_request, built
from vmledger import BadRequest, Conflict, FakeClock, Simulator
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"
OTHER = "debian-12-genericcloud-amd64"



@pytest.mark.parametrize("first", [None, "stop"])
def test_rescue_boots_the_rescue_image_and_unrescue_the_own_disk(first: str | None) -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = built(engine)
        if first:
            engine.act(sid, first)
            engine.run_until_idle()
        result = engine.rescue(sid, image=OTHER)
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE" if first is None else "SHUTOFF",
                                            "rescuing")
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.vm_state, s.task_state, s.power_state) == (
            "RESCUE", "rescued", None, 1)
        guest = sim.guests()[sid]
        assert (guest["rescue_image_id"], guest["image_id"]) == (image_id_for(OTHER),
                                                                 image_id_for(IMAGE))
        calls = [h.details["call"] for h in engine.history(sid)
                 if h.event == "HypervisorCalled" and h.request_id == result.request_id]
        assert calls == ["observe", "rescue"]
        for action in ("reboot_soft", "stop", "pause", "resize", "rebuild", "shelve"):
            with pytest.raises(Conflict, match="vm_state rescued"):
                engine.act(sid, action, **({"flavor": "m1.medium"} if action == "resize"
                                           else {"image": IMAGE} if action == "rebuild"
                                           else {}))
        with pytest.raises(Conflict, match=r"rescue.*vm_state rescued"):
            engine.rescue(sid)

        engine.unrescue(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.power_state) == ("ACTIVE", 1)  # running, as Nova
        assert sim.guests()[sid]["rescue_image_id"] is None
        actions = [a["action"] for a in engine.instance_actions(sid)]
        assert {"rescue", "unrescue"} <= set(actions)
        [rescue] = [a for a in engine.instance_actions(sid) if a["action"] == "rescue"]
        assert [(e["event"], e["result"]) for e in rescue["events"]] == [
            ("compute_rescue_instance", "Success")]


def test_by_default_the_servers_own_image_rescues_it() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = built(engine)
        engine.rescue(sid)
        engine.run_until_idle()
        assert sim.guests()[sid]["rescue_image_id"] == image_id_for(IMAGE)


def test_refusals() -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = built(engine)
        with pytest.raises(Conflict, match=r"unrescue.*vm_state active"):
            engine.unrescue(sid)
        with pytest.raises(BadRequest, match="could not be found"):
            engine.rescue(sid, image="no-such-image")
        engine.pause(sid)
        engine.run_until_idle()
        with pytest.raises(Conflict, match=r"rescue.*vm_state paused"):
            engine.rescue(sid, image="no-such-image")  # the state is decided first
        assert engine.get_server(sid).status == "PAUSED"


def test_a_failed_rescue_leaves_the_server_as_it_was() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = built(engine)
        sim.inject("rescue", "fail", server_id=sid, rollback=True)
        engine.rescue(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE", None)
        assert s.fault is not None and "Injected failure in rescue" in s.fault["message"]


# --- the Compute API ---------------------------------------------------------------------
def test_api_rescue_answers_the_password_and_unrescue_202(memory_engine: Engine,
                                                         noauth_client: ApiClient) -> None:
    engine, client = memory_engine, noauth_client
    sid = active_server(engine, client)
    r = action(client, sid, {"rescue": None})
    assert r.status_code == 200 and len(r.json()["adminPass"]) >= 12
    engine.run_until_idle()
    assert client.get(f"/v2.1/servers/{sid}").json()["server"]["status"] == "RESCUE"
    r = action(client, sid, {"unrescue": None})
    assert (r.status_code, r.content) == (202, b"")
    engine.run_until_idle()
    r = action(client, sid, {"rescue": {"adminPass": "s3cret",
                                      "rescue_image_ref": image_id_for(OTHER)}})
    assert (r.status_code, r.json()) == (200, {"adminPass": "s3cret"})
    engine.run_until_idle()
    events = [h for h in engine.history(sid) if h.event == "ActionRequested"]
    assert "s3cret" not in repr([h.details for h in events])  # never recorded
    assert events[-1].details["params"]["image_id"] == image_id_for(OTHER)


@pytest.mark.parametrize("body", [
    [], {"adminPass": 1}, {"rescue_image_ref": "not-a-uuid"}, {"other": 1},
    {"rescue_image_ref": "8f1c7a1e-0000-4000-8000-000000000000"},  # no such image
])
def test_api_bad_rescues_are_400_and_change_nothing(memory_engine: Engine, noauth_client: ApiClient,
                                                    body: Any) -> None:
    engine, client = memory_engine, noauth_client
    sid = active_server(engine, client)
    r = action(client, sid, {"rescue": body})
    assert_bad_request(r)
    s = engine.get_server(sid)
    assert (s.status, s.task_state) == ("ACTIVE", None)
