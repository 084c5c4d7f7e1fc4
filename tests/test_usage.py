"""Simple tenant usage (``/os-simple-tenant-usage``): what servers used over a period,
from their launch and termination times, as Nova computes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.compute import active_server, assert_bad_request, built
from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.clock import FakeClock
from vmledger.projections.store import MarkerNotFound

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member",
          "bob-secret:bob:p2:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}
EPOCH = "2000-01-01T00:00:00"


def _text(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def test_hours_follow_launch_and_termination(engine: Engine, clock: FakeClock) -> None:
    t0 = clock.now()
    early = built(engine, "early")  # runs from t0 and is deleted at t0 + 3 h
    clock.advance(hours=2)
    late = built(engine, "late")  # runs from t0 + 2 h on
    clock.advance(hours=1)
    engine.delete(early)
    engine.run_until_idle()
    clock.advance(hours=1)
    building = engine.create_server("building", flavor="m1.small",
                                    image="cirros-0.6.2-x86_64")  # never launched
    now = clock.now()

    def usage(start: datetime, stop: datetime) -> dict[str, float]:
        return {u["name"]: u["hours"] for u in engine.usage(start, stop)}

    assert usage(t0 - timedelta(days=1), now) == {"early": 3.0, "late": 2.0}
    assert usage(t0 + timedelta(hours=1), t0 + timedelta(hours=2, minutes=30)) == {
        "early": 1.5, "late": 0.5}
    assert usage(t0 + timedelta(hours=3), now) == {"late": 1.0}  # early ended at the start
    assert usage(t0 - timedelta(days=1), t0) == {}  # nothing launched before t0
    infos = {u["name"]: u for u in engine.usage(t0, now)}
    assert infos["early"]["state"] == "terminated"
    assert infos["early"]["uptime"] == 3 * 3600
    assert infos["early"]["ended_at"] == (t0 + timedelta(hours=3)).replace(tzinfo=None)
    assert infos["late"]["state"] == "active" and infos["late"]["ended_at"] is None
    assert infos["late"]["uptime"] == 2 * 3600
    assert (infos["late"]["vcpus"], infos["late"]["memory_mb"], infos["late"]["local_gb"],
            infos["late"]["flavor"]) == (1, 2048, 20, "m1.small")
    assert building.id not in {u["instance_id"] for u in engine.usage(t0, now)}
    # paging: by project then id, after a marker
    everything = engine.usage(t0, now)
    assert [u["instance_id"] for u in everything] == sorted([early, late])
    assert engine.usage(t0, now, limit=1) == everything[:1]
    assert engine.usage(t0, now, marker=everything[0]["instance_id"]) == everything[1:]
    with pytest.raises(MarkerNotFound):
        engine.usage(t0, now, marker="no-such-server")


def test_a_resize_launches_again(engine: Engine, clock: FakeClock) -> None:
    """As Nova: usage runs from the last launch, at the current flavor."""
    t0 = clock.now()
    sid = built(engine)
    clock.advance(hours=5)
    engine.resize(sid, flavor="m1.medium")
    engine.run_until_idle()
    engine.confirm_resize(sid)
    engine.run_until_idle()
    clock.advance(hours=1)
    [info] = engine.usage(t0, clock.now())
    assert (info["hours"], info["vcpus"], info["flavor"]) == (1.0, 2, "m1.medium")


def _client(engine: Engine) -> ApiClient:
    return ApiClient(create_app(engine, auth="token", tokens=TOKENS))


def _get(client: ApiClient, path: str, token: dict[str, str], version: str = "2.1",
         **params: Any) -> Any:
    return client.get(f"/v2.1/os-simple-tenant-usage{path}", params=params,
                      headers={**token, "X-OpenStack-Nova-API-Version": version})


def test_list_and_show(memory_engine: Engine, clock: FakeClock) -> None:
    client = _client(memory_engine)
    mine = active_server(memory_engine, client, "mine", headers=ALICE)
    active_server(memory_engine, client, "theirs", headers=BOB)
    clock.advance(hours=2)
    r = _get(client, "", ADMIN, start=EPOCH)
    assert r.status_code == 200, r.text
    usages = {u["tenant_id"]: u for u in r.json()["tenant_usages"]}
    assert set(usages) == {"p1", "p2"}
    assert "server_usages" not in usages["p1"]
    assert (usages["p1"]["total_hours"], usages["p1"]["total_vcpus_usage"],
            usages["p1"]["total_memory_mb_usage"], usages["p1"]["total_local_gb_usage"]) == (
        2.0, 2.0, 4096.0, 40.0)
    assert usages["p1"]["stop"] == _text(clock.now())  # "end" defaults to now
    assert usages["p1"]["start"] == EPOCH
    detailed = _get(client, "", ADMIN, start=EPOCH, detailed="1").json()["tenant_usages"]
    assert {len(u["server_usages"]) for u in detailed} == {1}
    # show: a member's own project, or any for administrators
    r = _get(client, "/p1", ALICE, start=EPOCH)
    assert r.status_code == 200
    [server] = r.json()["tenant_usage"]["server_usages"]
    assert (server["instance_id"], server["name"], server["hours"]) == (mine, "mine", 2.0)
    assert _get(client, "/p1", ADMIN, start=EPOCH).json() == r.json()
    assert _get(client, "/nobody", ADMIN, start=EPOCH).json() == {"tenant_usage": {}}
    # a future end is cut to now
    future = _get(client, "/p1", ALICE, start=EPOCH, end="2999-01-01T00:00:00").json()
    assert future["tenant_usage"]["stop"] == _text(clock.now())


def test_policy(memory_engine: Engine) -> None:
    client = _client(memory_engine)
    r = _get(client, "", ALICE)
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:os-simple-tenant-usage:list to be performed.")
    r = _get(client, "/p2", ALICE)
    assert r.status_code == 403
    assert "os-simple-tenant-usage:show" in r.json()["forbidden"]["message"]


def test_paging_from_2_40(memory_engine: Engine, clock: FakeClock) -> None:
    client = _client(memory_engine)
    ids = sorted(active_server(memory_engine, client, f"vm-{i}", headers=ALICE)
                 for i in range(3))
    clock.advance(hours=1)

    def page(version: str, **params: Any) -> Any:
        r = _get(client, "/p1", ALICE, version, start=EPOCH, **params)
        assert r.status_code == 200, r.text
        return r.json()

    first = page("2.40", limit="2")
    assert [s["instance_id"] for s in first["tenant_usage"]["server_usages"]] == ids[:2]
    [link] = first["tenant_usage_links"]
    assert "/os-simple-tenant-usage/p1?" in link["href"] and f"marker={ids[1]}" in link["href"]
    rest = page("2.40", limit="2", marker=ids[1])
    assert [s["instance_id"] for s in rest["tenant_usage"]["server_usages"]] == ids[2:]
    assert "tenant_usage_links" not in rest
    # before 2.40 limit and marker are ignored
    assert len(page("2.39", limit="1")["tenant_usage"]["server_usages"]) == 3
    r = _get(client, "", ADMIN, "2.40", start=EPOCH, detailed="1", limit="1")
    assert "tenant_usages_links" in r.json()
    assert_bad_request(_get(client, "/p1", ALICE, "2.40", marker="nope"))


@pytest.mark.parametrize(("version", "params", "message"), [
    ("2.1", {"start": "yesterday"}, "Invalid datetime string"),
    ("2.1", {"start": "2020-01-01T00:00:00Z"}, "Invalid datetime string"),
    ("2.1", {"end": "2020-01-01"}, "Invalid datetime string"),
    ("2.1", {"start": "2020-01-02T00:00:00", "end": "2020-01-01T00:00:00"},
     "The start time cannot occur after the end time."),
    ("2.1", {"start": "2999-01-01T00:00:00"}, "The start time cannot occur"),
    ("2.40", {"limit": "-1"}, "limit"),
    ("2.75", {"whatever": "1"}, "whatever"),
])
def test_bad_queries_are_400(memory_engine: Engine, version: str, params: dict[str, str],
                             message: str) -> None:
    r = _get(_client(memory_engine), "", ADMIN, version, **params)
    assert_bad_request(r)
    assert message in r.json()["badRequest"]["message"]


def test_unknown_parameters_are_ignored_before_2_75(memory_engine: Engine) -> None:
    r = _get(_client(memory_engine), "", ADMIN, "2.74", whatever="1")
    assert r.status_code == 200 and r.json() == {"tenant_usages": []}
