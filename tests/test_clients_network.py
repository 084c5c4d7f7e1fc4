"""The Networking API shim with openstacksdk against a real ``vmledger serve``: the
network proxy (``conn.network.networks()``, ``ports(device_id=...)``,
``security_groups()``) and the cloud layer that needs it (``create_server(wait=True)``,
``get_server`` with its addresses, ``delete_server(wait=True)``), without Keystone (the
``network_endpoint_override`` of docs/api.md) and after a Keystone password login (the
``network`` service of the catalog)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.server import (
    IMAGE,
    KEYSTONE_PASSWORD,
    RunningServer,
    client_skip_reason,
    clients_marks,
    vmledger_keystone_server,
    vmledger_server,
)

_reason = client_skip_reason("openstack", "keystoneauth1")
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

import openstack  # noqa: E402
from openstack import exceptions as sdk_exc  # noqa: E402
from openstack.connection import Connection  # noqa: E402

pytestmark = [
    *clients_marks(),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
    # the cloud layer reads servers' legacy keys itself
    pytest.mark.filterwarnings("ignore::openstack.warnings.LegacyAPIWarning"),
]
__all__ = ["vmledger_keystone_server", "vmledger_server"]  # fixtures used below

WAIT = 30


@pytest.fixture(scope="module")
def noauth(vmledger_server: RunningServer) -> Iterator[Connection]:
    """No Keystone: each service's endpoint given, as the README's noauth set-up."""
    conn = openstack.connect(load_yaml_config=False, load_envvars=False, auth_type="none",
                             auth={"endpoint": vmledger_server.compute},
                             image_endpoint_override=vmledger_server.image,
                             network_endpoint_override=vmledger_server.network)
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def keystone(vmledger_keystone_server: RunningServer) -> Iterator[Connection]:
    """A password login: every endpoint from the catalog."""
    conn = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_type="password",
        auth={"auth_url": vmledger_keystone_server.identity, "username": "admin",
              "password": KEYSTONE_PASSWORD, "project_name": "admin",
              "user_domain_name": "Default", "project_domain_name": "Default"},
        region_name="RegionOne")
    yield conn
    conn.close()


@pytest.fixture(params=["noauth", "keystone"])
def conn(request: pytest.FixtureRequest) -> Connection:
    connection: Connection = request.getfixturevalue(request.param)
    return connection


def test_network_proxy(conn: Connection) -> None:
    [network] = list(conn.network.networks())
    assert (network.name, network.status, network.is_shared,
            network.is_router_external) == ("private", "ACTIVE", True, False)
    [subnet] = list(conn.network.subnets(network_id=network.id))
    assert (subnet.cidr, subnet.gateway_ip, subnet.ip_version) == ("10.0.0.0/16",
                                                                   "10.0.0.1", 4)
    assert conn.network.find_network("private").id == network.id
    assert conn.network.find_network("public") is None
    [group] = list(conn.network.security_groups())
    assert (group.name, group.project_id) == ("default", "admin")
    assert len(group.security_group_rules) == 4
    assert list(conn.network.ips()) == []  # no floating IPs
    with pytest.raises(sdk_exc.NotFoundException):
        conn.network.get_port("no-such-port")


def test_ports_follow_servers(conn: Connection) -> None:
    server = conn.create_server("net-vm", image=IMAGE, flavor="m1.tiny",
                                network="private", wait=True, timeout=WAIT)
    [address] = server.addresses["private"]
    assert server.private_v4 == address["addr"]
    [port] = list(conn.network.ports(device_id=server.id))
    assert [ip["ip_address"] for ip in port.fixed_ips] == [address["addr"]]
    assert (port.mac_address, port.status, port.device_owner) == (
        address["OS-EXT-IPS-MAC:mac_addr"], "ACTIVE", "compute:nova")
    network = conn.network.find_network("private")
    assert [p.id for p in conn.network.ports(network_id=network.id)] == [port.id]
    assert conn.network.find_security_group("default").id in port.security_group_ids
    found: Any = conn.get_server("net-vm")
    assert found.private_v4 == address["addr"] and not found.public_v4
    groups = conn.compute.fetch_server_security_groups(server).security_groups
    assert [g["name"] for g in groups] == ["default"]
    assert conn.delete_server("net-vm", wait=True, timeout=WAIT)
    assert list(conn.network.ports(device_id=server.id)) == []
