"""Version discovery, microversion negotiation and request ids, as a client sees them."""

from __future__ import annotations

import re

import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.microversions import MAX_VERSION
from vmledger.api.testing import ApiClient

REQ_ID = re.compile(r"^req-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MAX = str(MAX_VERSION)


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine))


def test_root_lists_v21_without_auth_or_microversion(client: ApiClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    [v21] = [v for v in r.json()["versions"] if v["id"] == "v2.1"]
    assert v21["status"] == "CURRENT"
    assert (v21["version"], v21["min_version"]) == (MAX, "2.1")
    assert v21["updated"] == "2013-07-23T11:33:21Z"
    assert v21["links"] == [{"rel": "self", "href": "http://testserver/v2.1/"}]
    # a request id, as on every response; no microversion (the root has none)
    assert REQ_ID.match(r.headers["x-openstack-request-id"])
    assert r.headers["x-compute-request-id"] == r.headers["x-openstack-request-id"]
    assert "openstack-api-version" not in r.headers


@pytest.mark.parametrize("path", ["/v2.1", "/v2.1/", "/v2.1/a1", "/v2.1/a1/"])
def test_v21_version_document(client: ApiClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    doc = r.json()["version"]
    assert doc["id"] == "v2.1"
    assert doc["status"] == "CURRENT"
    assert (doc["version"], doc["min_version"]) == (MAX, "2.1")
    assert {"rel": "self", "href": "http://testserver/v2.1/"} in doc["links"]
    assert any(link["rel"] == "describedby" for link in doc["links"])
    assert doc["media-types"][0]["base"] == "application/json"


def test_with_and_without_slash_same_document(client: ApiClient) -> None:
    assert client.get("/v2.1").json() == client.get("/v2.1/").json()


def test_no_header_is_served_as_2_1(client: ApiClient) -> None:
    r = client.get("/v2.1/servers")
    assert r.status_code == 200
    assert r.headers["openstack-api-version"] == "compute 2.1"
    assert r.headers["x-openstack-nova-api-version"] == "2.1"
    assert r.headers["vary"] == "OpenStack-API-Version, X-OpenStack-Nova-API-Version"


@pytest.mark.parametrize(("headers", "served"), [
    ({"OpenStack-API-Version": "compute 2.47"}, "2.47"),
    ({"X-OpenStack-Nova-API-Version": "2.19"}, "2.19"),
    ({"OpenStack-API-Version": "identity 3, compute 2.60"}, "2.60"),
    ({"OpenStack-API-Version": "compute latest"}, MAX),
    ({"X-OpenStack-Nova-API-Version": "latest"}, MAX),
    # the new header wins over the legacy one
    ({"OpenStack-API-Version": "compute 2.30", "X-OpenStack-Nova-API-Version": "2.5"}, "2.30"),
    # another service's entry only: the legacy header is read
    ({"OpenStack-API-Version": "identity 3", "X-OpenStack-Nova-API-Version": "2.5"}, "2.5"),
    ({"OpenStack-API-Version": "compute 2.1"}, "2.1"),
    ({"OpenStack-API-Version": f"compute {MAX}"}, MAX),
])
def test_negotiation_echoes_both_headers(client: ApiClient, headers: dict[str, str],
                                         served: str) -> None:
    r = client.get("/v2.1/servers", headers=headers)
    assert r.status_code == 200
    assert r.headers["openstack-api-version"] == f"compute {served}"
    assert r.headers["x-openstack-nova-api-version"] == served


@pytest.mark.parametrize("asked", ["2.97", "2.0", "3.0", "1.1", "2.1000"])
def test_out_of_range_is_406_with_novas_message(client: ApiClient, asked: str) -> None:
    r = client.get("/v2.1/servers", headers={"X-OpenStack-Nova-API-Version": asked})
    assert r.status_code == 406
    fault = r.json()["computeFault"]
    assert fault == {"code": 406, "message": f"Version {asked} is not supported by the API. "
                                             f"Minimum is 2.1 and maximum is {MAX}."}
    assert REQ_ID.match(r.headers["x-openstack-request-id"])


@pytest.mark.parametrize("asked", ["2.x", "abc", "2.01", "2", "02.1", "2.1.1"])
def test_malformed_version_is_400(client: ApiClient, asked: str) -> None:
    r = client.get("/v2.1/servers", headers={"OpenStack-API-Version": f"compute {asked}"})
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == (
        f"API Version String {asked} is of invalid format. Must be of format "
        "MajorNum.MinorNum.")


def test_errors_echo_the_negotiated_version(client: ApiClient) -> None:
    r = client.get("/v2.1/servers/nope", headers={"X-OpenStack-Nova-API-Version": "2.50"})
    assert r.status_code == 404
    assert r.headers["x-openstack-nova-api-version"] == "2.50"
    assert r.headers["openstack-api-version"] == "compute 2.50"
    assert "X-OpenStack-Nova-API-Version" in r.headers["vary"]
    assert REQ_ID.match(r.headers["x-compute-request-id"])


def test_unknown_route_and_method_are_faults(client: ApiClient) -> None:
    r = client.get("/v2.1/no-such-thing/at/all")
    assert r.status_code == 404
    assert r.json()["itemNotFound"]["code"] == 404
    assert r.headers["x-openstack-nova-api-version"] == "2.1"
    r = client.delete("/v2.1/servers")
    assert r.status_code == 405
    assert r.json()["badMethod"]["code"] == 405


def test_request_ids_equal_fresh_and_well_formed(client: ApiClient) -> None:
    seen = set()
    for path in ("/v2.1", "/v2.1/servers", "/v2.1/flavors", "/v2.1/servers/missing"):
        r = client.get(path)
        rid = r.headers["x-openstack-request-id"]
        assert REQ_ID.match(rid), rid
        assert r.headers["x-compute-request-id"] == rid
        seen.add(rid)
    assert len(seen) == 4


def test_inbound_request_id_is_not_echoed(client: ApiClient) -> None:
    mine = "req-11111111-2222-4333-8444-555555555555"
    r = client.get("/v2.1/servers", headers={"X-OpenStack-Request-Id": mine})
    assert r.headers["x-openstack-request-id"] != mine
    assert REQ_ID.match(r.headers["x-openstack-request-id"])


def test_trailing_slash_is_the_same_resource(client: ApiClient) -> None:
    assert client.get("/v2.1/a1/servers/").json() == {"servers": []}
    assert len(client.get("/v2.1/flavors/").json()["flavors"]) == 5
    assert client.get("/v2.1/a1/").json()["version"]["id"] == "v2.1"
