"""Several compute hosts sharing one database: each runs a host agent (an engine with
its own hypervisor), and any engine's creates are scheduled over every host that is up
and enabled, the one with the most free memory first; the agents build what is theirs."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.engines import make_engine
from tests.support.compute import IMAGE_ID, action
from tests.support.racing import racing
from vmledger import Engine, FakeClock
from vmledger.adapters.simulator import Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.errors import BadRequest
from vmledger.projections.hosts import SERVICE_DOWN_TIME

IMAGE = "cirros-0.6.2-x86_64"


@pytest.fixture
def hosts(url: str, clock: FakeClock) -> Iterator[tuple[Engine, Engine]]:
    """compute-1 (the engine the tests call) and compute-2 (another host's agent)."""
    first = make_engine(url, clock=clock)
    second = make_engine(url, clock=clock, host="compute-2", seed=2)
    try:
        second.run_until_idle()  # its agent starts: it reports its host
        yield first, second
    finally:
        second.close()
        first.close()


def _settle(*engines: Engine) -> None:
    for _ in range(3):
        for engine in engines:
            engine.run_until_idle()


def _hosts_of(engine: Engine, ids: list[str]) -> list[str]:
    return [engine.get_server(sid).host for sid in ids]


def test_creates_are_spread_over_the_hosts_and_built_by_their_agents(
        hosts: tuple[Engine, Engine]) -> None:
    first, second = hosts
    made = first.create_servers("web", flavor="m1.small", image=IMAGE, count=4)
    ids = [s.id for s in made]
    # both hosts report the same memory: the scheduler alternates, own host first
    assert _hosts_of(first, ids) == ["compute-1", "compute-2", "compute-1", "compute-2"]
    first.run_until_idle()  # builds only compute-1's servers
    assert Counter(first.get_server(s).status for s in ids) == {"ACTIVE": 2, "BUILD": 2}
    second.run_until_idle()
    assert {first.get_server(s).status for s in ids} == {"ACTIVE"}
    # each guest is on its own host's hypervisor
    assert isinstance(second.hypervisor, Simulator)
    on_second = {str(sid) for sid in ids if first.get_server(sid).host == "compute-2"}
    assert {s for s in on_second if second.hypervisor.observe(s).exists} == on_second
    assert isinstance(first.hypervisor, Simulator)
    assert not any(first.hypervisor.observe(s).exists for s in on_second)
    # a single create goes where most memory is free (a bigger flavor on compute-1 now)
    first.create_server("big", flavor="m1.large", image=IMAGE)
    assert first.create_server("next", flavor="m1.small", image=IMAGE).host == "compute-2"
    listed = {h["host"]: h for h in first.hypervisors()}
    assert set(listed) == {"compute-1", "compute-2"}
    assert listed["compute-2"]["state"] == "up"
    assert listed["compute-2"]["running_vms"] == 3


def test_disabled_and_silent_hosts_take_no_new_servers(
        hosts: tuple[Engine, Engine], clock: FakeClock) -> None:
    first, second = hosts
    first.set_compute_service("compute-2", disabled=True, reason="maintenance")
    made = first.create_servers("a", flavor="m1.small", image=IMAGE, count=3)
    assert set(_hosts_of(first, [s.id for s in made])) == {"compute-1"}
    first.set_compute_service("compute-2", disabled=False)
    # compute-2's agent stops reporting: after the service down time it is down
    clock.advance(seconds=SERVICE_DOWN_TIME.total_seconds() + 1)
    services = {s["host"]: s for s in first.compute_services()}
    assert services["compute-2"]["up"] is False and services["compute-1"]["up"] is True
    made = first.create_servers("b", flavor="m1.small", image=IMAGE, count=2)
    assert set(_hosts_of(first, [s.id for s in made])) == {"compute-1"}
    assert {h["host"]: h["state"] for h in first.hypervisors()}["compute-2"] == "down"
    second.run_once()  # its agent is back: it reports, and takes servers again
    made = first.create_servers("c", flavor="m1.small", image=IMAGE, count=2)
    assert "compute-2" in _hosts_of(first, [s.id for s in made])


def test_server_group_policies_over_two_hosts(hosts: tuple[Engine, Engine]) -> None:
    first, second = hosts
    ctx = first.context(user_id="alice", project_id="p1", is_admin=False)
    apart = first.create_server_group("apart", "anti-affinity", ctx=ctx)["id"]
    together = first.create_server_group("together", "affinity", ctx=ctx)["id"]
    spread = [first.create_server(f"apart-{n}", flavor="m1.small", image=IMAGE, ctx=ctx,
                                  server_group=apart).id for n in range(3)]
    close = first.create_servers("together", flavor="m1.small", image=IMAGE, count=3,
                                 ctx=ctx, server_group=together)
    _settle(first, second)
    states = [(first.get_server(s).host, first.get_server(s).status) for s in spread]
    assert sorted(states[:2]) == [("compute-1", "ACTIVE"), ("compute-2", "ACTIVE")]
    assert states[2][1] == "ERROR"  # a third member: no host without one
    assert "No valid host" in str(first.get_server(spread[2]).fault)
    assert len({first.get_server(s.id).host for s in close}) == 1


def test_unshelve_to_another_host(hosts: tuple[Engine, Engine]) -> None:
    first, second = hosts
    server = first.create_server("s", flavor="m1.small", image=IMAGE)
    _settle(first, second)
    home = first.get_server(server.id).host
    other = "compute-2" if home == "compute-1" else "compute-1"
    first.act(server.id, "shelve")
    _settle(first, second)
    assert first.get_server(server.id).status == "SHELVED_OFFLOADED"
    first.act(server.id, "unshelve", host=other)
    _settle(first, second)
    after = first.get_server(server.id)
    assert (after.status, after.host) == ("ACTIVE", other)
    # the host it is on now is disabled: shelved again, it is scheduled on the other
    first.set_compute_service(other, disabled=True)
    first.act(server.id, "shelve")
    _settle(first, second)
    first.act(server.id, "unshelve")
    _settle(first, second)
    after = first.get_server(server.id)
    assert (after.status, after.host) == ("ACTIVE", home)


def test_the_api_lists_every_host(hosts: tuple[Engine, Engine]) -> None:
    first, _ = hosts
    client = ApiClient(create_app(first))
    services = client.get("/v2.1/os-services",
                          headers={"OpenStack-API-Version": "compute 2.53"}).json()["services"]
    assert [(s["host"], s["state"], s["status"]) for s in services] == [
        ("compute-1", "up", "enabled"), ("compute-2", "up", "enabled")]
    assert services[1]["updated_at"] is not None  # its last report
    nodes = client.get("/v2.1/os-hypervisors/detail").json()["hypervisors"]
    assert [n["hypervisor_hostname"] for n in nodes] == ["compute-1", "compute-2"]
    assert all(n["memory_mb"] > 0 and n["state"] == "up" for n in nodes)
    r = client.post("/v2.1/servers", json={"server": {
        "name": "via-api", "flavorRef": "1", "imageRef": IMAGE_ID, "networks": "none",
        "min_count": 2, "max_count": 2}},
        headers={"OpenStack-API-Version": "compute 2.37"})
    assert r.status_code == 202, r.text
    hosts_used = {h["hypervisor_hostname"]: h["running_vms"] for h in client.get(
        "/v2.1/os-hypervisors/detail").json()["hypervisors"]}
    assert hosts_used == {"compute-1": 1, "compute-2": 1}


def _on(first: Engine, second: Engine, host: str, *, stopped: bool = False) -> str:
    """A new server, built, on ``host``."""
    other = "compute-1" if host == "compute-2" else "compute-2"
    first.set_compute_service(other, disabled=True)
    try:
        server = first.create_server(f"on-{host}", flavor="m1.small", image=IMAGE)
    finally:
        first.set_compute_service(other, disabled=False)
    _settle(first, second)
    if stopped:
        first.stop(server.id)
        _settle(first, second)
    assert first.get_server(server.id).host == host
    return server.id


def _restart(url: str, clock: FakeClock, engine: Engine) -> None:
    """``engine``'s host agent starts again (a new process, the same hypervisor) and
    makes its first passes."""
    back = make_engine(url, clock=clock, host=engine.host, seed=3,
                       hypervisor=engine.hypervisor)
    try:
        back.run_until_idle()
    finally:
        back.close()


def _silence(clock: FakeClock, *alive: Engine) -> None:
    """Time passes beyond the service down time; only ``alive`` report meanwhile."""
    clock.advance(seconds=SERVICE_DOWN_TIME.total_seconds() + 1)
    for engine in alive:
        engine.report_host()


def test_evacuate_rebuilds_on_another_host_and_the_old_host_cleans_up(
        hosts: tuple[Engine, Engine], clock: FakeClock, url: str) -> None:
    first, second = hosts
    sid = _on(first, second, "compute-2")
    with pytest.raises(BadRequest, match=r"Compute service of compute-2 is still in use\."):
        first.evacuate(sid)
    _silence(clock, first)  # compute-2 is down
    first.evacuate(sid)
    shown = first.get_server(sid)
    assert (shown.status, shown.host) == ("REBUILD", "compute-1")
    first.run_until_idle()
    shown = first.get_server(sid)
    assert (shown.status, shown.host) == ("ACTIVE", "compute-1")
    assert isinstance(first.hypervisor, Simulator) and first.hypervisor.observe(sid).exists
    [record] = first.migrations(server_id=sid)
    assert (record["migration_type"], record["status"], record["source_compute"],
            record["dest_compute"]) == ("evacuation", "done", "compute-2", "compute-1")
    [act] = [a for a in first.instance_actions(sid) if a["action"] == "evacuate"]
    assert [(e["event"], e["result"]) for e in act["events"]] == [
        ("compute_rebuild_instance", "Success")]
    # compute-2 comes back (its agent starts again): it removes the old guest
    assert isinstance(second.hypervisor, Simulator) and second.hypervisor.observe(sid).exists
    _restart(url, clock, second)
    assert not second.hypervisor.observe(sid).exists
    first.updater.catch_up()
    assert first.migrations(server_id=sid)[0]["status"] == "completed"
    assert [e.event for e in first.history(sid)][-1] == "EvacuatedGuestRemoved"
    assert first.get_server(sid).status == "ACTIVE"


def test_evacuate_with_no_host_to_go_to_fails_at_once(
        hosts: tuple[Engine, Engine], clock: FakeClock) -> None:
    first, second = hosts
    sid = _on(first, second, "compute-2")
    _silence(clock, first)
    first.set_compute_service("compute-1", disabled=True)
    first.evacuate(sid)  # accepted, as Nova's API answers, then the scheduler fails it
    shown = first.get_server(sid)
    assert (shown.status, shown.host) == ("ERROR", "compute-2")
    assert "No valid host" in str(shown.fault)
    [record] = first.migrations(server_id=sid)
    assert (record["status"], record["dest_compute"]) == ("failed", None)


def test_evacuate_over_the_api(hosts: tuple[Engine, Engine], clock: FakeClock) -> None:
    first, second = hosts
    client = ApiClient(create_app(first, auth="token", tokens=[
        "admin-secret:root:admin:admin", "alice-secret:alice:admin:member"]))
    admin = {"X-Auth-Token": "admin-secret"}
    left_stopped = _on(first, second, "compute-2")
    active_one = _on(first, second, "compute-2")
    paused = _on(first, second, "compute-2")
    first.pause(paused)
    _settle(first, second)

    def evacuate(sid: str, body: Any, version: str, headers: dict[str, str] = admin
                 ) -> httpx.Response:
        return action(client, sid, {"evacuate": body}, version, headers)

    r = evacuate(active_one, {}, "2.14", {"X-Auth-Token": "alice-secret"})
    assert r.status_code == 403, r.text
    r = evacuate(active_one, {}, "2.14")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "Compute service of compute-2 is still in use."
    _silence(clock, first)
    for body, version, status, message in [
            ({"host": "nowhere"}, "2.14", 404, "Compute host nowhere not found."),
            ({"host": "compute-2"}, "2.14", 400, "The target host can't be the same one."),
            ({}, "2.1", 400, None),  # onSharedStorage is required before 2.14
            ({"onSharedStorage": True}, "2.1", 400,
             "Invalid state of instance files on shared storage"),
            ({"onSharedStorage": False}, "2.14", 400, None),
            ({"force": True}, "2.29", 400, "Can't force to a non-provided destination"),
            ({"host": "compute-1", "force": True}, "2.68", 400, None),
            ({"bogus": 1}, "2.95", 400, None)]:
        r = evacuate(active_one, body, version)
        assert r.status_code == status, (body, version, r.text)
        if message is not None:
            assert message in r.text
    r = evacuate(paused, {}, "2.14")
    assert r.status_code == 409
    assert "Cannot 'evacuate' instance" in r.json()["conflictingRequest"]["message"]
    # before 2.14 the answer is the password; from 2.14 nothing
    r = evacuate(active_one, {"onSharedStorage": False, "adminPass": "s3cret"}, "2.1")
    assert (r.status_code, r.json()) == (200, {"adminPass": "s3cret"})
    r = evacuate(left_stopped, {"host": "compute-1"}, "2.95")
    assert (r.status_code, r.content) == (200, b"")
    first.run_until_idle()
    statuses = {sid: first.get_server(sid) for sid in (active_one, left_stopped)}
    assert {sid: (s.status, s.host) for sid, s in statuses.items()} == {
        active_one: ("ACTIVE", "compute-1"), left_stopped: ("SHUTOFF", "compute-1")}
    listed = client.get("/v2.1/os-migrations?migration_type=evacuation",
                        headers={**admin, "X-OpenStack-Nova-API-Version": "2.23"})
    assert listed.status_code == 200, listed.text
    assert {m["instance_uuid"]: m["status"] for m in listed.json()["migrations"]} == {
        active_one: "done", left_stopped: "done"}


@pytest.mark.postgres
def test_processes_starting_together_on_a_new_database(postgres_url: str) -> None:
    """An API process and agents started at the same moment on an empty PostgreSQL
    database all create their tables (in turn) and come up."""
    made: list[Engine] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def start(n: int) -> None:
        barrier.wait()
        try:
            engine = make_engine(postgres_url, host=f"compute-{n}", seed=n)
        except BaseException as e:  # reported below
            with lock:
                errors.append(e)
            return
        with lock:
            made.append(engine)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors, errors
        for engine in made:
            engine.run_once()
        assert [s["host"] for s in made[0].compute_services()] == [
            f"compute-{n}" for n in range(1, 5)]
    finally:
        for engine in made:
            engine.close()


def test_deleting_a_hosts_service(hosts: tuple[Engine, Engine], clock: FakeClock,
                                  url: str) -> None:
    """A host taken out of the cloud: its service is deleted once nothing is on it, and
    comes back when its agent reports again."""
    first, second = hosts
    client = ApiClient(create_app(first, auth="token", tokens=[
        "admin-secret:root:admin:admin", "alice-secret:alice:admin:member"]))
    admin = {"X-Auth-Token": "admin-secret", "X-OpenStack-Nova-API-Version": "2.53"}

    def ids() -> dict[str, str]:
        return {s["host"]: s["id"] for s in client.get(
            "/v2.1/os-services", headers=admin).json()["services"]}

    sid = _on(first, second, "compute-2")
    two = ids()["compute-2"]
    r = client.delete(f"/v2.1/os-services/{two}", headers={
        "X-Auth-Token": "alice-secret", "X-OpenStack-Nova-API-Version": "2.53"})
    assert r.status_code == 403
    r = client.delete(f"/v2.1/os-services/{two}", headers=admin)
    assert r.status_code == 409
    assert "hosting instances" in r.json()["conflictingRequest"]["message"]
    r = client.delete(f"/v2.1/os-services/{ids()['compute-1']}", headers=admin)
    assert r.status_code == 409  # this process's own host
    assert client.delete("/v2.1/os-services/nope", headers=admin).status_code == 400
    missing = "9f1b2c3d-0000-4000-8000-000000000000"
    r = client.delete(f"/v2.1/os-services/{missing}", headers=admin)
    assert (r.status_code, r.json()["itemNotFound"]["message"]) == (
        404, f"Service {missing} not found.")
    # the host dies, its server is evacuated and the service can go
    _silence(clock, first)
    first.evacuate(sid)
    first.run_until_idle()
    first.set_compute_service("compute-2", disabled=True, reason="decommissioned")
    assert client.delete(f"/v2.1/os-services/{two}", headers=admin).status_code == 204
    assert list(ids()) == ["compute-1"]
    assert [h["host"] for h in first.hypervisors()] == ["compute-1"]
    # before 2.53 the ids are numbers
    legacy = {"X-Auth-Token": "admin-secret"}
    assert client.delete("/v2.1/os-services/x", headers=legacy).status_code == 400
    assert client.delete("/v2.1/os-services/7", headers=legacy).status_code == 404
    # its agent is started again: it reports, and the host is back, enabled
    _restart(url, clock, second)
    services = {s["host"]: s for s in first.compute_services()}
    assert services["compute-2"]["up"] and not services["compute-2"]["disabled"]
    # who deleted it is in the ledger
    deleted = [e for e in first.service.recorder.select_notifications(start=1, limit=10_000)
               if e.topic.endswith("ComputeService.Deleted")]
    assert len(deleted) == 1


def _joining(engine: Engine, user: str, project: str, group: str, n: int
             ) -> Callable[[], object]:
    """A create of one server into ``group``, by ``user`` of ``project``, to run later."""
    ctx = engine.context(user_id=user, project_id=project, is_admin=False)
    return lambda: engine.create_server(f"{user}-{n}", flavor="m1.small", image=IMAGE,
                                        ctx=ctx, server_group=group)


def test_racing_creates_into_a_group_keep_its_policy(url: str, clock: FakeClock) -> None:
    """Creates into one anti-affinity group racing from several API processes: each
    placement is decided against the members placed before it (the group's version
    serialises them), so no two members share a host and the group's member quota
    holds."""
    engines = [make_engine(url, clock=clock, host=f"compute-{n}", seed=n)
               for n in (1, 2, 3)]
    try:
        for engine in engines:
            engine.run_once()  # every agent reports its host
        first = engines[0]
        ctx = first.context(user_id="alice", project_id="p1", is_admin=False)
        apart = first.create_server_group("apart", "anti-affinity", ctx=ctx)["id"]

        outcomes = racing([_joining(engines[n % 3], "alice", "p1", apart, n)
                           for n in range(5)])
        assert outcomes == ["ok"] * 5
        first.updater.catch_up()
        members = [s for s in first.list_servers(ctx=ctx)]
        placed = sorted(s.host for s in members if s.status != "ERROR")
        assert placed == ["compute-1", "compute-2", "compute-3"]
        assert sum(s.status == "ERROR" for s in members) == 2

        admin = first.context(user_id="root", project_id="ops", is_admin=True)
        first.set_quotas("p2", {"server_group_members": 2}, ctx=admin)
        ctx2 = first.context(user_id="bob", project_id="p2", is_admin=False)
        soft = first.create_server_group("soft", "soft-affinity", ctx=ctx2)["id"]

        outcomes = racing([_joining(engines[n % 3], "bob", "p2", soft, n)
                           for n in range(5)])
        assert outcomes == ["Forbidden"] * 3 + ["ok"] * 2
    finally:
        for engine in engines:
            engine.close()


def test_host_status_follows_the_servers_host(hosts: tuple[Engine, Engine],
                                              clock: FakeClock) -> None:
    """2.16's ``host_status`` (administrators): UP, MAINTENANCE when the host's service
    is disabled, DOWN when forced down, UNKNOWN when its agent went silent, "" when no
    host took the server; lists, show and its ETag follow the host, not only the
    server."""
    first, second = hosts
    client = ApiClient(create_app(first, auth="token", tokens=[
        "admin-secret:root:admin:admin", "alice-secret:alice:admin:member"]))
    admin = {"X-Auth-Token": "admin-secret", "OpenStack-API-Version": "compute 2.16"}
    sid = _on(first, second, "compute-2")
    own = _on(first, second, "compute-1")

    def shown(headers: dict[str, str] = admin) -> dict[str, Any]:
        r = client.get(f"/v2.1/servers/{sid}", headers=headers)
        assert r.status_code == 200, r.text
        server: dict[str, Any] = r.json()["server"]
        return server

    def listed() -> dict[str, str]:
        servers = client.get("/v2.1/servers/detail", headers=admin).json()["servers"]
        return {s["id"]: s["host_status"] for s in servers}

    assert shown()["host_status"] == "UP"
    assert listed() == {sid: "UP", own: "UP"}
    tag = client.get(f"/v2.1/servers/{sid}", headers=admin).headers["ETag"]
    assert client.get(f"/v2.1/servers/{sid}", headers={
        **admin, "If-None-Match": tag}).status_code == 304
    # not for members, nor before 2.16
    assert "host_status" not in shown({**admin, "X-Auth-Token": "alice-secret"})
    assert "host_status" not in shown({**admin, "OpenStack-API-Version": "compute 2.15"})

    first.set_compute_service("compute-2", disabled=True, reason="kernel update")
    assert shown()["host_status"] == "MAINTENANCE"
    assert listed() == {sid: "MAINTENANCE", own: "UP"}
    # the server did not change, its host did: the old tag no longer matches
    r = client.get(f"/v2.1/servers/{sid}", headers={**admin, "If-None-Match": tag})
    assert r.status_code == 200 and r.headers["ETag"] != tag
    first.set_compute_service("compute-2", forced_down=True)
    assert shown()["host_status"] == "DOWN"  # forced down wins over disabled
    first.set_compute_service("compute-2", disabled=False, forced_down=False)
    assert listed()[sid] == "UP"

    _silence(clock, first)  # compute-2's agent stops reporting
    assert shown()["host_status"] == "UNKNOWN"
    assert listed() == {sid: "UNKNOWN", own: "UP"}
    second.report_host()  # it is back
    assert shown()["host_status"] == "UP"

    # a server no host could take has none (as in Nova), so no host status either
    first.set_compute_service("compute-1", disabled=True)
    first.set_compute_service("compute-2", disabled=True)
    nowhere = str(first.create_server("nowhere", flavor="m1.small", image=IMAGE).id)
    assert listed()[nowhere] == ""
    server = client.get(f"/v2.1/servers/{nowhere}", headers=admin).json()["server"]
    assert (server["status"], server["OS-EXT-SRV-ATTR:host"], server["hostId"]) == (
        "ERROR", None, "")
    assert client.delete(f"/v2.1/servers/{nowhere}", headers=admin).status_code == 204
    _settle(first, second)
    assert client.get(f"/v2.1/servers/{nowhere}", headers=admin).status_code == 404
    first.set_compute_service("compute-1", disabled=False)
    first.set_compute_service("compute-2", disabled=False)

    # evacuated from a silent host: the status is the new host's
    _silence(clock, first)
    assert shown()["host_status"] == "UNKNOWN"
    first.evacuate(sid)
    _settle(first)
    assert first.get_server(sid).host == "compute-1"
    assert shown()["host_status"] == "UP"


def test_guests_on_other_hosts_are_read_by_their_agents(
        hosts: tuple[Engine, Engine], clock: FakeClock) -> None:
    """Console output and diagnostics of a server on another host: that host's agent
    reads its guest and answers through the database, as Nova's API asks the compute
    host over RPC. A host that is down cannot be asked; one that does not answer is a
    409 after the timeout."""
    first, second = hosts
    sid = _on(first, second, "compute-2")
    local = second.console_output(sid)  # the simulator's boot log
    assert local.count("\n") > 2
    client = ApiClient(create_app(first))
    second.run_in_background(0.01)
    try:
        assert first.console_output(sid) == local
        assert first.console_output(sid, length=2) == "\n".join(local.split("\n")[-2:])
        assert first.diagnostics(sid) == second.diagnostics(sid)
        r = client.post(f"/v2.1/servers/{sid}/action",
                        json={"os-getConsoleOutput": {"length": 1}})
        assert r.status_code == 200 and r.json()["output"] == local.split("\n")[-1]
        r = client.get(f"/v2.1/servers/{sid}/diagnostics",
                       headers={"OpenStack-API-Version": "compute 2.48"})
        assert r.status_code == 200
        assert r.json()["state"] == "running" and r.json()["num_cpus"] == 1
        # the hypervisor's refusals come back as they are: no guest is 404
        assert isinstance(second.hypervisor, Simulator)
        second.hypervisor.destroy(sid)
        r = client.post(f"/v2.1/servers/{sid}/action", json={"os-getConsoleOutput": {}})
        assert r.status_code == 404, r.text
    finally:
        second.close()
    # its agent stopped: asked, it does not answer in time
    first.guest_read_timeout = 0.2
    r = client.get(f"/v2.1/servers/{sid}/diagnostics",
                   headers={"OpenStack-API-Version": "compute 2.48"})
    assert r.status_code == 409
    assert "did not answer" in r.json()["conflictingRequest"]["message"]
    # and once its host is down it is not asked at all
    _silence(clock, first)
    r = client.post(f"/v2.1/servers/{sid}/action", json={"os-getConsoleOutput": {}})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == f"Instance {sid} is not ready"
    from vmledger.projections.guest_reads import TABLE
    assert first.view.query(f"SELECT COUNT(*) AS n FROM {TABLE}")[0]["n"] == 0
