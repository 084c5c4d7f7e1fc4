"""``/servers/{id}/metadata`` as Nova: list, merge, replace, one item; the lifecycle
table decides when metadata may change; another project's server is a 404."""

from __future__ import annotations

from typing import Any

import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
TOKENS = ["admin-t:root:p1:admin", "alice-t:alice:p1:member", "bob-t:bob:p2:member"]
ALICE = {"X-Auth-Token": "alice-t"}


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine, auth="token", tokens=TOKENS))


@pytest.fixture
def sid(client: ApiClient, memory_engine: Engine) -> str:
    r = client.post("/v2.1/servers", headers=ALICE, json={"server": {
        "name": "vm", "flavorRef": "1", "imageRef": IMAGE, "metadata": {"a": "1"}}})
    assert r.status_code == 202
    memory_engine.run_until_idle()
    return str(r.json()["server"]["id"])


def meta(client: ApiClient, sid: str) -> dict[str, Any]:
    r = client.get(f"/v2.1/servers/{sid}/metadata", headers=ALICE)
    assert r.status_code == 200
    return dict(r.json()["metadata"])


def test_merge_replace_and_items(client: ApiClient, sid: str, memory_engine: Engine) -> None:
    assert meta(client, sid) == {"a": "1"}
    r = client.post(f"/v2.1/servers/{sid}/metadata", headers=ALICE,
                    json={"metadata": {"b": "2", "a": "one"}})
    assert r.status_code == 200 and r.json() == {"metadata": {"a": "one", "b": "2"}}
    r = client.put(f"/v2.1/servers/{sid}/metadata", headers=ALICE,
                   json={"metadata": {"c": "3"}})
    assert r.json() == {"metadata": {"c": "3"}} and meta(client, sid) == {"c": "3"}
    r = client.put(f"/v2.1/servers/{sid}/metadata/d", headers=ALICE, json={"meta": {"d": "4"}})
    assert r.status_code == 200 and r.json() == {"meta": {"d": "4"}}
    assert client.get(f"/v2.1/servers/{sid}/metadata/d", headers=ALICE).json() == {
        "meta": {"d": "4"}}
    assert client.delete(f"/v2.1/servers/{sid}/metadata/c", headers=ALICE).status_code == 204
    assert meta(client, sid) == {"d": "4"}
    # the server's own document shows it, and the history says who changed it
    shown = client.get(f"/v2.1/servers/{sid}", headers=ALICE).json()["server"]
    assert shown["metadata"] == {"d": "4"}
    updates = [e for e in memory_engine.history(sid) if e.event == "Updated"]
    assert len(updates) == 4 and {e.user_id for e in updates} == {"alice"}


@pytest.mark.parametrize(("method", "path", "body", "status", "message"), [
    ("get", "/metadata/nope", None, 404, "Metadata item was not found"),
    ("delete", "/metadata/nope", None, 404, "Metadata item was not found"),
    ("put", "/metadata/k", {"meta": {"other": "v"}}, 400, "Request body and URI mismatch"),
    ("put", "/metadata/k", {"meta": {"k": "v", "l": "w"}}, 400,
     "Request body contains too many items"),
    ("post", "/metadata", {"metadata": {"k": 1}}, 400, "is not of type 'string'"),
    ("post", "/metadata", {"metadata": {"": "v"}}, 400, "Invalid input"),
    ("post", "/metadata", {"metadata": {"k": "v" * 256}}, 400, "at most 255"),
    ("post", "/metadata", {"meta": {"k": "v"}}, 400, "'metadata' is a required property"),
    ("put", "/metadata", {"metadata": {f"k{i}": "v" for i in range(129)}}, 403,
     "Maximum number of metadata items exceeds 128"),
])
def test_bad_requests(client: ApiClient, sid: str, method: str, path: str,
                      body: dict[str, Any] | None, status: int, message: str) -> None:
    kwargs: dict[str, Any] = {"headers": ALICE}
    if body is not None:
        kwargs["json"] = body
    r = getattr(client, method)(f"/v2.1/servers/{sid}{path}", **kwargs)
    assert r.status_code == status, r.text
    assert message in next(iter(r.json().values()))["message"]
    assert meta(client, sid) == {"a": "1"}


def test_the_lifecycle_table_decides(client: ApiClient, sid: str,
                                     memory_engine: Engine) -> None:
    # a task in flight: 409 with Nova's message
    client.post(f"/v2.1/servers/{sid}/action", headers=ALICE, json={"reboot": {"type": "SOFT"}})
    r = client.post(f"/v2.1/servers/{sid}/metadata", headers=ALICE,
                    json={"metadata": {"k": "v"}})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Cannot 'update_metadata' instance {sid} while it is in task_state rebooting")
    memory_engine.run_until_idle()
    # locked: 409 for its owner, allowed for an administrator
    client.post(f"/v2.1/servers/{sid}/action", headers=ALICE, json={"lock": None})
    r = client.delete(f"/v2.1/servers/{sid}/metadata/a", headers=ALICE)
    assert r.status_code == 409 and "locked" in r.json()["conflictingRequest"]["message"]
    admin = {"X-Auth-Token": "admin-t"}
    r = client.delete(f"/v2.1/servers/{sid}/metadata/a", headers=admin)
    assert r.status_code == 204


def test_another_projects_server_is_not_found(client: ApiClient, sid: str) -> None:
    bob = {"X-Auth-Token": "bob-t"}
    for method, path in (("get", "/metadata"), ("post", "/metadata"),
                         ("delete", "/metadata/a"), ("get", "/metadata/a")):
        kwargs: dict[str, Any] = {"headers": bob}
        if method == "post":
            kwargs["json"] = {"metadata": {"x": "y"}}
        assert getattr(client, method)(f"/v2.1/servers/{sid}{path}", **kwargs
                                       ).status_code == 404
    assert meta(client, sid) == {"a": "1"}
