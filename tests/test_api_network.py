"""The Networking API v2.0 shim (``/network``) through the HTTP API: the simulated network
and subnet, one port per server derived from its fixed address, a ``default`` security
group per project, no floating IPs; Neutron's shapes, filters and error bodies."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmledger import Engine
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.domain.catalog import image_id_for

IMAGE = image_id_for("cirros-0.6.2-x86_64")
NET = "/network/v2.0"
ADMIN = {"X-Auth-Token": "admin-secret"}
ALICE = {"X-Auth-Token": "alice-secret"}
BOB = {"X-Auth-Token": "bob-secret"}
TOKENS = ["admin-secret:root:ops:admin,member", "alice-secret:alice:p1:member",
          "bob-secret:bob:p2:member"]


@pytest.fixture
def client(system_clock_engine: Engine) -> ApiClient:
    return ApiClient(create_app(system_clock_engine))


@pytest.fixture
def tokens(system_clock_engine: Engine) -> ApiClient:
    """Token auth: alice in p1, bob in p2 (members), root an administrator in ops."""
    return ApiClient(create_app(system_clock_engine, auth="token", tokens=TOKENS))


def boot(client: ApiClient, engine: Engine, token: dict[str, str] | None = None,
         name: str = "vm") -> dict[str, Any]:
    """An ACTIVE server, as the Compute API shows it."""
    r = client.post("/v2.1/servers", headers=token or {}, json={"server": {
        "name": name, "flavorRef": "1", "imageRef": IMAGE, "networks": "auto"}})
    assert r.status_code == 202, r.text
    engine.run_until_idle()
    sid = r.json()["server"]["id"]
    server: dict[str, Any] = client.get(f"/v2.1/servers/{sid}",
                                        headers=token or {}).json()["server"]
    return server


def neutron_error(r: Any, code: int, kind: str) -> str:
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"NeutronError"}
    assert body["NeutronError"]["type"] == kind
    assert body["NeutronError"]["detail"] == ""
    message: str = body["NeutronError"]["message"]
    return message


def test_versions_and_resources(client: ApiClient) -> None:
    for path in ("/network", "/network/"):
        r = client.get(path)
        assert r.status_code == 200
        assert r.json() == {"versions": [{
            "id": "v2.0", "status": "CURRENT",
            "links": [{"rel": "self", "href": "http://testserver/network/v2.0/"}]}]}
    collections = {res["collection"] for res in client.get(f"{NET}/").json()["resources"]}
    assert {"networks", "subnets", "ports", "security_groups", "floatingips"} <= collections
    aliases = {e["alias"] for e in client.get(f"{NET}/extensions").json()["extensions"]}
    assert {"security-group", "external-net", "binding"} <= aliases
    assert "router" not in aliases  # no routers, so no floating IPs
    assert client.get(f"{NET}/extensions/security-group").json()["extension"]["alias"] == (
        "security-group")
    neutron_error(client.get(f"{NET}/extensions/router"), 404, "HTTPNotFound")


def test_the_network_and_subnet_the_addresses_come_from(client: ApiClient,
                                                        system_clock_engine: Engine) -> None:
    server = boot(client, system_clock_engine)
    [address] = server["addresses"]["private"]
    [network] = client.get(f"{NET}/networks").json()["networks"]
    assert (network["name"], network["status"], network["shared"],
            network["router:external"], network["admin_state_up"]) == (
        "private", "ACTIVE", True, False, True)
    [subnet] = client.get(f"{NET}/subnets").json()["subnets"]
    assert network["subnets"] == [subnet["id"]]
    assert (subnet["network_id"], subnet["ip_version"], subnet["cidr"],
            subnet["gateway_ip"]) == (network["id"], 4, "10.0.0.0/16", "10.0.0.1")
    [pool] = subnet["allocation_pools"]
    addr = ipaddress.ip_address(address["addr"])
    assert addr in ipaddress.ip_network(subnet["cidr"])
    assert ipaddress.ip_address(pool["start"]) <= addr <= ipaddress.ip_address(pool["end"])
    # shown one by one, and the same ids after a restart (derived, never stored)
    shown = client.get(f"{NET}/networks/{network['id']}").json()["network"]
    assert shown == network
    assert client.get(f"{NET}/subnets/{subnet['id']}").json()["subnet"] == subnet
    again = ApiClient(create_app(system_clock_engine)).get(f"{NET}/networks").json()
    assert again["networks"][0]["id"] == network["id"]


def test_one_port_per_server_from_its_address(client: ApiClient,
                                              system_clock_engine: Engine) -> None:
    web = boot(client, system_clock_engine, name="web")
    db = boot(client, system_clock_engine, name="db")
    network_id = client.get(f"{NET}/networks").json()["networks"][0]["id"]
    subnet_id = client.get(f"{NET}/subnets").json()["subnets"][0]["id"]
    ports = client.get(f"{NET}/ports").json()["ports"]
    assert sorted(p["device_id"] for p in ports) == sorted([web["id"], db["id"]])
    [port] = client.get(f"{NET}/ports", params={"device_id": web["id"]}).json()["ports"]
    [address] = web["addresses"]["private"]
    assert port["fixed_ips"] == [{"subnet_id": subnet_id, "ip_address": address["addr"]}]
    assert port["mac_address"] == address["OS-EXT-IPS-MAC:mac_addr"]
    assert (port["network_id"], port["status"], port["device_owner"], port["project_id"],
            port["admin_state_up"]) == (network_id, "ACTIVE", "compute:nova", "admin", True)
    assert port["binding:host_id"] == web["OS-EXT-SRV-ATTR:host"]  # shown to admins
    [group] = client.get(f"{NET}/security-groups").json()["security_groups"]
    assert port["security_groups"] == [group["id"]]
    assert client.get(f"{NET}/ports/{port['id']}").json()["port"] == port

    # filters: network, fixed address, several values, fields
    both = client.get(f"{NET}/ports", params=[("device_id", web["id"]),
                                              ("device_id", db["id"])]).json()["ports"]
    assert len(both) == 2
    assert len(client.get(f"{NET}/ports", params={"network_id": network_id}).json()[
        "ports"]) == 2
    assert client.get(f"{NET}/ports", params={"network_id": "nope"}).json() == {"ports": []}
    by_ip = client.get(f"{NET}/ports",
                       params={"fixed_ips": f"ip_address={address['addr']}"}).json()
    assert [p["device_id"] for p in by_ip["ports"]] == [web["id"]]
    slim = client.get(f"{NET}/ports", params=[("device_id", web["id"]), ("fields", "id"),
                                              ("fields", "status")]).json()
    assert slim == {"ports": [{"id": port["id"], "status": "ACTIVE"}]}
    assert [p["id"] for p in client.get(f"{NET}/ports", params=[
        ("device_id", web["id"]), ("security_groups", group["id"])]).json()["ports"]] == [
        port["id"]]
    assert client.get(f"{NET}/networks", params={"subnets": subnet_id}).json()[
        "networks"][0]["id"] == network_id
    named = client.get(f"{NET}/networks", params={"name": "private", "fields": "id"}).json()
    assert named == {"networks": [{"id": network_id}]}
    assert client.get(f"{NET}/networks", params={"name": "public"}).json() == {
        "networks": []}

    # a stopped server's port is down; a deleted server has none
    client.post(f"/v2.1/servers/{web['id']}/action", json={"os-stop": None})
    system_clock_engine.run_until_idle()
    assert client.get(f"{NET}/ports/{port['id']}").json()["port"]["status"] == "DOWN"
    assert client.delete(f"/v2.1/servers/{web['id']}").status_code == 204
    system_clock_engine.run_until_idle()
    assert [p["device_id"] for p in client.get(f"{NET}/ports").json()["ports"]] == [
        db["id"]]
    message = neutron_error(client.get(f"{NET}/ports/{port['id']}"), 404, "PortNotFound")
    assert message == f"Port {port['id']} could not be found."


def test_pages_of_ports(client: ApiClient, system_clock_engine: Engine) -> None:
    for n in range(3):
        boot(client, system_clock_engine, name=f"vm-{n}")
    first = client.get(f"{NET}/ports", params={"limit": "2"}).json()
    assert len(first["ports"]) == 2
    [link] = first["ports_links"]
    assert link["rel"] == "next"
    rest = client.get(link["href"].removeprefix("http://testserver")).json()
    assert len(rest["ports"]) == 1 and "ports_links" not in rest
    ids = {p["id"] for p in first["ports"]} | {p["id"] for p in rest["ports"]}
    assert len(ids) == 3


def test_default_security_group_per_project(tokens: ApiClient,
                                            system_clock_engine: Engine) -> None:
    alice_vm = boot(tokens, system_clock_engine, ALICE, name="a")
    boot(tokens, system_clock_engine, BOB, name="b")
    [group] = tokens.get(f"{NET}/security-groups", headers=ALICE).json()["security_groups"]
    assert (group["name"], group["project_id"], group["description"]) == (
        "default", "p1", "Default security group")
    rules = {(r["direction"], r["ethertype"], r["remote_group_id"], r["protocol"],
              r["remote_ip_prefix"]) for r in group["security_group_rules"]}
    assert rules == {("egress", "IPv4", None, None, None),
                     ("egress", "IPv6", None, None, None),
                     ("ingress", "IPv4", group["id"], None, None),
                     ("ingress", "IPv6", group["id"], None, None)}
    listed = tokens.get(f"{NET}/security-group-rules", headers=ALICE).json()
    assert {r["id"] for r in listed["security_group_rules"]} == {
        r["id"] for r in group["security_group_rules"]}
    [bobs] = tokens.get(f"{NET}/security-groups", headers=BOB).json()["security_groups"]
    assert bobs["project_id"] == "p2" and bobs["id"] != group["id"]
    by_name = tokens.get(f"{NET}/security-groups", headers=ALICE,
                         params={"name": "default"}).json()["security_groups"]
    assert [g["id"] for g in by_name] == [group["id"]]
    # an administrator sees every project's
    everyone = tokens.get(f"{NET}/security-groups", headers=ADMIN).json()["security_groups"]
    assert {g["project_id"] for g in everyone} == {"ops", "p1", "p2"}
    # a project sees its own ports only, without the binding
    [port] = tokens.get(f"{NET}/ports", headers=ALICE).json()["ports"]
    assert port["device_id"] == alice_vm["id"] and "binding:host_id" not in port
    assert tokens.get(f"{NET}/ports", headers=BOB,
                      params={"device_id": alice_vm["id"]}).json() == {"ports": []}
    neutron_error(tokens.get(f"{NET}/security-groups/{bobs['id']}", headers=ALICE), 404,
                  "SecurityGroupNotFound")
    assert len(tokens.get(f"{NET}/ports", headers=ADMIN).json()["ports"]) == 2


def test_no_floating_ips(client: ApiClient, system_clock_engine: Engine) -> None:
    boot(client, system_clock_engine)
    assert client.get(f"{NET}/floatingips").json() == {"floatingips": []}
    external = client.get(f"{NET}/networks", params={"router:external": "true"}).json()
    assert external == {"networks": []}
    neutron_error(client.get(f"{NET}/floatingips/x"), 404, "FloatingIPNotFound")


def test_quotas_are_neutrons_defaults(client: ApiClient, tokens: ApiClient,
                                      system_clock_engine: Engine) -> None:
    """``openstack quota show P`` reads the network quotas too when the network service is
    there: Neutron's defaults, and with ``/details`` what the project uses."""
    boot(tokens, system_clock_engine, ALICE)
    quota = tokens.get(f"{NET}/quotas/p1", headers=ALICE).json()["quota"]
    assert (quota["network"], quota["port"], quota["security_group"],
            quota["subnetpool"]) == (100, 500, 10, -1)
    assert tokens.get(f"{NET}/quotas/p1/default", headers=ALICE).json() == {"quota": quota}
    details = tokens.get(f"{NET}/quotas/p1/details", headers=ADMIN).json()["quota"]
    assert details["port"] == {"limit": 500, "used": 1, "reserved": 0}
    assert details["security_group"]["used"] == 1
    assert details["security_group_rule"]["used"] == 4
    assert tokens.get(f"{NET}/quotas/p2/details", headers=BOB).json()["quota"][
        "port"]["used"] == 0
    neutron_error(tokens.get(f"{NET}/quotas/p1", headers=BOB), 403, "HTTPForbidden")
    assert tokens.get(f"{NET}/quotas", headers=ADMIN).json() == {"quotas": []}
    assert tokens.get(f"{NET}/quotas/p1").status_code == 401
    neutron_error(client.put(f"{NET}/quotas/admin", json={"quota": {"port": 1}}), 405,
                  "HTTPMethodNotAllowed")
    assert client.get(f"{NET}/quotas/anyone").json()["quota"]["router"] == 10


