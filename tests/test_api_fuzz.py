"""Whatever JSON a caller sends to a write route, the answer is never a 5xx: a 2xx, or a
4xx with a Nova fault body (hypothesis generates the bodies and path segments). Text that
is not valid Unicode (a lone surrogate) or holds a NUL, in any key or string value of any
route's body, and nesting past the limit at any value, are 400s that store nothing. And a
real ``vmledger serve`` answers thousands of hostile requests over every route on one
keep-alive connection without a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.jsontext import MAX_DEPTH
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
                         "availability_zone", "host", "force_complete",
                         "block_migration"])
        | st.text(max_size=8), inner, max_size=4),
    max_leaves=10)

ROUTES = [
    ("post", "/v2.1/servers"),
    ("put", "/v2.1/servers/{sid}"),
    ("post", "/v2.1/servers/{sid}/action"),
    ("post", "/v2.1/servers/{sid}/migrations/1/action"),
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
                                 "/v2.1/servers/{x}/migrations/1",
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


# --- deep nesting and text that is not Unicode, in every string of every route ---------------
#: a valid body for every route that reads one: (method, path, body, microversion)
TEMPLATES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v2.1/servers", {
        "server": {"name": "t", "flavorRef": "1", "imageRef": IMAGE, "description": "d",
                   "metadata": {"k": "v"}, "tags": ["a"], "availability_zone": "nova",
                   "networks": "none", "key_name": "kp"},
        "os:scheduler_hints": {"group": "g", "same_host": ["h"]}}, "2.96"),
    ("POST", "/v2.1/servers", {"server": {
        "name": "t", "flavorRef": "1", "imageRef": IMAGE, "adminPass": "p",
        "networks": [{"uuid": "n", "fixed_ip": "10.0.0.9"}], "user_data": "dXNlcg==",
        "security_groups": [{"name": "default"}], "config_drive": True,
        "block_device_mapping_v2": [{"boot_index": 0, "uuid": IMAGE, "source_type": "image",
                                     "destination_type": "local"}]}}, "2.1"),
    ("PUT", "/v2.1/servers/{sid}", {"server": {"name": "n", "description": "d"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"reboot": {"type": "HARD"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"resize": {"flavorRef": "2"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"rebuild": {
        "imageRef": IMAGE, "name": "n", "metadata": {"k": "v"}, "description": "d",
        "adminPass": "p"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"createImage": {"name": "i",
                                                             "metadata": {"k": "v"}}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"createBackup": {
        "name": "b", "backup_type": "daily", "rotation": 1}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"lock": {"locked_reason": "r"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"rescue": {"adminPass": "p",
                                                        "rescue_image_ref": IMAGE}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"os-getConsoleOutput": {"length": 5}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"evacuate": {"host": "compute-1"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"os-resetState": {"state": "active"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"migrate": {"host": "compute-2"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/action", {"os-migrateLive": {
        "host": "compute-2", "block_migration": "auto"}}, "2.96"),
    ("POST", "/v2.1/servers/{sid}/migrations/{migration_id}/action", {"force_complete": None},
     "2.96"),
    ("POST", "/v2.1/servers/{sid}/metadata", {"metadata": {"k": "v", "k2": "v2"}}, "2.96"),
    ("PUT", "/v2.1/servers/{sid}/metadata", {"metadata": {"k": "v"}}, "2.96"),
    ("PUT", "/v2.1/servers/{sid}/metadata/k", {"meta": {"k": "v"}}, "2.96"),
    ("PUT", "/v2.1/servers/{sid}/tags", {"tags": ["a", "b"]}, "2.96"),
    ("POST", "/v2.1/os-keypairs", {"keypair": {"name": "kp", "type": "ssh"}}, "2.2"),
    ("POST", "/v2.1/os-keypairs", {"keypair": {"name": "kp", "user_id": "u",
                                               "public_key": "ssh-ed25519 AAAA x"}}, "2.92"),
    ("PUT", "/v2.1/os-quota-sets/fuzz", {"quota_set": {"instances": 5, "cores": 9,
                                                       "force": True}}, "2.96"),
    ("PUT", "/v2.1/os-quota-class-sets/default", {"quota_class_set": {"instances": 5}},
     "2.96"),
    ("POST", "/v2.1/os-server-groups", {"server_group": {"name": "g",
                                                         "policies": ["affinity"]}}, "2.1"),
    ("POST", "/v2.1/os-server-groups", {"server_group": {
        "name": "g", "policy": "anti-affinity", "rules": {"max_server_per_host": 2}}},
     "2.96"),
    ("PUT", "/v2.1/os-services/{service}", {"status": "disabled",
                                            "disabled_reason": "r"}, "2.53"),
    ("PUT", "/v2.1/os-services/disable-log-reason", {
        "host": "compute-1", "binary": "nova-compute", "disabled_reason": "r"}, "2.1"),
    ("POST", "/v2.1/flavors", {"flavor": {
        "name": "f", "ram": 64, "vcpus": 1, "disk": 1, "id": "fz", "description": "d",
        "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0, "rxtx_factor": 1.0,
        "os-flavor-access:is_public": False}}, "2.55"),
    ("PUT", "/v2.1/flavors/1", {"flavor": {"description": "d"}}, "2.55"),
    ("POST", "/v2.1/flavors/1/action", {"addTenantAccess": {"tenant": "t"}}, "2.96"),
    ("POST", "/v2.1/flavors/1/action", {"removeTenantAccess": {"tenant": "t"}}, "2.96"),
    ("POST", "/v2.1/flavors/1/os-extra_specs", {"extra_specs": {
        "hw:watchdog_action": "reset", "k": "v"}}, "2.96"),
    ("PUT", "/v2.1/flavors/1/os-extra_specs/k", {"k": "v"}, "2.96"),
    ("POST", "/identity/v3/auth/tokens", {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "password": "s3cret", "domain": {"name": "Default"}}}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}, "2.1"),
]

Slot = tuple[tuple[Any, ...], bool]  # (path to a string, whether it is a dict key)


def string_slots(value: Any, path: tuple[Any, ...] = ()) -> list[Slot]:
    """Where ``value`` holds a string: every dict key and every string value."""
    if isinstance(value, str):
        return [(path, False)]
    if isinstance(value, dict):
        slots: list[Slot] = []
        for key, member in value.items():
            slots.append(((*path, key), True))
            slots += string_slots(member, (*path, key))
        return slots
    if isinstance(value, list):
        return [slot for i, member in enumerate(value)
                for slot in string_slots(member, (*path, i))]
    return []


def value_slots(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value in ``value``, the whole of it first."""
    slots = [path]
    if isinstance(value, dict):
        for key, member in value.items():
            slots += value_slots(member, (*path, key))
    elif isinstance(value, list):
        for i, member in enumerate(value):
            slots += value_slots(member, (*path, i))
    return slots


