"""Moving servers between hosts over the Compute API: ``migrate`` and ``os-migrateLive``,
the records of ``os-migrations``, a server's live migrations in progress
(``/servers/{id}/migrations``, 2.23), aborting one (``DELETE``, 2.24; queued ones too
from 2.65) and forcing one to complete (``force_complete``, 2.22), per microversion and
with Nova's refusals. Two hosts share one database; a slow live migration is steered
while both hosts' agents run in the background, as separate processes' would."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.engines import make_engine
from tests.support.compute import IMAGE_ID
from tests.support.waiting import wait_for
from vmledger import FakeClock
from vmledger.adapters.simulator import Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
#: the fields of a live migration in progress (Nova's ``server_migrations.output``)
FIELDS = {"created_at", "dest_compute", "dest_host", "dest_node", "disk_processed_bytes",
          "disk_remaining_bytes", "disk_total_bytes", "id", "memory_processed_bytes",
          "memory_remaining_bytes", "memory_total_bytes", "server_uuid", "source_compute",
          "source_node", "status", "updated_at"}
PROGRESS = ("disk_processed_bytes", "disk_remaining_bytes", "disk_total_bytes",
            "memory_processed_bytes", "memory_remaining_bytes", "memory_total_bytes")


class Hosts:
    """compute-1 (the engine the API runs on, its own agent too) and compute-2 (another
    host's agent) on one database, and an API client over compute-1's engine."""

    def __init__(self, url: str, clock: FakeClock, live_migration_seconds: float) -> None:
        self.clock = clock
        self.first = make_engine(url, clock=clock, hypervisor=Simulator(
            seed=0, live_migration_seconds=live_migration_seconds))
        self.second = make_engine(url, clock=clock, host="compute-2", seed=2,
                                  hypervisor=Simulator(
                                      seed=2, live_migration_seconds=live_migration_seconds))
        self.second.run_until_idle()  # its agent reports its host
        self.client = ApiClient(create_app(self.first, auth="token", tokens=TOKENS))

    def settle(self) -> None:
        for _ in range(3):
            for engine in (self.first, self.second):
                engine.run_until_idle()
        self.first.updater.catch_up()

    def server(self, name: str = "vm") -> str:
        """A new server on compute-1, built, ACTIVE."""
        self.first.set_compute_service("compute-2", disabled=True)
        try:
            r = self.client.post("/v2.1/servers", headers=ADMIN, json={"server": {
                "name": name, "flavorRef": "2", "imageRef": IMAGE_ID}})
            assert r.status_code == 202, r.text
        finally:
            self.first.set_compute_service("compute-2", disabled=False)
        sid = str(r.json()["server"]["id"])
        self.settle()
        assert self.first.get_server(sid).host == "compute-1"
        return sid

    def close(self) -> None:
        self.second.close()
        self.first.close()


@pytest.fixture
def hosts(url: str, clock: FakeClock) -> Iterator[Hosts]:
    pair = Hosts(url, clock, 0.0)
    try:
        yield pair
    finally:
        pair.close()


@pytest.fixture
def slow_hosts(url: str, clock: FakeClock) -> Iterator[Hosts]:
    """Two hosts whose live migrations copy for a minute unless steered, both agents
    running in the background."""
    pair = Hosts(url, clock, 60.0)
    try:
        yield pair
    finally:
        pair.close()


def _v(version: str, who: dict[str, str] = ADMIN) -> dict[str, str]:
    return {**who, "OpenStack-API-Version": f"compute {version}"}


def _act(hosts: Hosts, sid: str, body: Any, version: str = "2.96",
         who: dict[str, str] = ADMIN) -> httpx.Response:
    hosts.clock.advance(seconds=1)  # each action its own start time (they list by it)
    return hosts.client.post(f"/v2.1/servers/{sid}/action", json=body,
                             headers=_v(version, who))


def _live(hosts: Hosts, sid: str, version: str = "2.96", host: str = "compute-2") -> None:
    r = _act(hosts, sid, {"os-migrateLive": {"host": host,
                                             "block_migration": "auto"}}, version)
    assert r.status_code == 202, r.text


def _migrations(hosts: Hosts, sid: str, version: str = "2.96",
                who: dict[str, str] = ADMIN) -> httpx.Response:
    return hosts.client.get(f"/v2.1/servers/{sid}/migrations", headers=_v(version, who))


def _abort(hosts: Hosts, sid: str, mid: int | str, version: str = "2.96",
           who: dict[str, str] = ADMIN) -> httpx.Response:
    hosts.clock.advance(seconds=1)
    return hosts.client.delete(f"/v2.1/servers/{sid}/migrations/{mid}",
                               headers=_v(version, who))


def _force(hosts: Hosts, sid: str, mid: int | str, version: str = "2.96",
           body: Any = None, who: dict[str, str] = ADMIN) -> httpx.Response:
    hosts.clock.advance(seconds=1)
    return hosts.client.post(f"/v2.1/servers/{sid}/migrations/{mid}/action",
                             json={"force_complete": None} if body is None else body,
                             headers=_v(version, who))


def _fault(r: httpx.Response, code: int, message: str) -> None:
    assert r.status_code == code, r.text
    [(_name, fault)] = r.json().items()
    assert (fault["code"], fault["message"]) == (code, message)


def _actions(hosts: Hosts, sid: str) -> list[str]:
    listed = hosts.client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                              headers=ADMIN).json()["instanceActions"]
    return [a["action"] for a in listed]


def _tempest_valid(client: type, schema_name: str, version: str, r: httpx.Response
                   ) -> None:
    """The response as tempest's client of that microversion validates it (its schema
    of the range, ``additionalProperties`` false)."""
    from tempest.lib.common.rest_client import RestClient

    wanted = tuple(int(n) for n in version.split("."))

    def within(entry: dict[str, Any]) -> bool:
        low, high = entry["min"], entry["max"]
        return ((low is None or wanted >= tuple(int(n) for n in low.split(".")))
                and (high is None or wanted <= tuple(int(n) for n in high.split("."))))

    [entry] = [e for e in client.schema_versions_info  # type: ignore[attr-defined]
               if within(e)]

    class Response(dict[str, str]):
        status = r.status_code

    RestClient.validate_response(getattr(entry["schema"], schema_name), Response(),
                                 r.json())


def _shown(hosts: Hosts, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = hosts.client.get(f"/v2.1/servers/{sid}",
                                            headers=ADMIN).json()["server"]
    return body


# --- the records, per microversion ---------------------------------------------------
def test_a_live_migration_in_progress_per_microversion(hosts: Hosts) -> None:
    sid = hosts.server()
    _live(hosts, sid)  # queued: compute-2's agent has not prepared yet
    assert _shown(hosts, sid)["status"] == "MIGRATING"
    r = _migrations(hosts, sid, "2.23")
    assert r.status_code == 200, r.text
    [record] = r.json()["migrations"]
    assert set(record) == FIELDS
    assert (record["id"], record["server_uuid"], record["status"]) == (1, sid, "queued")
    assert (record["source_compute"], record["source_node"]) == ("compute-1", "compute-1")
    assert (record["dest_compute"], record["dest_node"]) == ("compute-2", "compute-2")
    assert all(record[name] is None for name in PROGRESS)
    assert record["created_at"].count(":") == 2 and "Z" not in record["created_at"]
    r = hosts.client.get(f"/v2.1/servers/{sid}/migrations/1", headers=_v("2.23"))
    assert r.status_code == 200 and r.json() == {"migration": record}
    # uuid from 2.59, who asked from 2.80
    [at59] = _migrations(hosts, sid, "2.59").json()["migrations"]
    assert set(at59) == FIELDS | {"uuid"}
    [at80] = _migrations(hosts, sid, "2.80").json()["migrations"]
    assert set(at80) == FIELDS | {"uuid", "user_id", "project_id"}
    assert (at80["user_id"], at80["project_id"]) == ("root", "ops")
    # as tempest's clients validate them, at each of their schemas' ranges
    pytest.importorskip("tempest.lib")
    from tempest.lib.services.compute.migrations_client import MigrationsClient
    from tempest.lib.services.compute.servers_client import ServersClient
    for version in ("2.23", "2.59", "2.62", "2.80", "2.96"):
        _tempest_valid(MigrationsClient, "list_migrations", version, hosts.client.get(
            "/v2.1/os-migrations", headers=_v(version)))
        if version != "2.59":  # tempest's client uses its 2.58 schema to 2.61: no uuid
            _tempest_valid(ServersClient, "list_live_migrations", version,
                           _migrations(hosts, sid, version))
    shown = hosts.client.get(f"/v2.1/servers/{sid}/migrations/1", headers=_v("2.80"))
    assert shown.json() == {"migration": at80}
    # before 2.23 neither route exists
    _fault(_migrations(hosts, sid, "2.22"), 404, "The resource could not be found.")
    _fault(hosts.client.get(f"/v2.1/servers/{sid}/migrations/1", headers=_v("2.22")),
           404, "The resource could not be found.")
    # os-migrations: the type from 2.23, with links to the record while it is in progress
    old = hosts.client.get("/v2.1/os-migrations", headers=_v("2.22")).json()["migrations"]
    assert "migration_type" not in old[0] and "links" not in old[0]
    [listed] = hosts.client.get("/v2.1/os-migrations",
                                headers=_v("2.23")).json()["migrations"]
    assert listed["migration_type"] == "live-migration" and listed["status"] == "queued"
    assert [link["rel"] for link in listed["links"]] == ["self", "bookmark"]
    assert listed["links"][0]["href"].endswith(f"/v2.1/servers/{sid}/migrations/1")
    assert listed["links"][1]["href"] == f"http://testserver/servers/{sid}/migrations/1"

    hosts.settle()  # compute-2 prepares, compute-1 sends, compute-2 takes it over
    assert _shown(hosts, sid)["status"] == "ACTIVE"
    assert _shown(hosts, sid)["OS-EXT-SRV-ATTR:host"] == "compute-2"
    assert _migrations(hosts, sid, "2.23").json() == {"migrations": []}
    _fault(hosts.client.get(f"/v2.1/servers/{sid}/migrations/1", headers=_v("2.23")),
           404, f"Live migration 1 for server {sid} is not in progress.")
    [done] = hosts.client.get("/v2.1/os-migrations", headers=_v("2.23")).json()["migrations"]
    assert done["status"] == "completed" and "links" not in done
    # the instance action, with the work's event
    actions = hosts.client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                               headers=ADMIN).json()["instanceActions"]
    assert [a["action"] for a in actions] == ["live-migration", "create"]
    request_id = actions[0]["request_id"]
    shown_action = hosts.client.get(f"/v2.1/servers/{sid}/os-instance-actions/{request_id}",
                                    headers=_v("2.51")).json()["instanceAction"]
    assert [(e["event"], e["result"]) for e in shown_action["events"]] == [
        ("compute_live_migration", "Success")]


def test_cold_migrations_over_the_api(hosts: Hosts) -> None:
    """``migrate`` (2.56: a host), confirm and revert; os-migrations filters by type;
    ``/servers/{id}/migrations`` shows no cold migration."""
    sid = hosts.server()
    r = _act(hosts, sid, {"migrate": {"host": "compute-2"}}, "2.56")
    assert r.status_code == 202, r.text
    assert _shown(hosts, sid)["status"] == "RESIZE"
    assert _migrations(hosts, sid).json() == {"migrations": []}
    _fault(hosts.client.get(f"/v2.1/servers/{sid}/migrations/1", headers=_v("2.23")),
           404, f"Migration 1 for server {sid} is not live-migration.")
    hosts.settle()
    server = _shown(hosts, sid)
    assert (server["status"], server["OS-EXT-SRV-ATTR:host"]) == ("VERIFY_RESIZE", "compute-2")
    assert _act(hosts, sid, {"confirmResize": None}).status_code == 204
    hosts.settle()
    assert _shown(hosts, sid)["status"] == "ACTIVE"
    # back with the scheduler's choice (2.1: no host), then reverted
    assert _act(hosts, sid, {"migrate": None}, "2.1").status_code == 202
    hosts.settle()
    assert _shown(hosts, sid)["OS-EXT-SRV-ATTR:host"] == "compute-1"
    assert _act(hosts, sid, {"revertResize": None}).status_code == 202
    hosts.settle()
    server = _shown(hosts, sid)
    assert (server["status"], server["OS-EXT-SRV-ATTR:host"]) == ("ACTIVE", "compute-2")
    _fault(_act(hosts, sid, {"os-migrateLive": {"host": "compute-2",
                                                "block_migration": "auto"}}), 400,
           f"Unable to migrate instance ({sid}) to current host (compute-2).")
    _live(hosts, sid, host="compute-1")
    hosts.settle()
    listed = hosts.client.get("/v2.1/os-migrations", headers=_v("2.23")).json()["migrations"]
    assert [(m["id"], m["migration_type"], m["status"], m["source_compute"],
             m["dest_compute"]) for m in listed] == [
        (1, "migration", "confirmed", "compute-1", "compute-2"),
        (2, "migration", "reverted", "compute-2", "compute-1"),
        (3, "live-migration", "completed", "compute-2", "compute-1")]
    only = hosts.client.get("/v2.1/os-migrations?migration_type=live-migration",
                            headers=_v("2.23")).json()["migrations"]
    assert [m["id"] for m in only] == [3]
    cold = hosts.client.get("/v2.1/os-migrations?migration_type=migration",
                            headers=_v("2.80")).json()["migrations"]
    assert [m["id"] for m in cold] == [2, 1]  # newest first from 2.59
    actions = hosts.client.get(f"/v2.1/servers/{sid}/os-instance-actions",
                               headers=ADMIN).json()["instanceActions"]
    assert [a["action"] for a in actions] == [
        "live-migration", "revertResize", "migrate", "confirmResize", "migrate", "create"]
    shown_action = hosts.client.get(
        f"/v2.1/servers/{sid}/os-instance-actions/{actions[2]['request_id']}",
        headers=_v("2.51")).json()["instanceAction"]
    assert [(e["event"], e["result"]) for e in shown_action["events"]] == [
        ("compute_resize_instance", "Success")]


# --- refusals --------------------------------------------------------------------------
def test_refusals_are_nova_s(hosts: Hosts) -> None:
    sid = hosts.server()
    missing = "00000000-0000-4000-8000-00000000dead"
    # routes before their microversion
    _fault(_abort(hosts, sid, 1, "2.23"), 404, "The resource could not be found.")
    _fault(_force(hosts, sid, 1, "2.21"), 404, "The resource could not be found.")
    # not an administrator (the policy comes before the server)
    policy = "Policy doesn't allow os_compute_api:servers:migrations:{} to be performed."
    _fault(_migrations(hosts, sid, who=ALICE), 403, policy.format("index"))
    _fault(hosts.client.get(f"/v2.1/servers/{sid}/migrations/1", headers=_v("2.96", ALICE)),
           403, policy.format("show"))
    _fault(_abort(hosts, missing, 1, who=ALICE), 403, policy.format("delete"))
    _fault(_force(hosts, missing, 1, who=ALICE), 403, policy.format("force_complete"))
    # an unknown server
    for r in (_migrations(hosts, missing), _abort(hosts, missing, 1),
              _force(hosts, missing, 1),
              hosts.client.get(f"/v2.1/servers/{missing}/migrations/1", headers=_v("2.23"))):
        _fault(r, 404, f"Instance {missing} could not be found.")
    # the server is not migrating
    _fault(_abort(hosts, sid, 1), 409,
           f"Cannot 'abort live migration' instance {sid} while it is in task_state None")
    _fault(_force(hosts, sid, 1), 409,
           f"Cannot 'force_complete' instance {sid} while it is in task_state None")
    # bodies of the action route
    _fault(_force(hosts, sid, 1, body={"force_complete": {}}), 400,
           "Invalid input for field/attribute force_complete. Value: {}. {} is not of type"
           " 'null'")
    _fault(_force(hosts, sid, 1, body={"abort": None}), 400, "There is no such action: abort")
    _fault(_force(hosts, sid, 1, body={"force_complete": None, "x": 1}), 400,
           "Malformed request body")
    _fault(hosts.client.post(f"/v2.1/servers/{sid}/migrations/1/action", headers=ADMIN),
           400, "Malformed request body")
    _fault(hosts.client.get(f"/v2.1/servers/{sid}/migrations/x", headers=_v("2.23")), 404,
           f"In-progress live migration x is not found for server {sid}.")

    # a cold migration, confirmed: record 1; then a live migration, queued: record 2
    assert _act(hosts, sid, {"migrate": None}).status_code == 202
    hosts.settle()
    # a cold migration in progress is no live one: the server is not migrating
    _fault(_abort(hosts, sid, 1), 409,
           f"Cannot 'abort live migration' instance {sid} while it is in task_state None")
    assert _act(hosts, sid, {"confirmResize": None}).status_code == 204
    hosts.settle()
    assert _shown(hosts, sid)["OS-EXT-SRV-ATTR:host"] == "compute-2"
    r = _act(hosts, sid, {"os-migrateLive": {"host": None, "block_migration": False,
                                             "disk_over_commit": False}}, "2.1")
    assert r.status_code == 202, r.text
    # the record asked for is another (not live, settled): 400 with its state
    _fault(_abort(hosts, sid, 1), 400,
           f"Migration 1 state of instance {sid} is confirmed. Cannot abort live migration"
           " while the migration is in this state.")
    # no such record of this server: 404 to abort, 400 to force (as Nova)
    _fault(_abort(hosts, sid, 99), 404, f"Migration 99 not found for instance {sid}")
    _fault(_force(hosts, sid, 99), 400, f"Migration 99 not found for instance {sid}")
    _fault(_abort(hosts, sid, "x"), 404, f"Migration x not found for instance {sid}")
    # queued: not abortable before 2.65, never forced
    _fault(_abort(hosts, sid, 2, "2.64"), 400,
           f"Migration 2 state of instance {sid} is queued. Cannot abort live migration"
           " while the migration is in this state.")
    _fault(_force(hosts, sid, 2), 400,
           f"Migration 2 state of instance {sid} is queued. Cannot force complete while"
           " the migration is in this state.")
    # from 2.65 a queued migration is aborted: it never starts
    r = _abort(hosts, sid, 2, "2.65")
    assert r.status_code == 202 and r.content == b""
    head = len(hosts.first.history(sid))
    assert _abort(hosts, sid, 2, "2.65").status_code == 202  # asked again: nothing more
    assert len(hosts.first.history(sid)) == head
    hosts.settle()
    server = _shown(hosts, sid)
    assert (server["status"], server["OS-EXT-SRV-ATTR:host"]) == ("ACTIVE", "compute-2")
    [record] = hosts.client.get("/v2.1/os-migrations?migration_type=live-migration",
                                headers=_v("2.23")).json()["migrations"]
    assert record["status"] == "cancelled"
    assert isinstance(hosts.second.hypervisor, Simulator)
    assert hosts.second.hypervisor.observe(sid).exists
    assert not hosts.first.hypervisor.observe(sid).exists
    # the abort is an action of its own, as Nova records it
    assert _actions(hosts, sid)[:2] == ["live_migration_cancel", "live-migration"]


def test_a_paused_server_s_migration_is_not_forced(hosts: Hosts) -> None:
    sid = hosts.server()
    assert _act(hosts, sid, {"pause": None}).status_code == 202
    hosts.settle()
    _live(hosts, sid)
    _fault(_force(hosts, sid, 1), 409,
           f"Cannot 'force_complete' instance {sid} while it is in vm_state paused")
    hosts.settle()
    server = _shown(hosts, sid)
    assert (server["status"], server["OS-EXT-SRV-ATTR:host"]) == ("PAUSED", "compute-2")


# --- steering a slow live migration, both agents running -------------------------------
def _running(hosts: Hosts, sid: str) -> None:
    """Wait until the copy runs: compute-2 prepared, compute-1 is sending (its call to
    the hypervisor is in the server's history)."""
    wait_for(lambda: [m["status"] for m in _migrations(hosts, sid).json()["migrations"]]
          == ["running"])
    wait_for(lambda: any("live_migrate about to be called" in str(entry)
                      for entry in hosts.first.history(sid)))


def test_aborting_a_slow_live_migration(slow_hosts: Hosts) -> None:
    hosts = slow_hosts
    sid = hosts.server()
    for engine in (hosts.first, hosts.second):
        engine.run_in_background(0.02)
    _live(hosts, sid, "2.25")
    _running(hosts, sid)
    started = time.monotonic()
    r = _abort(hosts, sid, 1, "2.24")
    assert r.status_code == 202, r.text
    # asked again while it stops: still accepted, nothing more recorded
    again = _abort(hosts, sid, 1, "2.24")
    assert again.status_code in (202, 400, 409), again.text
    wait_for(lambda: _shown(hosts, sid)["status"] == "ACTIVE")
    assert time.monotonic() - started < 30  # not the minute the copy would have taken
    server = _shown(hosts, sid)
    assert server["OS-EXT-SRV-ATTR:host"] == "compute-1"
    assert server["OS-EXT-STS:task_state"] is None
    [record] = hosts.client.get("/v2.1/os-migrations", headers=_v("2.23")).json()["migrations"]
    assert record["status"] == "cancelled"
    assert _migrations(hosts, sid).json() == {"migrations": []}
    # the guest runs on compute-1 still; nothing is left on compute-2
    assert hosts.first.hypervisor.observe(sid).exists
    assert not hosts.second.hypervisor.observe(sid).exists
    assert ("abort_migration", sid) in hosts.first.hypervisor.calls  # type: ignore[attr-defined]
    assert _actions(hosts, sid) == ["live_migration_cancel", "live-migration", "create"]


def test_forcing_a_slow_live_migration_to_complete(slow_hosts: Hosts) -> None:
    hosts = slow_hosts
    sid = hosts.server()
    for engine in (hosts.first, hosts.second):
        engine.run_in_background(0.02)
    _live(hosts, sid, "2.25")
    _running(hosts, sid)
    started = time.monotonic()
    r = _force(hosts, sid, 1, "2.22")
    assert r.status_code == 202 and r.content == b""
    wait_for(lambda: _shown(hosts, sid)["OS-EXT-SRV-ATTR:host"] == "compute-2")
    assert time.monotonic() - started < 30
    wait_for(lambda: _shown(hosts, sid)["status"] == "ACTIVE")
    [record] = hosts.client.get("/v2.1/os-migrations", headers=_v("2.23")).json()["migrations"]
    assert record["status"] == "completed"
    assert hosts.second.hypervisor.observe(sid).exists
    assert not hosts.first.hypervisor.observe(sid).exists
    assert ("force_complete_migration", sid) in (
        hosts.first.hypervisor.calls)  # type: ignore[attr-defined]
    assert _actions(hosts, sid) == ["live_migration_force_complete", "live-migration",
                                    "create"]
