"""Flavor management (create, delete, description, extra specs): recorded as events,
overriding the configured catalog, served as Nova serves them, for administrators."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.compute import IMAGE_ID, assert_bad_request
from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.errors import BadRequest, Conflict, Forbidden, NotFound

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member",
          "bob-secret:bob:p2:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}
BODY = {"name": "c1.big", "ram": 4096, "vcpus": 4, "disk": 40}


def test_flavors_are_events_and_survive_a_rebuild(engine: Engine) -> None:
    made = engine.create_flavor({**BODY, "id": "big", "OS-FLV-EXT-DATA:ephemeral": "5",
                                 "swap": 512, "rxtx_factor": "2.5",
                                 "os-flavor-access:is_public": "false",
                                 "description": "for databases"})
    assert (made.id, made.ephemeral, made.swap, made.rxtx_factor, made.is_public,
            made.description) == ("big", 5, 512, 2.5, False, "for databases")
    generated = engine.create_flavor({**BODY, "name": "c1.auto"})
    assert len(generated.id) == 36  # no id, or "auto": a UUID
    engine.set_flavor_extra_specs("big", {"hw:cpu_policy": "dedicated", "n": 2})
    engine.set_flavor_extra_specs("1", {"hw:mem_page_size": "large"})  # a configured one
    engine.delete_flavor("2")
    before = {f.id: f for f in engine.service.catalog.flavors()}
    assert before["big"].extra_specs == {"hw:cpu_policy": "dedicated", "n": "2"}
    assert before["1"].extra_specs == {"hw:mem_page_size": "large"}
    assert "2" not in before
    engine.updater.rebuild()
    assert {f.id: f for f in engine.service.catalog.flavors()} == before
    # servers are built from it and keep their copy when it goes
    server = engine.create_server("db", flavor="big", image="cirros-0.6.2-x86_64")
    engine.run_until_idle()
    engine.delete_flavor("big")
    assert engine.get_server(server.id).flavor["extra_specs"] == {
        "hw:cpu_policy": "dedicated", "n": "2"}
    with pytest.raises(BadRequest):
        engine.create_server("late", flavor="big", image="cirros-0.6.2-x86_64")


def test_refusals(engine: Engine) -> None:
    member = engine.context(user_id="alice", project_id="p1", is_admin=False)
    with pytest.raises(Forbidden):
        engine.create_flavor(BODY, ctx=member)
    with pytest.raises(Forbidden):
        engine.set_flavor_extra_specs("1", {"a": "b"}, ctx=member)
    with pytest.raises(Forbidden):
        engine.delete_flavor("1", ctx=member)
    engine.create_flavor({**BODY, "id": "big"})
    with pytest.raises(Conflict, match="Flavor with ID big already exists"):
        engine.create_flavor({**BODY, "name": "other", "id": "big"})
    with pytest.raises(Conflict, match=r"Flavor with name m1\.tiny already exists"):
        engine.create_flavor({**BODY, "name": "m1.tiny"})
    engine.delete_flavor("big")
    with pytest.raises(Conflict):  # ids are not reused
        engine.create_flavor({**BODY, "id": "big"})
    for bad in ({**BODY, "ram": 0}, {**BODY, "vcpus": "x"}, {**BODY, "disk": -1},
                {**BODY, "name": " padded"}, {**BODY, "id": "bad/id"},
                {**BODY, "rxtx_factor": 0}, {**BODY, "os-flavor-access:is_public": "maybe"},
                {"name": "x", "ram": 1, "vcpus": 1}):
        with pytest.raises(BadRequest):
            engine.create_flavor(bad)
    with pytest.raises(NotFound):
        engine.delete_flavor("nope")
    with pytest.raises(NotFound):
        engine.delete_flavor_extra_spec("1", "missing")
    with pytest.raises(BadRequest):
        engine.set_flavor_extra_specs("1", {"bad key!": "x"})
    with pytest.raises(BadRequest):
        engine.set_flavor_extra_specs("1", {"k": "x" * 256})


def _client(engine: Engine) -> ApiClient:
    return ApiClient(create_app(engine, auth="token", tokens=TOKENS))


def _h(token: dict[str, str], version: str = "2.1") -> dict[str, str]:
    return {**token, "X-OpenStack-Nova-API-Version": version}


def test_api(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    r = client.post("/v2.1/flavors", headers=_h(ADMIN, "2.61"),
                    json={"flavor": {**BODY, "id": "big"}})
    assert r.status_code == 200, r.text
    assert r.json()["flavor"]["extra_specs"] == {} and r.json()["flavor"]["vcpus"] == 4
    assert client.get("/v2.1/flavors/big", headers=_h(ALICE)).status_code == 200
    r = client.post("/v2.1/flavors", headers=_h(ALICE), json={"flavor": BODY})
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:os-flavor-manage:create to be performed.")
    assert client.post("/v2.1/flavors", headers=_h(ADMIN), json={
        "flavor": {**BODY, "id": "big", "name": "x"}}).status_code == 409
    for bad in ({"flavor": {**BODY, "description": "only from 2.55"}},
                {"flavor": {**BODY, "extra": 1}}, {"flavor": {"name": "x"}}, {"flavors": {}},
                {"flavor": "x"}):
        assert_bad_request(client.post("/v2.1/flavors", headers=_h(ADMIN), json=bad))
    # extra specs
    specs = "/v2.1/flavors/big/os-extra_specs"
    assert client.post(specs, headers=_h(ADMIN), json={"extra_specs": {"a": "1", "b": 2}}
                       ).json() == {"extra_specs": {"a": "1", "b": "2"}}
    assert client.get(specs, headers=_h(ALICE)).json() == {"extra_specs": {"a": "1", "b": "2"}}
    assert client.put(f"{specs}/a", headers=_h(ADMIN), json={"a": "9"}).json() == {"a": "9"}
    assert client.get(f"{specs}/a", headers=_h(ALICE)).json() == {"a": "9"}
    assert_bad_request(client.put(f"{specs}/a", headers=_h(ADMIN), json={"b": "9"}))
    assert_bad_request(client.put(f"{specs}/a", headers=_h(ADMIN), json={"a": "1", "b": "2"}))
    assert client.put(f"{specs}/a", headers=_h(ALICE), json={"a": "1"}).status_code == 403
    assert client.delete(f"{specs}/a", headers=_h(ALICE)).status_code == 403
    assert client.delete(f"{specs}/a", headers=_h(ADMIN)).status_code == 200
    r = client.get(f"{specs}/a", headers=_h(ALICE))
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Flavor big has no extra specs with key a."
    assert client.get("/v2.1/flavors/big", headers=_h(ALICE, "2.61")).json()["flavor"][
        "extra_specs"] == {"b": "2"}
    # description (2.55)
    r = client.put("/v2.1/flavors/big", headers=_h(ADMIN, "2.55"),
                   json={"flavor": {"description": "for batch jobs"}})
    assert r.status_code == 200 and r.json()["flavor"]["description"] == "for batch jobs"
    assert client.put("/v2.1/flavors/big", headers=_h(ADMIN, "2.54"),
                      json={"flavor": {"description": "x"}}).status_code == 405
    assert_bad_request(client.put("/v2.1/flavors/big", headers=_h(ADMIN, "2.55"),
                                  json={"flavor": {"name": "x"}}))
    # delete
    assert client.delete("/v2.1/flavors/big", headers=_h(ALICE)).status_code == 403
    assert client.delete("/v2.1/flavors/big", headers=_h(ADMIN)).status_code == 202
    assert client.get("/v2.1/flavors/big", headers=_h(ALICE)).status_code == 404
    assert client.delete("/v2.1/flavors/big", headers=_h(ADMIN)).status_code == 404


def test_private_flavors_and_access_lists(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    client.post("/v2.1/flavors", headers=_h(ADMIN),
                json={"flavor": {**BODY, "id": "priv", "os-flavor-access:is_public": False}})
    action = "/v2.1/flavors/priv/action"
    r = client.post(action, headers=_h(ADMIN), json={"addTenantAccess": {"tenant": "p1"}})
    assert r.json() == {"flavor_access": [{"flavor_id": "priv", "tenant_id": "p1"}]}
    assert client.get("/v2.1/flavors/priv/os-flavor-access", headers=_h(ADMIN)).json() == (
        r.json())
    # the project given access sees it and boots from it
    assert "priv" in {f["id"] for f in client.get("/v2.1/flavors", headers=_h(ALICE)).json()[
        "flavors"]}
    assert client.get("/v2.1/flavors/priv", headers=_h(ALICE)).status_code == 200
    made = client.post("/v2.1/servers", headers=_h(ALICE), json={"server": {
        "name": "vm", "flavorRef": "priv", "imageRef": IMAGE_ID}})
    assert made.status_code == 202, made.text
    memory_engine.run_until_idle()
    # another project cannot resize to it
    other = client.post("/v2.1/servers", headers=_h(BOB), json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE_ID}}).json()["server"]["id"]
    memory_engine.run_until_idle()
    assert_bad_request(client.post(f"/v2.1/servers/{other}/action", headers=_h(BOB),
                                   json={"resize": {"flavorRef": "priv"}}))
    # refusals
    assert client.post(action, headers=_h(ADMIN), json={
        "addTenantAccess": {"tenant": "p1"}}).status_code == 409
    assert client.post("/v2.1/flavors/1/action", headers=_h(ADMIN), json={
        "addTenantAccess": {"tenant": "p1"}}).status_code == 409
    assert client.post(action, headers=_h(ADMIN), json={
        "removeTenantAccess": {"tenant": "p9"}}).status_code == 404
    assert client.get("/v2.1/flavors/1/os-flavor-access", headers=_h(ADMIN)).status_code == 404
    assert client.get("/v2.1/flavors/priv/os-flavor-access", headers=_h(ALICE)
                      ).status_code == 403
    assert client.post(action, headers=_h(ALICE), json={
        "addTenantAccess": {"tenant": "p1"}}).status_code == 403
    for bad in ({"addTenantAccess": {}}, {"addTenantAccess": {"tenant": 5}},
                {"grantEverything": {}}, {"addTenantAccess": "p1"}):
        assert_bad_request(client.post(action, headers=_h(ADMIN), json=bad))
    # access removed: no longer seen, no longer bootable
    r = client.post(action, headers=_h(ADMIN), json={"removeTenantAccess": {"tenant": "p1"}})
    assert r.json() == {"flavor_access": []}
    assert client.get("/v2.1/flavors/priv", headers=_h(ALICE)).status_code == 404
    assert_bad_request(client.post("/v2.1/servers", headers=_h(ALICE), json={"server": {
        "name": "vm", "flavorRef": "priv", "imageRef": IMAGE_ID}}))


def test_private_flavors_are_for_administrators(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    client.post("/v2.1/flavors", headers=_h(ADMIN),
                json={"flavor": {**BODY, "id": "hidden", "os-flavor-access:is_public": False}})

    def ids(token: dict[str, str], query: str = "") -> set[str]:
        r = client.get(f"/v2.1/flavors{query}", headers=_h(token))
        return {f["id"] for f in r.json()["flavors"]}

    assert "hidden" not in ids(ALICE)
    assert "hidden" in ids(ADMIN, "?is_public=None")
    assert client.get("/v2.1/flavors/hidden/os-extra_specs", headers=_h(ALICE)
                      ).status_code == 404
    assert client.get("/v2.1/flavors/hidden", headers=_h(ALICE)).status_code == 404
    assert client.get("/v2.1/flavors/hidden", headers=_h(ADMIN)).status_code == 200


@pytest.mark.parametrize("body", [{"flavor": {**BODY, "ram": "0"}},
                                  {"flavor": {**BODY, "swap": 1.5}},
                                  {"flavor": {**BODY, "rxtx_factor": "fast"}}])
def test_bad_bodies_are_400(memory_engine: Engine, body: dict[str, Any]) -> None:
    assert_bad_request(_client(memory_engine).post("/v2.1/flavors", headers=_h(ADMIN),
                                                   json=body))


def test_flavor_and_group_changes_are_in_a_requests_causal_chain(memory_engine: Engine
                                                                 ) -> None:
    """The ledger's story of the request that made a flavor, and of one that made a
    server group, names the aggregate and what was recorded."""
    import json

    memory_engine.create_flavor({**BODY, "id": "big"})
    memory_engine.create_server_group("g", "affinity")
    stories = []
    for n in memory_engine.service.recorder.select_notifications(start=1, limit=100):
        request_id = json.loads(n.state).get("request_id")
        if request_id:
            stories.append("\n".join(memory_engine.ledger.story(request_id)))
    assert any(s.startswith("Flavor ") and "Created" in s for s in stories)
    assert any(s.startswith("Server group ") and "affinity" in s for s in stories)
