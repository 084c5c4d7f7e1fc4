"""The ``Idempotency-Key`` header over HTTP: a retried ``POST`` (create, a server action,
createImage, createBackup) acts once and is answered as the first was, with the first
request's id; the key with a different request is refused; the key is in the ledger."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
IMAGE2 = image_id_for("debian-12-genericcloud-amd64")
SERVER = {"server": {"name": "vm", "flavorRef": "2", "imageRef": IMAGE}}


@pytest.fixture
def client(memory_engine: Engine) -> ApiClient:
    return ApiClient(create_app(memory_engine))


def keyed(key: str, version: str = "2.1") -> dict[str, str]:
    return {"Idempotency-Key": key, "X-OpenStack-Nova-API-Version": version}


def rid(r: httpx.Response) -> str:
    return r.headers["x-openstack-request-id"]


def servers(client: ApiClient) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = client.get("/v2.1/a1/servers").json()["servers"]
    return listed


def events(engine: Engine, sid: str, name: str) -> list[Any]:
    return [h for h in engine.history(sid) if h.event == name]


@pytest.fixture
def sid(client: ApiClient, memory_engine: Engine) -> str:
    r = client.post("/v2.1/a1/servers", json=SERVER)
    assert r.status_code == 202
    memory_engine.run_until_idle()
    return str(r.json()["server"]["id"])


# --- create ----------------------------------------------------------------------------
def test_a_retried_create_makes_one_server_and_answers_as_the_first(
        client: ApiClient) -> None:
    first = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("boot-1"))
    again = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("boot-1"))
    assert first.status_code == again.status_code == 202
    assert again.json()["server"]["id"] == first.json()["server"]["id"]
    assert again.headers["location"] == first.headers["location"]
    assert rid(again) == again.headers["x-compute-request-id"] == rid(first)
    assert again.headers["idempotency-replayed"] == "true"
    assert "idempotency-replayed" not in first.headers
    # the password made for the first answer was never recorded: a repeat cannot tell it
    assert "adminPass" in first.json()["server"]
    assert "adminPass" not in again.json()["server"]
    assert [s["id"] for s in servers(client)] == [first.json()["server"]["id"]]
    # another key makes another server
    other = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("boot-2"))
    assert other.json()["server"]["id"] != first.json()["server"]["id"]
    assert len(servers(client)) == 2


def test_a_chosen_password_is_echoed_by_a_repeat(client: ApiClient) -> None:
    body = {"server": {**SERVER["server"], "adminPass": "s3cret!"}}
    first = client.post("/v2.1/a1/servers", json=body, headers=keyed("pw"))
    again = client.post("/v2.1/a1/servers", json=body, headers=keyed("pw"))
    assert first.json() == again.json()
    assert again.json()["server"]["adminPass"] == "s3cret!"


def test_a_repeated_multi_create_answers_with_the_same_reservation(
        client: ApiClient) -> None:
    body = {"server": {**SERVER["server"], "max_count": 3, "return_reservation_id": True}}
    first = client.post("/v2.1/a1/servers", json=body, headers=keyed("three"))
    again = client.post("/v2.1/a1/servers", json=body, headers=keyed("three"))
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert first.json()["reservation_id"].startswith("r-")
    assert rid(again) == rid(first)
    assert len(servers(client)) == 3


def test_the_key_with_another_body_is_refused(client: ApiClient) -> None:
    first = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("k"))
    other = {"server": {**SERVER["server"], "name": "another"}}
    r = client.post("/v2.1/a1/servers", json=other, headers=keyed("k"))
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        "Idempotency key 'k' was already used for a different request")
    assert rid(r) != rid(first)
    assert [s["name"] for s in servers(client)] == ["vm"]


def test_keys_are_per_project(client: ApiClient) -> None:
    first = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("shared"))
    second = client.post("/v2.1/a2/servers", json=SERVER, headers=keyed("shared"))
    assert second.status_code == 202
    assert second.json()["server"]["id"] != first.json()["server"]["id"]
    assert rid(second) != rid(first)


@pytest.mark.parametrize("key", ["", "x" * 256])
def test_a_key_of_bad_length_is_a_bad_request(client: ApiClient, key: str) -> None:
    r = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed(key))
    assert r.status_code == 400
    assert "idempotency key" in r.json()["badRequest"]["message"]
    assert servers(client) == []


def test_without_a_key_each_post_acts(client: ApiClient) -> None:
    a = client.post("/v2.1/a1/servers", json=SERVER)
    b = client.post("/v2.1/a1/servers", json=SERVER)
    assert a.json()["server"]["id"] != b.json()["server"]["id"]
    assert "idempotency-replayed" not in b.headers


# --- server actions --------------------------------------------------------------------
def test_a_retried_action_acts_once(client: ApiClient, memory_engine: Engine,
                                    sid: str) -> None:
    url = f"/v2.1/a1/servers/{sid}/action"
    first = client.post(url, json={"os-stop": None}, headers=keyed("stop-1"))
    memory_engine.run_until_idle()
    # stopped now: without the key a second stop is refused; with it, answered as before
    again = client.post(url, json={"os-stop": None}, headers=keyed("stop-1"))
    assert first.status_code == again.status_code == 202
    assert rid(again) == rid(first)
    assert again.headers["idempotency-replayed"] == "true"
    assert client.post(url, json={"os-stop": None}).status_code == 409
    assert [e.request_id for e in events(memory_engine, sid, "ActionRequested")] == [
        rid(first)]
    # the same key for another action is refused
    r = client.post(url, json={"os-start": None}, headers=keyed("stop-1"))
    assert r.status_code == 409
    assert "conflictingRequest" in r.json()


def test_a_retried_reboot_with_another_type_is_refused(
        client: ApiClient, memory_engine: Engine, sid: str) -> None:
    url = f"/v2.1/a1/servers/{sid}/action"
    first = client.post(url, json={"reboot": {"type": "SOFT"}}, headers=keyed("rb"))
    again = client.post(url, json={"reboot": {"type": "SOFT"}}, headers=keyed("rb"))
    assert (first.status_code, again.status_code) == (202, 202)
    assert rid(again) == rid(first)
    hard = client.post(url, json={"reboot": {"type": "HARD"}}, headers=keyed("rb"))
    assert hard.status_code == 409
    assert len(events(memory_engine, sid, "ActionRequested")) == 1


def test_a_retried_rescue_does_not_repeat_a_made_up_password(
        client: ApiClient, memory_engine: Engine, sid: str) -> None:
    url = f"/v2.1/a1/servers/{sid}/action"
    first = client.post(url, json={"rescue": None}, headers=keyed("rescue"))
    again = client.post(url, json={"rescue": None}, headers=keyed("rescue"))
    assert (first.status_code, again.status_code) == (200, 200)
    assert set(first.json()) == {"adminPass"}
    assert again.json() == {}
    assert rid(again) == rid(first)


def test_a_retried_rebuild_answers_with_the_server(
        client: ApiClient, memory_engine: Engine, sid: str) -> None:
    url = f"/v2.1/a1/servers/{sid}/action"
    body = {"rebuild": {"imageRef": IMAGE2, "adminPass": "chosen"}}
    first = client.post(url, json=body, headers=keyed("rebuild"))
    again = client.post(url, json=body, headers=keyed("rebuild"))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["server"]["id"] == sid
    assert again.json()["server"]["adminPass"] == "chosen"
    assert rid(again) == rid(first)
    assert len(events(memory_engine, sid, "ActionRequested")) == 1


# --- images ----------------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"createImage": {"name": "snap"}},
    {"createBackup": {"name": "bak", "backup_type": "daily", "rotation": 2}},
])
def test_a_retried_image_request_makes_one_image(
        client: ApiClient, memory_engine: Engine, sid: str, body: dict[str, Any]) -> None:
    url = f"/v2.1/a1/servers/{sid}/action"
    first = client.post(url, json=body, headers=keyed("img", "2.45"))
    again = client.post(url, json=body, headers=keyed("img", "2.45"))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert rid(again) == rid(first)
    memory_engine.run_until_idle()
    images = client.get("/v2.1/a1/images").json()["images"]
    assert [i["id"] for i in images if i["name"] in ("snap", "bak")] == [
        first.json()["image_id"]]
    # before 2.45 the image is named by the Location header, the same on a repeat
    old = client.post(url, json=body, headers=keyed("img-old"))
    old_again = client.post(url, json=body, headers=keyed("img-old"))
    assert old.headers["location"] == old_again.headers["location"]


# --- the ledger ------------------------------------------------------------------------
def test_the_key_is_in_the_first_requests_causal_chain(client: ApiClient) -> None:
    first = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("ledgered"))
    client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("ledgered"))
    chain = client.get(f"/ledger/v1/requests/{rid(first)}").json()
    recorded = [e for e in chain["entries"] if e["aggregate"] == "idempotency"]
    assert len(recorded) == 1
    assert recorded[0]["payload"]["key"] == "ledgered"
    assert recorded[0]["payload"]["result"]["server_id"] == first.json()["server"]["id"]
    assert recorded[0]["request_id"] == rid(first)


def test_identical_requests_racing_act_once(client: ApiClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(
            lambda _: client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("race")),
            range(6)))
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["server"]["id"] for r in answers}) == 1
    assert len({rid(r) for r in answers}) == 1
    assert len(servers(client)) == 1


def test_a_repeated_create_of_a_deleted_server_is_not_found(
        client: ApiClient, memory_engine: Engine) -> None:
    first = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("gone"))
    memory_engine.run_until_idle()
    assert client.delete(f"/v2.1/a1/servers/{first.json()['server']['id']}"
                         ).status_code == 204
    memory_engine.run_until_idle()
    again = client.post("/v2.1/a1/servers", json=SERVER, headers=keyed("gone"))
    assert again.status_code == 404
    assert "itemNotFound" in again.json()
    assert servers(client) == []
