"""Project quotas (``/os-quota-sets``): set by administrators, recorded as events,
enforced on create, multi-create, resize, metadata and key pairs, shown in ``/limits``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from tests.engines import make_engine
from tests.support.compute import IMAGE_ID, action, active_server, assert_bad_request, built
from tests.support.racing import racing
from vmledger import Engine, FakeClock
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.errors import BadRequest, Forbidden
from vmledger.domain.quota import QuotaExceeded, QuotaSet, quota_set_id

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member",
          "bob-secret:bob:p2:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}


def test_limits_are_events_and_survive_a_rebuild(engine: Engine) -> None:
    ctx = engine.context(user_id="root", project_id="ops", is_admin=True)
    assert engine.quota_limits("p1")["instances"] == -1
    engine.set_quotas("p1", {"instances": 3, "cores": "8"}, ctx=ctx)
    engine.set_quotas("p1", {"ram": 4096}, ctx=ctx)
    limits = engine.quota_limits("p1")
    assert (limits["instances"], limits["cores"], limits["ram"]) == (3, 8, 4096)
    engine.updater.rebuild()
    assert engine.quota_limits("p1") == limits
    engine.revert_quotas("p1", ctx=ctx)
    assert engine.quota_limits("p1")["instances"] == -1
    engine.revert_quotas("p1", ctx=ctx)  # nothing more to record
    with pytest.raises(Forbidden):
        engine.set_quotas("p1", {"instances": 1},
                          ctx=engine.context(user_id="alice", project_id="p1", is_admin=False))
    with pytest.raises(BadRequest):
        engine.set_quotas("p1", {"instances": -2}, ctx=ctx)
    with pytest.raises(BadRequest):
        engine.set_quotas("p1", {"nonsense": 1}, ctx=ctx)


def test_create_and_resize_are_held_to_the_quota(engine: Engine) -> None:
    admin = engine.context(user_id="root", project_id="ops", is_admin=True)
    mine = engine.context(user_id="alice", project_id="p1", is_admin=False)
    engine.set_quotas("p1", {"instances": 3, "cores": 3, "ram": 8192}, ctx=admin)
    first = built(engine, "a", ctx=mine)  # m1.small: 1 vCPU, 2048 MB
    built(engine, "b", ctx=mine)
    with pytest.raises(QuotaExceeded, match="Quota exceeded for instances: Requested 2, "
                                            "but already used 2 of 3 instances"):
        engine.create_servers("c", flavor="m1.small", image="cirros-0.6.2-x86_64",
                              count=2, ctx=mine)
    # as many as fit, when that is at least min_count
    made = engine.create_servers("c", flavor="m1.small", image="cirros-0.6.2-x86_64",
                                 count=2, min_count=1, ctx=mine)
    assert len(made) == 1
    engine.run_until_idle()
    # m1.medium is 2 vCPUs and 4096 MB: one more core than the quota leaves
    with pytest.raises(QuotaExceeded, match="Quota exceeded for cores: Requested 1, but "
                                            "already used 3 of 3 cores"):
        engine.resize(first, flavor="m1.medium", ctx=mine)
    engine.set_quotas("p1", {"cores": 4}, ctx=admin)
    engine.resize(first, flavor="m1.medium", ctx=mine)
    engine.run_until_idle()
    # other projects are not held to p1's limits
    built(engine, "elsewhere", ctx=engine.context(user_id="bob", project_id="p2", is_admin=False))


def test_metadata_and_key_pair_quotas(engine: Engine) -> None:
    admin = engine.context(user_id="root", project_id="ops", is_admin=True)
    mine = engine.context(user_id="alice", project_id="p1", is_admin=False)
    engine.set_quotas("p1", {"metadata_items": 2, "key_pairs": 1}, ctx=admin)
    sid = built(engine, "a", ctx=mine)
    engine.set_metadata(sid, {"a": "1", "b": "2"}, ctx=mine)
    with pytest.raises(Forbidden, match="exceeds 2"):
        engine.set_metadata(sid, {"c": "3"}, ctx=mine)
    with pytest.raises(Forbidden, match="exceeds 2"):
        engine.create_server("b", flavor="m1.small", image="cirros-0.6.2-x86_64", ctx=mine,
                             metadata={"a": "1", "b": "2", "c": "3"})
    engine.generate_keypair("one", ctx=mine)
    with pytest.raises(Forbidden, match="too many key pairs"):
        engine.generate_keypair("two", ctx=mine)


def _client(engine: Engine) -> ApiClient:
    return ApiClient(create_app(engine, auth="token", tokens=TOKENS))


def _quotas(client: ApiClient, path: str, token: dict[str, str], version: str = "2.1",
            method: str = "get", **kwargs: Any) -> Any:
    return getattr(client, method)(f"/v2.1/os-quota-sets/{path}", headers={
        **token, "X-OpenStack-Nova-API-Version": version}, **kwargs)


NETWORK = {"fixed_ips", "floating_ips", "security_groups", "security_group_rules"}
INJECTED = {"injected_files", "injected_file_content_bytes", "injected_file_path_bytes"}
BASE = {"instances", "cores", "ram", "metadata_items", "key_pairs", "server_groups",
        "server_group_members"}


@pytest.mark.parametrize(("version", "keys"), [
    ("2.1", BASE | NETWORK | INJECTED), ("2.36", BASE | INJECTED), ("2.57", BASE)])
def test_api_shapes(memory_engine: Engine, version: str, keys: set[str]) -> None:
    client = _client(memory_engine)
    shown = _quotas(client, "p1", ALICE, version).json()["quota_set"]
    assert set(shown) == keys | {"id"} and shown["id"] == "p1"
    detail = _quotas(client, "p1/detail", ALICE, version).json()["quota_set"]
    assert set(detail) == keys | {"id"}
    assert detail["instances"] == {"in_use": 0, "limit": -1, "reserved": 0}
    defaults = _quotas(client, "p2/defaults", ALICE, version).json()["quota_set"]
    assert set(defaults) == keys | {"id"}
    updated = _quotas(client, "p1", ADMIN, version, "put",
                      json={"quota_set": {"instances": 5}}).json()["quota_set"]
    assert set(updated) == keys and updated["instances"] == 5


def test_api_update_rules_and_policy(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    active_server(memory_engine, client, "one", headers=ALICE)
    active_server(memory_engine, client, "two", headers=ALICE)
    r = _quotas(client, "p1", ADMIN, "2.1", "put", json={"quota_set": {"instances": 1}})
    assert_bad_request(r)
    assert r.json()["badRequest"]["message"] == (
        "Quota limit 1 for instances must be greater than or equal to already used and "
        "reserved 2.")
    r = _quotas(client, "p1", ADMIN, "2.1", "put",
                json={"quota_set": {"instances": 1, "force": "True"}})
    assert r.status_code == 200 and r.json()["quota_set"]["instances"] == 1
    r = client.post("/v2.1/servers", headers=ALICE, json={"server": {
        "name": "three", "flavorRef": "2", "imageRef": IMAGE_ID}})
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Quota exceeded for instances: Requested 1, but already used 2 of 1 instances")
    # the limits show it
    absolute = client.get("/v2.1/limits", headers=ALICE).json()["limits"]["absolute"]
    assert (absolute["maxTotalInstances"], absolute["totalInstancesUsed"]) == (1, 2)
    # refusals
    for body in ({"quota_set": {"instances": "many"}}, {"quota_set": {"instances": -5}},
                 {"quota_set": {"networks": 1}}, {"quota": {}}, {"quota_set": []},
                 {"quota_set": {"force": "perhaps"}}):
        assert_bad_request(_quotas(client, "p1", ADMIN, "2.1", "put", json=body))
    assert_bad_request(_quotas(client, "p1", ADMIN, "2.36", "put",
                               json={"quota_set": {"floating_ips": 1}}))
    assert_bad_request(_quotas(client, "p1", ADMIN, "2.57", "put",
                               json={"quota_set": {"injected_files": 1}}))
    assert_bad_request(_quotas(client, "p1?user_id=alice", ADMIN, "2.1", "put",
                               json={"quota_set": {"instances": 3}}))
    assert_bad_request(_quotas(client, "p1?whatever=1", ALICE, "2.75"))
    assert _quotas(client, "p1?whatever=1", ALICE, "2.74").status_code == 200
    # policy: members read their own project's; only administrators change
    assert _quotas(client, "p2", ALICE).status_code == 403
    assert _quotas(client, "p2/detail", ALICE).status_code == 403
    assert _quotas(client, "p2/defaults", ALICE).status_code == 200
    r = _quotas(client, "p1", ALICE, "2.1", "put", json={"quota_set": {"instances": 9}})
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:os-quota-sets:update to be performed.")
    assert _quotas(client, "p1", ALICE, "2.1", "delete").status_code == 403
    # back to the defaults
    assert _quotas(client, "p1", ADMIN, "2.1", "delete").status_code == 202
    assert _quotas(client, "p1", ALICE).json()["quota_set"]["instances"] == -1


def test_resize_over_quota_is_403_and_changes_nothing(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    sid = active_server(memory_engine, client, "one", headers=ALICE)
    _quotas(client, "p1", ADMIN, "2.1", "put", json={"quota_set": {"ram": 2048}})
    r = action(client, sid, {"resize": {"flavorRef": "3"}}, headers=ALICE)
    assert r.status_code == 403
    assert "Quota exceeded for ram" in r.json()["forbidden"]["message"]
    shown = client.get(f"/v2.1/servers/{sid}", headers=ALICE).json()["server"]
    assert shown["status"] == "ACTIVE" and shown["flavor"]["id"] == "2"


def test_quota_changes_are_in_the_ledger(memory_engine: Engine) -> None:
    ctx = memory_engine.context(user_id="root", project_id="ops", is_admin=True)
    memory_engine.set_quotas("p1", {"instances": 4}, ctx=ctx)
    memory_engine.revert_quotas("p1", ctx=ctx)
    events = [n for n in memory_engine.service.recorder.select_notifications(
        start=1, limit=100) if "QuotaSet" in n.topic]
    assert [n.topic.rsplit(".", 1)[-1] for n in events] == [
        "Started", "LimitsSet", "Reverted"]


def test_concurrent_creates_never_exceed_the_quota(url: str) -> None:
    """Creates racing in one project, from several engines on one database (as several
    API processes) and several threads each, admit exactly what the quota allows: a
    lost race is decided again against the usage that includes the winner."""
    clock = FakeClock()
    # own seeds: distinct server ids, so the creates themselves never collide
    engines = [make_engine(url, clock=clock, seed=10 + n) for n in range(3)]
    try:
        admin = engines[0].context(user_id="root", project_id="ops", is_admin=True)
        engines[0].set_quotas("p1", {"instances": 3}, ctx=admin)

        def create(engine: Engine, n: int) -> Callable[[], object]:
            ctx = engine.context(user_id="alice", project_id="p1", is_admin=False)
            return lambda: engine.create_server(f"raced-{n}", flavor="m1.small",
                                                image="cirros-0.6.2-x86_64", ctx=ctx)

        outcomes = racing([create(engines[n % 3], n) for n in range(9)])
        assert outcomes == ["QuotaExceeded"] * 6 + ["ok"] * 3
        for engine in engines:
            engine.updater.catch_up()
            assert engine.quota_usage("p1")["instances"] == 3
        # each admitted create left its record: what it asked for, against what usage
        quota = engines[0].service.repository.get(quota_set_id("p1"))
        assert isinstance(quota, QuotaSet)
        admitted = [e for e in engines[0].service.repository.event_store.get(quota.id)
                    if isinstance(e, QuotaSet.Admitted)]
        assert sorted(e.used["instances"] for e in admitted) == [0, 1, 2]
        assert all(e.requested == {"instances": 1, "cores": 1, "ram": 2048}
                   and e.user_id == "alice" for e in admitted)
    finally:
        for engine in engines:
            engine.close()


def test_concurrent_resizes_never_exceed_the_quota(url: str) -> None:
    clock = FakeClock()
    engines = [make_engine(url, clock=clock) for _ in range(2)]
    try:
        admin = engines[0].context(user_id="root", project_id="ops", is_admin=True)
        mine = engines[0].context(user_id="alice", project_id="p1", is_admin=False)
        servers = [built(engines[0], f"s{n}", ctx=mine) for n in range(2)]
        # two m1.small (1 vCPU each) fit 3 cores; one of them can grow to m1.medium (2)
        engines[0].set_quotas("p1", {"cores": 3}, ctx=admin)
        outcomes = racing([
            functools.partial(e.resize, s, flavor="m1.medium",
                              ctx=e.context(user_id="alice", project_id="p1", is_admin=False))
            for e, s in zip(engines, servers, strict=True)])
        assert outcomes == ["QuotaExceeded", "ok"]
        # the resize counts its larger flavor from the request (before the host agent
        # has done anything) until it is confirmed or reverted
        assert engines[0].quota_usage("p1")["cores"] == 3
        engines[0].run_until_idle()
        resized = next(s for s in servers
                       if engines[0].get_server(s).status == "VERIFY_RESIZE")
        assert engines[0].quota_usage("p1")["cores"] == 3
        engines[0].act(resized, "revert_resize", ctx=mine)
        assert engines[0].quota_usage("p1")["cores"] == 3
        engines[0].run_until_idle()
        assert engines[0].quota_usage("p1")["cores"] == 2
    finally:
        for engine in engines:
            engine.close()


def test_multi_create_takes_what_fits_under_concurrency(memory_engine: Engine) -> None:
    """min_count/max_count creates racing with single creates: together they never go
    over, and each multi-create gets at least its min_count or nothing."""
    admin = memory_engine.context(user_id="root", project_id="ops", is_admin=True)
    memory_engine.set_quotas("p1", {"instances": 5}, ctx=admin)
    ctx = memory_engine.context(user_id="alice", project_id="p1", is_admin=False)
    made: list[int] = []

    def multi() -> None:
        made.append(len(memory_engine.create_servers(
            "many", flavor="m1.small", image="cirros-0.6.2-x86_64", count=3, min_count=2,
            ctx=ctx)))

    outcomes = racing([multi, multi, multi])
    assert memory_engine.quota_usage("p1")["instances"] == sum(made) <= 5
    assert all(n >= 2 for n in made) and outcomes.count("ok") == len(made) == 2


def test_the_default_quota_class_sets_every_projects_defaults(url: str) -> None:
    clock = FakeClock()
    engines = [make_engine(url, clock=clock) for _ in range(2)]
    try:
        engine = engines[0]
        client = _client(engine)
        v = {"X-OpenStack-Nova-API-Version": "2.1"}
        r = client.get("/v2.1/os-quota-class-sets/default", headers={**ALICE, **v})
        assert r.status_code == 403
        shown = client.get("/v2.1/os-quota-class-sets/default",
                           headers={**ADMIN, **v}).json()["quota_class_set"]
        assert shown["id"] == "default" and shown["instances"] == -1
        assert "server_groups" not in shown and "floating_ips" in shown
        later = client.get("/v2.1/os-quota-class-sets/default", headers={
            **ADMIN, "X-OpenStack-Nova-API-Version": "2.57"}).json()["quota_class_set"]
        assert "server_groups" in later and "floating_ips" not in later
        assert "injected_files" not in later
        for body in ({"quota_class_set": {"instances": -2}}, {"quota_class_set": {"x": 1}},
                     {"quota_class_set": {"server_groups": 1}}, {"instances": 1}):
            r = client.put("/v2.1/os-quota-class-sets/default", json=body,
                           headers={**ADMIN, **v})
            assert r.status_code == 400, body
        r = client.put("/v2.1/os-quota-class-sets/default", headers={**ADMIN, **v},
                       json={"quota_class_set": {"instances": 2, "cores": "20"}})
        assert r.status_code == 200, r.text
        body = r.json()["quota_class_set"]
        assert "id" not in body and (body["instances"], body["cores"]) == (2, 20)
        # every project's defaults now, and its limits unless it has its own
        defaults = client.get("/v2.1/os-quota-sets/p1/defaults", headers=ALICE).json()
        assert defaults["quota_set"]["instances"] == 2
        limits = client.get("/v2.1/limits", headers=ALICE).json()["limits"]["absolute"]
        assert limits["maxTotalInstances"] == 2
        # held under racing creates from two processes, though p1 has no limits of its own
        outcomes = racing([functools.partial(
            e.create_server, f"r{n}", flavor="m1.small", image="cirros-0.6.2-x86_64",
            ctx=e.context(user_id="alice", project_id="p1", is_admin=False))
            for n, e in enumerate(engines * 3)])
        assert outcomes == ["QuotaExceeded"] * 4 + ["ok"] * 2
        # a project's own limit wins over the class
        admin = engine.context(user_id="root", project_id="ops", is_admin=True)
        engine.set_quotas("p1", {"instances": 3}, ctx=admin)
        engine.create_server("third", flavor="m1.small", image="cirros-0.6.2-x86_64",
                             ctx=engine.context(user_id="alice", project_id="p1",
                                                is_admin=False))
        engine.updater.rebuild()
        assert engine.quota_limits("p2")["instances"] == 2
        assert engine.quota_limits("p1")["instances"] == 3
    finally:
        for e in engines:
            e.close()
