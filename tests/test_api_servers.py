"""``/servers``: create, show, list (pagination and filters), update and delete."""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any

import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
IMAGE2 = image_id_for("debian-12-genericcloud-amd64")
MISSING = "6b0e4b3c-0000-4000-8000-000000000000"
USAGE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine))


def mv(version: str) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {version}"}


def create(client: ApiClient, name: str = "vm-1", project: str | None = "a1",
           flavor: str = "1", **extra: Any) -> str:
    """A server of ``project`` (None: no project in the URL, so ``admin`` in noauth)."""
    prefix = "/v2.1" if project is None else f"/v2.1/{project}"
    r = client.post(f"{prefix}/servers",
                    json={"server": {"name": name, "flavorRef": flavor, "imageRef": IMAGE,
                                     **extra}})
    assert r.status_code == 202, r.text
    return str(r.json()["server"]["id"])


def show(client: ApiClient, sid: str, project: str = "a1", version: str = "2.1"
         ) -> dict[str, Any]:
    r = client.get(f"/v2.1/{project}/servers/{sid}", headers=mv(version))
    assert r.status_code == 200, r.text
    server: dict[str, Any] = r.json()["server"]
    return server


# --- create ------------------------------------------------------------------------------
def test_create_returns_202_then_builds_to_active(client: ApiClient,
                                                  system_clock_engine: Engine) -> None:
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "web-1", "flavorRef": "2", "imageRef": IMAGE, "networks": "none"}},
        headers=mv("2.96"))
    assert r.status_code == 202
    body = r.json()["server"]
    assert set(body) == {"id", "links", "OS-DCF:diskConfig", "security_groups", "adminPass"}
    sid = body["id"]
    assert body["security_groups"] == [{"name": "default"}]
    assert body["OS-DCF:diskConfig"] == "MANUAL"
    assert len(body["adminPass"]) == 12
    self_link = f"http://testserver/v2.1/a1/servers/{sid}"
    assert body["links"] == [{"rel": "self", "href": self_link},
                             {"rel": "bookmark", "href": f"http://testserver/a1/servers/{sid}"}]
    assert r.headers["location"] == self_link

    building = show(client, sid)
    assert building["status"] == "BUILD"
    assert building["OS-EXT-STS:vm_state"] == "building"
    assert building["OS-EXT-STS:task_state"] == "scheduling"
    assert building["OS-EXT-STS:power_state"] == 0
    assert building["addresses"] == {}
    assert building["hostId"] == ""
    assert building["progress"] == 0

    system_clock_engine.run_until_idle()
    s = show(client, sid)
    assert (s["status"], s["OS-EXT-STS:task_state"], s["OS-EXT-STS:power_state"]) == (
        "ACTIVE", None, 1)
    assert s["addresses"]["private"][0]["OS-EXT-IPS:type"] == "fixed"
    assert s["hostId"] == hashlib.sha224(b"a1" + system_clock_engine.host.encode()).hexdigest()
    assert USAGE_TIME.match(s["OS-SRV-USG:launched_at"])
    assert s["OS-SRV-USG:terminated_at"] is None
    assert ISO_Z.match(s["created"]) and ISO_Z.match(s["updated"])
    assert (s["tenant_id"], s["user_id"], s["name"]) == ("a1", "admin", "web-1")
    assert s["image"] == {"id": IMAGE, "links": [
        {"rel": "bookmark", "href": f"http://testserver/a1/images/{IMAGE}"}]}
    assert s["flavor"] == {"id": "2", "links": [
        {"rel": "bookmark", "href": "http://testserver/a1/flavors/2"}]}
    assert s["security_groups"] == [{"name": "default"}]
    assert "fault" not in s


def test_create_request_id_is_the_events_request_id(client: ApiClient,
                                                    system_clock_engine: Engine) -> None:
    r = client.post("/v2.1/servers", json={"server": {"name": "a", "flavorRef": 1,
                                                      "imageRef": IMAGE}})
    assert r.status_code == 202
    sid = r.json()["server"]["id"]
    rid = r.headers["x-openstack-request-id"]
    assert r.headers["x-compute-request-id"] == rid
    system_clock_engine.run_until_idle()
    history = system_clock_engine.history(sid)
    assert history[0].event == "Requested"
    assert history[0].request_id == rid
    # the agent's events for the create carry the same id
    assert {h.request_id for h in history} == {rid}


