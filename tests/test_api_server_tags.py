"""``/servers/{id}/tags`` (2.26+) and ``/servers/{id}/ips`` as Nova."""

from __future__ import annotations

from typing import Any

import pytest

from vmledger import Engine
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
H = {"OpenStack-API-Version": "compute 2.26"}


@pytest.fixture
def client(noauth_client: ApiClient) -> ApiClient:
    return noauth_client


@pytest.fixture
def sid(client: ApiClient, memory_engine: Engine) -> str:
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE}})
    memory_engine.run_until_idle()
    return str(r.json()["server"]["id"])


def tags(client: ApiClient, sid: str) -> list[str]:
    return list(client.get(f"/v2.1/a1/servers/{sid}/tags", headers=H).json()["tags"])


def test_tags(client: ApiClient, sid: str, memory_engine: Engine) -> None:
    assert tags(client, sid) == []
    r = client.put(f"/v2.1/a1/servers/{sid}/tags/web", headers=H)
    assert r.status_code == 201
    assert r.headers["Location"] == f"http://testserver/v2.1/a1/servers/{sid}/tags/web"
    assert client.put(f"/v2.1/a1/servers/{sid}/tags/web", headers=H).status_code == 204
    assert client.get(f"/v2.1/a1/servers/{sid}/tags/web", headers=H).status_code == 204
    assert client.get(f"/v2.1/a1/servers/{sid}/tags/db", headers=H).status_code == 404
    r = client.put(f"/v2.1/a1/servers/{sid}/tags", headers=H, json={"tags": ["a", "b", "a"]})
    assert r.status_code == 200 and r.json() == {"tags": ["a", "b"]}
    # the list filters and the server document see them
    found = client.get("/v2.1/a1/servers?tags=a", headers=H).json()["servers"]
    assert [s["id"] for s in found] == [sid]
    assert client.get(f"/v2.1/a1/servers/{sid}", headers=H).json()["server"]["tags"] == [
        "a", "b"]
    assert client.delete(f"/v2.1/a1/servers/{sid}/tags/a", headers=H).status_code == 204
    r = client.delete(f"/v2.1/a1/servers/{sid}/tags/a", headers=H)
    assert r.status_code == 404 and r.json()["itemNotFound"]["message"] == (
        "Tag a could not be found.")
    assert client.delete(f"/v2.1/a1/servers/{sid}/tags", headers=H).status_code == 204
    assert tags(client, sid) == []


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("put", "/tags", {"tags": ["a/b"]}, "Invalid tag"),
    ("put", "/tags", {"tags": ["x" * 61]}, "Invalid tag"),
    ("put", "/tags", {"tags": [f"t{i}" for i in range(51)]}, "per-server limit 50"),
    ("put", "/tags", {"tags": "a"}, "is not of type 'array'"),
    ("put", "/tags", {}, "'tags' is a required property"),
    ("put", "/tags/a,b", None, "Invalid tag"),
])
def test_bad_tags_are_400(client: ApiClient, sid: str, method: str, path: str,
                          body: dict[str, Any] | None, message: str) -> None:
    kwargs: dict[str, Any] = {"headers": H}
    if body is not None:
        kwargs["json"] = body
    r = getattr(client, method)(f"/v2.1/a1/servers/{sid}{path}", **kwargs)
    assert r.status_code == 400, r.text
    assert message in r.json()["badRequest"]["message"]
    assert tags(client, sid) == []


def test_tags_follow_the_lifecycle_table(client: ApiClient, sid: str,
                                         memory_engine: Engine) -> None:
    client.post(f"/v2.1/a1/servers/{sid}/action", json={"resize": {"flavorRef": "2"}})
    memory_engine.run_until_idle()  # VERIFY_RESIZE: Nova refuses tag changes
    r = client.put(f"/v2.1/a1/servers/{sid}/tags/web", headers=H)
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'update tag' instance {sid} while it is in vm_state resized")
    assert client.get(f"/v2.1/a1/servers/{sid}/tags", headers=H).status_code == 200


def test_tags_need_2_26(client: ApiClient, sid: str) -> None:
    r = client.get(f"/v2.1/a1/servers/{sid}/tags",
                   headers={"OpenStack-API-Version": "compute 2.25"})
    assert r.status_code == 404


def test_ips(client: ApiClient, sid: str) -> None:
    addresses = client.get(f"/v2.1/a1/servers/{sid}/ips").json()["addresses"]
    [(network, entries)] = addresses.items()
    assert entries and set(entries[0]) == {"version", "addr"}
    assert client.get(f"/v2.1/a1/servers/{sid}/ips/{network}").json() == {network: entries}
    r = client.get(f"/v2.1/a1/servers/{sid}/ips/nope")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == "Instance is not a member of specified network"
