"""``createImage`` and the images it makes: the action's shapes per microversion, the
snapshot task state, the images proxy (``/images``, 2.1-2.35: fields, filters, pages,
delete) and the Glance shim (``/image/v2``), with projects kept apart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from vmledger import Engine
from vmledger.adapters.simulator import Simulator
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
PREBUILT = {IMAGE, image_id_for("debian-12-genericcloud-amd64"),
            image_id_for("ubuntu-24.04-server-cloudimg-amd64")}
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}
TOKENS = ["admin-secret:root:ops:admin,member", "alice-secret:alice:a1:member",
          "bob-secret:bob:a2:member"]


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine))


@pytest.fixture
def tokens(system_clock_engine: Engine) -> ApiClient:
    """Token auth: alice in a1, bob in a2 (members), root an administrator in ops."""
    return ApiClient(create_app(system_clock_engine, auth="token", tokens=TOKENS))


def mv(version: str, token: dict[str, str] | None = None) -> dict[str, str]:
    return {"X-OpenStack-Nova-API-Version": version, **(token or {})}


def boot(client: ApiClient, engine: Engine, *, image: str = IMAGE, project: str = "a1",
         token: dict[str, str] | None = None, name: str = "vm") -> str:
    """An ACTIVE server (flavor 2, m1.small); ``project`` is in the URL unless a token
    says who is calling."""
    prefix = "/v2.1" if token else f"/v2.1/{project}"
    r = client.post(f"{prefix}/servers", headers=token or {}, json={"server": {
        "name": name, "flavorRef": "2", "imageRef": image}})
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["server"]["id"])


def snapshot(client: ApiClient, sid: str, body: Any, *, version: str = "2.1",
             project: str = "a1", token: dict[str, str] | None = None) -> httpx.Response:
    prefix = "/v2.1" if token else f"/v2.1/{project}"
    return client.post(f"{prefix}/servers/{sid}/action", json={"createImage": body},
                       headers=mv(version, token))


def server(client: ApiClient, sid: str, project: str = "a1") -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/v2.1/{project}/servers/{sid}").json()["server"]
    return found


def image(client: ApiClient, image_id: str, *, token: dict[str, str] | None = None,
          path: str = "/v2.1") -> httpx.Response:
    return client.get(f"{path}/images/{image_id}", headers=token or {})


def made(client: ApiClient, engine: Engine, sid: str, name: str = "snap",
         token: dict[str, str] | None = None, **metadata: str) -> str:
    """A snapshot of ``sid``, saved by the agent; its id."""
    r = snapshot(client, sid, {"name": name, "metadata": metadata}, version="2.45",
                 token=token)
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    return str(r.json()["image_id"])


# --- createImage: the action -----------------------------------------------------------
def test_create_image_before_2_45_answers_a_location(client: ApiClient, system_clock_engine: Engine
                                                     ) -> None:
    sid = boot(client, system_clock_engine)
    r = snapshot(client, sid, {"name": "snap", "metadata": {"purpose": "backup"}})
    assert (r.status_code, r.content) == (202, b"")
    location = r.headers["location"]
    assert location.startswith("http://testserver/v2.1/a1/images/")
    image_id = location.rsplit("/", 1)[1]
    uuid.UUID(image_id)
    # the snapshot is in progress: the status stays ACTIVE, the task is image_snapshot
    shown = server(client, sid)
    assert (shown["status"], shown["OS-EXT-STS:task_state"]) == ("ACTIVE", "image_snapshot")
    saving = image(client, image_id).json()["image"]
    assert (saving["status"], saving["progress"], saving["OS-EXT-IMG-SIZE:size"]) == (
        "SAVING", 25, None)
    # a second action during the snapshot is a conflict
    again = snapshot(client, sid, {"name": "snap2"})
    assert again.status_code == 409
    assert again.json()["conflictingRequest"]["message"] == (
        f"Cannot 'createImage' instance {sid} while it is in task_state image_snapshot")

    system_clock_engine.run_until_idle()
    shown = server(client, sid)
    assert (shown["status"], shown["OS-EXT-STS:task_state"]) == ("ACTIVE", None)
    done = client.get(location).json()["image"]
    assert (done["id"], done["name"], done["status"], done["progress"]) == (
        image_id, "snap", "ACTIVE", 100)
    assert done["OS-EXT-IMG-SIZE:size"] > 0
    assert done["minDisk"] == 20  # the flavor's disk (m1.small)
    assert done["metadata"] == {"purpose": "backup", "image_type": "snapshot",
                                "instance_uuid": sid, "base_image_ref": IMAGE}
    assert done["server"] == {"id": sid, "links": [
        {"rel": "self", "href": f"http://testserver/v2.1/a1/servers/{sid}"},
        {"rel": "bookmark", "href": f"http://testserver/a1/servers/{sid}"}]}
    assert [link["rel"] for link in done["links"]] == ["self", "bookmark", "alternate"]


@pytest.mark.parametrize("version", ["2.45", "2.96", "latest"])
def test_create_image_from_2_45_answers_the_id(client: ApiClient, system_clock_engine: Engine,
                                               version: str) -> None:
    sid = boot(client, system_clock_engine)
    r = snapshot(client, sid, {"name": "snap"}, version=version)
    assert r.status_code == 202
    assert "location" not in r.headers
    body = r.json()
    assert list(body) == ["image_id"]
    system_clock_engine.run_until_idle()
    assert image(client, body["image_id"]).json()["image"]["status"] == "ACTIVE"


def test_create_image_is_an_instance_action(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    r = snapshot(client, sid, {"name": "snap"})
    request_id = r.headers["x-openstack-request-id"]
    assert r.headers["x-compute-request-id"] == request_id
    system_clock_engine.run_until_idle()
    actions = client.get(f"/v2.1/a1/servers/{sid}/os-instance-actions").json()
    assert [(a["action"], a["message"]) for a in actions["instanceActions"]] == [
        ("createImage", None), ("create", None)]
    assert actions["instanceActions"][0]["request_id"] == request_id
    shown = client.get(f"/v2.1/a1/servers/{sid}/os-instance-actions/{request_id}").json()
    assert shown["instanceAction"]["action"] == "createImage"
    assert [e["event"] for e in shown["instanceAction"]["events"]] == [
        "compute_snapshot_instance"]
    assert any(h.event == "ActionRequested" and h.request_id == request_id
               for h in system_clock_engine.history(sid))


def test_a_server_built_from_the_snapshot(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    image_id = made(client, system_clock_engine, sid)
    clone = boot(client, system_clock_engine, image=image_id, name="clone")
    shown = server(client, clone)
    assert (shown["status"], shown["image"]["id"]) == ("ACTIVE", image_id)
    assert shown["image"]["links"] == [
        {"rel": "bookmark", "href": f"http://testserver/a1/images/{image_id}"}]
    # and a snapshot of the clone names the clone and the snapshot it came from
    second = made(client, system_clock_engine, clone, name="snap-of-clone")
    metadata = image(client, second).json()["image"]["metadata"]
    assert (metadata["instance_uuid"], metadata["base_image_ref"]) == (clone, image_id)
    # rebuilding onto it works too
    r = client.post(f"/v2.1/a1/servers/{sid}/action", json={"rebuild": {"imageRef": second}})
    assert r.status_code == 202
    system_clock_engine.run_until_idle()
    assert server(client, sid)["image"]["id"] == second


@pytest.mark.parametrize("state", ["SHUTOFF", "PAUSED", "SUSPENDED"])
def test_create_image_in_other_allowed_states(client: ApiClient, system_clock_engine: Engine,
                                              state: str) -> None:
    sid = boot(client, system_clock_engine)
    action = {"SHUTOFF": "os-stop", "PAUSED": "pause", "SUSPENDED": "suspend"}[state]
    client.post(f"/v2.1/a1/servers/{sid}/action", json={action: None})
    system_clock_engine.run_until_idle()
    r = snapshot(client, sid, {"name": "snap"})
    assert r.status_code == 202
    assert server(client, sid)["status"] == state  # the status does not change
    system_clock_engine.run_until_idle()
    shown = server(client, sid)
    assert (shown["status"], shown["OS-EXT-STS:task_state"]) == (state, None)


def test_create_image_in_verify_resize_is_409(client: ApiClient,
                                              system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    client.post(f"/v2.1/a1/servers/{sid}/action", json={"resize": {"flavorRef": "3"}})
    system_clock_engine.run_until_idle()
    assert server(client, sid)["status"] == "VERIFY_RESIZE"
    r = snapshot(client, sid, {"name": "snap"})
    assert r.status_code == 409
    assert r.json() == {"conflictingRequest": {"code": 409, "message": (
        f"Cannot 'createImage' instance {sid} while it is in vm_state resized")}}
    # nothing was made
    listed = client.get("/v2.1/a1/images?type=snapshot").json()["images"]
    assert listed == []


def too_long() -> str:
    return "x" * 256


@pytest.mark.parametrize(("body", "message"), [
    (None, "Invalid input for field/attribute createImage. Value: None. "
           "None is not of type 'object'"),
    ({}, "Invalid input for field/attribute createImage. Value: {}. "
         "'name' is a required property"),
    ({"metadata": {}}, "Invalid input for field/attribute createImage. Value: "
                       "{'metadata': {}}. 'name' is a required property"),
    ({"name": ""}, "Invalid input for field/attribute name. Value: . '' should be non-empty"),
    ({"name": "x" * 256}, f"Invalid input for field/attribute name. Value: {'x' * 256}. "
                          f"'{'x' * 256}' is too long"),
    ({"name": " snap"}, "Invalid input for field/attribute name. Value:  snap. ' snap' does "
                        "not match the 'name' format: leading or trailing whitespace"),
    ({"name": 7}, "Invalid input for field/attribute name. Value: 7. 7 is not of type "
                  "'string'"),
    ({"name": "snap", "extra": 1}, "Invalid input for field/attribute createImage. Value: "
                                   "{'name': 'snap', 'extra': 1}. Additional properties are "
                                   "not allowed ('extra' was unexpected)"),
    ({"name": "snap", "metadata": []}, "Invalid input for field/attribute metadata. Value: "
                                       "[]. [] is not of type 'object'"),
    ({"name": "snap", "metadata": {"k": 1}}, "Invalid input for field/attribute k. Value: 1. "
                                             "1 is not of type 'string'"),
    ({"name": "snap", "metadata": {"k": "v" * 256}}, None),
    ({"name": "snap", "metadata": {"bad/key": "v"}}, (
        "Invalid input for field/attribute metadata. Value: {'bad/key': 'v'}. 'bad/key' does "
        "not match any of the regexes: '^[a-zA-Z0-9-_:. ]{1,255}$'")),
])
def test_create_image_validation_is_400(client: ApiClient, system_clock_engine: Engine, body: Any,
                                        message: str | None) -> None:
    sid = boot(client, system_clock_engine)
    r = snapshot(client, sid, body)
    assert r.status_code == 400
    if message is not None:
        assert r.json() == {"badRequest": {"code": 400, "message": message}}
    assert server(client, sid)["OS-EXT-STS:task_state"] is None


def test_create_image_name_of_255_is_fine(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    r = snapshot(client, sid, {"name": "x" * 255}, version="2.45")
    assert r.status_code == 202
    assert image(client, r.json()["image_id"]).json()["image"]["name"] == "x" * 255


def test_create_image_metadata_quota(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    many = {f"k{i}": "v" for i in range(129)}
    r = snapshot(client, sid, {"name": "snap", "metadata": many}, version="2.38")
    assert r.status_code == 403
    assert r.json()["forbidden"]["message"] == "Image metadata limit exceeded"
    # from 2.39 Nova no longer checks the quota; vmledger's own limit is a 400
    assert snapshot(client, sid, {"name": "snap", "metadata": many},
                    version="2.39").status_code == 400
    assert snapshot(client, sid, {"name": "snap", "metadata": dict(list(many.items())[:128])},
                    version="2.38").status_code == 202


def test_create_image_of_unknown_or_foreign_server_is_404(tokens: ApiClient,
                                                          system_clock_engine: Engine
                                                          ) -> None:
    missing = "6b0e4b3c-0000-4000-8000-000000000000"
    r = snapshot(tokens, missing, {"name": "snap"}, token=ALICE)
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == f"Instance {missing} could not be found."
    sid = boot(tokens, system_clock_engine, token=ALICE)
    r = snapshot(tokens, sid, {"name": "snap"}, token=BOB)  # another project's server
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["message"] == f"Instance {sid} could not be found."
    # an administrator of another project may snapshot it (Nova's default policy)
    assert snapshot(tokens, sid, {"name": "snap"}, token=ADMIN).status_code == 202
    # validation comes before the lookup
    assert snapshot(tokens, missing, {"name": ""}, token=ALICE).status_code == 400


# --- the images proxy --------------------------------------------------------------------
def test_proxy_lists_prebuilt_and_custom_images(client: ApiClient,
                                                system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    first = made(client, system_clock_engine, sid, "first")
    second = made(client, system_clock_engine, sid, "second")
    listed = client.get("/v2.1/a1/images").json()
    assert "images_links" not in listed
    ids = [i["id"] for i in listed["images"]]
    # Glance's order: newest first
    assert ids[:2] == [second, first] and set(ids[2:]) == PREBUILT
    summary = listed["images"][0]
    assert set(summary) == {"id", "name", "links"}
    assert summary["links"][0] == {"rel": "self",
                                   "href": f"http://testserver/v2.1/a1/images/{second}"}
    detail = {i["id"]: i for i in client.get("/v2.1/a1/images/detail").json()["images"]}
    assert set(detail) == set(ids)
    assert detail[first] == image(client, first, path="/v2.1/a1").json()["image"]
    assert "server" not in detail[IMAGE]
    assert detail[IMAGE]["metadata"] == {"os_distro": "cirros"}
    created = datetime.fromisoformat(detail[first]["created"].replace("Z", "+00:00"))
    assert abs(created - datetime.now(UTC)) < timedelta(minutes=5)


def test_proxy_filters(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    other = boot(client, system_clock_engine, name="other")
    before = datetime.now(UTC) - timedelta(seconds=1)
    snap = made(client, system_clock_engine, sid, "snap", tier="gold")
    queued = snapshot(client, other, {"name": "pending"}, version="2.45").json()["image_id"]

    def ids(query: str) -> list[str]:
        r = client.get(f"/v2.1/a1/images/detail?{query}")
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["images"]]

    assert ids("name=snap") == [snap]
    assert ids("name=cirros-0.6.2-x86_64") == [IMAGE]
    assert ids("name=nothing") == []
    assert ids("type=snapshot") == [queued, snap]
    assert ids("type=backup") == []
    assert ids(f"server={sid}") == [snap]
    assert ids(f"server=http://testserver/v2.1/a1/servers/{other}") == [queued]
    assert ids("status=SAVING") == [queued]
    assert ids("status=queued") == [queued]
    assert set(ids("status=ACTIVE")) == PREBUILT | {snap}
    assert set(ids("status=active")) == PREBUILT | {snap}
    assert ids("property-tier=gold") == [snap]
    assert ids("property-os_distro=debian") == [image_id_for("debian-12-genericcloud-amd64")]
    assert set(ids("minRam=512")) == PREBUILT - {IMAGE}
    assert set(ids("minDisk=20")) == {snap, queued}
    assert ids(f"changes-since={before.strftime('%Y-%m-%dT%H:%M:%SZ')}") == [queued, snap]
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert ids(f"changes-since={future}") == []
    assert ids("type=snapshot&name=snap&status=ACTIVE") == [snap]
    for bad in ("changes-since=yesterday", "minRam=x", "minDisk=1.5"):
        assert client.get(f"/v2.1/a1/images?{bad}").status_code == 400
    shown = image(client, queued).json()["image"]
    assert (shown["status"], shown["progress"]) == ("SAVING", 25)
    system_clock_engine.run_until_idle()
    assert image(client, queued).json()["image"]["status"] == "ACTIVE"


@pytest.mark.parametrize("collection", ["images", "images/detail"])
def test_proxy_pages(client: ApiClient, system_clock_engine: Engine, collection: str) -> None:
    sid = boot(client, system_clock_engine)
    made(client, system_clock_engine, sid, "a")
    made(client, system_clock_engine, sid, "b")
    every = [i["id"] for i in client.get(f"/v2.1/a1/{collection}").json()["images"]]
    assert len(every) == 5
    first = client.get(f"/v2.1/a1/{collection}?limit=2&type=snapshot").json()
    assert first["images_links"] == [{"rel": "next", "href": (
        f"http://testserver/v2.1/a1/{collection}?limit=2&type=snapshot"
        f"&marker={first['images'][-1]['id']}")}]
    seen: list[str] = []
    url: str | None = f"/v2.1/a1/{collection}?limit=2"
    while url is not None:
        page = client.get(url).json()
        seen += [i["id"] for i in page["images"]]
        links = page.get("images_links")
        url = links[0]["href"].removeprefix("http://testserver") if links else None
    assert seen == every
    after = client.get(f"/v2.1/a1/{collection}?marker={every[1]}").json()["images"]
    assert [i["id"] for i in after] == every[2:]
    r = client.get(f"/v2.1/a1/{collection}?marker=nope")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "marker [nope] not found"
    assert client.get(f"/v2.1/a1/{collection}?limit=-1").status_code == 400


def test_proxy_ends_at_2_35_for_delete_too(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    image_id = made(client, system_clock_engine, sid)
    assert image(client, image_id).status_code == 200
    r = client.delete(f"/v2.1/a1/images/{image_id}", headers=mv("2.36"))
    assert r.status_code == 404
    assert r.headers["x-openstack-nova-api-version"] == "2.36"
    r = client.delete(f"/v2.1/a1/images/{image_id}", headers=mv("2.35"))
    assert (r.status_code, r.content) == (204, b"")
    assert "x-openstack-request-id" in r.headers
    r = image(client, image_id)
    assert r.status_code == 404
    assert r.json() == {"itemNotFound": {"code": 404, "message": "Image not found."}}
    assert image_id not in {i["id"] for i in client.get("/v2.1/a1/images").json()["images"]}


def test_projects_see_and_delete_only_their_images(tokens: ApiClient, system_clock_engine: Engine
                                                   ) -> None:
    sid = boot(tokens, system_clock_engine, token=ALICE)
    image_id = made(tokens, system_clock_engine, sid, token=ALICE)
    listed = {i["id"] for i in tokens.get("/v2.1/images", headers=ALICE).json()["images"]}
    assert listed == PREBUILT | {image_id}
    # another project: invisible, and deleting it is "not found" (Glance hides it)
    bob = {i["id"] for i in tokens.get("/v2.1/images", headers=BOB).json()["images"]}
    assert bob == PREBUILT
    assert image(tokens, image_id, token=BOB).status_code == 404
    r = tokens.delete(f"/v2.1/images/{image_id}", headers=BOB)
    assert r.status_code == 404
    assert r.json() == {"itemNotFound": {"code": 404, "message": "Image not found."}}
    assert image(tokens, image_id, token=ALICE).status_code == 200
    # an administrator sees every project's images
    admin = {i["id"] for i in tokens.get("/v2.1/images", headers=ADMIN).json()["images"]}
    assert image_id in admin
    # pre-built images are protected: nobody deletes them
    for caller in (ALICE, ADMIN):
        r = tokens.delete(f"/v2.1/images/{IMAGE}", headers=caller)
        assert r.status_code == 403
        assert r.json() == {"forbidden": {
            "code": 403, "message": "You are not allowed to delete the image."}}
    # the owner deletes it; then it is gone for everyone
    assert tokens.delete(f"/v2.1/images/{image_id}", headers=ALICE).status_code == 204
    assert image(tokens, image_id, token=ALICE).status_code == 404
    assert tokens.delete(f"/v2.1/images/{image_id}", headers=ALICE).status_code == 404
    # an administrator may delete another project's image
    other = made(tokens, system_clock_engine, sid, "other", token=ALICE)
    assert tokens.delete(f"/v2.1/images/{other}", headers=ADMIN).status_code == 204
    assert image(tokens, other, token=ALICE).status_code == 404
    # the server keeps running, and a server built from a deleted image is refused
    r = tokens.post("/v2.1/servers", headers=ALICE, json={"server": {
        "name": "late", "flavorRef": "2", "imageRef": image_id}})
    assert r.status_code == 400


def test_deleting_a_snapshot_being_saved_is_409(client: ApiClient,
                                                system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    image_id = snapshot(client, sid, {"name": "snap"}, version="2.45").json()["image_id"]
    r = client.delete(f"/v2.1/a1/images/{image_id}")
    assert r.status_code == 409
    assert "conflictingRequest" in r.json()
    system_clock_engine.run_until_idle()
    assert client.delete(f"/v2.1/a1/images/{image_id}").status_code == 204


def test_a_failed_snapshot_is_error_and_killed(client: ApiClient,
                                               system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    assert isinstance(system_clock_engine.hypervisor, Simulator)
    system_clock_engine.hypervisor.inject("snapshot", "fail", rollback=True)
    r = snapshot(client, sid, {"name": "snap"}, version="2.45")
    image_id = r.json()["image_id"]
    system_clock_engine.run_until_idle()
    shown = server(client, sid)
    assert (shown["status"], shown["OS-EXT-STS:task_state"]) == ("ACTIVE", None)
    actions = client.get(f"/v2.1/a1/servers/{sid}/os-instance-actions").json()
    assert actions["instanceActions"][0]["action"] == "createImage"
    assert actions["instanceActions"][0]["message"] == "Error"
    proxied = image(client, image_id).json()["image"]
    assert (proxied["status"], proxied["progress"]) == ("ERROR", 0)
    assert client.get("/v2.1/a1/images?status=ERROR").json()["images"][0]["id"] == image_id
    assert client.get(f"/image/v2/images/{image_id}").json()["status"] == "killed"
    assert client.delete(f"/v2.1/a1/images/{image_id}").status_code == 204


def test_unknown_image_delete_is_404(client: ApiClient) -> None:
    for ref in ("nope", "6b0e4b3c-0000-4000-8000-000000000000"):
        r = client.delete(f"/v2.1/images/{ref}")
        assert r.status_code == 404
        assert r.json()["itemNotFound"]["message"] == "Image not found."


# --- the Glance shim ---------------------------------------------------------------------
def test_glance_shim_shows_custom_images(tokens: ApiClient, system_clock_engine: Engine) -> None:
    sid = boot(tokens, system_clock_engine, token=ALICE)
    r = snapshot(tokens, sid, {"name": "snap", "metadata": {"tier": "gold"}}, version="2.45",
                 token=ALICE)
    image_id = r.json()["image_id"]
    queued = tokens.get(f"/image/v2/images/{image_id}", headers=ALICE).json()
    assert (queued["status"], queued["size"]) == ("queued", None)
    system_clock_engine.run_until_idle()
    doc = tokens.get(f"/image/v2/images/{image_id}", headers=ALICE).json()
    assert {k: doc[k] for k in ("id", "name", "status", "visibility", "owner", "protected",
                                "min_disk", "image_type", "instance_uuid", "base_image_ref",
                                "tier")} == {
        "id": image_id, "name": "snap", "status": "active", "visibility": "private",
        "owner": "a1", "protected": False, "min_disk": 20, "image_type": "snapshot",
        "instance_uuid": sid, "base_image_ref": IMAGE, "tier": "gold"}
    assert doc["size"] > 0 and doc["checksum"]
    prebuilt = tokens.get(f"/image/v2/images/{IMAGE}", headers=ALICE).json()
    assert (prebuilt["visibility"], prebuilt["protected"], prebuilt["owner"]) == (
        "public", True, None)

    listed = tokens.get("/image/v2/images", headers=ALICE).json()["images"]
    assert listed[0]["id"] == image_id
    assert {i["id"] for i in listed} == PREBUILT | {image_id}
    private = tokens.get("/image/v2/images?visibility=private", headers=ALICE).json()
    assert [i["id"] for i in private["images"]] == [image_id]
    public = tokens.get("/image/v2/images?visibility=public", headers=ALICE).json()
    assert {i["id"] for i in public["images"]} == PREBUILT
    by_owner = tokens.get("/image/v2/images?owner=a1", headers=ALICE).json()
    assert [i["id"] for i in by_owner["images"]] == [image_id]
    by_name = tokens.get("/image/v2/images?name=snap", headers=ALICE).json()
    assert [i["id"] for i in by_name["images"]] == [image_id]

    # bob (another project) neither sees nor deletes it
    assert image_id not in {i["id"] for i in tokens.get(
        "/image/v2/images", headers=BOB).json()["images"]}
    assert tokens.get(f"/image/v2/images/{image_id}", headers=BOB).status_code == 404
    r = tokens.delete(f"/image/v2/images/{image_id}", headers=BOB)
    assert r.status_code == 404
    assert r.json() == {"code": "404 Not Found", "title": "Not Found",
                        "message": f"Failed to find image {image_id} to delete"}
    r = tokens.delete(f"/image/v2/images/{IMAGE}", headers=ADMIN)
    assert r.status_code == 403
    assert r.json()["message"] == f"Image {IMAGE} is protected and cannot be deleted."
    assert tokens.delete(f"/image/v2/images/{image_id}").status_code == 401
    r = tokens.delete(f"/image/v2/images/{image_id}", headers=ALICE)
    assert (r.status_code, r.content) == (204, b"")
    assert tokens.get(f"/image/v2/images/{image_id}", headers=ALICE).status_code == 404


def test_glance_shim_pages_through_custom_images(client: ApiClient,
                                                 system_clock_engine: Engine) -> None:
    sid = boot(client, system_clock_engine)
    made(client, system_clock_engine, sid, "a")
    made(client, system_clock_engine, sid, "b")
    seen: list[str] = []
    url: str | None = "/image/v2/images?limit=2"
    while url is not None:
        page = client.get(url).json()
        seen += [i["id"] for i in page["images"]]
        url = "/image" + page["next"] if "next" in page else None
    every = [i["id"] for i in client.get("/image/v2/images").json()["images"]]
    assert seen == every and len(every) == 5
