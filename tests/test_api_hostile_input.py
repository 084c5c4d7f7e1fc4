"""Hostile input through the HTTP API: unknown paths are 404 faults (a project id in a URL
is hex digits and dashes, as Nova's), every response carries the request ids, and nesting
too deep or text that is not valid Unicode is a 400 fault that stores nothing, on every
route that reads a JSON body (the Keystone shim's included)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.app import RESOURCE_ROUTES
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
REQ_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
LATEST = {"OpenStack-API-Version": "compute latest"}
DEEP = b"[" * 1000 + b"]" * 1000
#: a body the JSON parser reads, nested deeper than any request needs
NESTED_100 = b'{"server": {"name": "x"}, "extra": ' + b"[" * 100 + b"]" * 100 + b"}"
#: routes that read no body
BODILESS = {("PUT", "/servers/{server_id}/tags/{tag}")}


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[Engine, ApiClient, str]]:
    with Engine("memory") as engine:
        client = ApiClient(create_app(engine))
        r = client.post("/v2.1/servers", json={"server": {
            "name": "target", "flavorRef": "1", "imageRef": IMAGE}})
        engine.run_until_idle()
        yield engine, client, str(r.json()["server"]["id"])


def head(client: ApiClient) -> int:
    """The position of the ledger's last event: unchanged when nothing was stored."""
    position: int = client.get("/ledger/v1/events", params={"limit": 1}).json()["head"]
    return position


def service_id(client: ApiClient) -> str:
    return str(client.get("/v2.1/os-services", headers=LATEST).json()["services"][0]["id"])


def fill(path: str, sid: str, service: str) -> str:
    return (path.replace("{server_id}", sid).replace("{service_id}", service)
            .replace("{flavor_id}", "1").replace("{key}", "k").replace("{tag}", "t")
            .replace("{quota_project_id}", "hostile").replace("{quota_class}", "default"))


def assert_fault(response: Any, code: int) -> str:
    assert response.status_code == code, response.text
    [(name, fault)] = response.json().items()
    assert name == {400: "badRequest", 404: "itemNotFound"}[code], response.text
    assert fault["code"] == code and fault["message"], response.text
    message: str = fault["message"]
    return message


def raw_post(client: ApiClient, method: str, path: str, body: bytes,
             headers: dict[str, str] | None = None) -> Any:
    return client.request(method, path, content=body, headers={
        "Content-Type": "application/json", **LATEST, **(headers or {})})


# --- routing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/v2.1/ports", "/v2.1/ports?device_id=x", "/v2.1/projects?name=admin", "/v2.1/networks",
    "/v2.1/os-floating-ip-pools", "/v2.1/v2.0/networks", "/v2.1/admin", "/v2.1/p1/",
    "/v2.1/admin/servers", "/v2.1/Project-1/flavors", "/v2.1/nowhere/at/all"])
def test_what_is_neither_a_resource_nor_a_hex_project_id_is_a_404_fault(
        world: tuple[Engine, ApiClient, str], path: str) -> None:
    _, client, _ = world
    r = client.get(path)
    assert assert_fault(r, 404) == "The resource could not be found."
    assert REQ_ID.match(r.headers["x-compute-request-id"])


@pytest.mark.parametrize("project", ["0123", "6f70656e737461636b20342065766572",
                                     "e7a9a1c8-9b5f-4d2a-8c55-3d0c2b1a0f00"])
def test_hex_project_ids_are_taken_as_nova_takes_them(world: tuple[Engine, ApiClient, str],
                                                      project: str) -> None:
    _, client, _ = world
    assert client.get(f"/v2.1/{project}").json()["version"]["id"] == "v2.1"
    assert client.get(f"/v2.1/{project}/servers").json() == {"servers": []}
    r = client.get(f"/v2.1/{project}/flavors/1")
    assert r.json()["flavor"]["links"][0]["href"] == (
        f"http://testserver/v2.1/{project}/flavors/1")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/"), ("GET", "/v2.1"), ("GET", "/v2.1/servers"), ("GET", "/v2.1/ports"),
    ("DELETE", "/v2.1/servers"), ("GET", "/nowhere"), ("GET", "/identity"),
    ("GET", "/identity/v3"), ("GET", "/image/v2/images"), ("GET", "/image/v2/images/nope"),
    ("GET", "/ledger/v1/events"), ("GET", "/ledger/v1/servers/nope/history"),
    ("GET", "/v2.1/servers?name=%FF")])
