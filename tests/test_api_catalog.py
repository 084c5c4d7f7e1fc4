"""``/flavors`` and the images proxy ``/images`` (2.1-2.35)."""

from __future__ import annotations

import pytest

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine))


def mv(version: str) -> dict[str, str]:
    return {"OpenStack-API-Version": f"compute {version}"}


def test_flavor_list(client: ApiClient) -> None:
    r = client.get("/v2.1/flavors")
    assert r.status_code == 200
    flavors = r.json()["flavors"]
    assert [f["id"] for f in flavors] == ["1", "2", "3", "4", "5"]
    assert set(flavors[0]) == {"id", "name", "links"}
    assert flavors[0]["links"] == [
        {"rel": "self", "href": "http://testserver/v2.1/flavors/1"},
        {"rel": "bookmark", "href": "http://testserver/flavors/1"}]
    assert client.get("/v2.1/flavors", headers=mv("2.55")).json()["flavors"][0][
        "description"] is None


def test_flavor_detail_and_show(client: ApiClient) -> None:
    detail = client.get("/v2.1/a1/flavors/detail").json()["flavors"]
    tiny = detail[0]
    assert tiny == {
        "id": "1", "name": "m1.tiny", "ram": 512, "disk": 1, "vcpus": 1, "swap": "",
        "OS-FLV-EXT-DATA:ephemeral": 0, "os-flavor-access:is_public": True,
        "OS-FLV-DISABLED:disabled": False, "rxtx_factor": 1.0,
        "links": [{"rel": "self", "href": "http://testserver/v2.1/a1/flavors/1"},
                  {"rel": "bookmark", "href": "http://testserver/a1/flavors/1"}]}
    r = client.get("/v2.1/a1/flavors/1", headers=mv("2.75"))
    assert r.json()["flavor"]["swap"] == 0
    shown = client.get("/v2.1/flavors/2", headers=mv("2.61")).json()["flavor"]
    assert (shown["name"], shown["extra_specs"], shown["description"]) == ("m1.small", {},
                                                                           None)


@pytest.mark.parametrize("flavor_id", ["99", "m1.small", "x"])
def test_unknown_flavor_is_404(client: ApiClient, flavor_id: str) -> None:
    r = client.get(f"/v2.1/flavors/{flavor_id}")
    assert r.status_code == 404
    assert r.json() == {"itemNotFound": {
        "code": 404, "message": f"Flavor {flavor_id} could not be found."}}


def test_flavor_query_parameters(client: ApiClient) -> None:
    for query in ("is_public=None", "is_public=True", "is_public=true"):
        r = client.get(f"/v2.1/flavors/detail?{query}", headers=mv("2.61"))
        assert r.status_code == 200
        assert len(r.json()["flavors"]) == 5
    assert client.get("/v2.1/flavors?is_public=false").json()["flavors"] == []
    r = client.get("/v2.1/flavors?is_public=maybe")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "Invalid is_public filter [maybe]"
    ids = [f["id"] for f in client.get("/v2.1/flavors?minRam=4096").json()["flavors"]]
    assert ids == ["3", "4", "5"]
    ids = [f["id"] for f in client.get("/v2.1/flavors?minDisk=80").json()["flavors"]]
    assert ids == ["4", "5"]
    assert client.get("/v2.1/flavors?minRam=lots").status_code == 400


def test_flavor_pagination(client: ApiClient) -> None:
    page = client.get("/v2.1/flavors?limit=2").json()
    assert [f["id"] for f in page["flavors"]] == ["1", "2"]
    assert page["flavors_links"] == [
        {"rel": "next", "href": "http://testserver/v2.1/flavors?limit=2&marker=2"}]
    page = client.get("/v2.1/flavors?limit=2&marker=4").json()
    assert [f["id"] for f in page["flavors"]] == ["5"]
    assert "flavors_links" not in page
    r = client.get("/v2.1/flavors?marker=42")
    assert r.status_code == 400
    assert r.json()["badRequest"]["message"] == "marker [42] not found"
    assert client.get("/v2.1/flavors?limit=-2").status_code == 400


def test_image_proxy(client: ApiClient) -> None:
    images = client.get("/v2.1/images").json()["images"]
    assert IMAGE in [i["id"] for i in images]
    assert set(images[0]) == {"id", "name", "links"}
    assert [link["rel"] for link in images[0]["links"]] == ["self", "bookmark", "alternate"]
    detail = client.get("/v2.1/images/detail").json()["images"]
    cirros = next(i for i in detail if i["id"] == IMAGE)
    assert cirros["name"] == "cirros-0.6.2-x86_64"
    assert (cirros["status"], cirros["progress"]) == ("ACTIVE", 100)
    assert cirros["minDisk"] == 1 and cirros["minRam"] == 0
    assert cirros["OS-EXT-IMG-SIZE:size"] > 0
    assert cirros["metadata"] == {"os_distro": "cirros"}
    shown = client.get(f"/v2.1/a1/images/{IMAGE}").json()["image"]
    assert shown == {**cirros, "links": shown["links"]}
    assert shown["links"][0]["href"] == f"http://testserver/v2.1/a1/images/{IMAGE}"
    named = client.get("/v2.1/images?name=cirros-0.6.2-x86_64").json()["images"]
    assert [i["id"] for i in named] == [IMAGE]
    assert client.get("/v2.1/images?name=nothing").json()["images"] == []
    # tolerated, as clients send it
    assert client.get(f"/v2.1/images?id=in:{IMAGE}").status_code == 200


def test_unknown_image_is_404(client: ApiClient) -> None:
    for ref in ("cirros", "6b0e4b3c-0000-4000-8000-000000000000"):
        r = client.get(f"/v2.1/images/{ref}")
        assert r.status_code == 404
        assert r.json() == {"itemNotFound": {"code": 404, "message": "Image not found."}}


def test_image_proxy_ends_at_2_35(client: ApiClient) -> None:
    assert client.get("/v2.1/images", headers=mv("2.35")).status_code == 200
    for path in ("/v2.1/images", "/v2.1/images/detail", f"/v2.1/images/{IMAGE}"):
        r = client.get(path, headers=mv("2.36"))
        assert r.status_code == 404
        assert r.json()["itemNotFound"]["code"] == 404
