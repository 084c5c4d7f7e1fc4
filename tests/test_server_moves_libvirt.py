"""Servers moving between two libvirt hosts on real QEMU through the engine: each host
an engine whose agent drives its own libvirtd (the two daemons ``.ci/libvirt-setup``
starts on this machine), sharing one database. A live migration ends with the domain
running on the destination only; a cold migration back, confirmed, ends with it on the
first host only. The ``qemu`` tier (see tests/test_libvirt_migration_qemu.py for the
hosts and for what the guests' disks and consoles show)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines import make_engine
from tests.test_libvirt_migration_qemu import Hosts, host_uris, state  # noqa: F401
from vmledger import Engine, FakeClock

pytestmark = pytest.mark.qemu

IMAGE = "cirros-0.6.2-x86_64"  # no base file on either host: a diskless guest
R = 1  # libvirt's VIR_DOMAIN_RUNNING


@pytest.fixture
def hosts(host_uris: tuple[str, str], tmp_path: Path) -> Iterator[Hosts]:  # noqa: F811
    made = Hosts(tmp_path, host_uris)
    yield made
    made.close()


def _settle(*engines: Engine) -> None:
    for _ in range(4):
        for engine in engines:
            engine.run_until_idle()


def test_the_engine_moves_a_server_between_two_libvirt_hosts(hosts: Hosts,
                                                              tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'moves.db'}"
    clock = FakeClock()
    one = make_engine(url, clock=clock, hypervisor=hosts.one, host="compute-1")
    two = make_engine(url, clock=clock, hypervisor=hosts.two, host="compute-2", seed=2)
    try:
        _settle(one, two)
        one.set_compute_service("compute-2", disabled=True)
        sid = one.create_server("mover", flavor="m1.tiny", image=IMAGE).id
        one.set_compute_service("compute-2", disabled=False)
        hosts.ids.append(sid)  # destroyed on both hosts after the test
        _settle(one, two)
        assert one.get_server(sid).status == "ACTIVE"
        assert state(hosts.one, sid) == R

        one.live_migrate(sid, host="compute-2", block_migration="auto")
        _settle(one, two)
        info = one.get_server(sid)
        assert (info.status, info.host) == ("ACTIVE", "compute-2")
        assert state(hosts.two, sid) == R and state(hosts.one, sid) is None
        record = one.migrations(server_id=sid)[-1]
        assert (record["migration_type"], record["status"]) == ("live-migration",
                                                                "completed")

        one.migrate(sid, host="compute-1")
        _settle(one, two)
        info = one.get_server(sid)
        assert (info.status, info.host) == ("VERIFY_RESIZE", "compute-1")
        assert state(hosts.one, sid) == R and state(hosts.two, sid) is not None
        one.act(sid, "confirm_resize")
        _settle(one, two)
        info = one.get_server(sid)
        assert (info.status, info.host) == ("ACTIVE", "compute-1")
        assert state(hosts.one, sid) == R and state(hosts.two, sid) is None
        calls = {(e.details["host"], e.details["call"]) for e in one.history(sid)
                 if e.event == "HypervisorCalled" and e.details["error"] is None}
        assert {("compute-1", "live_migrate"), ("compute-2", "finish_live_migration"),
                ("compute-2", "migrate_disk"), ("compute-1", "finish_migration"),
                ("compute-2", "destroy")} <= calls
        assert one.verify().ok
    finally:
        two.close()
        one.close()
