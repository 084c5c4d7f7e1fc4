"""``GET /servers/{id}/diagnostics``: the standard form from 2.48 (validated by tempest's
schema in test_clients_tempest.py), a flat one before, for administrators."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.compute import active_server
from vmledger import Conflict, Engine, NotFound
from vmledger.adapters.hypervisor import GuestSpec
from vmledger.api import create_app
from vmledger.api.testing import ApiClient

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:ops:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}


def test_diagnostics_per_microversion_and_policy(memory_engine: Engine) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    sid = active_server(memory_engine, client, headers=ADMIN)
    [port] = memory_engine.get_server(sid).doc["addresses"]["private"]
    r = client.get(f"/v2.1/servers/{sid}/diagnostics",
                   headers={**ADMIN, "X-OpenStack-Nova-API-Version": "2.48"})
    assert r.status_code == 200, r.text
    d = r.json()
    assert (d["state"], d["driver"], d["hypervisor"], d["num_cpus"], d["num_nics"]) == (
        "running", "libvirt", "simulator", 1, 1)
    assert d["memory_details"] == {"maximum": 2048, "used": 2048}
    assert d["nic_details"][0]["mac_address"] == port["OS-EXT-IPS-MAC:mac_addr"]
    old = client.get(f"/v2.1/servers/{sid}/diagnostics", headers=ADMIN).json()
    assert old["memory"] == 2048 * 1024 and "cpu0_time" in old and "vda_read" in old
    r = client.get(f"/v2.1/servers/{sid}/diagnostics", headers={"X-Auth-Token": "alice-secret"})
    assert r.status_code == 403 and "forbidden" in r.json()
    memory_engine.stop(sid)
    memory_engine.run_until_idle()
    d = client.get(f"/v2.1/servers/{sid}/diagnostics",
                   headers={**ADMIN, "X-OpenStack-Nova-API-Version": "2.96"}).json()
    assert (d["state"], d["memory_details"]["used"], d["cpu_details"]) == ("shutdown", 0, [])


def test_libvirt_diagnostics(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is not installed")
    from tests.support.libvirtd import node_uri
    from vmledger.adapters.libvirt import LibvirtDriver

    with LibvirtDriver(node_uri(tmp_path)) as driver:
        sid = str(uuid.uuid4())
        driver.spawn(GuestSpec(server_id=sid, name="web-1", flavor_id="1", vcpus=2,
                               ram_mb=512, disk_gb=0, image_id="none",
                               mac="fa:16:3e:00:00:01"))
        d = driver.diagnostics(sid)
        assert (d["state"], d["driver"], d["num_cpus"], d["num_nics"], d["num_disks"]) == (
            "running", "libvirt", 2, 1, 0)
        assert d["memory_details"]["maximum"] == 512
        assert d["nic_details"][0]["mac_address"] == "fa:16:3e:00:00:01"
        driver.power_off(sid)
        assert driver.diagnostics(sid)["state"] == "shutdown"


def test_not_ready_and_unknown_guests(memory_engine: Engine) -> None:
    building = memory_engine.create_server("new", flavor="m1.small",
                                           image="cirros-0.6.2-x86_64").id
    with pytest.raises(Conflict, match="is not ready"):
        memory_engine.diagnostics(building)
    memory_engine.run_until_idle()
    memory_engine.hypervisor.destroy(building)  # gone behind the engine's back
    with pytest.raises(NotFound):
        memory_engine.diagnostics(building)
