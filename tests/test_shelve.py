"""Shelve, shelveOffload and unshelve: the guest powered off and saved as an image, then
removed from the hypervisor, then back; as the engine, the audit trail and the Compute
API show them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.engines import make_engine
from tests.support.compute import built
from vmledger import Conflict, FakeClock, NotFound, Simulator
from vmledger.adapters.hypervisor import PowerState
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for
from vmledger.engine import Engine

IMAGE = "cirros-0.6.2-x86_64"
IMAGE_ID = image_id_for(IMAGE)



def test_shelve_offloads_and_unshelve_spawns_from_the_shelved_image(url: str) -> None:
    sim = Simulator()
    with make_engine(url, clock=FakeClock(), hypervisor=sim) as engine:
        owner = engine.context(user_id="alice", project_id="p1", is_admin=False)
        sid = built(engine, ctx=owner)
        result = engine.shelve(sid, ctx=owner)
        image_id = result.details["image_id"]
        s = engine.get_server(sid)
        assert (s.status, s.task_state) == ("ACTIVE", "shelving")
        engine.run_until_idle()

        s = engine.get_server(sid)
        assert (s.status, s.task_state, s.power_state) == ("SHELVED_OFFLOADED", None, 0)
        assert sid not in sim.guests()  # nothing left on the hypervisor
        image = engine.get_image(image_id, ctx=owner)
        assert (image["name"], image["status"], image["server_id"]) == (
            "web-shelved", "active", sid)
        steps = [h.details.get("task_state") for h in engine.history(sid)
                 if h.event in ("ActionRequested", "TaskAdvanced")
                 and h.details.get("action") == "shelve_and_offload"]
        assert steps == ["shelving", "shelving_image_pending_upload",
                         "shelving_image_uploading", "shelving_offloading"]
        calls = [h.details["call"] for h in engine.history(sid)
                 if h.event == "HypervisorCalled" and h.request_id == result.request_id]
        assert calls == ["observe", "power_off", "observe", "snapshot", "observe", "destroy"]

        # one action, as Nova with shelved_offload_time = 0
        actions = engine.instance_actions(sid)
        assert [a["action"] for a in actions if a["action"] != "create"] == ["shelve"]
        [shelve] = [a for a in actions if a["action"] == "shelve"]
        assert shelve["request_id"] == result.request_id
        assert [(e["event"], e["result"]) for e in shelve["events"]] == [
            ("compute_shelve_instance", "Success")]

        engine.unshelve(sid, ctx=owner)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.task_state, s.power_state) == ("ACTIVE", None, 1)
        guest = sim.guests()[sid]
        assert guest["image_id"] == image_id  # booted the saved disk
        assert s.image["id"] != image_id  # the server still shows the image it was built from
        with pytest.raises(NotFound):  # the shelved image is gone, as in Nova
            engine.get_image(image_id, ctx=owner)
        assert "unshelve" in {a["action"] for a in engine.instance_actions(sid)}


def test_the_shelved_image_is_gone_when_the_unshelved_server_first_shows_active(
        tmp_path: Any) -> None:
    """Nova deletes the shelved image before it saves the server ACTIVE: a client that
    polls until ACTIVE and then looks for the image finds it gone (tempest does)."""
    with make_engine(f"sqlite:///{tmp_path / 'v.db'}", clock=FakeClock()) as engine:
        sid = built(engine)
        image_id = engine.shelve(sid).details["image_id"]
        engine.run_until_idle()
        seen: list[tuple[str, bool]] = []

        def look(_result: Any) -> None:  # after every commit, in the committing thread
            status = engine.get_server(sid).status
            try:
                engine.get_image(image_id)
                seen.append((status, True))
            except NotFound:
                seen.append((status, False))

        engine.commands.deps.pipeline.on_saved(look)
        engine.unshelve(sid)
        engine.run_until_idle()
        assert seen[-1] == ("ACTIVE", False)
        assert ("ACTIVE", True) not in seen, seen


def test_without_offloading_the_guest_stays_until_shelve_offload(tmp_path: Any) -> None:
    sim = Simulator()
    with Engine(f"sqlite:///{tmp_path / 'v.db'}", clock=FakeClock(), hypervisor=sim,
                shelved_offload_time=None) as engine:
        sid = built(engine)
        engine.shelve(sid)
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert (s.status, s.power_state) == ("SHELVED", int(PowerState.SHUTDOWN))
        assert sim.guests()[sid]["power_state"] == PowerState.SHUTDOWN

        # unshelving a kept guest powers it on: no new guest
        boots = sim.guests()[sid]["boot_count"]
        engine.unshelve(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE"
        assert sim.guests()[sid]["boot_count"] == boots + 1
        assert sim.guests()[sid]["generation"] == 0

        engine.shelve(sid)
        engine.run_until_idle()
        engine.shelve_offload(sid)
        assert engine.get_server(sid).task_state == "shelving_offloading"
        engine.run_until_idle()
        assert engine.get_server(sid).status == "SHELVED_OFFLOADED"
        assert sid not in sim.guests()


@pytest.mark.parametrize("first", ["pause", "suspend", "stop"])
def test_shelve_from_paused_suspended_and_stopped(first: str) -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = built(engine)
        engine.act(sid, first)
        engine.run_until_idle()
        engine.shelve(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "SHELVED_OFFLOADED"
        engine.unshelve(sid)
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE"


def test_refusals_follow_the_table() -> None:
    with Engine("memory", clock=FakeClock(), shelved_offload_time=None) as engine:
        sid = built(engine)
        with pytest.raises(Conflict, match=r"unshelve.*vm_state active"):
            engine.unshelve(sid)
        with pytest.raises(Conflict, match=r"shelveOffload.*vm_state active"):
            engine.shelve_offload(sid)
        engine.shelve(sid)
        with pytest.raises(Conflict, match="task_state shelving"):
            engine.reboot(sid, hard=True)
        engine.run_until_idle()
        for action in ("shelve", "start", "stop", "pause", "resize"):
            with pytest.raises(Conflict):
                engine.act(sid, action, **({"flavor": "m1.medium"} if action == "resize"
                                           else {}))
        # availability zone or host only for an offloaded server (Nova: 409)
        with pytest.raises(Conflict, match="must be SHELVED_OFFLOADED"):
            engine.unshelve(sid, availability_zone="nova")
        user = engine.context(user_id="u", project_id="admin", is_admin=False)
        engine.lock(sid)  # by an admin
        with pytest.raises(Conflict, match="locked"):
            engine.unshelve(sid, ctx=user)
        engine.unshelve(sid)  # admins pass a lock
        engine.run_until_idle()
        assert engine.get_server(sid).status == "ACTIVE"


def test_a_failed_snapshot_fails_the_shelve_and_its_image() -> None:
    sim = Simulator()
    with Engine("memory", clock=FakeClock(), hypervisor=sim) as engine:
        sid = built(engine)
        sim.inject("snapshot", "fail", server_id=sid)
        image_id = engine.shelve(sid).details["image_id"]
        engine.run_until_idle()
        s = engine.get_server(sid)
        assert s.status == "ERROR" and s.fault is not None
        assert "Injected failure in snapshot" in s.fault["message"]
        assert engine.get_image(image_id)["status"] == "error"
        assert sid in sim.guests()  # never offloaded


def test_the_timer_offloads_servers_left_shelved_for_the_offload_time(url: str) -> None:
    clock = FakeClock()
    sim = Simulator()
    with Engine(url, clock=clock, hypervisor=sim,
                shelved_offload_time=timedelta(hours=1)) as engine:
        kept, left = built(engine, "kept"), built(engine, "left")
        engine.shelve(left)
        engine.run_until_idle()
        clock.advance(timedelta(minutes=30))
        engine.shelve(kept)
        engine.run_until_idle()
        assert {engine.get_server(s).status for s in (kept, left)} == {"SHELVED"}
        clock.advance(timedelta(minutes=31))
        assert engine.timer.run_once() == 1
        engine.run_until_idle()
        assert engine.get_server(left).status == "SHELVED_OFFLOADED"
        assert engine.get_server(kept).status == "SHELVED"
        assert left not in sim.guests() and kept in sim.guests()
        offload = [h for h in engine.history(left) if h.event == "ActionRequested"
                   and h.details.get("action") == "shelve_offload"]
        assert [h.cause for h in offload] == ["timer"]
        clock.advance(timedelta(minutes=30))
        assert engine.timer.run_once() == 1
        assert engine.timer.run_once() == 0  # once
        engine.run_until_idle()
        assert engine.get_server(kept).status == "SHELVED_OFFLOADED"


def test_a_negative_offload_time_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be negative"):
        Engine("memory", shelved_offload_time=timedelta(seconds=-1))


def test_power_sync_leaves_offloaded_servers_alone() -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = built(engine)
        engine.shelve(sid)
        engine.run_until_idle()
        assert engine.agent.sync_power_states() == 0
        assert engine.get_server(sid).status == "SHELVED_OFFLOADED"


def test_the_view_rebuilds_to_the_same_shelved_servers() -> None:
    with Engine("memory", clock=FakeClock()) as engine:
        sid = built(engine)
        engine.shelve(sid)
        engine.run_until_idle()
        before = (engine.get_server(sid), engine.instance_actions(sid))
        engine.updater.rebuild()
        assert (engine.get_server(sid), engine.instance_actions(sid)) == before


# --- the Compute API ---------------------------------------------------------------------
TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}


@pytest.fixture
def api() -> Iterator[tuple[Engine, ApiClient]]:
    with Engine("memory", clock=FakeClock()) as engine:
        yield engine, ApiClient(create_app(engine, auth="token", tokens=TOKENS))


def _server(api: tuple[Engine, ApiClient], token: dict[str, str] = ALICE) -> str:
    engine, client = api
    r = client.post("/v2.1/servers", headers=token, json={"server": {
        "name": "vm", "flavorRef": "2", "imageRef": IMAGE_ID}})
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["server"]["id"])


def _act(client: ApiClient, sid: str, body: Any, version: str = "2.1",
         token: dict[str, str] = ALICE) -> httpx.Response:
    return client.post(f"/v2.1/servers/{sid}/action", json=body,
                       headers={"X-OpenStack-Nova-API-Version": version, **token})


def _show(client: ApiClient, sid: str, token: dict[str, str] = ADMIN) -> dict[str, Any]:
    r = client.get(f"/v2.1/servers/{sid}",
                   headers={"X-OpenStack-Nova-API-Version": "2.96", **token})
    assert r.status_code == 200, r.text
    server: dict[str, Any] = r.json()["server"]
    return server


def test_api_shelve_and_unshelve(api: tuple[Engine, ApiClient]) -> None:
    engine, client = api
    sid = _server(api, ADMIN)
    assert _show(client, sid)["OS-EXT-SRV-ATTR:host"] == "compute-1"
    r = _act(client, sid, {"shelve": None}, token=ADMIN)
    assert (r.status_code, r.content) == (202, b"")
    engine.run_until_idle()
    shown = _show(client, sid)
    assert shown["status"] == "SHELVED_OFFLOADED"
    assert shown["OS-EXT-STS:vm_state"] == "shelved_offloaded"
    assert shown["OS-EXT-SRV-ATTR:host"] is None and shown["hostId"] == ""
    images = client.get("/image/v2/images", headers=ADMIN).json()["images"]
    assert "vm-shelved" in [i["name"] for i in images]
    assert "vm-shelved" not in [  # private to its project
        i["name"] for i in client.get("/image/v2/images", headers=ALICE).json()["images"]]

    r = _act(client, sid, {"unshelve": None}, token=ADMIN)
    assert r.status_code == 202, r.text
    assert _show(client, sid)["OS-EXT-STS:task_state"] == "unshelving"
    engine.run_until_idle()
    shown = _show(client, sid)
    assert (shown["status"], shown["OS-EXT-SRV-ATTR:host"]) == ("ACTIVE", "compute-1")
    names = [a["action"] for a in client.get(
        f"/v2.1/servers/{sid}/os-instance-actions", headers=ADMIN).json()["instanceActions"]]
    assert sorted(names) == ["create", "shelve", "unshelve"]


def test_api_unshelve_body_per_microversion(api: tuple[Engine, ApiClient]) -> None:
    engine, client = api
    sid = _server(api)
    assert _act(client, sid, {"shelve": None}).status_code == 202
    engine.run_until_idle()
    # 2.77: an object must name the availability zone; nothing else is allowed
    for body in ({"unshelve": {}}, {"unshelve": {"host": "compute-1"}},
                 {"unshelve": {"availability_zone": 7}}):
        r = _act(client, sid, body, "2.77")
        assert r.status_code == 400, (body, r.text)
        assert "badRequest" in r.json()
    r = _act(client, sid, {"unshelve": {"availability_zone": "elsewhere"}}, "2.77")
    assert r.status_code == 400
    assert "availability zone is not available" in r.json()["badRequest"]["message"]
    # 2.91: a host, for administrators only, and one that exists
    r = _act(client, sid, {"unshelve": {"host": "compute-1"}}, "2.91")
    assert r.status_code == 403 and "forbidden" in r.json()
    assert engine.get_server(sid).status == "SHELVED_OFFLOADED"  # nothing written

    sid = _server(api, ADMIN)
    assert _act(client, sid, {"shelve": None}, token=ADMIN).status_code == 202
    engine.run_until_idle()
    r = _act(client, sid, {"unshelve": {"host": "compute-9"}}, "2.91", token=ADMIN)
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "Compute host compute-9 could not be found."
    assert engine.get_server(sid).status == "SHELVED_OFFLOADED"  # nothing written
    r = _act(client, sid, {"unshelve": {"availability_zone": None, "host": "compute-1"}},
             "2.91", token=ADMIN)
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    assert engine.get_server(sid).status == "ACTIVE"


def test_api_refusals_are_409(api: tuple[Engine, ApiClient]) -> None:
    engine, client = api
    sid = _server(api)
    r = _act(client, sid, {"unshelve": None})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'unshelve' instance {sid} while it is in vm_state active")
    r = _act(client, sid, {"shelveOffload": None})  # an administrator's action (Nova)
    assert r.status_code == 403 and "forbidden" in r.json()
    r = _act(client, _server(api, ADMIN), {"shelveOffload": None}, token=ADMIN)
    assert r.status_code == 409
    assert "Cannot 'shelveOffload'" in r.json()["conflictingRequest"]["message"]
    assert _act(client, sid, {"shelve": {"extra": 1}}).status_code == 400
    assert _act(client, sid, {"shelve": None}).status_code == 202
    assert _act(client, sid, {"shelve": None}).status_code == 409  # in flight
    engine.run_until_idle()
    assert _act(client, sid, {"shelve": None}).status_code == 409  # already shelved


def test_the_ledger_tells_shelves_backups_rescues_and_timed_offloads() -> None:
    clock = FakeClock()
    with Engine("memory", clock=clock, shelved_offload_time=timedelta(hours=1)) as engine:
        sid = built(engine)
        for step in (lambda: engine.create_backup(sid, "nightly", backup_type="daily",
                                                  rotation=2),
                     lambda: engine.rescue(sid, image="debian-12-genericcloud-amd64"),
                     lambda: engine.unrescue(sid), lambda: engine.shelve(sid)):
            step()
            engine.run_until_idle()
        clock.advance(timedelta(hours=2))
        engine.run_until_idle()
        told = "\n".join(engine.explain(sid))
        assert "asked to back it up as 'nightly' (daily type, keeping the newest 2)" in told
        assert "asked to rescue it with image debian-12-genericcloud-amd64" in told
        assert "asked to shelve it (saved as 'web-shelved')" in told
        assert "the timer removed the shelved server from its host" in told
        assert told.endswith(f"completed at {clock.now().isoformat()} "
                             f"[{engine.instance_actions(sid)[0]['request_id']}].")
        assert "Why: the automatic offload of the shelved server by the timer" in told
