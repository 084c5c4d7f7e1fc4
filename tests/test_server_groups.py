"""Server groups (``/os-server-groups``): policies placing their members, members derived
from the servers, quotas, and the API per microversion."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.compute import IMAGE_ID, assert_bad_request, built
from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.errors import BadRequest, Forbidden, NotFound
from vmledger.domain.server_group import NO_VALID_HOST, place

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member",
          "bob-secret:bob:p2:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}


def test_placement() -> None:
    hosts = ["h1", "h2"]
    assert place("affinity", {}, [], hosts, "h2") == "h2"
    assert place("affinity", {}, ["h1"], hosts, "h2") == "h1"
    assert place("anti-affinity", {}, ["h1"], hosts, "h1") == "h2"
    assert place("anti-affinity", {}, ["h1", "h2"], hosts, "h1") is None
    assert place("anti-affinity", {"max_server_per_host": 2}, ["h1", "h2"], hosts, "h1") == "h1"
    assert place("soft-anti-affinity", {}, ["h1", "h2"], hosts, "h2") == "h2"
    assert place("soft-affinity", {}, ["h2"], hosts, "h1") == "h2"


def _create(engine: Engine, name: str, group: str, ctx: Any = None, count: int = 1
            ) -> list[str]:
    made = engine.create_servers(name, flavor="m1.small", image="cirros-0.6.2-x86_64",
                                 server_group=group, count=count, ctx=ctx)
    engine.run_until_idle()
    return [s.id for s in made]


def test_hard_anti_affinity_on_one_host(engine: Engine) -> None:
    group = engine.create_server_group("spread", "anti-affinity")
    [first] = _create(engine, "a", group["id"])
    [second] = _create(engine, "b", group["id"])
    assert engine.get_server(first).status == "ACTIVE"
    failed = engine.get_server(second)
    assert failed.status == "ERROR" and failed.doc["fault"]["message"] == NO_VALID_HOST
    assert engine.server_group(group["id"])["members"] == [first, second]
    # the failed member takes no room: deleting the first makes room again
    engine.delete(first)
    engine.run_until_idle()
    [third] = _create(engine, "c", group["id"])
    assert engine.get_server(third).status == "ACTIVE"
    assert engine.server_group(group["id"])["members"] == [second, third]
    # two per host allowed by the rule (2.64)
    wide = engine.create_server_group("wide", "anti-affinity", {"max_server_per_host": 2})
    statuses = [engine.get_server(s).status for s in _create(engine, "w", wide["id"], count=2)]
    assert statuses == ["ACTIVE", "ACTIVE"]
    # a request the policy cannot place whole fails whole, as Nova's scheduler fails it
    statuses = [engine.get_server(s).status for s in _create(engine, "x", wide["id"], count=3)]
    assert statuses == ["ERROR"] * 3
    # soft policies never fail; affinity keeps them together
    for policy in ("soft-anti-affinity", "affinity", "soft-affinity"):
        soft = engine.create_server_group(policy, policy)
        made = _create(engine, policy, soft["id"], count=2)
        assert {engine.get_server(s).status for s in made} == {"ACTIVE"}


def test_groups_are_events_and_survive_a_rebuild(engine: Engine) -> None:
    group = engine.create_server_group("g", "affinity")
    member = _create(engine, "m", group["id"])
    before = engine.server_groups()
    engine.updater.rebuild()
    assert engine.server_groups() == before
    assert engine.server_group(group["id"])["members"] == member
    engine.delete_server_group(group["id"])
    assert engine.server_groups() == []
    assert engine.get_server(member[0]).status == "ACTIVE"  # members stay
    with pytest.raises(NotFound):
        engine.server_group(group["id"])
    with pytest.raises(NotFound):
        engine.delete_server_group(group["id"])
    with pytest.raises(BadRequest, match="could not be found"):
        _create(engine, "late", group["id"])


def test_validation_visibility_and_quotas(engine: Engine) -> None:
    alice = engine.context(user_id="alice", project_id="p1", is_admin=False)
    bob = engine.context(user_id="bob", project_id="p2", is_admin=False)
    admin = engine.context(user_id="root", project_id="ops", is_admin=True)
    for name, policy, rules in (("", "affinity", None), (" x", "affinity", None),
                                ("x", "clumped", None), ("x", "affinity",
                                                         {"max_server_per_host": 2}),
                                ("x", "anti-affinity", {"max_server_per_host": 0}),
                                ("x", "anti-affinity", {"other": 1})):
        with pytest.raises(BadRequest):
            engine.create_server_group(name, policy, rules, ctx=alice)
    mine = engine.create_server_group("mine", "affinity", ctx=alice)
    with pytest.raises(NotFound):
        engine.server_group(mine["id"], ctx=bob)
    with pytest.raises(BadRequest):  # another project's group is not one to join
        _create(engine, "x", mine["id"], ctx=bob)
    assert engine.server_group(mine["id"], ctx=admin)["name"] == "mine"
    assert [g["id"] for g in engine.server_groups(ctx=admin, all_projects=True)] == [mine["id"]]
    assert engine.server_groups(ctx=bob) == []
    # quotas: groups per project, members per group
    engine.set_quotas("p1", {"server_groups": 1, "server_group_members": 2}, ctx=admin)
    with pytest.raises(Forbidden, match="too many server groups"):
        engine.create_server_group("second", "affinity", ctx=alice)
    _create(engine, "m", mine["id"], ctx=alice, count=2)
    with pytest.raises(Forbidden, match="too many servers in group"):
        _create(engine, "m3", mine["id"], ctx=alice)
    built(engine, "outside", ctx=alice)  # servers outside the group are not counted


def _client(engine: Engine) -> ApiClient:
    return ApiClient(create_app(engine, auth="token", tokens=TOKENS))


def _h(token: dict[str, str], version: str) -> dict[str, str]:
    return {**token, "X-OpenStack-Nova-API-Version": version}


@pytest.mark.parametrize(("version", "body", "keys"), [
    ("2.1", {"name": "g", "policies": ["anti-affinity"]},
     {"id", "name", "members", "policies", "metadata"}),
    ("2.13", {"name": "g", "policies": ["affinity"]},
     {"id", "name", "members", "policies", "metadata", "project_id", "user_id"}),
    ("2.15", {"name": "g", "policies": ["soft-affinity"]},
     {"id", "name", "members", "policies", "metadata", "project_id", "user_id"}),
    ("2.64", {"name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 3}},
     {"id", "name", "members", "policy", "rules", "project_id", "user_id"}),
])
def test_api_shapes(memory_engine: Engine, version: str, body: dict[str, Any],
                    keys: set[str]) -> None:
    client = _client(memory_engine)
    r = client.post("/v2.1/os-server-groups", json={"server_group": body},
                    headers=_h(ALICE, version))
    assert r.status_code == 200, r.text
    group = r.json()["server_group"]
    assert set(group) == keys and group["members"] == []
    if version == "2.64":
        assert group["rules"] == {"max_server_per_host": 3}
    shown = client.get(f"/v2.1/os-server-groups/{group['id']}", headers=_h(ALICE, version))
    assert shown.json()["server_group"] == group


def test_api_members_hints_and_refusals(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    h = _h(ALICE, "2.71")
    group = client.post("/v2.1/os-server-groups", headers=h, json={"server_group": {
        "name": "g", "policy": "affinity"}}).json()["server_group"]
    body = {"name": "vm", "flavorRef": "2", "imageRef": IMAGE_ID, "networks": "none"}
    r = client.post("/v2.1/servers", headers=h, json={
        "server": body, "os:scheduler_hints": {"group": group["id"]}})
    assert r.status_code == 202, r.text
    sid = r.json()["server"]["id"]
    memory_engine.run_until_idle()
    shown = client.get(f"/v2.1/servers/{sid}", headers=h)
    assert shown.json()["server"]["server_groups"] == [group["id"]]
    tag = shown.headers["etag"]
    assert client.get(f"/v2.1/os-server-groups/{group['id']}", headers=h).json()[
        "server_group"]["members"] == [sid]
    # refusals
    for bad in ({"group": "not-a-uuid"}, {"group": 5}, "hints"):
        assert_bad_request(client.post("/v2.1/servers", headers=h, json={
            "server": body, "os:scheduler_hints": bad}))
    r = client.post("/v2.1/servers", headers=h, json={
        "server": body, "os:scheduler_hints": {"group": "00000000-0000-0000-0000-000000000000"}})
    assert_bad_request(r)
    assert "could not be found" in r.json()["badRequest"]["message"]
    for version, bad_group in (("2.1", {"name": "g", "policies": ["soft-affinity"]}),
                               ("2.1", {"name": "g", "policies": ["affinity", "affinity"]}),
                               ("2.1", {"name": "g", "policy": "affinity"}),
                               ("2.64", {"name": "g", "policies": ["affinity"]}),
                               ("2.64", {"name": "g", "policy": "affinity",
                                         "rules": {"max_server_per_host": 2}}),
                               ("2.64", {"policy": "affinity"})):
        assert_bad_request(client.post("/v2.1/os-server-groups", headers=_h(ALICE, version),
                                       json={"server_group": bad_group}))
    assert_bad_request(client.post("/v2.1/os-server-groups", headers=h, json={"group": {}}))
    # other projects' groups are not found; delete, then the server shows no group
    assert client.get(f"/v2.1/os-server-groups/{group['id']}",
                      headers=_h(BOB, "2.71")).status_code == 404
    assert client.delete(f"/v2.1/os-server-groups/{group['id']}",
                         headers=_h(BOB, "2.71")).status_code == 404
    assert client.delete(f"/v2.1/os-server-groups/{group['id']}", headers=h).status_code == 204
    again = client.get(f"/v2.1/servers/{sid}", headers=h)
    assert again.json()["server"]["server_groups"] == []
    assert again.headers["etag"] != tag
    assert client.get(f"/v2.1/os-server-groups/{group['id']}", headers=h).status_code == 404


def test_api_list(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    ids = [client.post("/v2.1/os-server-groups", headers=_h(ALICE, "2.1"), json={
        "server_group": {"name": f"g{i}", "policies": ["affinity"]}}).json()[
        "server_group"]["id"] for i in range(3)]
    client.post("/v2.1/os-server-groups", headers=_h(BOB, "2.1"), json={
        "server_group": {"name": "theirs", "policies": ["affinity"]}})
    ids.sort()  # oldest first, then by id: the test clock does not move

    def listed(token: dict[str, str], query: str = "", version: str = "2.1") -> list[str]:
        r = client.get(f"/v2.1/os-server-groups{query}", headers=_h(token, version))
        assert r.status_code == 200, r.text
        return [g["id"] for g in r.json()["server_groups"]]

    assert listed(ALICE) == ids
    assert listed(ALICE, "?offset=1&limit=1") == ids[1:2]
    assert listed(ALICE, "?all_projects=True") == ids  # not an administrator
    assert len(listed(ADMIN, "?all_projects=True")) == 4
    assert listed(ADMIN) == []
    assert_bad_request(client.get("/v2.1/os-server-groups?whatever=1",
                                  headers=_h(ALICE, "2.75")))
    assert listed(ALICE, "?whatever=1", "2.74") == ids
    assert_bad_request(client.get("/v2.1/os-server-groups?limit=-1", headers=_h(ALICE, "2.1")))