def test_errors_have_neutron_bodies(client: ApiClient, tokens: ApiClient) -> None:
    message = neutron_error(client.get(f"{NET}/networks/nope"), 404, "NetworkNotFound")
    assert message == "Network nope could not be found."
    neutron_error(client.get(f"{NET}/subnets/nope"), 404, "SubnetNotFound")
    message = neutron_error(client.get(f"{NET}/ports", params={"colour": "red"}), 400,
                            "HTTPBadRequest")
    assert message == "['colour'] is invalid attribute for filtering"
    assert len(client.get(f"{NET}/networks", params={"name": ""}).json()["networks"]) == 1
    neutron_error(client.get(f"{NET}/networks", params={"device_id": "x"}), 400,
                  "HTTPBadRequest")
    neutron_error(client.get(f"{NET}/ports", params={"limit": "many"}), 400,
                  "HTTPBadRequest")
    neutron_error(client.get(f"{NET}/ports", params={"fixed_ips": "nonsense"}), 400,
                  "HTTPBadRequest")
    neutron_error(client.get(f"{NET}/routers"), 404, "HTTPNotFound")
    neutron_error(client.post(f"{NET}/networks", json={"network": {"name": "n"}}), 405,
                  "HTTPMethodNotAllowed")
    neutron_error(client.delete(f"{NET}/security-groups/x"), 405, "HTTPMethodNotAllowed")
    r = tokens.get(f"{NET}/networks")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == 401
    assert tokens.get(f"{NET}/networks", headers=ALICE).status_code == 200
    assert client.get(f"{NET}/networks").headers["x-openstack-request-id"].startswith("req-")


