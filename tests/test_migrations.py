"""Migration records (Nova's ``os-migrations``): one per resize, from the log.

The read model follows each resize from its request to its settlement (by a user, the
timer or a delete), numbers records in log order so that a rebuild gives the same ids,
and the API shows them to administrators per microversion, filtered and paged as Nova.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.support.compute import action, active_server, assert_bad_request, built
from vmledger import Engine
from vmledger.adapters.simulator import Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.clock import FakeClock
from vmledger.projections.log_reading import EventDecoder, read_page

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}


def statuses(engine: Engine, server_id: str) -> list[str]:
    return [m["status"] for m in engine.migrations(server_id=server_id)]


def test_a_resize_walks_nova_s_statuses(engine: Engine) -> None:
    sid = built(engine, "a")
    engine.resize(sid, flavor="m1.medium")
    engine.run_until_idle()
    # what a reader sees after each event: the view folded again one event at a time
    engine.view.clear()
    decode = EventDecoder(engine.service.mapper, engine.view.wants)
    seen: list[str] = []
    position = 0
    while page := read_page(engine.service.recorder, position, 1):
        engine.view.apply_pages([(page, page[-1][0])], decode, after=position)
        position = page[-1][0]
        for status in statuses(engine, sid):
            if not seen or status != seen[-1]:
                seen.append(status)
    assert seen == ["pre-migrating", "migrating", "post-migrating", "finished"]
    [record] = engine.migrations(server_id=sid)
    assert record["id"] == 1 and record["migration_type"] == "resize"
    assert (record["old_flavor_id"], record["new_flavor_id"]) == (2, 3)
    assert record["source_compute"] == record["dest_compute"] == engine.host
    assert record["source_node"] == record["dest_node"] == engine.host
    assert record["user_id"] and record["project_id"]
    engine.confirm_resize(sid)
    engine.run_until_idle()
    assert statuses(engine, sid) == ["confirmed"]


def test_revert_failure_timer_and_delete_settle_records(engine: Engine, clock: FakeClock
                                                        ) -> None:
    sid = built(engine, "a")
    engine.resize(sid, flavor="m1.medium")
    engine.run_until_idle()
    engine.revert_resize(sid)
    assert statuses(engine, sid) == ["reverting"]
    engine.run_until_idle()
    assert statuses(engine, sid) == ["reverted"]
    # a second resize is a second record; the timer confirms it after the window
    engine.resize(sid, flavor="m1.large")
    engine.run_until_idle()
    assert statuses(engine, sid) == ["reverted", "finished"]
    clock.advance(hours=25)
    engine.run_until_idle()
    assert statuses(engine, sid) == ["reverted", "confirmed"]
    assert [m["new_flavor_id"] for m in engine.migrations(server_id=sid)] == [3, 4]
    # deleting a server waiting in VERIFY_RESIZE confirms its resize, as Nova
    other = built(engine, "b")
    engine.resize(other, flavor="m1.medium")
    engine.run_until_idle()
    engine.delete(other)
    engine.run_until_idle()
    assert statuses(engine, other) == ["confirmed"]
    assert [m["id"] for m in engine.migrations()] == [1, 2, 3]


def test_a_failed_resize_is_an_error_record(url: str, clock: FakeClock) -> None:
    from tests.engines import make_engine

    sim = Simulator(seed=1)
    with make_engine(url, clock=clock, hypervisor=sim) as engine:
        sid = built(engine)
        sim.inject("resize", "fail", rollback=True)
        engine.resize(sid, flavor="m1.medium")
        engine.run_until_idle()
        assert statuses(engine, sid) == ["error"]
        # deleting mid-resize leaves the record in error too
        engine.resize(sid, flavor="m1.medium")
        engine.delete(sid)
        engine.run_until_idle()
        assert statuses(engine, sid) == ["error", "error"]


def test_a_rebuild_gives_the_same_records(engine: Engine, clock: FakeClock) -> None:
    servers = [built(engine, f"vm-{i}") for i in range(3)]
    for sid in reversed(servers):
        engine.resize(sid, flavor="m1.medium")
        clock.advance(seconds=1)
    engine.run_until_idle()
    engine.revert_resize(servers[1])
    engine.run_until_idle()
    before = engine.migrations()
    assert [m["server_id"] for m in before] == list(reversed(servers))
    engine.updater.rebuild()
    assert engine.migrations() == before
    engine.resize(servers[1], flavor="m1.large")
    engine.run_until_idle()
    assert [m["id"] for m in engine.migrations()] == [1, 2, 3, 4]


def test_engine_filters(engine: Engine, clock: FakeClock) -> None:
    a, b = built(engine, "a"), built(engine, "b")
    engine.resize(a, flavor="m1.medium")
    engine.run_until_idle()
    clock.advance(minutes=5)
    engine.resize(b, flavor="m1.medium")
    engine.run_until_idle()
    engine.revert_resize(b)
    engine.run_until_idle()
    assert [m["server_id"] for m in engine.migrations(status="reverted")] == [b]
    assert len(engine.migrations(host=engine.host)) == 2
    assert engine.migrations(host="elsewhere") == []
    since = engine.migrations(since=clock.now() - timedelta(minutes=1))
    assert [m["server_id"] for m in since] == [b]
    newest = engine.migrations(newest_first=True, limit=1)
    assert [m["server_id"] for m in newest] == [b]
    after = engine.migrations(newest_first=True, marker=newest[0]["uuid"])
    assert [m["server_id"] for m in after] == [a]
    with pytest.raises(TypeError):
        engine.migrations(where={"nonsense": "x"})


# --- the API ------------------------------------------------------------------------------
def _resized(engine: Engine, clock: FakeClock, count: int) -> list[str]:
    servers = []
    for i in range(count):
        sid = built(engine, f"vm-{i}")
        engine.resize(sid, flavor="m1.medium")
        engine.run_until_idle()
        clock.advance(seconds=10)
        servers.append(sid)
    return servers


def _get(client: ApiClient, version: str, query: str = "", token: dict[str, str] = ADMIN
         ) -> Any:
    return client.get(f"/v2.1/os-migrations{query}",
                      headers={**token, "X-OpenStack-Nova-API-Version": version})


BASE = {"id", "status", "instance_uuid", "source_node", "source_compute", "dest_node",
        "dest_compute", "dest_host", "old_instance_type_id", "new_instance_type_id",
        "created_at", "updated_at"}


def test_api_shapes_per_microversion(memory_engine: Engine, clock: FakeClock) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    [sid] = _resized(memory_engine, clock, 1)
    shapes = {"2.1": BASE, "2.23": BASE | {"migration_type"},
              "2.59": BASE | {"migration_type", "uuid"},
              "2.80": BASE | {"migration_type", "uuid", "user_id", "project_id"}}
    for version, keys in shapes.items():
        r = _get(client, version)
        assert r.status_code == 200, r.text
        [m] = r.json()["migrations"]
        assert set(m) == keys, version
        assert (m["instance_uuid"], m["status"], m["dest_host"]) == (sid, "finished", None)
        assert m["created_at"].count(":") == 2 and "Z" not in m["created_at"]
    # who asked: the resize's requester
    other = active_server(memory_engine, client, headers=ALICE)
    r = action(client, other, {"resize": {"flavorRef": "3"}}, headers=ALICE)
    assert r.status_code == 202
    newest = _get(client, "2.80").json()["migrations"][0]
    assert (newest["instance_uuid"], newest["user_id"], newest["project_id"]) == (
        other, "alice", "p1")


def test_only_administrators(memory_engine: Engine, clock: FakeClock) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    r = _get(client, "2.1", token=ALICE)
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == (
        "Policy doesn't allow os_compute_api:os-migrations:index to be performed.")


def test_api_filters_order_and_paging(memory_engine: Engine, clock: FakeClock) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    servers = _resized(memory_engine, clock, 3)
    memory_engine.revert_resize(servers[0])
    memory_engine.run_until_idle()

    def ids(version: str, query: str = "") -> list[int]:
        r = _get(client, version, query)
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["migrations"]]

    assert ids("2.1") == [1, 2, 3]  # oldest first before 2.59
    assert ids("2.59") == [3, 2, 1]  # newest first
    assert ids("2.1", "?status=reverted") == [1]
    assert ids("2.1", f"?instance_uuid={servers[1]}") == [2]
    assert ids("2.1", f"?host={memory_engine.host}&migration_type=resize") == [1, 2, 3]
    assert ids("2.1", "?source_compute=elsewhere") == []
    assert ids("2.1", "?hidden=1") == [] and ids("2.1", "?hidden=0") == [1, 2, 3]
    assert ids("2.1", "?whatever=1&limit=x") == [1, 2, 3]  # ignored before 2.59
    assert ids("2.1", "?status=x&status=reverted") == [1]  # the last one counts
    # paging from 2.59
    r = _get(client, "2.59", "?limit=2")
    page = r.json()
    assert [m["id"] for m in page["migrations"]] == [3, 2]
    [link] = page["migrations_links"]
    assert link["rel"] == "next" and f"marker={page['migrations'][1]['uuid']}" in link["href"]
    assert ids("2.59", f"?limit=2&marker={page['migrations'][1]['uuid']}") == [1]
    assert "migrations_links" not in _get(client, "2.59", "?limit=5").json()
    assert ids("2.59", "?limit=0") == []
    # changes-since / changes-before on updated_at
    assert ids("2.59", "?changes-since=2000-01-01T00:00:00Z") == [3, 2, 1]
    assert ids("2.59", "?changes-since=2999-01-01T00:00:00Z") == []
    assert ids("2.66", "?changes-before=2000-01-01T00:00:00Z") == []
    assert ids("2.80", "?user_id=admin&project_id=admin") == [3, 2, 1]
    assert ids("2.80", "?user_id=nobody") == []


@pytest.mark.parametrize(("version", "query", "message"), [
    ("2.59", "?whatever=1", "whatever"),
    ("2.59", "?limit=-1", "limit"),
    ("2.59", "?limit=1&limit=2", "limit"),
    ("2.59", "?marker=not-a-migration", "Marker not-a-migration could not be found."),
    ("2.59", "?changes-since=yesterday", "changes-since"),
    ("2.59", "?changes-before=2000-01-01T00:00:00Z", "changes-before"),  # from 2.66
    ("2.66", "?changes-since=2001-01-01T00:00:00Z&changes-before=2000-01-01T00:00:00Z",
     "changes-since"),
    ("2.79", "?user_id=x", "user_id"),  # from 2.80
])
def test_bad_queries_are_400(memory_engine: Engine, clock: FakeClock, version: str,
                             query: str, message: str) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    _resized(memory_engine, clock, 1)
    r = _get(client, version, query)
    assert_bad_request(r)
    assert message in r.json()["badRequest"]["message"]


def test_server_migrations(memory_engine: Engine, clock: FakeClock) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    sid = active_server(memory_engine, client, headers=ADMIN)
    assert action(client, sid, {"resize": {"flavorRef": "3"}}, headers=ADMIN).status_code == 202
    memory_engine.run_until_idle()
    h = {**ADMIN, "X-OpenStack-Nova-API-Version": "2.23"}
    r = client.get(f"/v2.1/servers/{sid}/migrations", headers=h)
    assert r.status_code == 200 and r.json() == {"migrations": []}  # a resize is not live
    r = client.get(f"/v2.1/servers/{sid}/migrations/1", headers=h)
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == (
        f"Migration 1 for server {sid} is not live-migration.")
    r = client.get(f"/v2.1/servers/{sid}/migrations/9", headers=h)
    assert r.json()["itemNotFound"]["message"] == (  # Nova's show says "in-progress"
        f"In-progress live migration 9 is not found for server {sid}.")
    r = client.get("/v2.1/servers/00000000-0000-0000-0000-000000000000/migrations",
                   headers=h)
    assert r.status_code == 404
    r = client.get(f"/v2.1/servers/{sid}/migrations", headers={**ALICE,
                   "X-OpenStack-Nova-API-Version": "2.23"})
    assert r.status_code == 403
    r = client.get(f"/v2.1/servers/{sid}/migrations", headers={**ADMIN,
                   "X-OpenStack-Nova-API-Version": "2.22"})
    assert r.status_code == 404
