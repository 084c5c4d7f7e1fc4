"""``GET /limits``: what a project uses, Nova's fields per microversion."""

from __future__ import annotations

import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
TOKENS = ["admin-t:root:p1:admin", "alice-t:alice:p2:member"]


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))


def limits(client: ApiClient, token: str, version: str = "2.1", query: str = ""
           ) -> dict[str, int]:
    r = client.get(f"/v2.1/limits{query}", headers={
        "X-Auth-Token": token, "OpenStack-API-Version": f"compute {version}"})
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["rate"] == []
    return dict(r.json()["limits"]["absolute"])


def test_usage_follows_the_projects_servers(client: ApiClient, memory_engine: Engine) -> None:
    alice = {"X-Auth-Token": "alice-t"}
    for flavor in ("1", "2"):  # m1.tiny (1 vCPU, 512 MB), m1.small (1 vCPU, 2048 MB)
        r = client.post("/v2.1/servers", headers=alice, json={"server": {
            "name": "vm", "flavorRef": flavor, "imageRef": IMAGE}})
        assert r.status_code == 202
    memory_engine.run_until_idle()
    used = limits(client, "alice-t")
    assert (used["totalInstancesUsed"], used["totalCoresUsed"], used["totalRAMUsed"]) == (
        2, 2, 2560)
    assert used["maxTotalInstances"] == -1 and used["maxServerMeta"] == 128
    assert used["maxTotalKeypairs"] == 100
    assert limits(client, "admin-t")["totalInstancesUsed"] == 0  # project p1
    assert limits(client, "admin-t", query="?tenant_id=p2")["totalInstancesUsed"] == 2
    r = client.get("/v2.1/limits?tenant_id=p1", headers={"X-Auth-Token": "alice-t"})
    assert r.status_code == 403


def test_fields_per_microversion(client: ApiClient) -> None:
    assert {"maxSecurityGroups", "maxImageMeta", "maxPersonality"} <= set(
        limits(client, "alice-t", "2.35"))
    at_236 = limits(client, "alice-t", "2.36")
    assert "maxSecurityGroups" not in at_236 and "maxImageMeta" in at_236
    at_239 = limits(client, "alice-t", "2.39")
    assert "maxImageMeta" not in at_239 and "maxPersonality" in at_239
    assert "maxPersonality" not in limits(client, "alice-t", "2.57")
