"""Snapshots with real clients against a real ``vmledger serve``: openstacksdk's
``conn.compute.create_server_image(..., wait=True)`` and the cloud layer's
``create_image_snapshot``, the ``openstack`` CLI's ``server image create`` / ``image
show`` / ``image list`` / ``image delete``, and tempest's compute image schemas as an
oracle for ``createImage`` and the proxy's view of a snapshot.

The SDK and the CLI wait for an image through the ``image`` service: the Glance shim at
``/image`` (from the Keystone catalog after a password login, or
``image_endpoint_override`` / ``OS_IMAGE_ENDPOINT_OVERRIDE`` without Keystone). See
docs/api.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
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

_reason = client_skip_reason("openstack", "keystoneauth1", "openstackclient", "osc_lib",
                             "tempest", "jsonschema")
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

import openstack  # noqa: E402
import openstack.warnings  # noqa: E402
from openstack import exceptions as sdk_exc  # noqa: E402
from openstack.connection import Connection  # noqa: E402
from tempest.lib.api_schema.response.compute.v2_1 import (  # type: ignore[import-untyped]  # noqa: E402
    images as image_schemas,
)
from tempest.lib.common.rest_client import RestClient  # type: ignore[import-untyped]  # noqa: E402

from vmledger import Engine  # noqa: E402
from vmledger.api import create_app  # noqa: E402
from vmledger.api.testing import ApiClient  # noqa: E402

OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which(
    "openstack")
if OPENSTACK is None:
    pytest.skip("the openstack command (python-openstackclient) is not on PATH",
                allow_module_level=True)

pytestmark = [
    *clients_marks(),
    # the SDK's own deprecations of its internals, not of how vmledger is called
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
]
__all__ = ["vmledger_keystone_server", "vmledger_server"]  # fixtures used below

WAIT = 30.0
IMAGE_NAME = "cirros-0.6.2-x86_64"
COMMAND_TIMEOUT = 60

Osc = Callable[..., Any]


def settle(conn: Connection, server_id: str, status: str = "ACTIVE") -> Any:
    """Wait for ``status`` with no task in progress (as Tempest does)."""
    deadline = time.monotonic() + WAIT
    while True:
        server = conn.compute.get_server(server_id)
        if server.status == status and server.task_state is None:
            return server
        assert server.status != "ERROR", f"{server_id} went to ERROR"
        assert time.monotonic() < deadline, f"{server_id} stuck in {server.status}/" \
                                            f"{server.task_state}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def noauth(vmledger_server: RunningServer) -> Iterator[Connection]:
    """No Keystone: compute at ``/v2.1``, the image service at the Glance shim."""
    conn = openstack.connect(load_yaml_config=False, load_envvars=False, auth_type="none",
                             auth={"endpoint": vmledger_server.compute},
                             image_endpoint_override=vmledger_server.image)
    yield conn
    conn.close()


# --- openstacksdk --------------------------------------------------------------------------
def test_sdk_create_server_image(noauth: Connection) -> None:
    c = noauth.compute
    sid = c.create_server(name="sdk-snap-vm", flavor_id="1", image_id=IMAGE,
                          networks="none").id
    settle(noauth, sid)
    image = c.create_server_image(sid, "sdk-snap", metadata={"tier": "gold"}, wait=True,
                                  timeout=WAIT)
    assert (image.name, image.status, image.visibility, image.owner) == (
        "sdk-snap", "active", "private", "admin")
    assert image.size > 0
    assert image.properties["image_type"] == "snapshot"
    assert image.properties["tier"] == "gold"
    assert image["instance_uuid"] == sid
    assert settle(noauth, sid).status == "ACTIVE"
    actions = [a.action for a in c.server_actions(sid)]
    assert actions == ["createImage", "create"]

    # the compute image proxy (deprecated in the SDK) shows it with its server
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        proxied = c.get_image(image.id)
    assert any(issubclass(w.category, openstack.warnings.OpenStackDeprecationWarning)
               for w in caught)
    assert (proxied.status, proxied.progress) == ("ACTIVE", 100)
    assert proxied.metadata["instance_uuid"] == sid

    # a server built from the snapshot
    clone = c.create_server(name="sdk-clone", flavor_id="1", image_id=image.id,
                            networks="none").id
    assert settle(noauth, clone).image.id == image.id
    c.delete_server(clone)

    # delete: the owner may; a pre-built image is protected
    with pytest.raises(sdk_exc.ForbiddenException):
        noauth.image.delete_image(IMAGE)
    noauth.image.delete_image(image.id)
    assert noauth.image.find_image(image.id) is None
    with pytest.raises(sdk_exc.NotFoundException):
        noauth.image.delete_image(image.id, ignore_missing=False)
    c.delete_server(sid)


def test_sdk_cloud_layer_snapshot(vmledger_keystone_server: RunningServer) -> None:
    """After a password login the image endpoint comes from the Keystone catalog."""
    conn = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_type="password",
        auth={"auth_url": vmledger_keystone_server.identity, "username": "admin",
              "password": KEYSTONE_PASSWORD, "project_name": "admin",
              "user_domain_name": "Default", "project_domain_name": "Default"},
        region_name="RegionOne")
    try:
        assert str(conn.image.get_endpoint()).rstrip("/").endswith("/image/v2")
        sid = conn.compute.create_server(name="cloud-snap-vm", flavor_id="1", image_id=IMAGE,
                                         networks="none").id
        settle(conn, sid)
        image = conn.create_image_snapshot("cloud-snap", sid, wait=True, timeout=WAIT,
                                           purpose="test")
        assert (image.status, image.owner) == ("active", "admin")
        assert image.properties["purpose"] == "test"
        found = conn.get_image("cloud-snap")
        assert found is not None and found.id == image.id
        assert "cloud-snap" in {i.name for i in conn.list_images()}
        assert conn.delete_image("cloud-snap") is True
        assert conn.get_image(image.id) is None
        conn.compute.delete_server(sid)
    finally:
        conn.close()


# --- the openstack CLI ----------------------------------------------------------------------
def keystone_osc(server: RunningServer, tmp: Path) -> Osc:
    """``openstack`` in a clean environment (no ``OS_*``, ``HOME`` in ``tmp``) logged in
    with a password at ``/identity/v3``, as in test_clients_cli."""
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = tmp / "clouds.yaml"
    config.write_text(json.dumps({"clouds": {"vmledger-keystone": {
        "auth_type": "password",
        "auth": {"auth_url": server.identity, "username": "admin",
                 "password": KEYSTONE_PASSWORD, "project_name": "admin",
                 "user_domain_name": "Default", "project_domain_name": "Default"},
        "identity_api_version": 3, "region_name": "RegionOne"}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               OS_CLIENT_CONFIG_FILE=str(config), OS_CLOUD="vmledger-keystone",
               PYTHONWARNINGS="ignore")

    def osc(*args: str, check: bool = True, output: bool = False) -> Any:
        argv = [str(OPENSTACK), *args, *(["-f", "json"] if output else [])]
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
        if not check:
            return done
        if done.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stderr}\n{done.stdout}")
        return json.loads(done.stdout) if output else done.stdout

    return osc


def wait_for_server(osc: Osc, name: str, status: str = "ACTIVE") -> dict[str, Any]:
    """Poll ``server show`` until ``status`` with no task in progress."""
    deadline = time.monotonic() + WAIT
    while True:
        shown: dict[str, Any] = osc("server", "show", name, output=True)
        if shown["status"] == status and not shown.get("OS-EXT-STS:task_state"):
            return shown
        assert time.monotonic() < deadline, f"{name} stuck in {shown['status']}"
        time.sleep(0.1)


def wait_for_image(osc: Osc, name: str, status: str = "active") -> dict[str, Any]:
    """Poll ``image show`` (rather than ``--wait``, which sleeps 5 s between polls)."""
    deadline = time.monotonic() + WAIT
    while True:
        shown: dict[str, Any] = osc("image", "show", name, output=True)
        if shown["status"] == status:
            return shown
        assert time.monotonic() < deadline, f"image {name} stuck in {shown['status']}"
        time.sleep(0.1)


def test_cli_server_image_create(vmledger_keystone_server: RunningServer, tmp_path: Path
                                 ) -> None:
    osc = keystone_osc(vmledger_keystone_server, tmp_path)
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "cli-snap-vm", output=True)
    sid = wait_for_server(osc, "cli-snap-vm")["id"]

    created = osc("server", "image", "create", "--name", "cli-snap", "--property",
                  "tier=gold", "cli-snap-vm", output=True)
    assert created["name"] == "cli-snap"
    assert created["status"] in ("queued", "saving", "active")
    shown = wait_for_image(osc, "cli-snap")
    assert shown["id"] == created["id"]
    assert (shown["visibility"], shown["owner"]) == ("private", "admin")
    properties = json.dumps(shown["properties"])
    assert sid in properties and "snapshot" in properties and "gold" in properties
    listed = osc("image", "list", output=True)
    assert {(i["Name"], i["Status"]) for i in listed} >= {("cli-snap", "active"),
                                                          (IMAGE_NAME, "active")}
    wait_for_server(osc, "cli-snap-vm")
    events = osc("server", "event", "list", "cli-snap-vm", output=True)
    assert [e["Action"] for e in events] == ["createImage", "create"]

    # pre-built images are protected; the snapshot is deleted by its owner
    refused = osc("image", "delete", IMAGE_NAME, check=False)
    assert refused.returncode != 0
    assert "protected" in refused.stderr or "403" in refused.stderr
    osc("image", "delete", "cli-snap")
    assert osc("image", "show", created["id"], check=False).returncode != 0
    assert "cli-snap" not in {i["Name"] for i in osc("image", "list", output=True)}
    osc("server", "delete", "cli-snap-vm")


def test_cli_server_backup_create(vmledger_keystone_server: RunningServer, tmp_path: Path
                                  ) -> None:
    osc = keystone_osc(vmledger_keystone_server, tmp_path)
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "cli-backup-vm", output=True)
    wait_for_server(osc, "cli-backup-vm")
    for n in (1, 2, 3):
        created = osc("server", "backup", "create", "--name", f"cli-backup-{n}", "--type",
                      "daily", "--rotate", "2", "cli-backup-vm", output=True)
        assert created["name"] == f"cli-backup-{n}"
        wait_for_image(osc, f"cli-backup-{n}")
        wait_for_server(osc, "cli-backup-vm")
    shown = osc("image", "show", "cli-backup-3", output=True)
    properties = json.dumps(shown["properties"])
    assert '"backup_type": "daily"' in properties and '"image_type": "backup"' in properties
    listed = {i["Name"] for i in osc("image", "list", output=True)}
    assert {"cli-backup-2", "cli-backup-3"} <= listed and "cli-backup-1" not in listed
    # without --type the CLI sends an empty backup type, which Nova accepts
    osc("server", "backup", "create", "cli-backup-vm", output=True)  # named after it
    wait_for_image(osc, "cli-backup-vm")
    wait_for_server(osc, "cli-backup-vm")
    events = osc("server", "event", "list", "cli-backup-vm", output=True)
    assert [e["Action"] for e in events] == ["createBackup"] * 4 + ["create"]
    osc("server", "delete", "cli-backup-vm")


# --- tempest's compute image schemas as an oracle --------------------------------------------
class _Headers(dict[str, str]):
    """What ``RestClient.validate_response`` expects of a response: a header mapping
    with ``status``."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(headers)
        self.status = status


