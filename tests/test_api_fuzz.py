"""Whatever JSON a caller sends to a write route, the answer is never a 5xx: a 2xx, or a
4xx with a Nova fault body (hypothesis generates the bodies and path segments)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.server_actions import ACTION_PARSERS
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for
from vmledger.domain.quota import DEFAULTS

IMAGE = image_id_for("cirros-0.6.2-x86_64")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["1", IMAGE, "HARD", "none", "ssh", "x509"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "flavorRef", "imageRef", "metadata", "meta", "tags",
                         "keypair", "public_key", "type", "reboot", "resize", "server",
                         "min_count", "max_count", "k", "lock", "createImage", "adminPass",
                         "rescue_image_ref", "length", "backup_type", "rotation",
                         "availability_zone", "host"])
        | st.text(max_size=8), inner, max_size=4),
    max_leaves=10)

ROUTES = [
    ("post", "/v2.1/servers"),
    ("put", "/v2.1/servers/{sid}"),
    ("post", "/v2.1/servers/{sid}/action"),
    ("post", "/v2.1/servers/{sid}/metadata"),
    ("put", "/v2.1/servers/{sid}/metadata"),
    ("put", "/v2.1/servers/{sid}/metadata/k"),
    ("put", "/v2.1/servers/{sid}/tags"),
    ("post", "/v2.1/os-keypairs"),
    ("put", "/v2.1/os-quota-sets/fuzz"),
    ("post", "/v2.1/os-server-groups"),
    ("post", "/v2.1/flavors"),
    ("put", "/v2.1/flavors/1"),
    ("post", "/v2.1/flavors/1/os-extra_specs"),
    ("put", "/v2.1/flavors/1/os-extra_specs/k"),
    ("post", "/v2.1/flavors/1/action"),
    ("put", "/v2.1/os-services/disable-log-reason"),
    ("put", "/v2.1/os-services/{service}"),
    ("put", "/v2.1/os-quota-class-sets/fuzz-class"),
]


@pytest.fixture(scope="module")
def world() -> Iterator[tuple[ApiClient, str]]:
    with Engine("memory") as engine:
        client = ApiClient(create_app(engine))
        r = client.post("/v2.1/servers", json={"server": {
            "name": "target", "flavorRef": "1", "imageRef": IMAGE}})
        engine.run_until_idle()
        yield client, str(r.json()["server"]["id"])


def _service_id(client: ApiClient) -> str:
    """The id of this host's compute service (a UUID from 2.53)."""
    services = client.get("/v2.1/os-services", headers={
        "OpenStack-API-Version": "compute 2.53"}).json()["services"]
    return str(services[0]["id"])


def _check(response: Any) -> None:
    assert response.status_code < 500, response.text
    # the Compute API answers Nova faults (the Glance shim and the ledger have their own)
    if (response.status_code >= 400 and response.content
            and response.request.url.path.startswith("/v2.1")):
        [(_kind, fault)] = response.json().items()
        assert fault["code"] == response.status_code and fault["message"], response.text


@pytest.mark.parametrize(("method", "path"), ROUTES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=json_values, version=st.sampled_from(["2.1", "2.26", "2.52", "2.92", "latest"]))
def test_write_routes_never_answer_5xx(world: tuple[ApiClient, str], method: str, path: str,
                                       body: Any, version: str) -> None:
    client, sid = world
    response = getattr(client, method)(
        path.format(sid=sid, service=_service_id(client)), json=body,
        headers={"OpenStack-API-Version": f"compute {version}"})
    _check(response)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.dictionaries(st.sampled_from([*DEFAULTS, "force", "networks"])
                              | st.text(max_size=6), json_values, max_size=3),
       version=st.sampled_from(["2.1", "2.36", "2.57", "latest"]))