def test_the_keystone_catalog_lists_the_network_service(system_clock_engine: Engine
                                                        ) -> None:
    client = ApiClient(create_app(system_clock_engine, auth="keystone",
                                  users=["carol:pw:p1:member"]))
    r = client.post("/identity/v3/auth/tokens", json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "carol", "password": "pw", "domain": {"id": "default"}}}},
        "scope": {"project": {"name": "p1", "domain": {"id": "default"}}}}})
    assert r.status_code == 201, r.text
    [network] = [s for s in r.json()["token"]["catalog"] if s["type"] == "network"]
    assert {e["interface"]: e["url"] for e in network["endpoints"]} == {
        iface: "http://testserver/network" for iface in ("public", "internal", "admin")}
    token = {"X-Auth-Token": r.headers["x-subject-token"]}
    assert client.get(f"{NET}/networks", headers=token).status_code == 200


def test_a_servers_security_groups_as_nova_shows_them(client: ApiClient,
                                                      system_clock_engine: Engine) -> None:
    server = boot(client, system_clock_engine)
    r = client.get(f"/v2.1/servers/{server['id']}/os-security-groups")
    assert r.status_code == 200, r.text
    [group] = r.json()["security_groups"]
    [neutron] = client.get(f"{NET}/security-groups").json()["security_groups"]
    assert (group["id"], group["name"], group["tenant_id"], group["description"]) == (
        neutron["id"], "default", "admin", "Default security group")
    # Nova shows the ingress rules only
    assert sorted(group["rules"], key=lambda r: r["id"]) == sorted((
        {"id": rule["id"], "parent_group_id": neutron["id"], "ip_protocol": None,
         "from_port": None, "to_port": None, "ip_range": {},
         "group": {"name": "default", "tenant_id": "admin"}}
        for rule in neutron["security_group_rules"] if rule["direction"] == "ingress"),
        key=lambda r: r["id"])
    r = client.get("/v2.1/servers/00000000-0000-0000-0000-000000000000/os-security-groups")
    assert r.status_code == 404 and "itemNotFound" in r.json()


