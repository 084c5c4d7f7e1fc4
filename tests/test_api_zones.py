"""``/os-availability-zone``: the one zone, its hosts for administrators, and the zone a
create may ask for; ``/os-services``: one compute service per host."""

from __future__ import annotations

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

TOKENS = ["admin-secret:root:ops:admin", "alice-secret:alice:p1:member"]
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}


def test_zones(memory_engine: Engine) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))
    for token in (ADMIN, ALICE):
        r = client.get("/v2.1/os-availability-zone", headers=token)
        assert r.status_code == 200
        assert r.json() == {"availabilityZoneInfo": [
            {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None}]}
    r = client.get("/v2.1/os-availability-zone/detail", headers=ADMIN)
    assert r.json()["availabilityZoneInfo"][0]["hosts"] == {
        "compute-1": {"nova-compute": {"available": True, "active": True,
                                       "updated_at": None}}}
    r = client.get("/v2.1/os-availability-zone/detail", headers=ALICE)
    assert r.status_code == 403 and "forbidden" in r.json()


def test_a_create_in_another_zone_is_400(memory_engine: Engine, noauth_client: ApiClient
                                         ) -> None:
    body = {"name": "vm", "flavorRef": "1", "imageRef": image_id_for("cirros-0.6.2-x86_64")}
    r = noauth_client.post("/v2.1/servers",
                           json={"server": {**body, "availability_zone": "elsewhere"}})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == (
        "The requested availability zone is not available")
    assert memory_engine.list_servers() == []
    r = noauth_client.post("/v2.1/servers", json={"server": {**body, "availability_zone": "nova"}})
    assert r.status_code == 202


def test_services(memory_engine: Engine) -> None:
    client = ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))

    def services(version: str, query: str = "") -> list[dict[str, object]]:
        r = client.get(f"/v2.1/os-services{query}",
                       headers={**ADMIN, "X-OpenStack-Nova-API-Version": version})
        assert r.status_code == 200, r.text
        found: list[dict[str, object]] = r.json()["services"]
        return found

    [old] = services("2.1")
    assert old == {"id": 1, "binary": "nova-compute", "host": "compute-1", "zone": "nova",
                   "status": "enabled", "state": "up", "updated_at": None,
                   "disabled_reason": None}
    assert services("2.11")[0]["forced_down"] is False
    [new] = services("2.53")
    assert isinstance(new["id"], str) and len(str(new["id"])) == 36
    assert services("2.53") == [new]  # stable
    assert services("2.53", "?host=compute-1") == [new]
    assert services("2.53", "?host=elsewhere") == []
    assert services("2.53", "?binary=nova-conductor") == []
    r = client.get("/v2.1/os-services", headers=ALICE)
    assert r.status_code == 403 and "forbidden" in r.json()
