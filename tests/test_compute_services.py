"""Compute services (``/os-services``): administrators disable, enable and force down a
host's service; the change is an event and a disabled host takes no new servers."""

from __future__ import annotations

import pytest

from tests.support.compute import IMAGE_ID, assert_bad_request
from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.errors import Forbidden, NotFound
from vmledger.domain.server_group import NO_VALID_HOST

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}


def test_a_disabled_host_takes_no_new_servers(engine: Engine) -> None:
    host = engine.host
    running = engine.create_server("before", flavor="m1.tiny", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    state = engine.set_compute_service(host, disabled=True, reason="maintenance")
    assert (state["disabled"], state["disabled_reason"]) == (True, "maintenance")
    refused = engine.create_server("during", flavor="m1.tiny", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    failed = engine.get_server(refused.id)
    assert failed.status == "ERROR" and failed.doc["fault"]["message"] == NO_VALID_HOST
    assert engine.get_server(running.id).status == "ACTIVE"  # servers there stay
    [node] = engine.hypervisors()
    assert node["status"] == "disabled"
    engine.updater.rebuild()
    assert engine.compute_services()[0]["disabled"] is True
    engine.set_compute_service(host, disabled=False)
    assert engine.compute_services()[0]["disabled_reason"] is None
    again = engine.create_server("after", flavor="m1.tiny", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    assert engine.get_server(again.id).status == "ACTIVE"
    # forced down: no new servers either, and shown down
    engine.set_compute_service(host, forced_down=True)
    assert engine.hypervisors()[0]["state"] == "down"
    down = engine.create_server("down", flavor="m1.tiny", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    assert engine.get_server(down.id).status == "ERROR"
    with pytest.raises(NotFound):
        engine.set_compute_service("elsewhere", disabled=True)
    with pytest.raises(Forbidden):
        engine.set_compute_service(host, disabled=True, ctx=engine.context(
            user_id="alice", project_id="p1", is_admin=False))


def _client(engine: Engine) -> ApiClient:
    return ApiClient(create_app(engine, auth="token", tokens=TOKENS))


def _h(version: str, token: dict[str, str] = ADMIN) -> dict[str, str]:
    return {**token, "X-OpenStack-Nova-API-Version": version}


def test_api_2_53(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    [service] = client.get("/v2.1/os-services", headers=_h("2.53")).json()["services"]
    url = f"/v2.1/os-services/{service['id']}"
    r = client.put(url, headers=_h("2.53"), json={"status": "disabled",
                                                   "disabled_reason": "disk swap"})
    assert r.status_code == 200, r.text
    shown = r.json()["service"]
    assert (shown["status"], shown["disabled_reason"], shown["state"]) == (
        "disabled", "disk swap", "up")
    assert shown["updated_at"] is not None
    zones = client.get("/v2.1/os-availability-zone/detail", headers=_h("2.53")).json()
    assert zones["availabilityZoneInfo"][0]["hosts"]["compute-1"]["nova-compute"][
        "active"] is False
    r = client.post("/v2.1/servers", headers=ADMIN, json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE_ID}})
    memory_engine.run_until_idle()
    assert client.get(f"/v2.1/servers/{r.json()['server']['id']}", headers=ADMIN).json()[
        "server"]["status"] == "ERROR"
    r = client.put(url, headers=_h("2.53"), json={"status": "enabled", "forced_down": True})
    assert (r.json()["service"]["status"], r.json()["service"]["state"]) == ("enabled", "down")
    for bad in ({}, {"status": "paused"}, {"status": "enabled", "disabled_reason": "x"},
                {"forced_down": "maybe"}, {"other": 1}, {"disabled_reason": "x"}):
        assert_bad_request(client.put(url, headers=_h("2.53"), json=bad))
    assert client.put("/v2.1/os-services/00000000-0000-0000-0000-000000000000",
                      headers=_h("2.53"), json={"status": "enabled"}).status_code == 404
    assert client.put(url, headers=_h("2.53", ALICE), json={"status": "enabled"}
                      ).status_code == 403


def test_api_before_2_53(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    who = {"host": "compute-1", "binary": "nova-compute"}
    r = client.put("/v2.1/os-services/disable-log-reason", headers=_h("2.1"),
                   json={**who, "disabled_reason": "upgrade"})
    assert r.json() == {"service": {**who, "status": "disabled", "disabled_reason": "upgrade"}}
    r = client.put("/v2.1/os-services/enable", headers=_h("2.1"), json=who)
    assert r.json() == {"service": {**who, "status": "enabled"}}
    r = client.put("/v2.1/os-services/disable", headers=_h("2.1"), json=who)
    assert r.json()["service"]["status"] == "disabled"
    r = client.put("/v2.1/os-services/force-down", headers=_h("2.11"),
                   json={**who, "forced_down": True})
    assert r.json() == {"service": {**who, "forced_down": True}}
    listed = client.get("/v2.1/os-services", headers=_h("2.11")).json()["services"][0]
    assert (listed["status"], listed["state"], listed["forced_down"]) == (
        "disabled", "down", True)
    assert client.put("/v2.1/os-services/force-down", headers=_h("2.10"),
                      json={**who, "forced_down": True}).status_code == 404
    assert client.put("/v2.1/os-services/disable", headers=_h("2.1"),
                      json={"host": "elsewhere", "binary": "nova-compute"}).status_code == 404
    assert_bad_request(client.put("/v2.1/os-services/disable", headers=_h("2.1"), json={}))
    assert_bad_request(client.put("/v2.1/os-services/disable-log-reason", headers=_h("2.1"),
                                  json=who))


def test_an_offloaded_server_is_not_unshelved_onto_a_disabled_host(engine: Engine) -> None:
    server = engine.create_server("shelf", flavor="m1.tiny", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    engine.shelve(server.id)
    engine.run_until_idle()
    assert engine.get_server(server.id).status == "SHELVED_OFFLOADED"
    engine.set_compute_service(engine.host, disabled=True, reason="maintenance")
    engine.unshelve(server.id)
    engine.run_until_idle()
    back = engine.get_server(server.id)
    assert back.status == "SHELVED_OFFLOADED" and back.task_state is None
    assert back.doc["fault"]["message"] == NO_VALID_HOST
    engine.set_compute_service(engine.host, disabled=False)
    engine.unshelve(server.id)
    engine.run_until_idle()
    assert engine.get_server(server.id).status == "ACTIVE"