def test_links_without_project_in_url(client: ApiClient, system_clock_engine: Engine) -> None:
    r = client.post("/v2.1/servers", json={"server": {"name": "a", "flavorRef": "1",
                                                      "imageRef": IMAGE}})
    sid = r.json()["server"]["id"]
    assert r.headers["location"] == f"http://testserver/v2.1/servers/{sid}"
    s = client.get(f"/v2.1/servers/{sid}").json()["server"]
    assert s["tenant_id"] == "admin"  # no project in the URL: the project "admin"
    assert s["links"][1]["href"] == f"http://testserver/servers/{sid}"
    # a project id in a URL is hex digits and dashes (Nova's pattern): "admin" is none
    r = client.get(f"/v2.1/admin/servers/{sid}")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["code"] == 404


def test_show_without_project_prefix(client: ApiClient) -> None:
    sid = create(client, project=None)
    r = client.get(f"/v2.1/servers/{sid}")
    assert r.status_code == 200
    assert r.json()["server"]["links"][0]["href"] == f"http://testserver/v2.1/servers/{sid}"


def test_create_echoes_requested_fields(client: ApiClient, system_clock_engine: Engine) -> None:
    system_clock_engine.generate_keypair("k1")  # the noauth caller's (user admin)
    r = client.post("/v2.1/a1/servers", headers=mv("2.96"), json={"server": {
        "name": "My Web_Server", "flavorRef": "http://x/flavors/1", "imageRef": IMAGE,
        "networks": "auto", "metadata": {"role": "web"}, "security_groups": [{"name": "web"}],
        "OS-DCF:diskConfig": "AUTO", "accessIPv4": "192.0.2.1", "description": "front",
        "availability_zone": "nova", "key_name": "k1", "adminPass": "s3cret",
        "tags": ["a", "b"], "config_drive": True, "min_count": 1, "max_count": 1,
        "block_device_mapping_v2": [{"uuid": IMAGE, "boot_index": 0, "source_type": "image",
                                     "destination_type": "local"}]}})
    assert r.status_code == 202, r.text
    body = r.json()["server"]
    assert body["adminPass"] == "s3cret"
    assert body["security_groups"] == [{"name": "web"}]
    assert body["OS-DCF:diskConfig"] == "AUTO"
    system_clock_engine.run_until_idle()
    s = show(client, body["id"], version="2.96")
    assert s["metadata"] == {"role": "web"}
    assert s["security_groups"] == [{"name": "web"}]
    assert s["accessIPv4"] == "192.0.2.1" and s["accessIPv6"] == ""
    assert s["description"] == "front"
    assert s["key_name"] == "k1"
    assert s["tags"] == ["a", "b"]
    assert s["config_drive"] == "True"
    assert s["pinned_availability_zone"] == "nova"
    assert s["OS-EXT-SRV-ATTR:hostname"] == "my-web-server"


def test_boot_image_from_block_device_mapping(client: ApiClient) -> None:
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "bdm", "flavorRef": "1", "block_device_mapping_v2": [
            {"uuid": IMAGE, "boot_index": 0, "source_type": "image",
             "destination_type": "local"}]}})
    assert r.status_code == 202, r.text


