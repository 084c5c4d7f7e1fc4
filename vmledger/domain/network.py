"""The simulated network the servers' fixed addresses come from, and the stable ids the
Networking API shows for it.

Every server gets one address on the network ``private`` (see
:func:`vmledger.domain.commands.servers.addresses`): 10.0.x.y with x in 1..250 and y in
2..251, inside the subnet 10.0.0.0/16 whose gateway is 10.0.0.1. Nothing of the network is
recorded: its ids are derived (UUID 5) so that they are the same on every restart and
every installation.
"""

from __future__ import annotations

import uuid

NETWORK_NAME = "private"
SUBNET_NAME = "private-subnet"
CIDR = "10.0.0.0/16"
GATEWAY_IP = "10.0.0.1"
#: the one allocation pool: every address :func:`addresses` can give
POOL_START = "10.0.1.2"
POOL_END = "10.0.250.251"
MTU = 1450
#: the project that owns the (shared) network
OWNER = "admin"

_NAMESPACE = uuid.UUID("6f1c2a8e-4b0d-5e57-9a43-0c6d9f1e2b7a")


def stable_id(*parts: str) -> str:
    """A UUID derived from ``parts`` (the same everywhere, every time)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


NETWORK_ID = stable_id("network", NETWORK_NAME)
SUBNET_ID = stable_id("subnet", SUBNET_NAME)


def port_id(server_id: str) -> str:
    """The id of a server's one port."""
    return stable_id("port", server_id)


def default_security_group_id(project_id: str) -> str:
    """The id of a project's ``default`` security group."""
    return stable_id("security-group", project_id, "default")


def mac_address(server_id: uuid.UUID) -> str:
    """A server's MAC address (OpenStack's ``fa:16:3e`` prefix)."""
    return "fa:16:3e:" + ":".join(f"{x:02x}" for x in server_id.bytes[2:5])


def fixed_ip(server_id: uuid.UUID) -> str:
    """A server's fixed address on :data:`NETWORK_NAME`."""
    b = server_id.bytes
    return f"10.0.{b[0] % 250 + 1}.{b[1] % 250 + 2}"
