"""The ``openstack`` CLI (python-openstackclient 10.5.0) against a real ``vmledger serve``.

Each command runs in a clean environment: no inherited ``OS_*`` variables, ``HOME`` in a
temporary directory, and ``OS_CLIENT_CONFIG_FILE`` pointing at a clouds.yaml written
here. No ``--wait`` (it sleeps 5 s between polls): the tests poll ``server show``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import (
    IMAGE,
    KEYSTONE_PASSWORD,
    RunningServer,
    client_skip_reason,
    clients_marks,
    running_server,
    vmledger_keystone_server,
    vmledger_server,
)

_reason = client_skip_reason("openstackclient", "osc_lib", "openstack")
OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which(
    "openstack")
if _reason is None and OPENSTACK is None:
    _reason = "the openstack command (python-openstackclient) is not on PATH"
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = clients_marks()
__all__ = ["vmledger_keystone_server", "vmledger_server"]  # fixtures used below

IMAGE_NAME = "cirros-0.6.2-x86_64"
COMMAND_TIMEOUT = 60
WAIT = 30.0

Osc = Callable[..., Any]


def clouds_yaml(noauth: RunningServer | None, keystone: RunningServer | None) -> str:
    """clouds.yaml (JSON is YAML) with a noauth and a keystone password cloud."""
    clouds: dict[str, Any] = {}
    if noauth is not None:
        clouds["vmledger-noauth"] = {
            "auth_type": "none", "auth": {"endpoint": noauth.compute},
            "identity_api_version": 3}
    if keystone is not None:
        clouds["vmledger-keystone"] = {
            "auth_type": "password",
            "auth": {"auth_url": keystone.identity, "username": "admin",
                     "password": KEYSTONE_PASSWORD, "project_name": "admin",
                     "user_domain_name": "Default", "project_domain_name": "Default"},
            "identity_api_version": 3, "region_name": "RegionOne"}
    return json.dumps({"clouds": clouds}, indent=2)


def make_osc(tmp: Path, cloud: str, config: str) -> Osc:
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    config_file = tmp / "clouds.yaml"
    config_file.write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               OS_CLIENT_CONFIG_FILE=str(config_file), OS_CLOUD=cloud,
               PYTHONWARNINGS="ignore")

    def osc(*args: str, check: bool = True, output: bool = False) -> Any:
        argv = [str(OPENSTACK), *args]
        if output:
            argv += ["-f", "json"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed ({done.returncode}):\n"
                                 f"{done.stderr}\n{done.stdout}")
        if not check:
            return done
        return json.loads(done.stdout) if output else done.stdout

    return osc


def wait_for(osc: Osc, name: str, status: str) -> dict[str, Any]:
    """Poll ``server show`` until ``status`` with no task in progress."""
    deadline = time.monotonic() + WAIT
    while True:
        shown: dict[str, Any] = osc("server", "show", name, output=True)
        if shown["status"] == status and not shown.get("OS-EXT-STS:task_state"):
            return shown
        assert time.monotonic() < deadline, f"{name} stuck in {shown['status']}"
        time.sleep(0.1)


def test_lifecycle_without_keystone(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    created = osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                  "--nic", "none", "cli-vm", output=True)
    sid = created["id"]
    shown = wait_for(osc, "cli-vm", "ACTIVE")
    assert shown["id"] == sid
    assert "m1.tiny" in json.dumps(shown["flavor"])

    listed = osc("server", "list", output=True)
    assert [(s["ID"], s["Status"]) for s in listed if s["Name"] == "cli-vm"] == [
        (sid, "ACTIVE")]

    osc("server", "reboot", "cli-vm")
    wait_for(osc, "cli-vm", "ACTIVE")
    osc("server", "resize", "--flavor", "m1.small", "cli-vm")
    wait_for(osc, "cli-vm", "VERIFY_RESIZE")
    osc("server", "resize", "confirm", "cli-vm")
    shown = wait_for(osc, "cli-vm", "ACTIVE")
    assert "m1.small" in json.dumps(shown["flavor"])
    [migration] = osc("server", "migration", "list", "--server", "cli-vm", output=True)
    assert (migration["Server UUID"], migration["Status"], migration["Type"]) == (
        sid, "confirmed", "resize")

    events = osc("server", "event", "list", "cli-vm", output=True)
    assert [e["Action"] for e in events] == ["confirmResize", "resize", "reboot", "create"]
    create = next(e for e in events if e["Action"] == "create")
    detail = osc("server", "event", "show", "cli-vm", create["Request ID"], output=True)
    assert detail["action"] == "create" and detail["request_id"] == create["Request ID"]
    assert "compute__do_build_and_run_instance" in json.dumps(detail["events"])

    osc("server", "delete", "cli-vm")
    deadline = time.monotonic() + WAIT
    while osc("server", "show", sid, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the server was not deleted"
        time.sleep(0.1)
    assert sid not in {s["ID"] for s in osc("server", "list", output=True)}


def test_shelve_and_unshelve(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "shelf-vm", output=True)
    zone = wait_for(osc, "shelf-vm", "ACTIVE")["OS-EXT-AZ:availability_zone"]

    osc("server", "shelve", "shelf-vm")
    shown = wait_for(osc, "shelf-vm", "SHELVED_OFFLOADED")  # offloaded at once, as Nova
    assert shown["OS-EXT-STS:vm_state"] == "shelved_offloaded"
    assert shown["OS-EXT-SRV-ATTR:host"] is None and shown["hostId"] == ""
    listed = osc("server", "list", output=True)
    assert [s["Status"] for s in listed if s["Name"] == "shelf-vm"] == ["SHELVED_OFFLOADED"]
    osc("server", "unshelve", "shelf-vm")
    shown = wait_for(osc, "shelf-vm", "ACTIVE")
    assert shown["OS-EXT-SRV-ATTR:host"] == "compute-1"

    # 2.77: back into a named availability zone
    osc("server", "shelve", "shelf-vm")
    wait_for(osc, "shelf-vm", "SHELVED_OFFLOADED")
    refused = osc("--os-compute-api-version", "2.77", "server", "unshelve",
                  "--availability-zone", "nowhere", "shelf-vm", check=False)
    assert refused.returncode != 0
    assert "availability zone is not available" in refused.stderr
    assert osc("server", "show", "shelf-vm", output=True)["status"] == "SHELVED_OFFLOADED"
    osc("--os-compute-api-version", "2.77", "server", "unshelve", "--availability-zone",
        zone, "shelf-vm")
    assert wait_for(osc, "shelf-vm", "ACTIVE")["OS-EXT-AZ:availability_zone"] == zone

    events = osc("server", "event", "list", "shelf-vm", output=True)
    assert [e["Action"] for e in events] == [
        "unshelve", "shelve", "unshelve", "shelve", "create"]
    osc("server", "delete", "shelf-vm")


def test_keystone_password_login(vmledger_keystone_server: RunningServer, tmp_path: Path
                                 ) -> None:
    osc = make_osc(tmp_path, "vmledger-keystone", clouds_yaml(None, vmledger_keystone_server))
    # the image by name goes through the catalog's image endpoint (the Glance shim)
    created = osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                  "--nic", "none", "ks-vm", output=True)
    shown = wait_for(osc, "ks-vm", "ACTIVE")
    assert shown["id"] == created["id"]
    assert shown["project_id"] == "admin" and shown["user_id"] == "admin"
    assert IMAGE in json.dumps(shown["image"])
    listed = osc("server", "list", output=True)
    assert [s["Image"] for s in listed if s["Name"] == "ks-vm"] == [IMAGE_NAME]
    # the token's project's usage (what "usage show" asks for without --project)
    usage = osc("usage", "show", "--start", "2000-01-01", output=True)
    assert created["id"] in json.dumps(usage["Servers"]) or usage["Servers"] >= 1, usage
    osc("server", "delete", "ks-vm")

    wrong = make_osc(tmp_path / "wrong", "vmledger-keystone", clouds_yaml(
        None, vmledger_keystone_server).replace(KEYSTONE_PASSWORD, "not-the-password"))
    done = wrong("server", "list", check=False)
    assert done.returncode != 0
    assert "401" in done.stderr or "authenticat" in done.stderr.lower()


def test_several_servers_in_one_create(vmledger_server: RunningServer, tmp_path: Path
                                       ) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "--min", "2", "--max", "3", "batch-vm", output=True)
    for name in ("batch-vm-1", "batch-vm-2", "batch-vm-3"):
        wait_for(osc, name, "ACTIVE")
    listed = {s["Name"] for s in osc("server", "list", output=True)}
    assert {"batch-vm-1", "batch-vm-2", "batch-vm-3"} <= listed
    request_ids = {osc("server", "event", "list", name, output=True)[0]["Request ID"]
                   for name in ("batch-vm-1", "batch-vm-2", "batch-vm-3")}
    assert len(request_ids) == 1  # one request created all three
    for name in ("batch-vm-1", "batch-vm-2", "batch-vm-3"):
        osc("server", "delete", name)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None,
                    reason="ssh-keygen is not installed (Debian: openssh-client)")
def test_key_pairs(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    made = osc("keypair", "create", "--public-key", f"{key}.pub", "cli-key", output=True)
    listed = osc("keypair", "list", output=True)
    assert [(k["Name"], k["Fingerprint"]) for k in listed if k["Name"] == "cli-key"] == [
        ("cli-key", made["fingerprint"])]
    shown = osc("keypair", "show", "cli-key", output=True)
    assert shown["type"] == "ssh" and shown["fingerprint"] == made["fingerprint"]
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "--key-name", "cli-key", "keyed-vm", output=True)
    assert wait_for(osc, "keyed-vm", "ACTIVE")["key_name"] == "cli-key"
    refused = osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                  "--nic", "none", "--key-name", "no-such-key", "bad-vm", check=False)
    assert refused.returncode != 0 and "Invalid key_name provided" in refused.stderr
    shown = osc("limits", "show", "--absolute", output=True)
    absolute = {row["Name"]: row["Value"] for row in shown}
    # the SDK's names for Nova's maxTotalKeypairs and totalInstancesUsed
    assert absolute["keypairs"] == 100 and absolute["instances_used"] >= 1, shown
    osc("server", "delete", "keyed-vm")
    osc("keypair", "delete", "cli-key")
    assert "cli-key" not in {k["Name"] for k in osc("keypair", "list", output=True)}


def test_server_properties(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "--property", "team=web", "prop-vm", output=True)
    wait_for(osc, "prop-vm", "ACTIVE")
    osc("server", "set", "--property", "tier=gold", "--property", "team=db", "prop-vm")
    assert osc("server", "show", "prop-vm", output=True)["properties"] == {
        "team": "db", "tier": "gold"}
    osc("server", "unset", "--property", "team", "prop-vm")
    assert osc("server", "show", "prop-vm", output=True)["properties"] == {"tier": "gold"}
    osc("server", "delete", "prop-vm")


def test_rescue_unrescue_and_console_log(vmledger_server: RunningServer, tmp_path: Path
                                         ) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
        "rescue-vm", output=True)
    wait_for(osc, "rescue-vm", "ACTIVE")
    log = str(osc("console", "log", "show", "rescue-vm"))
    assert "Linux version" in log and "rescue-vm login:" in log
    tail = str(osc("console", "log", "show", "--lines", "2", "rescue-vm"))
    assert tail.strip() and len(tail.strip().splitlines()) <= 2
    osc("server", "rescue", "--password", "rescue-pass", "rescue-vm")
    assert wait_for(osc, "rescue-vm", "RESCUE")["OS-EXT-STS:vm_state"] == "rescued"
    osc("server", "unrescue", "rescue-vm")
    wait_for(osc, "rescue-vm", "ACTIVE")
    log = str(osc("console", "log", "show", "rescue-vm"))
    assert log.count("Linux version") == 3  # built, rescued, back on its own disk
    events = osc("server", "event", "list", "rescue-vm", output=True)
    assert [e["Action"] for e in events] == ["unrescue", "rescue", "create"]
    osc("server", "delete", "rescue-vm")


def test_soft_delete_restore_and_force(tmp_path: Path) -> None:
    """``serve --reclaim-instance-interval``: ``server delete`` soft-deletes, ``server
    restore`` brings it back, ``server delete --force`` deletes it for good."""
    with running_server(tmp_path, ["--reclaim-instance-interval", "3600"]) as server:
        osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(server, None))
        osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME, "--nic", "none",
            "soft-vm", output=True)
        wait_for(osc, "soft-vm", "ACTIVE")
        osc("server", "delete", "soft-vm")
        assert wait_for(osc, "soft-vm", "SOFT_DELETED")["OS-EXT-STS:vm_state"] == "soft-delete"
        osc("server", "restore", "soft-vm")
        wait_for(osc, "soft-vm", "ACTIVE")
        osc("server", "delete", "soft-vm")
        wait_for(osc, "soft-vm", "SOFT_DELETED")
        osc("server", "delete", "--force", "soft-vm")
        deadline = time.monotonic() + WAIT
        while osc("server", "show", "soft-vm", check=False).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert server.server_errors() == []


def test_availability_zone_list(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    zones = osc("availability", "zone", "list", "--compute", "--long", output=True)
    assert {(z["Zone Name"], z["Zone Status"], z["Host Name"]) for z in zones} == {
        ("nova", "available", "compute-1")}


def test_compute_service_list(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    services = osc("compute", "service", "list", output=True)
    assert [(s["Binary"], s["Host"], s["Zone"], s["Status"], s["State"]) for s in services] == [
        ("nova-compute", "compute-1", "nova", "enabled", "up")]
    osc("compute", "service", "set", "--disable", "--disable-reason", "maintenance",
        "compute-1", "nova-compute")
    [disabled] = osc("compute", "service", "list", "--long", output=True)
    assert (disabled["Status"], disabled["Disabled Reason"]) == ("disabled", "maintenance")
    osc("compute", "service", "set", "--enable", "compute-1", "nova-compute")
    assert osc("compute", "service", "list", output=True)[0]["Status"] == "enabled"

def test_usage_list(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    created = osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                  "--nic", "none", "cli-usage", output=True)
    wait_for(osc, "cli-usage", "ACTIVE")
    listed = osc("usage", "list", "--start", "2000-01-01", output=True)
    # (the JSON formatter gives the "Servers" column as the list; the table, its length)
    assert listed and all(len(row["Servers"]) >= 1 for row in listed), listed
    osc("server", "delete", created["id"])


def test_project_commands_without_keystone(vmledger_server: RunningServer, tmp_path: Path
                                          ) -> None:
    """``quota set|show PROJECT`` and ``usage show --project PROJECT`` look the project up
    in the Identity API first: with noauth and the README's endpoint overrides, at the
    Keystone shim, which answers for any project named."""
    config = json.loads(clouds_yaml(vmledger_server, None))
    config["clouds"]["vmledger-noauth"].update(
        identity_endpoint_override=vmledger_server.identity,
        image_endpoint_override=vmledger_server.image,
        network_endpoint_override=vmledger_server.network)
    osc = make_osc(tmp_path, "vmledger-noauth", json.dumps(config))
    # a project with nothing yet: an administrator may set its quotas first
    osc("quota", "set", "--instances", "7", "team-quota")
    shown = osc("quota", "show", "team-quota", output=True)
    found = {row["Resource"]: row["Limit"] for row in shown} if isinstance(
        shown, list) else shown
    assert found["instances"] == 7, shown
    assert found["ports"] == 500 and found["security_groups"] == 10, shown  # Neutron's
    created = osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                  "--nic", "none", "cli-project-usage", output=True)
    wait_for(osc, "cli-project-usage", "ACTIVE")
    usage = osc("usage", "show", "--project", "admin", "--start", "2000-01-01", output=True)
    assert usage["Project"] == "admin" and len(usage["Servers"]) >= 1, usage
    osc("server", "delete", created["id"])


def test_hypervisor_list_and_show(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    [listed] = osc("hypervisor", "list", output=True)
    assert (listed["Hypervisor Hostname"], listed["State"]) == ("compute-1", "up")
    shown = osc("hypervisor", "show", "compute-1", output=True)
    assert shown["hypervisor_type"] == "simulator" and shown["state"] == "up"


def test_quota_set_and_show(vmledger_keystone_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-keystone", clouds_yaml(None, vmledger_keystone_server))
    osc("quota", "set", "--instances", "12", "--cores", "24", "admin")
    shown = osc("quota", "show", "--compute", "admin", output=True)
    found = {row["Resource"]: row["Limit"] for row in shown} if isinstance(
        shown, list) else shown
    assert found["instances"] == 12 and found["cores"] == 24, shown
    osc("quota", "delete", "--compute", "admin")
    # every project's defaults: the default quota class
    osc("quota", "set", "--default", "--instances", "40")
    for args in (("--default",), ("admin",)):  # a project without limits of its own too
        shown = osc("quota", "show", "--compute", *args, output=True)
        found = {row["Resource"]: row["Limit"] for row in shown} if isinstance(
            shown, list) else shown
        assert found["instances"] == 40, (args, shown)
    osc("quota", "set", "--default", "--instances", "-1")


def test_server_group_create_and_hint(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    group = osc("server", "group", "create", "--policy", "anti-affinity", "cli-group",
                output=True)
    created = osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                  "--nic", "none", "--hint", f"group={group['id']}", "cli-grouped",
                  output=True)
    wait_for(osc, "cli-grouped", "ACTIVE")
    shown = osc("server", "group", "show", "cli-group", output=True)
    assert created["id"] in json.dumps(shown["members"])
    assert "cli-group" in {g["Name"] for g in osc("server", "group", "list", output=True)}
    osc("server", "group", "delete", "cli-group")
    osc("server", "delete", "cli-grouped")


def test_flavor_create_and_delete(vmledger_server: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(vmledger_server, None))
    made = osc("flavor", "create", "--ram", "256", "--disk", "1", "--vcpus", "1",
               "--property", "hw:cpu_policy=shared", "cli-flavor", output=True)
    assert made["name"] == "cli-flavor" and "hw:cpu_policy" in json.dumps(made["properties"])
    assert "cli-flavor" in {f["Name"] for f in osc("flavor", "list", output=True)}
    osc("flavor", "delete", "cli-flavor")
    assert "cli-flavor" not in {f["Name"] for f in osc("flavor", "list", output=True)}


@pytest.mark.postgres
def test_two_hosts_in_two_processes(postgres_url: str, tmp_path: Path) -> None:
    """The multi-host deployment of the README: an API process (and its host's agent)
    and another host's ``vmledger agent`` on one PostgreSQL; the CLI sees both hosts,
    and a multi-create is spread over them and built by each host's own agent. When
    the agent dies its host goes down, and its server is evacuated to the other."""
    log = tmp_path / "agent.log"
    down_time = ["--service-down-time", "2"]
    with log.open("ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "vmledger.cli", "agent", "--host", "compute-2",
             "--db", postgres_url, *down_time],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    try:
        with running_server(tmp_path / "api", ["--db", postgres_url, "--host-name",
                                               "compute-1", *down_time]) as server:
            osc = make_osc(tmp_path, "vmledger-noauth", clouds_yaml(server, None))
            deadline = time.monotonic() + WAIT
            while True:  # the agent reports its host when it starts
                services = osc("compute", "service", "list", output=True)
                if [(s["Host"], s["State"]) for s in services] == [
                        ("compute-1", "up"), ("compute-2", "up")]:
                    break
                assert agent.poll() is None, log.read_text()
                assert time.monotonic() < deadline, services
                time.sleep(0.2)
            osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE_NAME,
                "--nic", "none", "--min", "2", "--max", "2", "spread")
            shown = [wait_for(osc, name, "ACTIVE") for name in ("spread-1", "spread-2")]
            assert sorted(s["OS-EXT-SRV-ATTR:host"] for s in shown) == [
                "compute-1", "compute-2"]
            nodes = osc("hypervisor", "list", output=True)
            assert sorted(n["Hypervisor Hostname"] for n in nodes) == [
                "compute-1", "compute-2"]
            # compute-2's agent dies: its host goes down, and its server is evacuated
            os.killpg(agent.pid, 15)
            agent.wait(timeout=10)
            assert "Traceback" not in log.read_text()
            stranded = next(s["name"] for s in shown
                            if s["OS-EXT-SRV-ATTR:host"] == "compute-2")
            deadline = time.monotonic() + WAIT
            while True:
                services = osc("compute", "service", "list", output=True)
                if ("compute-2", "down") in [(s["Host"], s["State"]) for s in services]:
                    break
                assert time.monotonic() < deadline, services
                time.sleep(0.2)
            # 2.29 for --host; from 2.95 an evacuated server is left SHUTOFF. (The
            # CLI's --wait compares the lower-cased status with "ACTIVE": it never ends.)
            osc("--os-compute-api-version", "2.29", "server", "evacuate", "--host",
                "compute-1", stranded)
            moved = wait_for(osc, stranded, "ACTIVE")
            assert moved["OS-EXT-SRV-ATTR:host"] == "compute-1"
            events = osc("server", "event", "list", stranded, output=True)
            assert "evacuate" in [e["Action"] for e in events]
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, 15)
            agent.wait(timeout=10)