@settings(max_examples=150, deadline=None)
@given(params=st.lists(st.tuples(
    st.sampled_from(["fields", "limit", "marker", "name", "device_id", "network_id",
                     "fixed_ips", "status", "shared", "router:external", "project_id",
                     "admin_state_up", "security_group_rules", "tags"]) | st.text(max_size=6),
    st.text(max_size=12) | st.sampled_from(["1", "0", "-1", "true", "ip_address=10.0.1.2",
                                            "subnet_id=", "=", "x" * 300])), max_size=4),
       path=st.sampled_from(["networks", "subnets", "ports", "security-groups",
                             "security-group-rules", "floatingips", "extensions"]))
def test_odd_queries_never_answer_5xx(params: list[tuple[str, str]], path: str) -> None:
    with Engine("memory") as engine:
        response = ApiClient(create_app(engine)).get(f"{NET}/{path}", params=params)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["NeutronError"]["type"] == "HTTPBadRequest"


@settings(max_examples=80, deadline=None)
@given(segment=st.text(min_size=1, max_size=30).filter(lambda t: "/" not in t and t.strip()),
       method=st.sampled_from(["get", "delete", "put", "post"]),
       template=st.sampled_from(["/network/{x}", "/network/v2.0/{x}",
                                 "/network/v2.0/ports/{x}", "/network/v2.0/networks/{x}",
                                 "/network/v2.0/extensions/{x}"]))
def test_odd_path_segments_never_answer_5xx(segment: str, method: str,
                                            template: str) -> None:
    from urllib.parse import quote

    with Engine("memory") as engine:
        client = ApiClient(create_app(engine))
        response = getattr(client, method)(template.format(x=quote(segment, safe="")))
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"NeutronError"}, response.text