def test_tempest_schemas_accept_snapshots() -> None:
    engine = Engine("memory")
    try:
        client = ApiClient(create_app(engine))
        r = client.post("/v2.1/servers", json={"server": {
            "name": "vm", "flavorRef": "1", "imageRef": IMAGE}})
        sid = r.json()["server"]["id"]
        engine.run_until_idle()
        headers = {"X-OpenStack-Nova-API-Version": "2.1"}
        r = client.post(f"/v2.1/servers/{sid}/action", headers=headers,
                        json={"createImage": {"name": "snap", "metadata": {"k": "v"}}})
        RestClient.validate_response(image_schemas.create_image,
                                     _Headers(r.status_code, dict(r.headers)), r.content)
        image_id = r.headers["location"].rsplit("/", 1)[1]
        for _ in range(2):  # while saving, then active
            for schema, path in ((image_schemas.get_image, f"/v2.1/images/{image_id}"),
                                 (image_schemas.list_images, "/v2.1/images?limit=2"),
                                 (image_schemas.list_images_details,
                                  "/v2.1/images/detail?limit=2")):
                r = client.get(path, headers=headers)
                RestClient.validate_response(schema, _Headers(r.status_code, dict(r.headers)),
                                             r.json())
            engine.run_until_idle()
        shown = client.get(f"/v2.1/images/{image_id}").json()["image"]
        assert shown["server"]["id"] == sid and shown["status"] == "ACTIVE"
        r = client.delete(f"/v2.1/images/{image_id}", headers=headers)
        RestClient.validate_response(image_schemas.delete,
                                     _Headers(r.status_code, dict(r.headers)), r.content)
    finally:
        engine.close()