def test_every_response_carries_the_request_ids(world: tuple[Engine, ApiClient, str],
                                                method: str, path: str) -> None:
    _, client, _ = world
    r = client.request(method, path)
    rid = r.headers["x-openstack-request-id"]
    assert REQ_ID.match(rid), (r.status_code, r.headers)
    assert r.headers["x-compute-request-id"] == rid


# --- nesting -------------------------------------------------------------------------------
def _body_routes() -> list[tuple[str, str]]:
    routes = [(method, "/v2.1" + path) for path, _, methods in RESOURCE_ROUTES
              for method in methods if method in ("POST", "PUT")
              and (method, path) not in BODILESS]
    routes += [(method, "/v2.1/0abc" + path[len("/v2.1"):]) for method, path in routes[:3]]
    return routes


@pytest.mark.parametrize(("method", "path"), _body_routes())
@pytest.mark.parametrize("body", [DEEP, NESTED_100], ids=["parser-limit", "100-levels"])
def test_nesting_too_deep_is_a_400_fault_on_every_json_route(
        world: tuple[Engine, ApiClient, str], method: str, path: str, body: bytes) -> None:
    _, client, sid = world
    before = head(client)
    r = raw_post(client, method, fill(path, sid, service_id(client)), body)
    assert assert_fault(r, 400) == "Malformed request body: nested deeper than 32 levels."
    assert head(client) == before


def test_the_keystone_shim_refuses_deep_nesting_and_invalid_text_with_its_error_body(
        ) -> None:
    with Engine("memory") as engine:
        client = ApiClient(create_app(engine, auth="keystone",
                                      users=["admin:s3cret:admin:admin"]))
        login = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "password": "s3cret", "domain": {"name": "Default"}}}},
            "scope": {"project": {"name": "admin"}}}}
        for body in (DEEP, json.dumps(login).replace('"admin"}}', '"\\ud800"}}').encode(),
                     json.dumps(login).replace('"name": "admin"', '"\\udfff": 1').encode()):
            r = client.post("/identity/v3/auth/tokens", content=body,
                            headers={"Content-Type": "application/json"})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == 400 and r.json()["error"]["message"]
            assert "x-subject-token" not in r.headers
        assert client.post("/identity/v3/auth/tokens", json=login).status_code == 201