@pytest.mark.parametrize(("server", "message"), [
    ({"flavorRef": "1", "imageRef": IMAGE}, "'name' is a required property"),
    ({"name": "a", "imageRef": IMAGE}, "'flavorRef' is a required property"),
    ({"name": "", "flavorRef": "1", "imageRef": IMAGE}, "Invalid input for field/attribute name"),
    ({"name": "x" * 256, "flavorRef": "1", "imageRef": IMAGE}, "is too long"),
    ({"name": " lead", "flavorRef": "1", "imageRef": IMAGE}, "Invalid input for field/attribute"),
    ({"name": 5, "flavorRef": "1", "imageRef": IMAGE}, "is not of type 'string'"),
    ({"name": "a", "flavorRef": "1"}, "Missing imageRef attribute"),
    ({"name": "a", "flavorRef": "1", "imageRef": ""}, "Missing imageRef attribute"),
    ({"name": "a", "flavorRef": "1", "imageRef": "cirros"}, "is not a 'uuid'"),
    ({"name": "a", "flavorRef": True, "imageRef": IMAGE}, "flavorRef"),
    ({"name": "a", "flavorRef": "99", "imageRef": IMAGE}, "Invalid flavorRef provided."),
    ({"name": "a", "flavorRef": "m1.tiny", "imageRef": IMAGE}, "Invalid flavorRef provided."),
    ({"name": "a", "flavorRef": "1", "imageRef": MISSING}, "Can not find requested image"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "bogus": 1},
     "Additional properties are not allowed ('bogus' was unexpected)"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "description": "d"},
     "'description' was unexpected"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "metadata": {"k": 1}}, "metadata"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "min_count": 3, "max_count": 2},
     "min_count must be <= max_count"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "min_count": 0}, "min_count"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "max_count": "x"}, "max_count"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "max_count": True}, "max_count"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "accessIPv4": "::1"}, "'ipv4'"),
    ({"name": "a", "flavorRef": "1", "imageRef": IMAGE, "accessIPv6": "1.2.3.4"}, "'ipv6'"),
])
def test_create_validation(client: ApiClient, server: dict[str, Any], message: str) -> None:
    r = client.post("/v2.1/a1/servers", json={"server": server})
    assert r.status_code == 400, r.text
    fault = r.json()["badRequest"]
    assert fault["code"] == 400
    assert message in fault["message"]


def test_create_body_must_have_server(client: ApiClient) -> None:
    bodies: list[dict[str, Any]] = [{}, {"servers": {}}]
    for body in bodies:
        r = client.post("/v2.1/servers", json=body)
        assert r.status_code == 400
        assert "'server' is a required property" in r.json()["badRequest"]["message"]
    r = client.post("/v2.1/servers", content=b"")
    assert r.status_code == 400
    r = client.post("/v2.1/servers", json=[1, 2])
    assert r.status_code == 400


def test_networks_required_from_2_37(client: ApiClient) -> None:
    server = {"name": "a", "flavorRef": "1", "imageRef": IMAGE}
    r = client.post("/v2.1/servers", json={"server": server}, headers=mv("2.37"))
    assert r.status_code == 400
    assert "'networks' is a required property" in r.json()["badRequest"]["message"]
    r = client.post("/v2.1/servers", json={"server": {**server, "networks": "none"}},
                    headers=mv("2.37"))
    assert r.status_code == 202
    r = client.post("/v2.1/servers", json={"server": server}, headers=mv("2.36"))
    assert r.status_code == 202


def test_return_reservation_id(client: ApiClient) -> None:
    r = client.post("/v2.1/servers", json={"server": {
        "name": "a", "flavorRef": "1", "imageRef": IMAGE, "return_reservation_id": True}})
    assert r.status_code == 202
    assert re.match(r"^r-[0-9a-f]{8}$", r.json()["reservation_id"])


