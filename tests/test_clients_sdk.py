"""openstacksdk (4.22.0) against a real ``vmledger serve``: the compute proxy lifecycle
without Keystone (``auth_type="none"``), and fixed tokens (``admin_token``) with the 401
path. See docs/api.md for pointing the SDK at vmledger."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import (
    ADMIN_TOKEN,
    IMAGE,
    IMAGE2,
    KEYSTONE_PASSWORD,
    MEMBER_TOKEN,
    RunningServer,
    client_skip_reason,
    clients_marks,
    running_server,
    vmledger_keystone_server,
    vmledger_server,
    vmledger_token_server,
)

_reason = client_skip_reason("openstack", "keystoneauth1")
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

import openstack  # noqa: E402
import openstack.warnings  # noqa: E402
from openstack import exceptions as sdk_exc  # noqa: E402
from openstack.connection import Connection  # noqa: E402

pytestmark = [
    *clients_marks(),
    # the SDK's own deprecations of its internals, not of how vmledger is called
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
]
# fixtures used below
__all__ = ["vmledger_keystone_server", "vmledger_server", "vmledger_token_server"]

WAIT = 30.0


def connect(server: RunningServer, **kwargs: Any) -> Connection:
    """A connection that reads no clouds.yaml and no OS_* variables."""
    options: dict[str, Any] = {"auth_type": "none", "auth": {"endpoint": server.compute}}
    options.update(kwargs)
    return openstack.connect(load_yaml_config=False, load_envvars=False, **options)


@pytest.fixture(scope="module")
def conn(vmledger_server: RunningServer) -> Iterator[Connection]:
    connection = connect(vmledger_server)
    yield connection
    connection.close()


def settle(conn: Connection, server_id: str, status: str) -> Any:
    """Wait (on a fresh object) for ``status`` with no task in progress, as Tempest does."""
    server = conn.compute.wait_for_server(conn.compute.get_server(server_id), status=status,
                                          interval=0.05, wait=WAIT)
    deadline = time.monotonic() + WAIT
    while server.task_state is not None or server.status != status:
        assert time.monotonic() < deadline, f"{server_id} stuck in {server.status}/" \
                                            f"{server.task_state}"
        time.sleep(0.05)
        server = conn.compute.get_server(server_id)
    return server


def test_discovery_and_catalog(conn: Connection) -> None:
    c = conn.compute
    assert c.get_endpoint().rstrip("/").endswith("/v2.1")
    flavors = {f.name: f for f in c.flavors()}
    assert {"m1.tiny", "m1.small"} <= set(flavors)
    assert c.find_flavor("m1.small").id == flavors["m1.small"].id
    assert c.get_flavor("1").name == "m1.tiny"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = {i.id for i in c.images()}
    # the compute image proxy is deprecated in the SDK (and served up to 2.35)
    assert any(issubclass(w.category, openstack.warnings.OpenStackDeprecationWarning)
               for w in caught)
    assert IMAGE in images


def test_lifecycle(conn: Connection) -> None:
    c = conn.compute
    created = c.create_server(name="sdk-vm", flavor_id="1", image_id=IMAGE, networks="none")
    sid = created.id
    server = settle(conn, sid, "ACTIVE")
    assert (server.name, server.flavor.original_name) == ("sdk-vm", "m1.tiny")
    assert server.addresses  # ACTIVE with an address: the cloud layer keeps it
    assert c.find_server("sdk-vm").id == sid

    c.reboot_server(sid, "SOFT")
    settle(conn, sid, "ACTIVE")
    c.reboot_server(sid, "HARD")
    settle(conn, sid, "ACTIVE")

    c.resize_server(sid, "2")
    settle(conn, sid, "VERIFY_RESIZE")
    c.confirm_server_resize(sid)
    assert settle(conn, sid, "ACTIVE").flavor.original_name == "m1.small"

    c.resize_server(sid, "3")
    settle(conn, sid, "VERIFY_RESIZE")
    c.revert_server_resize(sid)
    assert settle(conn, sid, "ACTIVE").flavor.original_name == "m1.small"
    migrations = list(c.migrations(instance_uuid=sid))
    assert sorted((m.status, m.old_flavor_id, m.new_flavor_id) for m in migrations) == [
        ("confirmed", 1, 2), ("reverted", 2, 3)]

    c.pause_server(sid)
    settle(conn, sid, "PAUSED")
    c.unpause_server(sid)
    settle(conn, sid, "ACTIVE")
    c.suspend_server(sid)
    settle(conn, sid, "SUSPENDED")
    c.resume_server(sid)
    settle(conn, sid, "ACTIVE")
    c.stop_server(sid)
    settle(conn, sid, "SHUTOFF")
    c.start_server(sid)
    settle(conn, sid, "ACTIVE")

    rebuilt = c.rebuild_server(sid, image=IMAGE2, name="sdk-vm-b")
    assert rebuilt.id == sid and rebuilt.image.id == IMAGE2
    server = settle(conn, sid, "ACTIVE")
    assert (server.name, server.image.id) == ("sdk-vm-b", IMAGE2)

    actions = list(c.server_actions(sid))
    names = [a.action for a in actions]
    assert names == ["rebuild", "start", "stop", "resume", "suspend", "unpause", "pause",
                     "revertResize", "resize", "confirmResize", "resize", "reboot", "reboot",
                     "create"]
    create = c.get_server_action(actions[-1].request_id, sid)
    assert create.action == "create"
    assert [e.event for e in create.events] == ["compute__do_build_and_run_instance"]
    assert create.events[0].result == "Success"
    assert create.events[0].host_id

    doomed = c.get_server(sid)  # fetched before the delete, which may finish at once
    c.delete_server(doomed)
    c.wait_for_delete(doomed, interval=0.05, wait=WAIT)
    with pytest.raises(sdk_exc.NotFoundException):
        c.get_server(sid)


def test_shelve_and_unshelve(conn: Connection, vmledger_server: RunningServer) -> None:
    """Shelve (offloaded at once, as Nova's default), the shelved image in the image
    service, unshelve, and the instance actions."""
    c = conn.compute
    sid = c.create_server(name="sdk-shelf", flavor_id="1", image_id=IMAGE,
                          networks="none").id
    active = settle(conn, sid, "ACTIVE")
    assert active.compute_host == "compute-1"

    c.shelve_server(sid)
    shelved = settle(conn, sid, "SHELVED_OFFLOADED")
    assert (shelved.vm_state, shelved.compute_host, shelved.host_id) == (
        "shelved_offloaded", None, "")  # no guest, so no host
    with pytest.raises(sdk_exc.ConflictException, match="shelveOffload"):
        c.shelve_offload_server(sid)  # already offloaded
    with pytest.raises(sdk_exc.ConflictException):
        c.start_server(sid)

    images = connect(vmledger_server, image_endpoint_override=vmledger_server.image)
    try:
        [image] = [i for i in images.image.images() if i.name == "sdk-shelf-shelved"]
        assert (image.status, image["instance_uuid"]) == ("active", sid)

        c.unshelve_server(sid)
        server = settle(conn, sid, "ACTIVE")
        assert (server.compute_host, server.image.id) == ("compute-1", IMAGE)
        assert server.host_id == active.host_id
        # the shelved image is deleted once the server runs again (as Nova does)
        assert images.image.find_image(image.id) is None
    finally:
        images.close()

    # the offload is part of the shelve action (as Nova with shelved_offload_time = 0)
    actions = list(c.server_actions(sid))
    assert [a.action for a in actions] == ["unshelve", "shelve", "create"]
    shelve = c.get_server_action(actions[1].request_id, sid)
    assert [(e.event, e.result) for e in shelve.events] == [
        ("compute_shelve_instance", "Success")]
    c.delete_server(sid)


@contextlib.contextmanager
def active_server_of(tmp_path: Path, args: list[str], name: str
                     ) -> Iterator[tuple[RunningServer, Connection, str]]:
    """A ``vmledger serve`` started with ``args``, a connection to it and an ACTIVE
    server ``name`` on it."""
    with running_server(tmp_path, args) as server:
        conn = connect(server)
        sid = conn.compute.create_server(name=name, flavor_id="1", image_id=IMAGE,
                                         networks="none").id
        settle(conn, sid, "ACTIVE")
        yield server, conn, sid


def test_shelve_offload_when_the_server_does_not_offload(tmp_path: Path) -> None:
    """``--shelved-offload-time -1``: the server stays SHELVED (on its host) until
    shelveOffload; a kept server is unshelved in place."""
    with active_server_of(tmp_path, ["--shelved-offload-time", "-1"], "sdk-kept") as (
            server, conn, sid):
        try:
            c = conn.compute
            c.shelve_server(sid)
            kept = settle(conn, sid, "SHELVED")
            assert (kept.vm_state, kept.compute_host) == ("shelved", "compute-1")
            c.unshelve_server(sid)
            settle(conn, sid, "ACTIVE")

            c.shelve_server(sid)
            settle(conn, sid, "SHELVED")
            c.shelve_offload_server(sid)
            offloaded = settle(conn, sid, "SHELVED_OFFLOADED")
            assert (offloaded.compute_host, offloaded.host_id) == (None, "")
            c.unshelve_server(sid)
            assert settle(conn, sid, "ACTIVE").compute_host == "compute-1"
            offload = [a for a in c.server_actions(sid) if a.action == "shelveOffload"]
            assert [(a.user_id, a.project_id) for a in offload] == [("admin", "admin")]
        finally:
            conn.close()
        assert server.server_errors() == []


def test_shelved_servers_are_offloaded_after_the_offload_time(tmp_path: Path) -> None:
    """``--shelved-offload-time 1``: SHELVED (still on its host) for a second, then the
    timer offloads it."""
    with active_server_of(tmp_path, ["--shelved-offload-time", "1"], "sdk-later") as (
            server, conn, sid):
        try:
            c = conn.compute
            c.shelve_server(sid)
            shelved_at = time.monotonic()
            assert settle(conn, sid, "SHELVED").compute_host == "compute-1"
            offloaded = settle(conn, sid, "SHELVED_OFFLOADED")
            assert time.monotonic() - shelved_at >= 1.0
            assert offloaded.compute_host is None
            assert [a.action for a in c.server_actions(sid)] == [
                "shelveOffload", "shelve", "create"]
        finally:
            conn.close()
        assert server.server_errors() == []


def test_usage(conn: Connection) -> None:
    """openstacksdk's usages() and get_usage() (os-simple-tenant-usage)."""
    from datetime import datetime

    c = conn.compute
    sid = c.create_server(name="sdk-usage", flavor_id="1", image_id=IMAGE,
                          networks="none").id
    settle(conn, sid, "ACTIVE")
    start = datetime(2000, 1, 1)
    [project] = [u for u in c.usages(start=start, detailed=1)
                 if sid in {s["instance_id"] for s in u.server_usages}]
    usage = c.get_usage(project.project_id, start=start)
    assert sid in {s["instance_id"] for s in usage.server_usages}
    assert usage.total_hours >= 0
    doomed = c.get_server(sid)
    c.delete_server(doomed)
    c.wait_for_delete(doomed, interval=0.05, wait=WAIT)


def test_hypervisors(conn: Connection) -> None:
    """openstacksdk's hypervisors (it negotiates the highest microversion: 2.88 shapes)."""
    c = conn.compute
    [node] = list(c.hypervisors(details=True))
    assert (node.name, node.state, node.status) == ("compute-1", "up", "enabled")
    shown = c.get_hypervisor(node.id)
    assert shown.hypervisor_type == "simulator" and " up " in shown.uptime
    assert [h.id for h in c.hypervisors(hypervisor_hostname_pattern="compute")] == [node.id]


def test_quota_sets(conn: Connection) -> None:
    """openstacksdk's quota sets: read, set (the limit is then enforced), revert."""
    c = conn.compute
    project = "sdk-quota"
    assert c.get_quota_set(project).instances == -1
    c.update_quota_set(project, instances=7, cores=9)
    quota = c.get_quota_set(project)
    assert (quota.instances, quota.cores) == (7, 9)
    assert c.get_quota_set(project, usage=True).usage["instances"] == 0
    c.revert_quota_set(project)
    assert c.get_quota_set(project).instances == -1


def test_server_groups(conn: Connection) -> None:
    """openstacksdk's server groups and the group hint."""
    c = conn.compute
    group = c.create_server_group(name="sdk-group", policy="soft-anti-affinity")
    sid = c.create_server(name="sdk-grouped", flavor_id="1", image_id=IMAGE,
                          networks="none", scheduler_hints={"group": group.id}).id
    settle(conn, sid, "ACTIVE")
    assert c.get_server_group(group.id).member_ids == [sid]
    assert group.id in {g.id for g in c.server_groups()}
    assert c.get_server(sid).server_groups == [group.id]
    c.delete_server_group(group.id)
    doomed = c.get_server(sid)
    c.delete_server(doomed)
    c.wait_for_delete(doomed, interval=0.05, wait=WAIT)


def test_flavor_management(conn: Connection) -> None:
    """openstacksdk's flavor create, extra specs and delete."""
    c = conn.compute
    flavor = c.create_flavor(name="sdk-flavor", ram=256, vcpus=1, disk=1, id="sdk-flavor")
    c.create_flavor_extra_specs(flavor, {"hw:watchdog_action": "reset"})
    assert c.fetch_flavor_extra_specs(flavor).extra_specs == {"hw:watchdog_action": "reset"}
    c.delete_flavor_extra_specs_property(flavor, "hw:watchdog_action")
    c.delete_flavor(flavor)
    assert c.find_flavor("sdk-flavor") is None


def test_conflicts_are_409_never_500(conn: Connection) -> None:
    c = conn.compute
    sid = c.create_server(name="sdk-conflict", flavor_id="1", image_id=IMAGE,
                          networks="none").id
    settle(conn, sid, "ACTIVE")
    with pytest.raises(sdk_exc.ConflictException, match="unpause"):
        c.unpause_server(sid)
    c.stop_server(sid)
    settle(conn, sid, "SHUTOFF")
    with pytest.raises(sdk_exc.ConflictException):
        c.stop_server(sid)
    with pytest.raises(sdk_exc.ConflictException, match="vm_state stopped"):
        c.confirm_server_resize(sid)  # not resized: the state check refuses it
    doomed = c.get_server(sid)
    c.delete_server(doomed)
    c.wait_for_delete(doomed, interval=0.05, wait=WAIT)


def test_microversion_pinned_to_2_1(vmledger_server: RunningServer) -> None:
    pinned = connect(vmledger_server, compute_api_version="2.1")
    try:
        sid = pinned.compute.create_server(name="sdk-21", flavor_id="1", image_id=IMAGE).id
        server = pinned.compute.get_server(sid)
        assert server.flavor.id == "1"  # the 2.1 flavor reference, not the 2.47 body
        pinned.compute.delete_server(sid)
    finally:
        pinned.close()


def test_resize_is_confirmed_automatically(tmp_path: Path) -> None:
    with running_server(tmp_path, confirm_window=1.0) as server:
        conn = connect(server)
        try:
            c = conn.compute
            sid = c.create_server(name="sdk-auto", flavor_id="1", image_id=IMAGE,
                                  networks="none").id
            settle(conn, sid, "ACTIVE")
            c.resize_server(sid, "2")
            settle(conn, sid, "VERIFY_RESIZE")
            resized = settle(conn, sid, "ACTIVE")  # nobody confirms: the timer does
            assert resized.flavor.original_name == "m1.small"
            [auto, *_] = list(c.server_actions(sid))
            assert (auto.action, auto.user_id, auto.project_id) == ("confirmResize", None,
                                                                     None)
            [migration] = list(c.migrations(instance_uuid=sid))
            assert migration.status == "confirmed"
        finally:
            conn.close()


# --- fixed tokens ------------------------------------------------------------------------------
def test_admin_token(vmledger_token_server: RunningServer) -> None:
    good = connect(vmledger_token_server, auth_type="admin_token",
                   auth={"endpoint": vmledger_token_server.compute, "token": MEMBER_TOKEN})
    try:
        sid = good.compute.create_server(name="sdk-token", flavor_id="1", image_id=IMAGE,
                                         networks="none").id
        server = good.compute.get_server(sid)
        assert (server.user_id, server.project_id) == ("acceptance-member", "demo")
        assert [s.id for s in good.compute.servers()] == [sid]
        with pytest.raises(sdk_exc.ForbiddenException):
            list(good.compute.servers(all_projects=True))
    finally:
        good.close()

    admin = connect(vmledger_token_server, auth_type="admin_token",
                    auth={"endpoint": vmledger_token_server.compute, "token": ADMIN_TOKEN})
    try:
        assert sid in {s.id for s in admin.compute.servers(all_projects=True)}
        assert sid not in {s.id for s in admin.compute.servers()}  # its own project's
        # another project's server, found by id: administrators reach every project's
        assert admin.compute.get_server(sid).project_id == "demo"
    finally:
        admin.close()

    bad = connect(vmledger_token_server, auth_type="admin_token",
                  auth={"endpoint": vmledger_token_server.compute, "token": "wrong"})
    try:
        with pytest.raises(sdk_exc.HttpException) as exc:
            list(bad.compute.servers())
        assert exc.value.status_code == 401
    finally:
        bad.close()


def test_keystone_password(vmledger_keystone_server: RunningServer) -> None:
    conn = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_type="password",
        auth={"auth_url": vmledger_keystone_server.identity, "username": "admin",
              "password": KEYSTONE_PASSWORD, "project_name": "admin",
              "user_domain_name": "Default", "project_domain_name": "Default"},
        region_name="RegionOne")
    try:
        assert conn.compute.get_endpoint().rstrip("/") == vmledger_keystone_server.compute
        sid = conn.compute.create_server(name="sdk-ks", flavor_id="1", image_id=IMAGE,
                                         networks="none").id
        server = settle(conn, sid, "ACTIVE")
        assert (server.user_id, server.project_id) == ("admin", "admin")
        assert conn.image.get_image(IMAGE).name == "cirros-0.6.2-x86_64"  # the Glance shim
        conn.compute.delete_server(sid)
    finally:
        conn.close()