# --- text that is not Unicode ----------------------------------------------------------------
#: (method, path, body): bodies whose strings would be echoed into a 400 message, and
#: bodies whose strings would be accepted and stored, each with a lone surrogate
SURROGATE_BODIES: list[tuple[str, str, str]] = [
    # echoed into a message
    ("POST", "/v2.1/servers/{server_id}/action", '{"\\ud800": null}'),
    ("POST", "/v2.1/servers/{server_id}/action", '{"reboot": {"type": "\\ud800"}}'),
    ("POST", "/v2.1/servers/{server_id}/action", '{"resize": {"flavorRef": "\\ud800"}}'),
    ("POST", "/v2.1/servers/{server_id}/action", '{"os-getConsoleOutput": {"length": '
                                                 '"\\udc00"}}'),
    ("PUT", "/v2.1/os-quota-sets/hostile", '{"quota_set": {"\\ud800": 1}}'),
    ("PUT", "/v2.1/os-quota-sets/hostile", '{"quota_set": {"instances": "\\ud800"}}'),
    ("PUT", "/v2.1/os-quota-class-sets/default", '{"quota_class_set": {"\\ud800": 1}}'),
    ("POST", "/v2.1/os-server-groups", '{"server_group": {"name": "g", "policies": '
                                       '["\\ud800"]}}'),
    ("POST", "/v2.1/os-server-groups", '{"server_group": {"name": "g", "policy": '
                                       '"anti-affinity", "rules": {"\\ud800": 1}}}'),
    ("PUT", "/v2.1/os-services/{service_id}", '{"status": "\\ud800"}'),
    ("POST", "/v2.1/flavors/1/action", '{"addTenantAccess": {"tenant": "\\ud800"}}'),
    ("POST", "/v2.1/flavors/1/action", '{"\\ud800": {"tenant": "t"}}'),
    ("POST", "/v2.1/flavors", '{"flavor": {"name": "f", "ram": 64, "vcpus": 1, "disk": 1, '
                              '"id": "\\ud800"}}'),
    # accepted and stored, were they text
    ("POST", "/v2.1/servers", '{"server": {"name": "\\ud800", "flavorRef": "1", '
                              f'"imageRef": "{IMAGE}"}}}}'),
    ("POST", "/v2.1/servers", '{"server": {"name": "n", "description": "a\\udfffb", '
                              f'"flavorRef": "1", "imageRef": "{IMAGE}"}}}}'),
    ("POST", "/v2.1/servers", '{"server": {"name": "n", "metadata": {"\\ud800": "v"}, '
                              f'"flavorRef": "1", "imageRef": "{IMAGE}"}}}}'),
    ("POST", "/v2.1/servers", '{"server": {"name": "n", "tags": ["\\ud800"], '
                              f'"flavorRef": "1", "imageRef": "{IMAGE}"}}}}'),
    ("PUT", "/v2.1/servers/{server_id}", '{"server": {"name": "\\ud800"}}'),
    ("PUT", "/v2.1/servers/{server_id}", '{"server": {"description": "\\ud800"}}'),
    ("POST", "/v2.1/servers/{server_id}/metadata", '{"metadata": {"k": "\\ud800"}}'),
    ("POST", "/v2.1/servers/{server_id}/metadata", '{"metadata": {"\\ud800": "v"}}'),
    ("PUT", "/v2.1/servers/{server_id}/metadata", '{"metadata": {"k": "v\\ud800"}}'),
    ("PUT", "/v2.1/servers/{server_id}/metadata/k", '{"meta": {"k": "\\ud800"}}'),
    ("PUT", "/v2.1/servers/{server_id}/tags", '{"tags": ["ok", "\\ud800"]}'),
    ("POST", "/v2.1/servers/{server_id}/action", '{"createImage": {"name": "\\ud800"}}'),
    ("POST", "/v2.1/servers/{server_id}/action", '{"lock": {"locked_reason": "\\ud800"}}'),
    ("POST", "/v2.1/os-server-groups", '{"server_group": {"name": "\\ud800", '
                                       '"policies": ["affinity"]}}'),
    ("POST", "/v2.1/os-keypairs", '{"keypair": {"name": "\\ud800"}}'),
    ("POST", "/v2.1/flavors", '{"flavor": {"name": "\\ud800", "ram": 64, "vcpus": 1, '
                              '"disk": 1}}'),
    ("POST", "/v2.1/flavors", '{"flavor": {"name": "f", "description": "\\ud800", '
                              '"ram": 64, "vcpus": 1, "disk": 1}}'),
    ("PUT", "/v2.1/flavors/1", '{"flavor": {"description": "\\ud800"}}'),
    ("POST", "/v2.1/flavors/1/os-extra_specs", '{"extra_specs": {"k": "\\ud800"}}'),
    ("PUT", "/v2.1/flavors/1/os-extra_specs/k", '{"k": "\\ud800"}'),
    ("PUT", "/v2.1/os-services/{service_id}", '{"status": "disabled", '
                                              '"disabled_reason": "\\ud800"}'),
]


@pytest.mark.parametrize(("method", "path", "body"), SURROGATE_BODIES)
def test_a_lone_surrogate_anywhere_is_a_400_fault_and_stores_nothing(
        world: tuple[Engine, ApiClient, str], method: str, path: str, body: str) -> None:
    _, client, sid = world
    before = head(client)
    r = raw_post(client, method, fill(path, sid, service_id(client)), body.encode())
    assert (assert_fault(r, 400)
            == "Malformed request body: a string is not valid Unicode text.")
    assert head(client) == before


def test_surrogates_encoded_as_utf8_bytes_are_refused_too(
        world: tuple[Engine, ApiClient, str]) -> None:
    """The parser takes the bytes ED A0 80 as a lone surrogate, not as invalid UTF-8."""
    _, client, sid = world
    before = head(client)
    r = raw_post(client, "PUT", f"/v2.1/servers/{sid}",
                 b'{"server": {"name": "\xed\xa0\x80"}}')
    assert assert_fault(r, 400).startswith("Malformed request body")
    assert head(client) == before


