"""tempest.lib (47.0.0) as a conformance oracle against a real ``vmledger serve``.

tempest's ``ServersClient``, ``FlavorsClient``, ``ImagesClient`` and ``VersionsClient``
validate every status code, body and (where tempest has one) header schema of Nova at
the microversion asked for, and assert that the legacy microversion header is echoed.
They are driven through a fixed-token ``AuthProvider`` (no Keystone) against
``vmledger serve --auth token``:

- the whole lifecycle as an administrator at every microversion where tempest's or
  vmledger's response shapes change (the first version of each tempest schema range and
  vmledger's own boundaries), up to the advertised maximum;
- a shorter lifecycle as a non-administrator at the same microversions;
- the read calls (show, list, detail, flavors, instance actions) at *every* microversion
  from 2.1 to the maximum, for both roles;
- shelve and unshelve as the owner at the same microversions (2.77 and 2.91 change the
  unshelve body), an administrator's host view, and shelveOffload against a server
  started with ``--shelved-offload-time -1``.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
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
    vmledger_token_server,
)

_reason = client_skip_reason("tempest", "jsonschema")
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

from tempest.lib import auth  # noqa: E402
from tempest.lib import exceptions as lib_exc  # noqa: E402
from tempest.lib.services.compute import (  # noqa: E402
    availability_zone_client,
    base_compute_client,
    flavors_client,
    hypervisor_client,
    images_client,
    keypairs_client,
    limits_client,
    migrations_client,
    quota_classes_client,
    quotas_client,
    server_groups_client,
    servers_client,
    services_client,
    tenant_usages_client,
    versions_client,
)

pytestmark = clients_marks()
__all__ = ["vmledger_keystone_server", "vmledger_token_server"]  # fixtures used below

WAIT = 30.0
#: microversions where vmledger's own shapes or rules change (besides tempest's ranges)
VMLEDGER_BOUNDARIES = ("2.10", "2.21", "2.35", "2.36", "2.37", "2.38", "2.55", "2.58", "2.61",
                       "2.62", "2.66", "2.74", "2.75", "2.77", "2.84", "2.90", "2.91", "2.92",
                       "2.96")


class FixedTokenAuthProvider(auth.AuthProvider):  # type: ignore[misc]
    """No Keystone: ``base_url`` and ``X-Auth-Token: <token>`` on every request."""

    def __init__(self, base_url: str, token: str) -> None:
        self._base_url = base_url.rstrip("/")
        self._token = token
        super().__init__(auth.KeystoneV3Credentials(
            username="u", password="p", user_domain_name="Default", project_name="p",
            project_domain_name="Default"))

    def _get_auth(self) -> tuple[str, dict[str, Any]]:
        return self._token, {}

    def _fill_credentials(self, auth_data_body: Any) -> None:
        pass

    def get_token(self) -> str:
        return self._token

    def is_expired(self, auth_data: Any) -> bool:
        return False

    def base_url(self, filters: Any, auth_data: Any = None) -> str:
        return self._base_url

    def _decorate_request(self, filters: Any, method: str, url: str,
                          headers: dict[str, str] | None = None, body: Any = None,
                          auth_data: Any = None) -> tuple[str, dict[str, str], Any]:
        merged = dict(headers or {}, **{"X-Auth-Token": self._token})
        target = f"{self._base_url}/{url.lstrip('/')}" if url else self._base_url
        return target, merged, body


@dataclass
class Clients:
    servers: servers_client.ServersClient
    flavors: flavors_client.FlavorsClient
    images: images_client.ImagesClient
    versions: versions_client.VersionsClient
    keypairs: keypairs_client.KeyPairsClient
    limits: limits_client.LimitsClient
    zones: availability_zone_client.AvailabilityZoneClient
    services: services_client.ServicesClient
    migrations: migrations_client.MigrationsClient
    usages: tenant_usages_client.TenantUsagesClient
    hypervisors: hypervisor_client.HypervisorClient
    quotas: quotas_client.QuotasClient
    quota_classes: quota_classes_client.QuotaClassesClient
    groups: server_groups_client.ServerGroupsClient
    is_admin: bool


def make_clients(server: RunningServer, token: str, is_admin: bool) -> Clients:
    provider = FixedTokenAuthProvider(server.compute, token)
    kwargs: dict[str, Any] = {"build_interval": 0.05, "build_timeout": WAIT}
    return Clients(
        servers=servers_client.ServersClient(provider, "compute", "RegionOne", **kwargs),
        flavors=flavors_client.FlavorsClient(provider, "compute", "RegionOne", **kwargs),
        images=images_client.ImagesClient(provider, "compute", "RegionOne", **kwargs),
        versions=versions_client.VersionsClient(provider, "compute", "RegionOne", **kwargs),
        keypairs=keypairs_client.KeyPairsClient(provider, "compute", "RegionOne", **kwargs),
        limits=limits_client.LimitsClient(provider, "compute", "RegionOne", **kwargs),
        zones=availability_zone_client.AvailabilityZoneClient(provider, "compute",
                                                               "RegionOne", **kwargs),
        services=services_client.ServicesClient(provider, "compute", "RegionOne", **kwargs),
        migrations=migrations_client.MigrationsClient(provider, "compute", "RegionOne",
                                                      **kwargs),
        usages=tenant_usages_client.TenantUsagesClient(provider, "compute", "RegionOne",
                                                       **kwargs),
        hypervisors=hypervisor_client.HypervisorClient(provider, "compute", "RegionOne",
                                                       **kwargs),
        quotas=quotas_client.QuotasClient(provider, "compute", "RegionOne", **kwargs),
        quota_classes=quota_classes_client.QuotaClassesClient(provider, "compute",
                                                              "RegionOne", **kwargs),
        groups=server_groups_client.ServerGroupsClient(provider, "compute", "RegionOne",
                                                       **kwargs),
        is_admin=is_admin)


def advertised_maximum(server: RunningServer) -> str:
    with urllib.request.urlopen(server.compute) as response:
        return str(json.load(response)["version"]["version"])


def _parse(version: str) -> tuple[int, int]:
    major, minor = version.split(".")
    return int(major), int(minor)


def boundary_versions(maximum: str) -> list[str]:
    """The first microversion of every tempest schema range (the schemas are the same up
    to the range's end) and vmledger's own boundaries, up to ``maximum``."""
    top = _parse(maximum)
    found = {"2.1", maximum}
    for client in (servers_client.ServersClient, flavors_client.FlavorsClient,
                   images_client.ImagesClient, keypairs_client.KeyPairsClient,
                   limits_client.LimitsClient):
        for entry in getattr(client, "schema_versions_info", []):
            if entry["min"] is not None:
                found.add(entry["min"])
    found.update(VMLEDGER_BOUNDARIES)
    return sorted((v for v in found if _parse(v) <= top), key=_parse)


MAXIMUM = "2.96"  # checked against the server's advertised maximum below
SWEEP = boundary_versions(MAXIMUM)
EVERY = [f"2.{n}" for n in range(1, _parse(MAXIMUM)[1] + 1)]


@pytest.fixture(scope="module")
def admin(vmledger_token_server: RunningServer) -> Clients:
    assert advertised_maximum(vmledger_token_server) == MAXIMUM, (
        "the advertised maximum changed: update MAXIMUM (and the sweep) here")
    return make_clients(vmledger_token_server, ADMIN_TOKEN, is_admin=True)


@pytest.fixture(scope="module")
def member(vmledger_token_server: RunningServer) -> Clients:
    return make_clients(vmledger_token_server, MEMBER_TOKEN, is_admin=False)


@pytest.fixture
def microversion(request: pytest.FixtureRequest) -> Iterator[str]:
    """Set tempest's module-wide compute microversion for one test."""
    version: str = request.param
    previous = base_compute_client.COMPUTE_MICROVERSION
    base_compute_client.COMPUTE_MICROVERSION = None if version == "2.1" else version
    try:
        yield version
    finally:
        base_compute_client.COMPUTE_MICROVERSION = previous


def at_least(version: str, other: str) -> bool:
    return _parse(version) >= _parse(other)


def wait_for(clients: Clients, server_id: str, status: str) -> dict[str, Any]:
    """tempest's waiter: ``status`` and no task state (every poll schema-validated)."""
    deadline = time.monotonic() + WAIT
    while True:
        server: dict[str, Any] = clients.servers.show_server(server_id)["server"]
        if server["status"] == status and not server.get("OS-EXT-STS:task_state"):
            return server
        if server["status"] == "ERROR" and status != "ERROR":
            raise AssertionError(f"{server_id} went to ERROR: {server.get('fault')}")
        assert time.monotonic() < deadline, f"{server_id} stuck in {server['status']}"
        time.sleep(0.005)


def wait_gone(clients: Clients, server_id: str) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        try:
            clients.servers.show_server(server_id)
        except lib_exc.NotFound:
            return
        assert time.monotonic() < deadline, f"{server_id} was not deleted"
        time.sleep(0.005)


def create(clients: Clients, version: str, name: str) -> tuple[str, str]:
    kwargs: dict[str, Any] = {"name": name, "flavorRef": "1", "imageRef": IMAGE}
    if at_least(version, "2.37"):
        kwargs["networks"] = "none"
    body = clients.servers.create_server(**kwargs)
    return str(body["server"]["id"]), str(body.response["x-compute-request-id"])


def read_everything(clients: Clients, version: str, server_id: str, request_id: str) -> None:
    """Every read call the clients know, schema-validated."""
    s = clients.servers
    assert s.show_server(server_id)["server"]["id"] == server_id
    assert server_id in {x["id"] for x in s.list_servers()["servers"]}
    assert server_id in {x["id"] for x in s.list_servers(detail=True)["servers"]}
    assert s.list_servers(detail=True, name="^tempest-")["servers"]
    actions = s.list_instance_actions(server_id)["instanceActions"]
    assert actions[-1]["action"] == "create"
    shown = s.show_instance_action(server_id, request_id)["instanceAction"]
    assert (shown["action"], shown["instance_uuid"]) == ("create", server_id)
    if clients.is_admin or at_least(version, "2.51"):
        assert shown["events"]
    flavors = clients.flavors.list_flavors()["flavors"]
    assert {"1", "2"} <= {f["id"] for f in flavors}
    clients.flavors.list_flavors(detail=True)
    assert clients.flavors.show_flavor("1")["flavor"]["name"] == "m1.tiny"
    if not at_least(version, "2.36"):
        assert IMAGE in {i["id"] for i in clients.images.list_images()["images"]}
        clients.images.list_images(detail=True)
        assert clients.images.show_image(IMAGE)["image"]["id"] == IMAGE
    else:
        with pytest.raises(lib_exc.NotFound):
            clients.images.show_image(IMAGE)


def test_versions(admin: Clients, vmledger_token_server: RunningServer) -> None:
    versions = admin.versions.list_versions()["versions"]
    assert [v["id"] for v in versions] == ["v2.1"]
    version = admin.versions.get_version_by_url(vmledger_token_server.compute + "/")
    assert version["version"]["version"] == MAXIMUM


def test_stock_keystone_auth_provider(vmledger_keystone_server: RunningServer) -> None:
    """tempest's own KeystoneV3AuthProvider logs in at /identity/v3 and uses the catalog."""
    credentials = auth.KeystoneV3Credentials(
        username="admin", password=KEYSTONE_PASSWORD, project_name="admin",
        user_domain_name="Default", project_domain_name="Default")
    provider = auth.KeystoneV3AuthProvider(credentials, vmledger_keystone_server.identity)
    client = servers_client.ServersClient(provider, "compute", "RegionOne",
                                          endpoint_type="publicURL")
    sid = client.create_server(name="tempest-keystone", flavorRef="1",
                               imageRef=IMAGE)["server"]["id"]
    assert sid in {s["id"] for s in client.list_servers()["servers"]}
    client.delete_server(sid)


@pytest.mark.parametrize("microversion", SWEEP, indirect=True)
def test_admin_lifecycle(admin: Clients, microversion: str) -> None:
    v = microversion
    s = admin.servers
    sid, create_rid = create(admin, v, f"tempest-{v}")
    wait_for(admin, sid, "ACTIVE")
    read_everything(admin, v, sid, create_rid)

    updated = s.update_server(sid, name=f"tempest-{v}-renamed")["server"]
    assert updated["name"] == f"tempest-{v}-renamed"
    s.reboot_server(sid, type="HARD")
    wait_for(admin, sid, "ACTIVE")
    s.resize_server(sid, "2")
    wait_for(admin, sid, "VERIFY_RESIZE")
    s.confirm_resize_server(sid)  # 204
    wait_for(admin, sid, "ACTIVE")
    s.resize_server(sid, "3")
    wait_for(admin, sid, "VERIFY_RESIZE")
    s.revert_resize_server(sid)
    wait_for(admin, sid, "ACTIVE")
    s.pause_server(sid)
    wait_for(admin, sid, "PAUSED")
    s.unpause_server(sid)
    wait_for(admin, sid, "ACTIVE")
    s.suspend_server(sid)
    wait_for(admin, sid, "SUSPENDED")
    s.resume_server(sid)
    wait_for(admin, sid, "ACTIVE")
    s.stop_server(sid)
    wait_for(admin, sid, "SHUTOFF")
    s.start_server(sid)
    wait_for(admin, sid, "ACTIVE")
    rebuilt = s.rebuild_server(sid, IMAGE2, name=f"tempest-{v}-rebuilt")["server"]
    assert rebuilt["image"]["id"] == IMAGE2
    wait_for(admin, sid, "ACTIVE")
    if at_least(v, "2.73"):
        s.lock_server(sid, locked_reason="maintenance")
    else:
        s.lock_server(sid)
    shown = s.show_server(sid)["server"]
    if at_least(v, "2.9"):
        assert shown["locked"] is True
    s.unlock_server(sid)
    s.reset_state(sid, state="error")
    wait_for(admin, sid, "ERROR")
    s.reset_state(sid, state="active")
    wait_for(admin, sid, "ACTIVE")

    with pytest.raises(lib_exc.Conflict):
        s.unpause_server(sid)
    with pytest.raises(lib_exc.NotFound):
        s.show_instance_action(sid, "req-00000000-0000-0000-0000-000000000000")

    names = [a["action"] for a in s.list_instance_actions(sid)["instanceActions"]]
    assert names[-1] == "create" and names[0] == "resetState"
    s.delete_server(sid)
    wait_gone(admin, sid)
    if at_least(v, "2.21"):
        names = [a["action"] for a in s.list_instance_actions(sid)["instanceActions"]]
        assert (names[0], names[-1]) == ("delete", "create")
        assert s.show_instance_action(sid, create_rid)["instanceAction"]["action"] == "create"
    else:
        with pytest.raises(lib_exc.NotFound):
            s.list_instance_actions(sid)


@pytest.mark.parametrize("microversion", SWEEP, indirect=True)
def test_member_lifecycle(member: Clients, admin: Clients, microversion: str) -> None:
    v = microversion
    s = member.servers
    sid, create_rid = create(member, v, f"tempest-member-{v}")
    shown = wait_for(member, sid, "ACTIVE")
    assert "OS-EXT-SRV-ATTR:host" not in shown
    read_everything(member, v, sid, create_rid)
    reboot = s.reboot_server(sid, type="SOFT")
    wait_for(member, sid, "ACTIVE")
    action = s.show_instance_action(sid, reboot.response["x-compute-request-id"])
    assert action["instanceAction"]["action"] == "reboot"
    for event in action["instanceAction"].get("events", []):
        assert "traceback" not in event and "host" not in event
    with pytest.raises(lib_exc.Forbidden):
        s.reset_state(sid, state="error")
    with pytest.raises(lib_exc.Forbidden):
        s.list_servers(all_tenants="1")
    # an administrator of another project reaches the server by its id
    assert admin.servers.show_server(sid)["server"]["tenant_id"] == "demo"
    s.delete_server(sid)
    wait_gone(member, sid)


@pytest.fixture(scope="module")
def readers(admin: Clients, member: Clients) -> Iterator[dict[str, tuple[str, str]]]:
    """One ACTIVE server per role, kept for the read sweep."""
    previous = base_compute_client.COMPUTE_MICROVERSION
    base_compute_client.COMPUTE_MICROVERSION = "2.96"
    made: dict[str, tuple[str, str]] = {}
    try:
        for role, clients in (("admin", admin), ("member", member)):
            made[role] = create(clients, MAXIMUM, f"tempest-reader-{role}")
            wait_for(clients, made[role][0], "ACTIVE")
    finally:
        base_compute_client.COMPUTE_MICROVERSION = previous
    yield made
    base_compute_client.COMPUTE_MICROVERSION = None
    for role, clients in (("admin", admin), ("member", member)):
        clients.servers.delete_server(made[role][0])


@pytest.mark.parametrize("microversion", EVERY, indirect=True)
def test_reads_at_every_microversion(admin: Clients, member: Clients,
                                     readers: dict[str, tuple[str, str]],
                                     microversion: str) -> None:
    for role, clients in (("admin", admin), ("member", member)):
        server_id, request_id = readers[role]
        read_everything(clients, microversion, server_id, request_id)


@pytest.mark.parametrize("microversion", SWEEP, indirect=True)
def test_key_pairs(admin: Clients, member: Clients, microversion: str) -> None:
    """Import (and, before 2.92, generate), list, show and delete key pairs, every
    response validated against tempest's schema of that microversion."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    suffix = microversion.replace(".", "-")
    public = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    imported = member.keypairs.create_keypair(name=f"imported-{suffix}",
                                              public_key=public)["keypair"]
    assert imported["public_key"] == public and "private_key" not in imported
    names = [imported["name"]]
    if not at_least(microversion, "2.92"):
        generated = member.keypairs.create_keypair(name=f"generated-{suffix}")["keypair"]
        assert generated["private_key"].startswith("-----BEGIN RSA PRIVATE KEY-----")
        names.append(generated["name"])
    listed = [k["keypair"]["name"] for k in member.keypairs.list_keypairs()["keypairs"]]
    assert set(names) <= set(listed)
    shown = member.keypairs.show_keypair(imported["name"])["keypair"]
    assert shown["fingerprint"] == imported["fingerprint"]
    if at_least(microversion, "2.10"):
        for_member = admin.keypairs.list_keypairs(user_id="acceptance-member")["keypairs"]
        assert set(names) <= {k["keypair"]["name"] for k in for_member}
        with pytest.raises(lib_exc.Forbidden):
            member.keypairs.list_keypairs(user_id="acceptance-admin")
    for name in names:
        member.keypairs.delete_keypair(name)
    with pytest.raises(lib_exc.NotFound):
        member.keypairs.show_keypair(imported["name"])


@pytest.mark.parametrize("microversion", ["2.1", MAXIMUM], indirect=True)
def test_server_metadata(member: Clients, microversion: str) -> None:
    """Every metadata route, each response validated against tempest's schema."""
    server_id, _ = create(member, microversion, f"meta-{microversion}")
    wait_for(member, server_id, "ACTIVE")
    servers = member.servers
    assert servers.set_server_metadata(server_id, {"a": "1"})["metadata"] == {"a": "1"}
    assert servers.update_server_metadata(server_id, {"b": "2"})["metadata"] == {
        "a": "1", "b": "2"}
    assert servers.set_server_metadata_item(server_id, "c", {"c": "3"})["meta"] == {"c": "3"}
    assert servers.show_server_metadata_item(server_id, "c")["meta"] == {"c": "3"}
    servers.delete_server_metadata_item(server_id, "a")
    assert servers.list_server_metadata(server_id)["metadata"] == {"b": "2", "c": "3"}
    with pytest.raises(lib_exc.NotFound):
        servers.show_server_metadata_item(server_id, "a")
    servers.delete_server(server_id)
    wait_gone(member, server_id)


@pytest.mark.parametrize("microversion", ["2.1", "2.11", "2.53", MAXIMUM], indirect=True)
def test_compute_services(admin: Clients, member: Clients, microversion: str) -> None:
    """``/os-services`` against tempest's schema of each range."""
    [service] = admin.services.list_services()["services"]
    assert (service["binary"], service["host"], service["state"]) == (
        "nova-compute", "compute-1", "up")
    assert admin.services.list_services(host="compute-1")["services"] == [service]
    with pytest.raises(lib_exc.Forbidden):
        member.services.list_services()
    # taking the host out of service and back (the form of each range)
    if at_least(microversion, "2.53"):
        changed = admin.services.update_service(service["id"], status="disabled",
                                                disabled_reason="tempest")["service"]
        assert changed["status"] == "disabled"
        admin.services.update_service(service["id"], status="enabled")
    else:
        admin.services.disable_log_reason(host="compute-1", binary="nova-compute",
                                          disabled_reason="tempest")
        admin.services.enable_service(host="compute-1", binary="nova-compute")
        if at_least(microversion, "2.11"):
            admin.services.update_forced_down(host="compute-1", binary="nova-compute",
                                              forced_down=False)
    assert admin.services.list_services()["services"][0]["status"] == "enabled"


@pytest.mark.parametrize("microversion", ["2.1", "2.48", MAXIMUM], indirect=True)
def test_server_diagnostics(admin: Clients, member: Clients, microversion: str) -> None:
    """``GET /servers/{id}/diagnostics`` against tempest's schema (standard from 2.48)."""
    sid, _ = create(admin, microversion, f"tempest-diag-{microversion}")
    wait_for(admin, sid, "ACTIVE")
    found = admin.servers.show_server_diagnostics(sid)
    if at_least(microversion, "2.48"):
        assert (found["state"], found["num_cpus"]) == ("running", 1)
    else:
        assert "memory" in found
    admin.servers.delete_server(sid)
    wait_gone(admin, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.23", "2.59", "2.66", "2.80", MAXIMUM],
                         indirect=True)
def test_migrations(admin: Clients, member: Clients, microversion: str) -> None:
    """A resize's migration record in ``/os-migrations`` against tempest's schema of each
    range, from ``finished`` to ``confirmed``; ``/servers/{id}/migrations`` (2.23+)."""
    sid, _ = create(admin, microversion, f"tempest-migration-{microversion}")
    wait_for(admin, sid, "ACTIVE")
    admin.servers.resize_server(sid, "2")
    wait_for(admin, sid, "VERIFY_RESIZE")
    [record] = admin.migrations.list_migrations(instance_uuid=sid)["migrations"]
    assert (record["status"], record["old_instance_type_id"],
            record["new_instance_type_id"]) == ("finished", 1, 2)
    if at_least(microversion, "2.23"):
        assert record["migration_type"] == "resize"
        assert admin.servers.list_in_progress_live_migration(sid)["migrations"] == []
    if at_least(microversion, "2.59"):
        # (a full page would carry ``migrations_links``, as Nova's does, which tempest's
        # schema does not allow: not asked for here)
        newest = admin.migrations.list_migrations(limit=5, instance_uuid=sid)["migrations"]
        assert [m["uuid"] for m in newest] == [record["uuid"]]
    admin.servers.confirm_resize_server(sid)
    wait_for(admin, sid, "ACTIVE")
    [record] = admin.migrations.list_migrations(instance_uuid=sid)["migrations"]
    assert record["status"] == "confirmed"
    with pytest.raises(lib_exc.Forbidden):
        member.migrations.list_migrations()
    admin.servers.delete_server(sid)
    wait_gone(admin, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.40", MAXIMUM], indirect=True)
def test_tenant_usage(admin: Clients, member: Clients, microversion: str) -> None:
    """``/os-simple-tenant-usage`` against tempest's schema: the list (administrators)
    and a project's usage with its servers."""
    sid, _ = create(member, microversion, f"tempest-usage-{microversion}")
    wait_for(member, sid, "ACTIVE")
    start = "2000-01-01T00:00:00"
    usages = admin.usages.list_tenant_usages(start=start, detailed=1)["tenant_usages"]
    [project] = [u for u in usages if any(s["instance_id"] == sid
                                          for s in u["server_usages"])]
    own = member.usages.show_tenant_usage(project["tenant_id"], start=start)["tenant_usage"]
    assert sid in {s["instance_id"] for s in own["server_usages"]}
    assert own["total_hours"] >= 0
    with pytest.raises(lib_exc.Forbidden):
        member.usages.list_tenant_usages()
    member.servers.delete_server(sid)
    wait_gone(member, sid)


# tempest's hypervisor schemas end at 2.53 and still require the fields Nova removed at
# 2.88: its client fails on 2.88 responses (Nova's too), so the sweep stops at 2.87
@pytest.mark.parametrize("microversion", ["2.1", "2.28", "2.33", "2.53", "2.75", "2.87"],
                         indirect=True)
def test_hypervisors(admin: Clients, member: Clients, microversion: str) -> None:
    """``/os-hypervisors`` against tempest's schema of each range."""
    sid, _ = create(admin, microversion, f"tempest-hypervisor-{microversion}")
    wait_for(admin, sid, "ACTIVE")
    [listed] = admin.hypervisors.list_hypervisors()["hypervisors"]
    [detail] = admin.hypervisors.list_hypervisors(detail=True)["hypervisors"]
    assert detail["id"] == listed["id"] and detail["running_vms"] >= 1
    shown = admin.hypervisors.show_hypervisor(listed["id"])["hypervisor"]
    assert shown["hypervisor_hostname"] == listed["hypervisor_hostname"]
    stats = admin.hypervisors.show_hypervisor_statistics()["hypervisor_statistics"]
    assert stats["count"] == 1
    uptime = admin.hypervisors.show_hypervisor_uptime(listed["id"])["hypervisor"]
    assert " up " in uptime["uptime"]
    if not at_least(microversion, "2.53"):
        name = listed["hypervisor_hostname"]
        assert admin.hypervisors.search_hypervisor(name)["hypervisors"][0]["id"] == listed["id"]
        [with_servers] = admin.hypervisors.list_servers_on_hypervisor(name)["hypervisors"]
        assert sid in {s["uuid"] for s in with_servers["servers"]}
    else:
        [with_servers] = admin.hypervisors.list_hypervisors(with_servers=True)["hypervisors"]
        assert sid in {s["uuid"] for s in with_servers["servers"]}
    with pytest.raises(lib_exc.Forbidden):
        member.hypervisors.list_hypervisors()
    admin.servers.delete_server(sid)
    wait_gone(admin, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.36", "2.57", MAXIMUM], indirect=True)
def test_quota_sets(admin: Clients, member: Clients, microversion: str) -> None:
    """``/os-quota-sets`` against tempest's schema of each range: a member reads its
    project's quotas, an administrator sets and deletes them."""
    sid, _ = create(member, microversion, f"tempest-quota-{microversion}")
    wait_for(member, sid, "ACTIVE")
    project_id = member.servers.show_server(sid)["server"]["tenant_id"]
    shown = member.quotas.show_quota_set(project_id)["quota_set"]
    assert shown["id"] == project_id
    detail = member.quotas.show_quota_set(project_id, detail=True)["quota_set"]
    assert detail["instances"]["in_use"] >= 1
    defaults = member.quotas.show_default_quota_set(project_id)["quota_set"]
    assert defaults["instances"] == -1
    updated = admin.quotas.update_quota_set(project_id, instances=50)["quota_set"]
    assert updated["instances"] == 50
    assert member.quotas.show_quota_set(project_id)["quota_set"]["instances"] == 50
    admin.quotas.delete_quota_set(project_id)
    assert member.quotas.show_quota_set(project_id)["quota_set"]["instances"] == -1
    with pytest.raises(lib_exc.Forbidden):
        member.quotas.update_quota_set(project_id, instances=1)
    member.servers.delete_server(sid)
    wait_gone(member, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.50", "2.57", MAXIMUM], indirect=True)
def test_quota_classes(admin: Clients, member: Clients, microversion: str) -> None:
    """``/os-quota-class-sets`` against tempest's schema of each range (a class of its
    own: the ``default`` class would change every project's defaults)."""
    name = f"tempest-{microversion}"
    shown = admin.quota_classes.show_quota_class_set(name)["quota_class_set"]
    assert shown["id"] == name and shown["instances"] == -1
    updated = admin.quota_classes.update_quota_class_set(name, instances=7)
    assert updated["quota_class_set"]["instances"] == 7
    shown = admin.quota_classes.show_quota_class_set(name)["quota_class_set"]
    assert shown["instances"] == 7
    with pytest.raises(lib_exc.Forbidden):
        member.quota_classes.show_quota_class_set(name)


@pytest.mark.parametrize("microversion", ["2.1", "2.13", "2.15", "2.64", "2.71", MAXIMUM],
                         indirect=True)
def test_server_groups(member: Clients, microversion: str) -> None:
    """``/os-server-groups`` against tempest's schema of each range; a member created
    with the ``group`` hint, shown in the server's ``server_groups`` (2.71)."""
    if at_least(microversion, "2.64"):
        body: dict[str, Any] = {"policy": "affinity"}
    else:
        body = {"policies": ["affinity"]}
    group = member.groups.create_server_group(name=f"tempest-{microversion}",
                                              **body)["server_group"]
    kwargs: dict[str, Any] = {"name": f"tempest-grouped-{microversion}", "flavorRef": "1",
                              "imageRef": IMAGE, "scheduler_hints": {"group": group["id"]}}
    if at_least(microversion, "2.37"):
        kwargs["networks"] = "none"
    sid = member.servers.create_server(**kwargs)["server"]["id"]
    shown = wait_for(member, sid, "ACTIVE")
    if at_least(microversion, "2.71"):
        assert shown["server_groups"] == [group["id"]]
    found = member.groups.show_server_group(group["id"])["server_group"]
    assert found["members"] == [sid]
    listed = member.groups.list_server_groups()["server_groups"]
    assert group["id"] in {g["id"] for g in listed}
    member.groups.delete_server_group(group["id"])
    with pytest.raises(lib_exc.NotFound):
        member.groups.show_server_group(group["id"])
    member.servers.delete_server(sid)
    wait_gone(member, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.55", "2.61", MAXIMUM], indirect=True)
def test_flavor_management(admin: Clients, member: Clients, microversion: str) -> None:
    """Flavor create, extra specs and delete against tempest's schemas."""
    flavor_id = f"tempest-{microversion}"
    made = admin.flavors.create_flavor(name=flavor_id, ram=256, vcpus=1, disk=1,
                                       id=flavor_id)["flavor"]
    assert made["id"] == flavor_id
    admin.flavors.set_flavor_extra_spec(flavor_id, **{"hw:cpu_policy": "shared"})
    assert member.flavors.list_flavor_extra_specs(flavor_id)["extra_specs"] == {
        "hw:cpu_policy": "shared"}
    admin.flavors.update_flavor_extra_spec(flavor_id, "hw:cpu_policy",
                                           **{"hw:cpu_policy": "dedicated"})
    assert member.flavors.show_flavor_extra_spec(flavor_id, "hw:cpu_policy") == {
        "hw:cpu_policy": "dedicated"}
    admin.flavors.unset_flavor_extra_spec(flavor_id, "hw:cpu_policy")
    with pytest.raises(lib_exc.Forbidden):
        member.flavors.create_flavor(name="nope", ram=256, vcpus=1, disk=1)
    admin.flavors.delete_flavor(flavor_id)
    with pytest.raises(lib_exc.NotFound):
        member.flavors.show_flavor(flavor_id)
    # a private flavor and its access list
    private = admin.flavors.create_flavor(name=f"{flavor_id}-private", ram=256, vcpus=1,
                                          disk=1, is_public="False")["flavor"]
    project = "p1"
    added = admin.flavors.add_flavor_access(private["id"], project)["flavor_access"]
    assert added == [{"flavor_id": private["id"], "tenant_id": project}]
    assert admin.flavors.list_flavor_access(private["id"])["flavor_access"] == added
    admin.flavors.remove_flavor_access(private["id"], project)
    admin.flavors.delete_flavor(private["id"])


def test_availability_zones(admin: Clients, member: Clients) -> None:
    """``/os-availability-zone`` and its detail against tempest's schemas."""
    for clients in (admin, member):
        zones = clients.zones.list_availability_zones()["availabilityZoneInfo"]
        assert [z["zoneName"] for z in zones] == ["nova"]
    detail = admin.zones.list_availability_zones(detail=True)["availabilityZoneInfo"]
    assert list(detail[0]["hosts"]) == ["compute-1"]
    with pytest.raises(lib_exc.Forbidden):
        member.zones.list_availability_zones(detail=True)


@pytest.mark.parametrize("microversion", SWEEP, indirect=True)
def test_limits(admin: Clients, member: Clients, microversion: str) -> None:
    """``GET /limits`` against tempest's schema of every range."""
    for clients in (admin, member):
        absolute = clients.limits.show_limits()["limits"]["absolute"]
        assert absolute["maxTotalInstances"] == -1


@pytest.mark.parametrize("microversion", ["2.1", "2.26", MAXIMUM], indirect=True)
def test_server_tags_and_ips(member: Clients, microversion: str) -> None:
    """Tags (2.26+) and addresses, each response validated against tempest's schema."""
    server_id, _ = create(member, microversion, f"tags-{microversion}")
    wait_for(member, server_id, "ACTIVE")
    servers = member.servers
    addresses = servers.list_addresses(server_id)["addresses"]
    for network, entries in addresses.items():
        assert servers.list_addresses_by_network(server_id, network)[network] == entries
    if at_least(microversion, "2.26"):
        assert servers.update_all_tags(server_id, ["a", "b"])["tags"] == ["a", "b"]
        servers.update_tag(server_id, "c")
        servers.check_tag_existence(server_id, "c")
        servers.delete_tag(server_id, "a")
        assert servers.list_tags(server_id)["tags"] == ["b", "c"]
        servers.delete_all_tags(server_id)
        assert servers.list_tags(server_id)["tags"] == []
    servers.delete_server(server_id)
    wait_gone(member, server_id)


@pytest.mark.parametrize("microversion", SWEEP, indirect=True)
def test_shelve_and_unshelve(member: Clients, microversion: str) -> None:
    """The owner shelves (offloaded at once, as Nova's default ``shelved_offload_time =
    0``, so tempest's ``shelve_server`` helper would wait for SHELVED_OFFLOADED) and
    unshelves: every response, and every read of the shelved server, validated against
    tempest's schema of that microversion."""
    v = microversion
    s = member.servers
    name = f"tempest-shelve-{v}"
    sid, _ = create(member, v, name)
    zone = wait_for(member, sid, "ACTIVE")["OS-EXT-AZ:availability_zone"]
    shelve = s.shelve_server(sid)
    assert shelve.response.status == 202
    shown = wait_for(member, sid, "SHELVED_OFFLOADED")
    assert (shown["OS-EXT-STS:vm_state"], shown["hostId"]) == ("shelved_offloaded", "")
    assert {sid: "SHELVED_OFFLOADED"} == {
        x["id"]: x["status"] for x in s.list_servers(detail=True, name=f"^{name}$")["servers"]}
    assert sid in {x["id"] for x in s.list_servers()["servers"]}
    # (the instance actions are not listed here: see the test after this one)
    if not at_least(v, "2.36"):  # the compute image proxy shows the shelved image
        images = {i["name"]: i for i in member.images.list_images(detail=True)["images"]}
        shelved = images[f"{name}-shelved"]
        assert (shelved["status"], shelved["server"]["id"]) == ("ACTIVE", sid)
    with pytest.raises(lib_exc.Conflict):
        s.start_server(sid)
    with pytest.raises(lib_exc.Conflict):
        s.shelve_server(sid)
    if at_least(v, "2.91"):
        with pytest.raises(lib_exc.Forbidden):  # a host: administrators only
            s.unshelve_server(sid, host="compute-1")
    if at_least(v, "2.77"):
        s.unshelve_server(sid, availability_zone=zone)
    else:
        s.unshelve_server(sid)  # {"unshelve": null}
    wait_for(member, sid, "ACTIVE")
    if not at_least(v, "2.36"):  # deleted once the server runs again
        assert f"{name}-shelved" not in {
            i["name"] for i in member.images.list_images()["images"]}
    shown_action = s.show_instance_action(sid, shelve.response["x-compute-request-id"])
    assert shown_action["instanceAction"]["action"] == "shelve"
    s.delete_server(sid)
    wait_gone(member, sid)


@pytest.mark.parametrize("microversion", ["2.1", MAXIMUM], indirect=True)
def test_instance_actions_after_an_automatic_offload(member: Clients, microversion: str
                                                     ) -> None:
    """The offload that follows a shelve at once is part of the shelve's action (as
    Nova's): every action is the member's, and the schemas accept them."""
    s = member.servers
    sid, _ = create(member, microversion, f"tempest-offloaded-{microversion}")
    wait_for(member, sid, "ACTIVE")
    s.shelve_server(sid)
    wait_for(member, sid, "SHELVED_OFFLOADED")
    try:
        actions = s.list_instance_actions(sid)["instanceActions"]
        assert sorted(a["action"] for a in actions) == ["create", "shelve"]
        for action in actions:
            s.show_instance_action(sid, action["request_id"])
    finally:
        s.delete_server(sid)
        wait_gone(member, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.77", "2.91", MAXIMUM], indirect=True)
def test_shelve_offload_and_unshelve_to_a_host(admin: Clients, microversion: str) -> None:
    """An administrator's view: no host while offloaded, and (2.91) the host to unshelve
    to; shelveOffload of an offloaded server is a conflict."""
    v = microversion
    s = admin.servers
    sid, _ = create(admin, v, f"tempest-shelve-admin-{v}")
    assert wait_for(admin, sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-1"
    s.shelve_server(sid)
    shown = wait_for(admin, sid, "SHELVED_OFFLOADED")
    assert shown["OS-EXT-SRV-ATTR:host"] is None
    with pytest.raises(lib_exc.Conflict):
        s.shelve_offload_server(sid)
    if at_least(v, "2.91"):
        with pytest.raises(lib_exc.BadRequest):
            s.unshelve_server(sid, host="compute-9")
        s.unshelve_server(sid, host="compute-1")
    else:
        s.unshelve_server(sid)
    assert wait_for(admin, sid, "ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-1"
    s.delete_server(sid)
    wait_gone(admin, sid)


@pytest.fixture(scope="module")
def keeping_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """``vmledger serve --shelved-offload-time -1``: shelved servers keep their guest
    until shelveOffload (noauth: every caller is an administrator)."""
    with running_server(tmp_path_factory.mktemp("serve-keep-shelved"),
                        ["--shelved-offload-time", "-1"]) as server:
        yield server
    assert server.server_errors() == [], server.log_tail()


@pytest.mark.parametrize("microversion", ["2.1", "2.77", MAXIMUM], indirect=True)
def test_shelve_then_shelve_offload(keeping_server: RunningServer, microversion: str
                                    ) -> None:
    """tempest's ``shelve_server(..., force_shelve_offload=True)`` path: wait for
    SHELVED, then shelveOffload, then SHELVED_OFFLOADED; a kept server is unshelved on
    its host (and, before it is offloaded, with no availability zone from 2.77)."""
    v = microversion
    clients = make_clients(keeping_server, "any-token", is_admin=True)
    s = clients.servers
    sid, _ = create(clients, v, f"tempest-kept-{v}")
    zone = wait_for(clients, sid, "ACTIVE")["OS-EXT-AZ:availability_zone"]
    s.shelve_server(sid)
    shown = wait_for(clients, sid, "SHELVED")
    assert (shown["OS-EXT-STS:vm_state"], shown["OS-EXT-SRV-ATTR:host"]) == (
        "shelved", "compute-1")
    if at_least(v, "2.77"):
        with pytest.raises(lib_exc.Conflict):  # only an offloaded server can move
            s.unshelve_server(sid, availability_zone=zone)
    s.unshelve_server(sid)
    wait_for(clients, sid, "ACTIVE")

    s.shelve_server(sid)
    wait_for(clients, sid, "SHELVED")
    offload = s.shelve_offload_server(sid)
    assert offload.response.status == 202
    shown = wait_for(clients, sid, "SHELVED_OFFLOADED")
    assert (shown["OS-EXT-SRV-ATTR:host"], shown["hostId"]) == (None, "")
    s.unshelve_server(sid)
    wait_for(clients, sid, "ACTIVE")
    names = [a["action"] for a in s.list_instance_actions(sid)["instanceActions"]]
    assert names == ["unshelve", "shelveOffload", "shelve", "unshelve", "shelve", "create"]
    s.delete_server(sid)
    wait_gone(clients, sid)


@pytest.mark.parametrize("microversion", ["2.1", "2.45", MAXIMUM], indirect=True)
def test_rescue_unrescue_and_backup(member: Clients, microversion: str) -> None:
    """Rescue (200 with the password, tempest's schema), RESCUE status in show and
    list, unrescue (202), the console output, a crash dump (2.17+) and a backup with
    rotation."""
    v = microversion
    s = member.servers
    name = f"tempest-rescue-{v}"
    sid, _ = create(member, v, name)
    wait_for(member, sid, "ACTIVE")
    rescued = s.rescue_server(sid, adminPass="rescue-pass")
    assert rescued["adminPass"] == "rescue-pass"
    shown = wait_for(member, sid, "RESCUE")
    assert shown["OS-EXT-STS:vm_state"] == "rescued"
    assert {sid: "RESCUE"} == {
        x["id"]: x["status"] for x in s.list_servers(detail=True, name=f"^{name}$")["servers"]}
    with pytest.raises(lib_exc.Conflict):
        s.reboot_server(sid, type="SOFT")
    assert s.unrescue_server(sid).response.status == 202
    wait_for(member, sid, "ACTIVE")
    output = s.get_console_output(sid, length=3)["output"]
    assert len(output.split("\n")) == 3
    if at_least(v, "2.17"):
        # tempest.lib has no method for it: its generic action, validated as any action
        dump = s.action(sid, "trigger_crash_dump", body={"trigger_crash_dump": None})
        assert dump.response.status == 202
        wait_for(member, sid, "ACTIVE")
        assert "Kernel panic" in s.get_console_output(sid)["output"]
    for n in (1, 2):
        backup = s.create_backup(sid, name=f"{name}-b{n}", backup_type="daily", rotation=1)
        assert backup.response.status == 202
        if at_least(v, "2.45"):
            assert set(backup) == {"image_id"}
        wait_for(member, sid, "ACTIVE")
    actions = [a["action"] for a in s.list_instance_actions(sid)["instanceActions"]]
    assert actions.count("createBackup") == 2 and {"rescue", "unrescue"} <= set(actions)
    s.delete_server(sid)
    wait_gone(member, sid)
