"""The README's ``openstack`` tour runs as written against a real ``vmledger serve``: its
noauth environment (image, network and identity endpoints included) and every command of its
block, with ``image list`` showing the images active, ``server image create --wait`` ending
with an active snapshot and ``quota show``/``usage show`` finding the project ``admin``.
Only the port differs (a free one instead of 8774)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import (
    RunningServer,
    client_skip_reason,
    clients_marks,
    vmledger_server,
)

README = Path(__file__).parent.parent / "README.md"
_reason = client_skip_reason("openstackclient", "osc_lib", "openstack")
OPENSTACK = shutil.which("openstack", path=str(Path(sys.executable).parent)) or shutil.which(
    "openstack")
if _reason is None and OPENSTACK is None:
    _reason = "the openstack command (python-openstackclient) is not on PATH"
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = clients_marks()
__all__ = ["vmledger_server"]  # the fixture used below


def tour() -> str:
    """The README's shell block that sets the noauth environment."""
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if "export OS_AUTH_TYPE=none" in b]
    assert len(found) == 1, "the README has one noauth tour"
    return found[0]


def test_the_readme_noauth_tour_runs_as_written(vmledger_server: RunningServer,
                                                tmp_path: Path) -> None:
    script = tour()
    assert "OS_IMAGE_ENDPOINT_OVERRIDE=http://127.0.0.1:8774/image" in script
    assert "OS_NETWORK_ENDPOINT_OVERRIDE=http://127.0.0.1:8774/network" in script
    assert "OS_IDENTITY_ENDPOINT_OVERRIDE=http://127.0.0.1:8774/identity/v3" in script
    for command in ("openstack image list", "--wait app-1",
                    "openstack server image create --wait",
                    "openstack quota set --instances 20 admin", "openstack quota show admin",
                    "openstack usage show --project admin"):
        assert command in script
    port = vmledger_server.base.rsplit(":", 1)[1]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(home / ".ssh" / "id_ed25519")], check=True, timeout=30)
    # every command's output, then a line saying it ended well: a failing command stops it
    traced = "set -euo pipefail\n" + script.replace("127.0.0.1:8774", f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(HOME=str(home), PATH=f"{Path(str(OPENSTACK)).parent}:{env.get('PATH', '')}")
    done = subprocess.run(["bash", "-c", traced + "\necho TOUR-DONE\n"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.rstrip().endswith("TOUR-DONE")
    out = done.stdout
    listed = [line for line in out.splitlines() if "cirros-0.6.2-x86_64" in line]
    assert listed and all("| active" in line for line in listed[:1]), out
    assert "None" not in listed[0]
    # the snapshot's status as the CLI printed it when --wait returned
    snapshot = re.search(r"\|\s*name\s*\|\s*app-1-snap\s*\|", out)
    assert snapshot is not None, out
    status = re.search(r"\|\s*status\s*\|\s*(\w+)\s*\|", out[snapshot.start():])
    assert status is not None and status.group(1) == "active", out[snapshot.start():]
    assert "'NoneType' object has no attribute 'lower'" not in done.stderr
    # web-1's port, on the Networking shim (its fixed address in the simulated subnet)
    ports = [line for line in out.splitlines() if "ip_address='10.0." in line]
    assert len(ports) == 1 and "| ACTIVE" in ports[0], out
    # the project commands, looked up at the Keystone shim: admin's quota as set, its usage
    assert re.search(r"\|\s*instances\s*\|\s*20\s*\|", out), out
    assert "on project admin" in out, out
    servers = re.search(r"\|\s*Servers\s*\|\s*(\d+)\s*\|", out)
    assert servers is not None and int(servers.group(1)) >= 4, out  # web-1, batch-1 … 3