@pytest.mark.parametrize("path", [
    "/v2.1/servers?name=%ED%A0%80", "/v2.1/servers/detail?%FF=1",
    "/v2.1/os-keypairs/%ED%A0%80", "/v2.1/servers/{server_id}/metadata/%C3",
    "/ledger/v1/servers/%FF/history", "/image/v2/images?name=%80"])
def test_urls_that_are_not_utf8_are_400_faults(world: tuple[Engine, ApiClient, str],
                                               path: str) -> None:
    _, client, sid = world
    r = client.get(fill(path, sid, ""))
    assert assert_fault(r, 400) == "Malformed request URL: not valid UTF-8."


def test_a_tag_in_a_url_that_is_not_utf8_is_not_stored(
        world: tuple[Engine, ApiClient, str]) -> None:
    _, client, sid = world
    before = head(client), client.get(f"/v2.1/servers/{sid}/tags", headers=LATEST).json()
    r = client.put(f"/v2.1/servers/{sid}/tags/%ED%A0%80", headers=LATEST)
    assert_fault(r, 400)
    assert (head(client), client.get(f"/v2.1/servers/{sid}/tags", headers=LATEST).json()
            ) == before


def test_valid_non_ascii_text_is_still_accepted(world: tuple[Engine, ApiClient, str]
                                                ) -> None:
    _, client, sid = world
    r = raw_post(client, "PUT", f"/v2.1/servers/{sid}/metadata/k",
                 '{"meta": {"k": "caf\\u00e9 \\ud83d\\ude00 \u65e5\u672c"}}'.encode())
    assert r.status_code == 200, r.text
    assert r.json() == {"meta": {"k": "caf\u00e9 \U0001f600 \u65e5\u672c"}}
    nested = b'{"metadata": {"k": "v"}, "x": ' + b"[" * 30 + b"]" * 30 + b"}"
    r = raw_post(client, "POST", f"/v2.1/servers/{sid}/metadata", nested)
    assert_fault(r, 400)  # 30 levels pass the depth check; the schema refuses "x"
    assert "nested" not in r.json()["badRequest"]["message"]


# --- NUL characters (PostgreSQL's text cannot hold one) ------------------------------------
NUL_BODIES: list[tuple[str, str, str]] = [
    ("POST", "/v2.1/servers", '{"server": {"name": "a\\u0000b", "flavorRef": "1", '
                              f'"imageRef": "{IMAGE}", "networks": "none"}}}}'),
    ("POST", "/v2.1/flavors", '{"flavor": {"name": "f\\u0000", "ram": 64, "vcpus": 1, '
                              '"disk": 1}}'),
    ("PUT", "/v2.1/os-quota-sets/hostile", '{"quota_set": {"\\u0000": 1}}'),
    ("POST", "/v2.1/os-keypairs", '{"keypair": {"name": "k\\u0000", "public_key": '
                                  '"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ x"}}'),
    ("POST", "/v2.1/os-server-groups", '{"server_group": {"name": "\\u0000", "policy": '
                                       '"affinity"}}'),
]


@pytest.mark.parametrize(("method", "path", "body"), NUL_BODIES)
def test_a_nul_character_in_a_body_is_a_400_fault_on_every_backend(
        engine: Engine, method: str, path: str, body: str) -> None:
    client = ApiClient(create_app(engine))
    before = head(client)
    r = raw_post(client, method, path, body.encode())
    assert (assert_fault(r, 400)
            == "Malformed request body: a string holds a NUL character.")
    assert head(client) == before


@pytest.mark.parametrize(("method", "path"), [
    ("PUT", "/v2.1/os-quota-sets/p%00"), ("GET", "/v2.1/os-keypairs/k%00"),
    ("GET", "/v2.1/servers?marker=%00"), ("GET", "/v2.1/servers/detail?name=a%00"),
    ("GET", "/v2.1/flavors/%00"), ("GET", "/ledger/v1/servers/%00/history")])
def test_a_nul_character_in_a_url_is_a_400_fault_on_every_backend(
        engine: Engine, method: str, path: str) -> None:
    client = ApiClient(create_app(engine))
    body = b'{"quota_set": {"instances": 3}}' if method == "PUT" else None
    r = client.request(method, path, content=body,
                       headers={"Content-Type": "application/json"})
    assert (assert_fault(r, 400)
            == "Malformed request URL: it holds a NUL character.")