def replaced(value: Any, path: tuple[Any, ...], new: Any, *, key: bool = False) -> Any:
    """A copy of ``value`` with what ``path`` names replaced by ``new`` (with ``key``, the
    dict key at the end of ``path`` renamed to ``new``, keeping its value)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if key and not rest:
            return {(new if k == head else k): v for k, v in value.items()}
        return {k: (replaced(v, rest, new, key=key) if k == head else v)
                for k, v in value.items()}
    return [replaced(v, rest, new, key=key) if i == head else v
            for i, v in enumerate(value)]


#: a string holding at least one lone surrogate or NUL, anywhere in it
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
invalid_text = st.builds(lambda before, bad, after: before + bad + after,
                         st.text(max_size=6), surrogates | st.just("\x00"),
                         st.text(max_size=6))


def encode(body: Any) -> bytes:
    """JSON with every non-ASCII character escaped, as a client may send a lone surrogate
    (``"\\ud800"``; httpx's own encoder cannot encode one)."""
    return json.dumps(body, ensure_ascii=True).encode()


@pytest.fixture(scope="module")
def keystone() -> Iterator[ApiClient]:
    with Engine("memory") as engine:
        yield ApiClient(create_app(engine, auth="keystone", users=["admin:s3cret:admin:admin"]))


def _head(client: ApiClient) -> int:
    """The ledger's last event position: unchanged when a request stored nothing."""
    position: int = client.get("/ledger/v1/events", params={"limit": 1}).json()["head"]
    return position


def _send_template(world: tuple[ApiClient, str], keystone: ApiClient, index: int,
                   body: bytes) -> Any:
    client, sid = world
    method, path, _, version = TEMPLATES[index]
    target = keystone if path.startswith("/identity") else client
    path = path.format(sid=sid, service=_service_id(client), migration_id="1")
    return target.request(method, path,
                          content=body, headers={
                              "Content-Type": "application/json",
                              "OpenStack-API-Version": f"compute {version}"})


def _assert_refused(response: Any, message: str) -> None:
    assert response.status_code == 400, response.text
    [(name, fault)] = response.json().items()
    if response.request.url.path.startswith("/identity"):  # Keystone's error body
        assert (name, fault["code"], fault["message"]) == ("error", 400, message)
    else:
        assert (name, fault["code"], fault["message"]) == ("badRequest", 400, message)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_invalid_text_in_any_string_or_key_of_any_route_is_a_400(
        world: tuple[ApiClient, str], keystone: ApiClient, data: st.DataObject) -> None:
    """One key or string value of a valid body replaced by text with a lone surrogate
    or a NUL: 400 with the fault body, and nothing stored."""
    index = data.draw(st.integers(0, len(TEMPLATES) - 1), label="route")
    template = TEMPLATES[index][2]
    path, is_key = data.draw(st.sampled_from(string_slots(template)), label="slot")
    text = data.draw(invalid_text, label="text")
    body = replaced(template, path, text, key=is_key)
    before = _head(world[0])
    _assert_refused(_send_template(world, keystone, index, encode(body)),
                    "Malformed request body: a string holds a NUL character." if "\x00" in text
                    else "Malformed request body: a string is not valid Unicode text.")
    assert _head(world[0]) == before


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_nesting_too_deep_anywhere_in_any_route_is_a_400(
        world: tuple[ApiClient, str], keystone: ApiClient, data: st.DataObject) -> None:
    """Any value of a valid body replaced by arrays or objects nested past the limit
    (up to well past the parser's own): 400 with the fault body, and nothing stored."""
    index = data.draw(st.integers(0, len(TEMPLATES) - 1), label="route")
    template = TEMPLATES[index][2]
    path = data.draw(st.sampled_from(value_slots(template)), label="slot")
    depth = data.draw(st.integers(MAX_DEPTH + 1, 3000), label="depth")
    leaf = data.draw(st.sampled_from([None, 1, "x", [], {}]), label="leaf")
    as_objects = data.draw(st.booleans(), label="objects")
    # written out by hand: json.dumps recurses too, and would stop near the parser's limit
    opening, closing = (b'{"n":', b"}") if as_objects else (b"[", b"]")
    raw = opening * depth + encode(leaf) + closing * depth
    body = encode(replaced(template, path, "@@")).replace(b'"@@"', raw)
    before = _head(world[0])
    _assert_refused(_send_template(world, keystone, index, body),
                    f"Malformed request body: nested deeper than {MAX_DEPTH} levels.")
    assert _head(world[0]) == before


# --- a real server, one connection, thousands of hostile requests ----------------------------
FUZZ_REQUESTS = 5000
FUZZ_SEED = 16
#: the SSE stream never ends; every other route of the app is fuzzed
UNENDING = {"/ledger/v1/events/stream"}
HOSTILE_SEGMENTS = ["%ED%A0%80", "%FF", "%C3", "..", "%2e%2e", "x" * 300, "%C3%BC", "%00",
                    "-1", "0", "null", "%20", "a%2Fb", "%F0%9F%98%80", "1e400", "' OR 1=1"]
QUERY_KEYS = ["limit", "marker", "name", "status", "all_tenants", "after", "sort_key",
              "changes-since", "x", "%FF", "%ED%A0%80"]  # never "wait": it long-polls
QUERY_VALUES = [*HOSTILE_SEGMENTS, "1", "", "ACTIVE", "true"]
IDEMPOTENCY_KEYS = ["k1", "k2", "x" * 300, "x" * 5000, "\xff\xfe", "a b", "k1,k2", "%00",
                    "\\ud800"]
HOSTILE_BODIES = [b"[" * 1000, b'{"a":' * 1000, b"", b"{", b"null", b'"\\ud800"',
                  b'{"\\udfff": 1}', b'{"a": "\xff"}', b"\xed\xa0\x80", b"NaN",
                  b"1" * 5000, b'{"server": ' + b"9" * 5000 + b"}", b"\x00", b"[]", b"{}"]


def _all_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route of the app, as ``vmledger serve`` has it."""
    from starlette.routing import Route

    with Engine("memory") as engine:
        app = create_app(engine, auth="keystone", users=["admin:s3cret:admin:admin"])
    routes = [(method, route.path) for route in app.routes if isinstance(route, Route)
              for method in sorted(route.methods or ()) if method != "HEAD"]
    return [(m, p) for m, p in routes if p not in UNENDING]


def _hostile_body(rng: Any, template: Any) -> bytes:
    """A body for a route: its valid template mutated, random JSON, or raw hostile bytes."""
    choice = rng.random()
    if template is None or choice < 0.2:
        return rng.choice(HOSTILE_BODIES)
    if choice < 0.5:
        path, is_key = rng.choice(string_slots(template))
        bad = rng.choice(["\ud800", "a\udfffb", "\udc00\ud800", "\x00", "a\x00"])
        return encode(replaced(template, path, bad, key=is_key))
    if choice < 0.65:
        path = rng.choice(value_slots(template))
        depth = rng.choice([MAX_DEPTH + 1, 200, 1000, 5000])
        opening, closing = rng.choice([(b"[", b"]"), (b'{"n":', b"}")])
        return encode(replaced(template, path, "@@")).replace(
            b'"@@"', opening * depth + b"1" + closing * depth)
    if choice < 0.85:
        path = rng.choice(value_slots(template))
        odd = rng.choice([None, True, -1, 2**70, 1.5e308, "", " ", "x" * 5000, [], {},
                          ["x"], {"x": "y"}, "\u202e\u0000", "2.96", IMAGE, "1"])
        return encode(replaced(template, path, odd))
    return encode(template)


def _fill(rng: Any, template: str, known: dict[str, list[str]]) -> str:
    """The template's path with every parameter a known value or a hostile segment."""
    import re

    def value(match: Any) -> str:
        name = match.group(1)
        if name in known and rng.random() < 0.7:
            return str(rng.choice(known[name]))
        return str(rng.choice(HOSTILE_SEGMENTS))

    return re.sub(r"\{([a-z_]+)(?::[a-z_]+)?\}", value, template)


@pytest.mark.clients
def test_a_real_server_answers_thousands_of_hostile_requests_on_one_connection(
        tmp_path: Any) -> None:
    """``vmledger serve`` (keystone mode) over one keep-alive connection: every route, with
    hostile path segments, queries, headers and bodies. No 5xx, a request id and a fault
    body on every error, and the same connection answers to the end."""
    import random
    import time

    import httpx

    from tests.support.server import running_server

    rng = random.Random(FUZZ_SEED)
    routes = _all_routes()
    templates = {(m, p.replace("{sid}", "{server_id}").replace("{service}", "{service_id}")):
                 body for m, p, body, _ in TEMPLATES}
    with running_server(tmp_path, ["--auth", "keystone",
                                   "--user", "admin:s3cret:admin:admin"]) as server, \
            httpx.Client(base_url=server.base, timeout=30) as http:
        login = http.post("/identity/v3/auth/tokens", json=TEMPLATES[-1][2])
        token = {"X-Auth-Token": login.headers["x-subject-token"]}
        sids = [http.post("/v2.1/servers", headers=token, json={"server": {
            "name": f"fuzz-{i}", "flavorRef": "1", "imageRef": IMAGE}}).json()["server"]["id"]
            for i in range(3)]
        services = http.get("/v2.1/os-services", headers={
            **token, "OpenStack-API-Version": "compute 2.53"}).json()["services"]
        known = {"server_id": sids, "project_id": ["0abc", "6f70656e737461636b"],
                 "flavor_id": ["1", "2", "fz"], "key": ["k", "hw:watchdog_action"],
                 "tag": ["a", "t"], "quota_project_id": ["admin", "fuzz"],
                 "quota_class": ["default"], "service_id": [services[0]["id"]],
                 "name": ["kp"], "image_id": [IMAGE], "group_id": ["g"],
                 "aggregate_id": ["1"], "id": ["1", "compute-1"], "pattern": ["compute"],
                 "tenant_id": ["admin"], "network": ["private"], "request_id": ["req-x"],
                 "migration_id": ["1"]}
        first = http.get("/v2.1", headers=token)
        connection = first.extensions["network_stream"].get_extra_info("client_addr")
        fives: list[str] = []
        statuses: dict[int, int] = {}
        hit: set[tuple[str, str]] = set()
        started = time.monotonic()
        for _ in range(FUZZ_REQUESTS):
            method, template = rng.choice(routes)
            if rng.random() < 0.05:
                method = rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
            hit.add((method, template))
            path = _fill(rng, template, known)
            headers: dict[str, str | bytes] = dict(
                token if rng.random() < 0.95 else {"X-Auth-Token": "wrong"})
            version = rng.choice(["2.1", "2.2", "2.53", "2.55", "2.64", "2.96", "latest"]
                                 if rng.random() < 0.9 else ["2.97", "3.0", "2.\xff", "x y"])
            headers["OpenStack-API-Version"] = f"compute {version}".encode("latin-1")
            if method == "POST" and rng.random() < 0.3:
                headers["Idempotency-Key"] = rng.choice(IDEMPOTENCY_KEYS).encode("latin-1")
            query = ""
            if rng.random() < 0.3:
                query = "?" + "&".join(
                    f"{rng.choice(QUERY_KEYS)}={rng.choice(QUERY_VALUES)}"
                    for _ in range(rng.randint(1, 3)))
            content = None
            if method in ("POST", "PUT", "PATCH"):
                content = _hostile_body(rng, templates.get((method, template)))
                headers["Content-Type"] = rng.choice(
                    ["application/json"] * 8 + ["text/plain", "application/xml"])
            r = http.request(method, path + query, content=content, headers=headers)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code >= 500:
                fives.append(f"{method} {path}{query} {content!r:.200} -> {r.status_code} "
                             f"{r.text:.300}")
            assert r.headers.get("x-openstack-request-id", "").startswith("req-"), (
                method, path, r.status_code)
            if r.status_code >= 400 and r.url.path.startswith("/v2.1") and r.content:
                [(_name, fault)] = r.json().items()
                assert fault["code"] == r.status_code, (method, path, r.text)
        elapsed = time.monotonic() - started
        last = http.get("/v2.1/servers", headers=token)
        assert last.status_code == 200
        assert last.extensions["network_stream"].get_extra_info("client_addr") == connection
        print(f"fuzz: {FUZZ_REQUESTS} requests over {len(hit)} (method, route) pairs of "
              f"{len(routes)} routes in {elapsed:.1f} s, 5xx: {len(fives)}; by status: "
              f"{dict(sorted(statuses.items()))}")
    assert fives == []
    assert server.server_errors() == []


@pytest.mark.clients
def test_answers_on_a_keep_alive_connection_are_not_held_back(tmp_path: Any) -> None:
    """``vmledger serve``'s connections send without delay (TCP_NODELAY): otherwise each
    answer after the first few on a keep-alive connection waits about 40 ms for the
    client's delayed ACK, and 100 calls take over 4 s instead of a fraction of one."""
    import time

    import httpx

    from tests.support.server import running_server

    with running_server(tmp_path) as server, httpx.Client(base_url=server.base) as http:
        for _ in range(30):  # past TCP's quick-ACK start of a connection
            http.get("/v2.1/flavors/1")
        started = time.monotonic()
        for _ in range(100):
            assert http.get("/v2.1/flavors/1").status_code == 200
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"100 calls on one connection took {elapsed:.2f} s"
