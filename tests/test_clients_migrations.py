"""Servers moving between hosts, driven by the ``openstack`` CLI and openstacksdk against
a deployment of separate processes sharing PostgreSQL: one API process without an agent
(``vmledger serve --no-agent``) and two host agents (``vmledger agent --host``), each
with its own simulator. The guest travels between the agents through the log.

compute-1's simulator copies a live migration for a minute (``?live_migration_seconds``)
so that one leaving it can be aborted or forced to complete; compute-2's copies at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.postgres import PostgresCluster
from tests.support.server import (
    IMAGE,
    KEYSTONE_PASSWORD,
    RunningServer,
    client_skip_reason,
    clients_marks,
    running_server,
)

_reason = client_skip_reason("openstackclient", "osc_lib", "openstack", "keystoneauth1")
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)

import openstack  # noqa: E402
from openstack.connection import Connection  # noqa: E402

from tests.test_clients_cli import OPENSTACK, clouds_yaml, make_osc  # noqa: E402

pytestmark = [
    *clients_marks(), pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
]

WAIT = 45.0
#: how long a live migration leaving compute-1 copies unless aborted or forced
SLOW = 60


@contextmanager
def _agent(workdir: Path, url: str, host: str, hypervisor: str) -> Iterator[Path]:
    """``vmledger agent --host HOST`` until the block ends; its log's path."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"agent-{host}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "vmledger.cli", "agent", "--host", host, "--db", url,
             "--hypervisor", hypervisor, "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir,
            env={k: v for k, v in os.environ.items() if not k.startswith("OS_")})
    try:
        yield log
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)


@pytest.fixture(scope="module")
def deployment(postgres_cluster: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RunningServer]:
    """The API process (keystone auth, no agent) and the two hosts' agents."""
    if OPENSTACK is None:
        pytest.skip("the openstack command (python-openstackclient) is not on PATH")
    workdir = tmp_path_factory.mktemp("moves")
    url = postgres_cluster.create_database(f"t_moves_{os.getpid()}")
    with _agent(workdir, url, "compute-1",
                f"simulator:memory?live_migration_seconds={SLOW}") as first, \
            _agent(workdir, url, "compute-2", "simulator:memory") as second, \
            running_server(workdir / "api", [
                "--db", url, "--no-agent", "--auth", "keystone",
                "--user", f"admin:{KEYSTONE_PASSWORD}:admin:admin,member"]) as server:
        yield server
        for log in (first, second, server.log):
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"
    assert server.server_errors() == []


