"""Ansible's ``openstack.cloud`` collection drives a real ``vmledger serve``: the playbook
``tests/ansible/lifecycle.yml`` (the ``server`` module with ``network: private``,
``server_action`` over the lifecycle, ``server_info``, ``port_info``, ``networks_info``,
a resize and a rebuild, delete) runs against a Keystone-mode server (a password login,
every endpoint from the catalog) and a noauth one (``auth_type: none`` with the image and
network endpoint overrides of docs/api.md), both at once to keep the run short.

Needs the ``ansible`` extra (ansible 12.3.0: ansible-core 2.19 and openstack.cloud 2.5.0)
and the ``clients`` one (openstacksdk). openstack.cloud 2.5.0 reads
``openstack.version``, which openstacksdk 4.22 no longer imports itself:
``tests/ansible/sdk_compat`` imports it for the modules (see its docstring).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import (
    KEYSTONE_PASSWORD,
    RunningServer,
    client_skip_reason,
    clients_marks,
    vmledger_keystone_server,
    vmledger_server,
)

_reason = client_skip_reason("openstack", "ansible", "ansible_collections.openstack.cloud")
if _reason is not None:
    pytest.skip(_reason + " (and the [ansible] extra: ansible==12.3.0)",
                allow_module_level=True)

PLAYBOOK_COMMAND = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent))
if PLAYBOOK_COMMAND is None:
    pytest.skip("ansible-playbook (the [ansible] extra) is not beside the Python running the "
                "tests", allow_module_level=True)

pytestmark = [*clients_marks(), pytest.mark.timeout(600)]
__all__ = ["vmledger_keystone_server", "vmledger_server"]  # fixtures used below

HERE = Path(__file__).parent
PLAYBOOK = HERE / "ansible" / "lifecycle.yml"
SDK_COMPAT = HERE / "ansible" / "sdk_compat"
PLAYBOOK_TIMEOUT = 450
ACTIONS = ["stop", "start", "reboot_soft", "reboot_hard", "pause", "unpause", "suspend",
           "resume", "lock", "unlock", "shelve", "unshelve"]


def clouds_yaml(noauth: RunningServer, keystone: RunningServer) -> str:
    """A clouds.yaml with both set-ups, as docs/api.md describes them."""
    return f"""clouds:
  vmledger-noauth:
    auth_type: none
    auth:
      endpoint: {noauth.compute}
    image_endpoint_override: {noauth.image}
    network_endpoint_override: {noauth.network}
  vmledger-keystone:
    auth_type: password
    auth:
      auth_url: {keystone.identity}
      username: admin
      password: {KEYSTONE_PASSWORD}
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
"""


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path

    def finish(self) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=PLAYBOOK_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def playbooks(vmledger_server: RunningServer, vmledger_keystone_server: RunningServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """The playbook started against both servers at once."""
    assert PLAYBOOK_COMMAND is not None
    work = tmp_path_factory.mktemp("ansible")
    (work / "clouds.yaml").write_text(clouds_yaml(vmledger_server, vmledger_keystone_server))
    (work / "collections").mkdir()  # none of the user's own: the bundled ones only
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OS_", "ANSIBLE_", "PYTHON"))}
    env.update({
        "OS_CLIENT_CONFIG_FILE": str(work / "clouds.yaml"),
        "PYTHONPATH": str(SDK_COMPAT),
        "ANSIBLE_CONFIG": str(work / "ansible.cfg"),  # absent: the defaults
        "ANSIBLE_HOME": str(work / "home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_REMOTE_TMP": str(work / "remote-tmp"),
        "ANSIBLE_COLLECTIONS_PATH": str(work / "collections"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        "LC_ALL": "C.UTF-8",  # ansible refuses any locale but a UTF-8 one
    })
    servers = {"noauth": vmledger_server, "keystone": vmledger_keystone_server}
    runs: dict[str, Run] = {}
    for mode, server in servers.items():
        log = work / f"{mode}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [PLAYBOOK_COMMAND, str(PLAYBOOK), "-e", f"cloud=vmledger-{mode}",
                 "-e", f"compute_url={server.compute}", "-e", f"name_prefix={mode}",
                 "-e", f"ansible_python_interpreter={sys.executable}"],
                cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT)
        runs[mode] = Run(process, log)
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait()


@pytest.mark.parametrize("mode", ["keystone", "noauth"])
def test_playbook_drives_the_lifecycle(playbooks: dict[str, Run], mode: str) -> None:
    code, output = playbooks[mode].finish()
    assert code == 0, output[-8000:]
    [recap] = re.findall(r"localhost\s*:\s*(ok=.*)", output)
    assert re.search(r"\bfailed=0\b", recap) and re.search(r"\bunreachable=0\b", recap), recap
    for action in ACTIONS:  # each one acted (changed), none was skipped as already done
        assert f"changed: [localhost] => (item={action})" in output, action
    assert "All assertions passed" in output
