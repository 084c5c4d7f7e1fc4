"""openstacksdk's cloud layer (``conn.create_server(wait=True)``, ``list_servers``,
``get_server``, ``delete_server(wait=True)``) against a real ``vmledger serve``.

With ``auth_type="none"`` or ``admin_token`` and an endpoint, the SDK sends every service's
requests to that endpoint: it asks ``/v2.1/networks``, ``/v2.1/routers`` and
``/v2.1/ports?device_id=`` as if it were a Networking API. Those are 404 faults (as in
Nova), so the cloud layer concludes there is no floating-IP network and goes on. After a
Keystone login the catalog lists the ``network`` service (the Networking shim), which shows
no external network, so the defaults (``auto_ip=True``) work there too (docs/api.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.server import (
    ADMIN_TOKEN,
    IMAGE,
    KEYSTONE_PASSWORD,
    RunningServer,
    client_skip_reason,
    clients_marks,
    vmledger_keystone_server,
    vmledger_server,
    vmledger_token_server,
)

_reason = client_skip_reason("openstack", "keystoneauth1")
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

import openstack  # noqa: E402
from openstack.connection import Connection  # noqa: E402

pytestmark = [
    *clients_marks(),
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
    # the cloud layer warns that nova-network support is deprecated when it finds no
    # network service; that is the SDK talking about itself
    pytest.mark.filterwarnings("ignore::DeprecationWarning:openstack"),
]
__all__ = ["vmledger_keystone_server", "vmledger_server", "vmledger_token_server"]

TIMEOUT = 30


def _connect(**options: Any) -> Connection:
    return openstack.connect(load_yaml_config=False, load_envvars=False, **options)


def lifecycle(conn: Connection, server: RunningServer, name: str, **create: Any) -> None:
    """create (waiting for ACTIVE), list, get by name and id, delete (waiting)."""
    created = conn.create_server(name, image=IMAGE, flavor="m1.tiny", wait=True,
                                 timeout=TIMEOUT, **create)
    assert (created.name, created.status) == (name, "ACTIVE")
    assert created.private_v4 and not created.public_v4  # a fixed address, no floating one
    assert name in {s.name for s in conn.list_servers()}
    shown = conn.get_server(name)
    assert shown is not None and shown.id == created.id
    assert conn.get_server(created.id).private_v4 == created.private_v4
    assert conn.delete_server(name, wait=True, timeout=TIMEOUT) is True
    assert conn.get_server(created.id) is None
    assert name not in {s.name for s in conn.list_servers()}
    assert server.server_errors() == []


@pytest.fixture
def noauth(vmledger_server: RunningServer) -> Iterator[Connection]:
    conn = _connect(auth_type="none", auth={"endpoint": vmledger_server.compute})
    yield conn
    conn.close()


def test_cloud_layer_lifecycle_in_noauth(noauth: Connection,
                                         vmledger_server: RunningServer) -> None:
    lifecycle(noauth, vmledger_server, "cloud-noauth")


def test_cloud_layer_lifecycle_with_a_token(vmledger_token_server: RunningServer) -> None:
    conn = _connect(auth_type="admin_token", auth={
        "endpoint": vmledger_token_server.compute, "token": ADMIN_TOKEN})
    try:
        lifecycle(conn, vmledger_token_server, "cloud-token")
    finally:
        conn.close()


def test_cloud_layer_lifecycle_with_a_keystone_login(
        vmledger_keystone_server: RunningServer) -> None:
    """A Keystone login: the catalog has compute, identity, image and network."""
    conn = _connect(auth_type="password", region_name="RegionOne", auth={
        "auth_url": vmledger_keystone_server.identity, "username": "admin",
        "password": KEYSTONE_PASSWORD, "project_name": "admin",
        "user_domain_name": "Default", "project_domain_name": "Default"})
    try:
        assert conn.has_service("network")
        # with the catalog's network service the default auto_ip=True needs nothing more
        lifecycle(conn, vmledger_keystone_server, "cloud-keystone")
    finally:
        conn.close()