def _wait(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# --- the openstack CLI -----------------------------------------------------------------
def test_the_cli_moves_a_server_between_two_agent_processes(
        deployment: RunningServer, tmp_path: Path) -> None:
    osc = make_osc(tmp_path, "vmledger-keystone", clouds_yaml(None, deployment))
    ready = {"compute-1": "up", "compute-2": "up"}
    _wait(lambda: {s["Host"]: s["State"]
                   for s in osc("compute", "service", "list", output=True)} == ready,
          "both agents to report")

    def shown(state: str) -> dict[str, Any]:
        def settled() -> dict[str, Any] | None:
            server: dict[str, Any] = osc("server", "show", "mover", output=True)
            done = server["status"] == state and not server.get("OS-EXT-STS:task_state")
            return server if done else None
        found: dict[str, Any] = _wait(settled, f"mover {state}")
        return found

    # the server starts on compute-1 (compute-2 taken out of scheduling meanwhile)
    osc("compute", "service", "set", "--disable", "compute-2", "nova-compute")
    osc("server", "create", "--flavor", "m1.tiny", "--image", IMAGE, "--nic", "none", "mover")
    assert shown("ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-1"
    osc("compute", "service", "set", "--enable", "compute-2", "nova-compute")

    # cold migration, the scheduler's choice, confirmed
    osc("server", "migrate", "mover")
    assert shown("VERIFY_RESIZE")["OS-EXT-SRV-ATTR:host"] == "compute-2"
    osc("server", "resize", "confirm", "mover")
    assert shown("ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-2"
    # to a host named (2.56), reverted
    osc("--os-compute-api-version", "2.56", "server", "migrate", "--host", "compute-1",
        "mover")
    assert shown("VERIFY_RESIZE")["OS-EXT-SRV-ATTR:host"] == "compute-1"
    osc("server", "resize", "revert", "mover")
    assert shown("ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-2"
    # live, to a host named (compute-2 sends at once)
    osc("--os-compute-api-version", "2.30", "server", "migrate", "--live-migration",
        "--host", "compute-1", "mover")
    assert shown("ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-1"

    v = ("--os-compute-api-version", "2.80")

    def live_running() -> tuple[str, str]:
        """Live-migrate the server (compute-1 copies slowly); the record's id and UUID
        once it runs."""
        osc(*v, "server", "migrate", "--live-migration", "mover")

        def running() -> tuple[str, str] | None:
            listed = osc(*v, "server", "migration", "list", "--server", "mover", "--type",
                         "live-migration", "--status", "running", output=True)
            return (str(listed[0]["Id"]), str(listed[0]["UUID"])) if listed else None
        found: tuple[str, str] = _wait(running, "a running live migration")
        return found

    # aborted
    mid, uuid = live_running()
    # by its UUID: this client swaps the server and the migration when given an id
    record = osc(*v, "server", "migration", "show", "mover", uuid, output=True)
    assert (record["ID"], record["Status"], record["Source Compute"],
            record["Dest Compute"]) == (int(mid), "running", "compute-1", "compute-2")
    assert record["Memory Total Bytes"] is None and record["UUID"] == uuid
    started = time.monotonic()
    osc(*v, "server", "migration", "abort", "mover", mid)
    assert shown("ACTIVE")["OS-EXT-SRV-ATTR:host"] == "compute-1"
    assert time.monotonic() - started < SLOW / 2
    # forced to complete
    mid, _ = live_running()
    started = time.monotonic()
    osc(*v, "server", "migration", "force", "complete", "mover", mid)
    _wait(lambda: osc("server", "show", "mover", output=True)["OS-EXT-SRV-ATTR:host"]
          == "compute-2", "the forced move")
    assert time.monotonic() - started < SLOW / 2
    shown("ACTIVE")
    # nothing to abort any more: Nova's refusal, as the CLI shows it
    refused = osc(*v, "server", "migration", "abort", "mover", mid, check=False)
    assert refused.returncode == 1 and "task_state None" in refused.stderr

    listed = osc(*v, "server", "migration", "list", "--server", "mover", output=True)
    assert sorted((m["Type"], m["Status"]) for m in listed) == [
        ("live-migration", "cancelled"), ("live-migration", "completed"),
        ("live-migration", "completed"), ("migration", "confirmed"),
        ("migration", "reverted")]
    events = osc("server", "event", "list", "mover", output=True)
    assert [e["Action"] for e in events] == [
        "live_migration_force_complete", "live-migration", "live_migration_cancel",
        "live-migration", "live-migration", "revertResize", "migrate", "confirmResize",
        "migrate", "create"]


# --- openstacksdk ----------------------------------------------------------------------
def test_openstacksdk_moves_a_server_between_two_agent_processes(
        deployment: RunningServer) -> None:
    conn: Connection = openstack.connect(
        load_yaml_config=False, load_envvars=False, auth_type="password",
        auth={"auth_url": deployment.identity, "username": "admin",
              "password": KEYSTONE_PASSWORD, "project_name": "admin",
              "user_domain_name": "Default", "project_domain_name": "Default"},
        identity_api_version="3", region_name="RegionOne")
    c = conn.compute
    try:
        _wait(lambda: {s.host for s in c.services() if s.state == "up"}
              == {"compute-1", "compute-2"}, "both agents to report")
        [other] = [s for s in c.services() if s.host == "compute-2"]
        c.disable_service(other)
        server = c.create_server(name="sdk-mover", flavor_id="1", image_id=IMAGE,
                                 networks="none")
        server = c.wait_for_server(server, status="ACTIVE", interval=0.2, wait=WAIT)
        c.enable_service(other)
        assert server.compute_host == "compute-1"

        def settle(status: str) -> Any:
            return _wait(lambda: (lambda s: s if s.status == status and s.task_state is None
                                  else None)(c.get_server(server.id)), status)

        c.migrate_server(server)
        assert settle("VERIFY_RESIZE").compute_host == "compute-2"
        c.confirm_server_resize(server)
        assert settle("ACTIVE").compute_host == "compute-2"
        c.live_migrate_server(server, host="compute-1", block_migration="auto")
        assert settle("ACTIVE").compute_host == "compute-1"

        def running() -> Any:
            c.live_migrate_server(server, host=None, block_migration="auto")
            return _wait(lambda: [m for m in c.server_migrations(server)
                                  if m.status == "running"], "a running live migration")[0]

        migration = running()
        assert (migration.source_compute, migration.dest_compute) == ("compute-1",
                                                                      "compute-2")
        c.abort_server_migration(migration, server)
        assert settle("ACTIVE").compute_host == "compute-1"
        migration = running()
        c.force_complete_server_migration(migration, server)
        _wait(lambda: c.get_server(server.id).compute_host == "compute-2", "the forced move")
        settle("ACTIVE")
        assert list(c.server_migrations(server)) == []
        records = [m for m in c.migrations() if m.server_id == server.id]
        assert sorted((m.migration_type, m.status) for m in records) == [
            ("live-migration", "cancelled"), ("live-migration", "completed"),
            ("live-migration", "completed"), ("migration", "confirmed")]
        c.delete_server(server)
    finally:
        conn.close()