def test_malformed_json_and_media_type(client: ApiClient) -> None:
    r = client.post("/v2.1/servers", content=b'{"server": ',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {"badRequest": {"code": 400, "message": "Malformed request body"}}
    r = client.post("/v2.1/servers", content=b"<server/>",
                    headers={"Content-Type": "application/xml"})
    assert r.status_code == 415
    assert r.json()["badMediaType"]["code"] == 415


def test_body_over_one_mib_is_413(client: ApiClient) -> None:
    big = {"server": {"name": "a", "flavorRef": "1", "imageRef": IMAGE,
                      "user_data": "x" * (1024 * 1024)}}
    r = client.post("/v2.1/servers", json=big)
    assert r.status_code == 413
    assert r.json()["overLimit"]["code"] == 413
    assert r.headers["x-openstack-request-id"].startswith("req-")


# --- show: fields by microversion --------------------------------------------------------
def test_fields_by_microversion(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = create(client, flavor="2")
    system_clock_engine.run_until_idle()
    base = show(client, sid, version="2.1")
    for key in ("locked", "description", "tags", "trusted_image_certificates",
                "locked_reason", "pinned_availability_zone", "server_groups", "host_status"):
        assert key not in base
    assert "OS-EXT-SRV-ATTR:hostname" not in base
    assert base["OS-EXT-SRV-ATTR:host"] == system_clock_engine.host  # noauth callers are admins
    assert show(client, sid, version="2.9")["locked"] is False
    assert show(client, sid, version="2.19")["description"] is None
    assert show(client, sid, version="2.26")["tags"] == []
    s = show(client, sid, version="2.47")
    assert s["flavor"] == {"vcpus": 1, "ram": 2048, "disk": 20, "ephemeral": 0, "swap": 0,
                           "original_name": "m1.small", "extra_specs": {}}
    assert show(client, sid, version="2.63")["trusted_image_certificates"] is None
    assert show(client, sid, version="2.71")["server_groups"] == []
    latest = show(client, sid, version="latest")
    assert latest["locked_reason"] is None
    assert latest["pinned_availability_zone"] is None
    assert latest["OS-EXT-SRV-ATTR:hostname"] == "vm-1"
    assert latest["host_status"] == "UP"
    detail = client.get("/v2.1/a1/servers/detail", headers=mv("2.96")).json()["servers"][0]
    assert "server_groups" not in detail
    assert detail["pinned_availability_zone"] is None


@pytest.mark.parametrize("bad", [MISSING, "not-a-uuid", "1"])
def test_unknown_server_is_404(client: ApiClient, bad: str) -> None:
    calls: list[tuple[str, Any]] = [("GET", None), ("DELETE", None),
                                    ("PUT", {"server": {"name": "x"}})]
    for method, body in calls:
        if body is None:
            r = client.request(method, f"/v2.1/servers/{bad}")
        else:
            r = client.request(method, f"/v2.1/servers/{bad}", json=body)
        assert r.status_code == 404, (method, r.text)
        assert r.json() == {"itemNotFound": {
            "code": 404, "message": f"Instance {bad} could not be found."}}


def test_another_projects_server_is_not_found(client: ApiClient,
                                              system_clock_engine: Engine) -> None:
    sid = create(client, project="a1")
    system_clock_engine.run_until_idle()
    member = ApiClient(create_app(system_clock_engine, auth="token", tokens=["bob:bob:a2:member"]))
    bob = {"X-Auth-Token": "bob"}
    message = {"itemNotFound": {"code": 404, "message": f"Instance {sid} could not be found."}}
    r = member.get(f"/v2.1/servers/{sid}", headers=bob)
    assert (r.status_code, r.json()) == (404, message)
    r = member.post(f"/v2.1/servers/{sid}/action", json={"os-stop": None}, headers=bob)
    assert (r.status_code, r.json()) == (404, message)
    r = member.put(f"/v2.1/servers/{sid}", json={"server": {"name": "stolen"}}, headers=bob)
    assert r.status_code == 404
    assert member.delete(f"/v2.1/servers/{sid}", headers=bob).status_code == 404
    assert member.get("/v2.1/servers", headers=bob).json() == {"servers": []}
    # a noauth caller is an administrator: the server is found from any project's URL,
    # but lists stay the URL project's (other projects' need all_tenants)
    assert client.get(f"/v2.1/a2/servers/{sid}").status_code == 200
    assert client.get("/v2.1/a2/servers").json() == {"servers": []}
    assert show(client, sid)["name"] == "vm-1"
    assert show(client, sid)["OS-EXT-STS:task_state"] is None


def test_unexpected_error_is_500_and_logged(client: ApiClient, system_clock_engine: Engine,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    def broken(*_args: object, **_kw: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(system_clock_engine, "get_server", broken)
    # the show reads the server's row as stored (see vmledger.api.servers._shown)
    monkeypatch.setattr(system_clock_engine, "fill_server_docs", broken)
    with caplog.at_level(logging.ERROR, logger="vmledger.api"):
        r = client.get(f"/v2.1/servers/{MISSING}")
    assert r.status_code == 500
    fault = r.json()["computeFault"]
    assert fault["code"] == 500
    assert "Unexpected API Error" in fault["message"]
    assert r.headers["x-openstack-request-id"].startswith("req-")
    assert any("boom" in (rec.exc_text or "") for rec in caplog.records)
    assert any(r.headers["x-openstack-request-id"] in rec.getMessage()
               for rec in caplog.records)


# --- update and delete -------------------------------------------------------------------
def test_update_name_and_description(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = create(client)
    system_clock_engine.run_until_idle()
    r = client.put(f"/v2.1/a1/servers/{sid}", json={"server": {"name": "renamed"}})
    assert r.status_code == 200
    body = r.json()["server"]
    assert body["name"] == "renamed"
    assert "OS-EXT-STS:vm_state" not in body  # reduced view before 2.75
    r = client.put(f"/v2.1/a1/servers/{sid}", headers=mv("2.19"),
                   json={"server": {"description": "new"}})
    assert r.status_code == 200
    assert r.json()["server"]["description"] == "new"
    r = client.put(f"/v2.1/a1/servers/{sid}", headers=mv("2.75"),
                   json={"server": {"name": "again"}})
    assert r.json()["server"]["OS-EXT-STS:vm_state"] == "active"
    assert show(client, sid, version="2.19")["description"] == "new"
    r = client.put(f"/v2.1/a1/servers/{sid}", json={"server": {"description": "x"}})
    assert r.status_code == 400  # description is 2.19+
    r = client.put(f"/v2.1/a1/servers/{sid}", json={"server": {"name": ""}})
    assert r.status_code == 400
    r = client.put(f"/v2.1/a1/servers/{sid}", json={"name": "x"})
    assert r.status_code == 400


def test_delete_is_204_then_404(client: ApiClient, system_clock_engine: Engine) -> None:
    sid = create(client)
    system_clock_engine.run_until_idle()
    r = client.delete(f"/v2.1/a1/servers/{sid}")
    assert r.status_code == 204
    assert r.content == b""
    s = show(client, sid)
    assert s["OS-EXT-STS:task_state"] == "deleting"
    assert s["status"] == "ACTIVE"
    assert client.delete(f"/v2.1/a1/servers/{sid}").status_code == 204  # repeat ignored
    system_clock_engine.run_until_idle()
    assert client.get(f"/v2.1/a1/servers/{sid}").status_code == 404
    assert client.get("/v2.1/a1/servers").json()["servers"] == []
    events = [h for h in system_clock_engine.history(sid) if h.event == "ActionRequested"]
    assert events[-1].request_id == r.headers["x-openstack-request-id"]


# --- list, pagination, filters -----------------------------------------------------------
def test_list_and_detail(client: ApiClient, system_clock_engine: Engine) -> None:
    first = create(client, name="one")
    second = create(client, name="two")
    system_clock_engine.run_until_idle()
    r = client.get("/v2.1/a1/servers")
    servers = r.json()["servers"]
    assert [s["id"] for s in servers] == [second, first]  # newest first
    assert set(servers[0]) == {"id", "name", "links"}
    assert "servers_links" not in r.json()
    detail = client.get("/v2.1/a1/servers/detail").json()["servers"]
    assert [s["status"] for s in detail] == ["ACTIVE", "ACTIVE"]
    assert detail[0]["name"] == "two"


def test_pagination_with_limit_and_marker(client: ApiClient) -> None:
    ids = [create(client, name=f"vm-{i}") for i in range(3)]
    newest_first = ids[::-1]
    r = client.get("/v2.1/a1/servers?limit=2&name=vm")
    page = r.json()
    assert [s["id"] for s in page["servers"]] == newest_first[:2]
    [link] = page["servers_links"]
    assert link["rel"] == "next"
    assert link["href"] == (f"http://testserver/v2.1/a1/servers?limit=2&name=vm"
                            f"&marker={newest_first[1]}")
    r = client.get(link["href"].removeprefix("http://testserver"))
    page = r.json()
    assert [s["id"] for s in page["servers"]] == newest_first[2:]
    assert "servers_links" not in page
    detail = client.get("/v2.1/a1/servers/detail?limit=1").json()
    assert detail["servers_links"][0]["href"].startswith(
        "http://testserver/v2.1/a1/servers/detail?limit=1&marker=")
    assert client.get("/v2.1/a1/servers?limit=0").json() == {"servers": []}


@pytest.mark.parametrize("limit", ["-1", "abc", "1.5", ""])
def test_bad_limit_is_400(client: ApiClient, limit: str) -> None:
    r = client.get(f"/v2.1/servers?limit={limit}")
    assert r.status_code == 400
    assert "limit" in r.json()["badRequest"]["message"]


def test_unknown_marker_is_400(client: ApiClient) -> None:
    create(client)
    r = client.get(f"/v2.1/a1/servers?marker={MISSING}")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == f"marker [{MISSING}] not found"
    r = client.get("/v2.1/a1/servers/detail?marker=junk")
    assert r.json()["badRequest"]["message"] == "marker [junk] not found"


def test_status_and_name_filters(client: ApiClient, system_clock_engine: Engine) -> None:
    running = create(client, name="web-1")
    stopped = create(client, name="db-1")
    system_clock_engine.run_until_idle()
    assert client.post(f"/v2.1/a1/servers/{stopped}/action",
                       json={"os-stop": None}).status_code == 202
    system_clock_engine.run_until_idle()

    def ids(query: str, version: str = "2.1") -> list[str]:
        r = client.get(f"/v2.1/a1/servers?{query}", headers=mv(version))
        assert r.status_code == 200, r.text
        return [s["id"] for s in r.json()["servers"]]

    assert ids("status=ACTIVE") == [running]
    assert ids("status=shutoff") == [stopped]
    assert set(ids("status=ACTIVE&status=SHUTOFF")) == {running, stopped}
    assert ids("status=PAUSED") == []
    assert ids("name=web") == [running]
    assert ids("name=^db-[0-9]$") == [stopped]
    assert ids("name=nomatch") == []
    assert ids("status=BOGUS") == []
    assert ids("status=BOGUS", version="2.37") == []
    r = client.get("/v2.1/a1/servers?status=BOGUS", headers=mv("2.38"))
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "Invalid status value"


def test_list_tolerates_client_query_parameters(client: ApiClient) -> None:
    create(client)
    r = client.get("/v2.1/a1/servers/detail?deleted=False&all_tenants=0",
                   headers=mv("2.96"))
    assert r.status_code == 200
    assert len(r.json()["servers"]) == 1


def test_one_request_creates_several_servers(client: ApiClient,
                                             system_clock_engine: Engine) -> None:
    """As Nova: max_count servers named NAME-1..N, one reservation, one request id whose
    create action each server has; the body is the first server's."""
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "web", "flavorRef": "1", "imageRef": IMAGE, "min_count": 2,
        "max_count": 3, "adminPass": "pw"}})
    assert r.status_code == 202, r.text
    first = r.json()["server"]
    request_id = r.headers["x-openstack-request-id"]
    assert first["adminPass"] == "pw" and r.headers["Location"].endswith(first["id"])
    system_clock_engine.run_until_idle()
    servers = client.get("/v2.1/a1/servers/detail").json()["servers"]
    assert sorted(s["name"] for s in servers) == ["web-1", "web-2", "web-3"]
    assert {s["status"] for s in servers} == {"ACTIVE"}
    by_name = {s["name"]: s for s in servers}
    assert by_name["web-1"]["id"] == first["id"]
    reservations = {s["OS-EXT-SRV-ATTR:reservation_id"] for s in client.get(
        "/v2.1/a1/servers/detail", headers=mv("2.3")).json()["servers"]}
    assert len(reservations) == 1
    for server in servers:
        actions = client.get(f"/v2.1/a1/servers/{server['id']}/os-instance-actions").json()
        assert [(a["action"], a["request_id"]) for a in actions["instanceActions"]] == [
            ("create", request_id)]
    # return_reservation_id: the reservation instead of a server
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "batch", "flavorRef": "1", "imageRef": IMAGE, "max_count": 2,
        "return_reservation_id": True}})
    assert r.status_code == 202 and r.json()["reservation_id"].startswith("r-")
    system_clock_engine.run_until_idle()
    made = client.get(f"/v2.1/a1/servers?reservation_id={r.json()['reservation_id']}")
    assert sorted(s["name"] for s in made.json()["servers"]) == ["batch-1", "batch-2"]


def test_more_servers_than_one_request_may_create(client: ApiClient,
                                                  system_clock_engine: Engine) -> None:
    from vmledger.domain.commands.servers import MAX_SERVERS_PER_REQUEST as LIMIT

    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "many", "flavorRef": "1", "imageRef": IMAGE, "min_count": LIMIT + 1}})
    assert r.status_code == 403 and "Quota exceeded" in r.json()["forbidden"]["message"]
    assert client.get("/v2.1/a1/servers").json()["servers"] == []
    # between min and max: as many as allowed
    r = client.post("/v2.1/a1/servers", json={"server": {
        "name": "many", "flavorRef": "1", "imageRef": IMAGE, "min_count": 2,
        "max_count": LIMIT + 50}})
    assert r.status_code == 202
    assert len(client.get("/v2.1/a1/servers?limit=1000").json()["servers"]) == LIMIT
