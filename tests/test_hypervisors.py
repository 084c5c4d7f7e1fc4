"""``/os-hypervisors``: the engine's compute node as its hypervisor reports it, with what
the servers view places on it, per microversion, for administrators."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from tests.support.compute import assert_bad_request, built
from vmledger import Engine
from vmledger.adapters.hypervisor import uptime_text
from vmledger.adapters.simulator import HOST_MEMORY_MB, HOST_VCPUS, Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.clock import FakeClock

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
STATISTICS = {"vcpus", "memory_mb", "local_gb", "vcpus_used", "memory_mb_used",
              "local_gb_used", "free_ram_mb", "free_disk_gb", "current_workload",
              "running_vms", "disk_available_least"}


def _get(client: ApiClient, path: str, version: str = "2.1", token: dict[str, str] = ADMIN,
         **params: Any) -> Any:
    return client.get(f"/v2.1/os-hypervisors{path}", params=params,
                      headers={**token, "X-OpenStack-Nova-API-Version": version})


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))


def test_uptime_text() -> None:
    at = datetime(2026, 1, 1, 10, 31, 2)
    assert uptime_text(at, 3 * 86400 + 2 * 3600 + 4 * 60 + 30, (0.0, 0.01, 0.05)) == (
        " 10:31:02 up 3 days,  2:04,  0 users,  load average: 0.00, 0.01, 0.05")
    assert uptime_text(at, 59 * 60, (1.5, 1, 0.25), users=1) == (
        " 10:31:02 up 59 min,  1 user,  load average: 1.50, 1.00, 0.25")
    assert uptime_text(at, 86400 + 60, (0, 0, 0)).startswith(" 10:31:02 up 1 day, 1 min,")


def test_usage_follows_the_servers_on_the_host(memory_engine: Engine) -> None:
    def node() -> dict[str, Any]:
        [found] = memory_engine.hypervisors()
        return found

    empty = node()
    assert (empty["vcpus"], empty["memory_mb"], empty["state"]) == (
        HOST_VCPUS, HOST_MEMORY_MB, "up")
    assert (empty["vcpus_used"], empty["running_vms"], empty["servers"]) == (0, 0, [])
    # as Nova's resource tracker, the memory reserved for the host counts as used
    assert empty["memory_mb_used"] == 512
    a = built(memory_engine, "a")  # m1.small: 1 vCPU, 2048 MB, 20 GB
    b = built(memory_engine, "b")
    used = node()
    assert (used["vcpus_used"], used["memory_mb_used"], used["local_gb_used"],
            used["running_vms"]) == (2, 512 + 4096, 40, 2)
    assert used["free_ram_mb"] == HOST_MEMORY_MB - 512 - 4096
    assert {s["uuid"] for s in used["servers"]} == {a, b}
    # a resize holds both flavors until confirmed (m1.medium: 2 vCPUs, 4096 MB)
    memory_engine.resize(a, flavor="m1.medium")
    assert (node()["vcpus_used"], node()["memory_mb_used"]) == (4, 512 + 8192)
    memory_engine.run_until_idle()
    assert (node()["vcpus_used"], node()["memory_mb_used"]) == (4, 512 + 8192)
    memory_engine.confirm_resize(a)
    memory_engine.run_until_idle()
    assert (node()["vcpus_used"], node()["memory_mb_used"]) == (3, 512 + 6144)
    memory_engine.delete(b)
    memory_engine.run_until_idle()
    assert (node()["vcpus_used"], node()["running_vms"]) == (2, 1)
    # an offloaded server holds nothing and is not on the host any more (Nova: no host)
    memory_engine.act(a, "shelve")
    memory_engine.run_until_idle()
    assert (node()["vcpus_used"], node()["running_vms"], node()["servers"]) == (0, 0, [])
    # a server being built is I/O work
    memory_engine.create_server("c", flavor="m1.tiny", image="cirros-0.6.2-x86_64")
    assert node()["current_workload"] == 1


def test_a_hypervisor_that_cannot_answer_is_down(clock: FakeClock) -> None:
    class Silent(Simulator):
        broken = False

        def host_info(self) -> dict[str, Any]:
            if self.broken:
                raise RuntimeError("no answer")
            return super().host_info()

    silent = Silent()
    with Engine("memory", clock=clock, hypervisor=silent) as engine:
        silent.broken = True
        [never] = engine.hypervisors()
        assert (never["state"], never["vcpus"], never["hypervisor_type"]) == (
            "down", 0, "unknown")
        silent.broken = False
        assert engine.hypervisors()[0]["state"] == "up"
        silent.broken = True
        [last] = engine.hypervisors()  # the last answer, marked down
        assert (last["state"], last["vcpus"]) == ("down", HOST_VCPUS)


@pytest.mark.parametrize("version", ["2.1", "2.28", "2.53", "2.88"])
def test_detail_shapes(memory_engine: Engine, client: ApiClient, version: str) -> None:
    built(memory_engine)
    r = _get(client, "/detail", version)
    assert r.status_code == 200, r.text
    [h] = r.json()["hypervisors"]
    base = {"id", "hypervisor_hostname", "state", "status", "hypervisor_type",
            "hypervisor_version", "host_ip", "service"}
    if version == "2.88":
        assert set(h) == base | {"uptime"} and "up " in h["uptime"]
    else:
        assert set(h) == base | STATISTICS | {"cpu_info"}
        assert h["running_vms"] == 1
        cpu = json.loads(h["cpu_info"]) if version == "2.1" else h["cpu_info"]
        assert cpu["topology"]["threads"] == 2
    services = client.get("/v2.1/os-services", headers={
        **ADMIN, "X-OpenStack-Nova-API-Version": version}).json()["services"]
    assert h["service"]["id"] == services[0]["id"]
    assert isinstance(h["id"], str if version >= "2.53" else int)
    shown = _get(client, f"/{h['id']}", version).json()["hypervisor"]
    assert shown["id"] == h["id"] and set(shown) == set(h)


def test_list_servers_and_patterns(memory_engine: Engine, client: ApiClient) -> None:
    [h] = _get(client, "", "2.53").json()["hypervisors"]
    assert set(h) == {"id", "hypervisor_hostname", "state", "status"}
    assert "servers" not in _get(client, "", "2.53", with_servers="true").json()[
        "hypervisors"][0]  # no servers: no key before 2.75
    assert _get(client, "", "2.75", with_servers="true").json()["hypervisors"][0][
        "servers"] == []
    sid = built(memory_engine)
    [h] = _get(client, "", "2.53", with_servers="1").json()["hypervisors"]
    assert h["servers"] == [{"name": "web", "uuid": sid}]
    assert _get(client, "", "2.53", hypervisor_hostname_pattern="COMPUTE").status_code == 200
    r = _get(client, "", "2.53", hypervisor_hostname_pattern="nowhere")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "No hypervisor matching 'nowhere' could be found."
    assert_bad_request(_get(client, "", "2.53", hypervisor_hostname_pattern="c", limit="1"))
    assert_bad_request(_get(client, "", "2.53", with_servers="maybe"))
    assert_bad_request(_get(client, "", "2.53", whatever="1"))
    assert _get(client, "", "2.52", whatever="1").status_code == 200
    # before 2.53: the search and servers routes
    found = _get(client, "/comp/servers", "2.52").json()["hypervisors"]
    assert found[0]["servers"] == [{"name": "web", "uuid": sid}]
    assert "servers" not in _get(client, "/comp/search", "2.52").json()["hypervisors"][0]
    assert _get(client, "/nowhere/search", "2.52").status_code == 404
    assert _get(client, "/comp/search", "2.53").status_code == 404


def test_paging(client: ApiClient) -> None:
    page = _get(client, "", "2.33", limit="1").json()
    [h] = page["hypervisors"]
    assert page["hypervisors_links"][0]["rel"] == "next"
    assert _get(client, "", "2.33", limit="1", marker=str(h["id"])).json() == {
        "hypervisors": []}
    r = _get(client, "", "2.33", marker="99")
    assert_bad_request(r)
    assert r.json()["badRequest"]["message"] == "marker [99] not found"
    assert "hypervisors_links" not in _get(client, "", "2.33").json()
    assert "hypervisors_links" not in _get(client, "", "2.32", limit="1").json()


def test_show_ids_as_nova_validates_them(client: ApiClient) -> None:
    r = _get(client, "/abc", "2.52")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Hypervisor with ID 'abc' could not be found."
    assert _get(client, "/7", "2.52").status_code == 404
    r = _get(client, "/abc", "2.53")
    assert_bad_request(r)
    assert r.json()["badRequest"]["message"] == "Invalid uuid abc"
    assert _get(client, "/00000000-0000-0000-0000-000000000000", "2.53").status_code == 404


def test_statistics_and_uptime_until_2_87(memory_engine: Engine, client: ApiClient) -> None:
    built(memory_engine)
    stats = _get(client, "/statistics", "2.87").json()["hypervisor_statistics"]
    assert set(stats) == STATISTICS | {"count"}
    assert (stats["count"], stats["running_vms"], stats["vcpus"]) == (1, 1, HOST_VCPUS)
    assert _get(client, "/statistics", "2.88").status_code == 404
    uptime = _get(client, "/1/uptime", "2.1").json()["hypervisor"]
    assert set(uptime) == {"id", "hypervisor_hostname", "state", "status", "uptime"}
    assert _get(client, "/1/uptime", "2.88").status_code == 404


def test_only_administrators(client: ApiClient) -> None:
    for path, rule in (("", "list"), ("/detail", "list-detail"), ("/1", "show"),
                       ("/statistics", "statistics"), ("/1/uptime", "uptime"),
                       ("/c/search", "search"), ("/c/servers", "servers")):
        r = _get(client, path, "2.1", ALICE)
        assert r.status_code == 403, path
        assert r.json()["forbidden"]["message"] == (
            f"Policy doesn't allow os_compute_api:os-hypervisors:{rule} to be performed.")


def test_no_host_aggregates(client: ApiClient) -> None:
    """``openstack hypervisor show`` lists aggregates: there are none, and none exists."""
    headers = {**ADMIN, "X-OpenStack-Nova-API-Version": "2.1"}
    assert client.get("/v2.1/os-aggregates", headers=headers).json() == {"aggregates": []}
    r = client.get("/v2.1/os-aggregates/1", headers=headers)
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Aggregate 1 could not be found."
    r = client.get("/v2.1/os-aggregates", headers={**ALICE})
    assert r.status_code == 403