def test_quota_updates_never_answer_5xx(world: tuple[ApiClient, str], values: Any,
                                        version: str) -> None:
    client, _ = world
    response = client.put("/v2.1/os-quota-sets/fuzz", json={"quota_set": values},
                          headers={"OpenStack-API-Version": f"compute {version}"})
    _check(response)
    client.delete("/v2.1/os-quota-sets/fuzz")  # the next example starts from the defaults


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(group=st.fixed_dictionaries({}, optional={
    "name": json_values, "policy": json_values | st.sampled_from(
        ["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]),
    "policies": json_values, "rules": json_values | st.fixed_dictionaries(
        {"max_server_per_host": json_values})}),
       hint=json_values, version=st.sampled_from(["2.1", "2.15", "2.64", "latest"]))
def test_server_groups_and_hints_never_answer_5xx(world: tuple[ApiClient, str],
                                                  group: Any, hint: Any,
                                                  version: str) -> None:
    client, _ = world
    headers = {"OpenStack-API-Version": f"compute {version}"}
    _check(client.post("/v2.1/os-server-groups", json={"server_group": group},
                       headers=headers))
    _check(client.post("/v2.1/servers", headers=headers, json={
        "server": {"name": "hinted", "flavorRef": "1", "imageRef": IMAGE, "networks": "none"},
        "os:scheduler_hints": {"group": hint}}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.fixed_dictionaries({"name": st.text(max_size=8) | json_values}, optional={
    key: json_values for key in ("id", "ram", "vcpus", "disk", "OS-FLV-EXT-DATA:ephemeral",
                                 "swap", "rxtx_factor", "os-flavor-access:is_public",
                                 "description")}),
       specs=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
       version=st.sampled_from(["2.1", "2.55", "2.61", "latest"]))
def test_flavor_management_never_answers_5xx(world: tuple[ApiClient, str], fields: Any,
                                             specs: Any, version: str) -> None:
    client, _ = world
    headers = {"OpenStack-API-Version": f"compute {version}"}
    made = client.post("/v2.1/flavors", json={"flavor": fields}, headers=headers)
    _check(made)
    if made.status_code == 200:
        flavor_id = made.json()["flavor"]["id"]
        _check(client.post(f"/v2.1/flavors/{flavor_id}/os-extra_specs",
                           json={"extra_specs": specs}, headers=headers))
        _check(client.delete(f"/v2.1/flavors/{flavor_id}", headers=headers))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(ACTION_PARSERS)), value=json_values,
       version=st.sampled_from(["2.1", "2.45", "2.77", "2.91", "latest"]))
def test_every_action_with_any_value_never_answers_5xx(world: tuple[ApiClient, str],
                                                       key: str, value: Any,
                                                       version: str) -> None:
    """Each action the API knows, with any JSON as its value: a Nova fault, never a 5xx."""
    client, sid = world
    response = client.post(f"/v2.1/servers/{sid}/action", json={key: value},
                           headers={"OpenStack-API-Version": f"compute {version}"})
    _check(response)


@settings(max_examples=80, deadline=None)
@given(segment=st.text(min_size=1, max_size=30).filter(lambda t: "/" not in t and t.strip()),
       method=st.sampled_from(["get", "delete", "put"]),
       template=st.sampled_from(["/v2.1/servers/{x}", "/v2.1/os-keypairs/{x}",
                                 "/v2.1/servers/{sid}/tags/{x}",
                                 "/v2.1/servers/{sid}/metadata/{x}",
                                 "/v2.1/servers/{sid}/ips/{x}",
                                 "/v2.1/servers/{x}/os-instance-actions",
                                 "/v2.1/servers/{x}/migrations",
                                 "/v2.1/servers/{sid}/migrations/{x}",
                                 "/v2.1/os-simple-tenant-usage/{x}",
                                 "/v2.1/os-hypervisors/{x}",
                                 "/v2.1/os-hypervisors/{x}/uptime",
                                 "/v2.1/os-hypervisors/{x}/search",
                                 "/v2.1/os-hypervisors/{x}/servers",
                                 "/v2.1/os-aggregates/{x}",
                                 "/v2.1/os-quota-sets/{x}",
                                 "/v2.1/os-quota-sets/{x}/detail",
                                 "/v2.1/os-quota-class-sets/{x}",
                                 "/v2.1/os-services/{x}",
                                 "/v2.1/os-server-groups/{x}",
                                 "/v2.1/flavors/{x}/os-extra_specs",
                                 "/v2.1/flavors/1/os-extra_specs/{x}",
                                 "/ledger/v1/servers/{x}/history",
                                 "/ledger/v1/servers/{x}/state",
                                 "/ledger/v1/requests/{x}",
                                 "/image/v2/images/{x}"]))
def test_odd_path_segments_never_answer_5xx(world: tuple[ApiClient, str], segment: str,
                                            method: str, template: str) -> None:
    from urllib.parse import quote

    client, sid = world
    path = template.format(sid=sid, x=quote(segment, safe=""))
    kwargs: dict[str, Any] = {"headers": {"OpenStack-API-Version": "compute 2.96"}}
    if method == "put":
        kwargs["json"] = {"meta": {segment: "v"}}
    _check(getattr(client, method)(path, **kwargs))


@settings(max_examples=150, deadline=None)
@given(params=st.lists(st.tuples(
    st.sampled_from(["limit", "marker", "sort_key", "sort_dir", "status", "name",
                     "changes-since", "changes-before", "deleted", "all_tenants", "tags",
                     "tags-any", "not-tags", "ip", "flavor", "image", "locked", "user_id",
                     "tenant_id", "reservation_id", "host", "hidden", "instance_uuid",
                     "migration_type", "source_compute", "project_id", "start", "end",
                     "detailed", "with_servers", "hypervisor_hostname_pattern",
                     "all_projects", "offset"])
    | st.text(max_size=6),
    st.text(max_size=12) | st.sampled_from(["1", "0", "-1", "true", "ACTIVE", "name",
                                            "2026-01-01T00:00:00Z", "asc", "x" * 300,
                                            "2026-01-01T00:00:00",
                                            "2026-01-01 00:00:00.5"])),
    max_size=4),
       path=st.sampled_from(["/v2.1/servers", "/v2.1/servers/detail", "/v2.1/os-keypairs",
                             "/ledger/v1/servers/{sid}/history",
                             "/ledger/v1/servers/{sid}/state", "/ledger/v1/events",
                             "/image/v2/images",
                             "/v2.1/limits", "/v2.1/flavors/detail", "/v2.1/images",
                             "/v2.1/servers/{sid}/os-instance-actions",
                             "/v2.1/os-migrations", "/v2.1/os-simple-tenant-usage",
                             "/v2.1/os-simple-tenant-usage/{sid}",
                             "/v2.1/os-hypervisors", "/v2.1/os-hypervisors/detail",
                             "/v2.1/os-hypervisors/statistics",
                             "/v2.1/os-server-groups"]),
       version=st.sampled_from(["2.1", "2.33", "2.35", "2.40", "2.53", "2.59", "2.66",
                                "2.75", "2.80", "2.88", "latest"]))
def test_odd_queries_never_answer_5xx(world: tuple[ApiClient, str],
                                      params: list[tuple[str, str]], path: str,
                                      version: str) -> None:
    client, sid = world
    response = client.get(path.format(sid=sid), params=params,
                          headers={"OpenStack-API-Version": f"compute {version}"})
    _check(response)
