"""Servers moving between hosts (Nova's cold migration, resize onto another host and live
migration): two hosts' agents, each with its own simulated hypervisor, sharing one
database, each enacting its own half of the move and handing it over through the log.

What a user sees: the status (RESIZE, VERIFY_RESIZE, MIGRATING), the host, the migration
records, what each host holds (os-hypervisors' sums), the guests on each hypervisor —
and that a host agent killed at any step finishes the move once it is back: never two
running copies, never a server without a guest, nothing left held."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from tests.engines import counter_ids, counter_request_ids, make_engine
from vmledger import Engine, FakeClock
from vmledger.adapters.hypervisor import PowerState
from vmledger.adapters.simulator import SimulatedCrash, Simulator
from vmledger.domain.errors import BadRequest, Forbidden, InvalidState
from vmledger.domain.scheduling import AllocationRatios
from vmledger.projections.allocations import host_usage

IMAGE = "cirros-0.6.2-x86_64"


class Cloud:
    """compute-1 and compute-2 on one database, each an engine (its own agent) with its
    own simulator; either can be killed and started again, as a process."""

    def __init__(self, url: str, **engine_kw: Any) -> None:
        self.url = url
        self.clock = FakeClock()
        self.kw = engine_kw
        self.sims = {"compute-1": Simulator(seed=1), "compute-2": Simulator(seed=2)}
        self.ids = counter_ids(7)
        self.request_ids = {h: counter_request_ids(f"r{h[-1]}") for h in self.sims}
        self.engines = {h: self._open(h) for h in self.sims}
        self.settle()

    def _open(self, host: str) -> Engine:
        return make_engine(self.url, clock=self.clock, host=host, hypervisor=self.sims[host],
                           ids=self.ids, request_ids=self.request_ids[host], **self.kw)

    @property
    def api(self) -> Engine:
        return self.engines["compute-1"]

    def restart(self, host: str) -> None:
        self.engines[host].close()
        self.engines[host] = self._open(host)

    def settle(self, rounds: int = 4) -> None:
        for _ in range(rounds):
            for engine in self.engines.values():
                engine.run_until_idle()

    def server(self, host: str = "compute-1", flavor: str = "m1.small") -> str:
        """A running server on ``host`` (the other host is disabled while it is placed)."""
        other = next(h for h in self.sims if h != host)
        self.api.set_compute_service(other, disabled=True)
        try:
            sid = self.api.create_server("mover", flavor=flavor, image=IMAGE).id
        finally:
            self.api.set_compute_service(other, disabled=False)
        self.settle()
        assert self.api.get_server(sid).host == host
        return sid

    def guest(self, host: str, sid: str) -> dict[str, Any] | None:
        return self.sims[host].guests().get(sid)

    def running_copies(self, sid: str) -> int:
        return sum(1 for h in self.sims
                   if (self.guest(h, sid) or {}).get("power_state") == PowerState.RUNNING)

    def usage(self) -> dict[str, dict[str, int]]:
        self.api.updater.catch_up()
        return host_usage(self.api.updater.view)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()


@pytest.fixture
def cloud(url: str) -> Iterator[Cloud]:
    made = Cloud(url)
    try:
        yield made
    finally:
        made.close()


def _record(cloud: Cloud, sid: str) -> dict[str, Any]:
    records = cloud.api.migrations(server_id=sid)
    assert records, "no migration record"
    return records[-1]


SMALL = {"servers": 1, "vcpus": 1, "ram": 2048, "disk": 20}


# --- cold migration ----------------------------------------------------------------------
def test_a_cold_migration_moves_the_server_and_a_confirm_removes_the_old_copy(
        cloud: Cloud) -> None:
    sid = cloud.server()
    boots = cloud.guest("compute-1", sid)["boot_count"]  # type: ignore[index]
    cloud.api.migrate(sid)
    assert cloud.api.get_server(sid).status == "RESIZE"
    # the destination holds the server's room from the request on, the source keeps its own
    assert cloud.usage() == {"compute-1": SMALL,
                             "compute-2": {**SMALL, "servers": 0}}
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("VERIFY_RESIZE", "compute-2")
    # a running copy on the destination, the old one kept, off, on the source
    assert cloud.guest("compute-2", sid)["power_state"] == PowerState.RUNNING  # type: ignore[index]
    assert cloud.guest("compute-1", sid)["power_state"] == PowerState.SHUTDOWN  # type: ignore[index]
    # the disk moved: same image and generation, booted once more on the destination
    assert cloud.guest("compute-2", sid)["boot_count"] == boots + 1  # type: ignore[index]
    assert cloud.usage() == {"compute-1": {**SMALL, "servers": 0}, "compute-2": SMALL}
    record = _record(cloud, sid)
    assert (record["migration_type"], record["status"]) == ("migration", "finished")
    assert (record["source_compute"], record["dest_compute"]) == ("compute-1", "compute-2")

    cloud.api.act(sid, "confirm_resize")
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-2")
    assert cloud.guest("compute-1", sid) is None
    assert cloud.usage() == {"compute-2": SMALL}
    assert _record(cloud, sid)["status"] == "confirmed"
    # each host made its own calls
    calls = [(e.details["host"], e.details["call"]) for e in cloud.api.history(sid)
             if e.event == "HypervisorCalled" and e.details["call"] != "observe"]
    assert calls[-4:] == [("compute-2", "prepare_migration"), ("compute-1", "migrate_disk"),
                          ("compute-2", "finish_migration"), ("compute-1", "destroy")]


def test_a_reverted_cold_migration_runs_again_on_the_host_it_left(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.migrate(sid, host="compute-2")
    cloud.settle()
    cloud.api.act(sid, "revert_resize")
    assert cloud.api.get_server(sid).status == "REVERT_RESIZE"
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-1")
    assert cloud.guest("compute-2", sid) is None
    assert cloud.guest("compute-1", sid)["power_state"] == PowerState.RUNNING  # type: ignore[index]
    assert cloud.usage() == {"compute-1": SMALL}
    assert _record(cloud, sid)["status"] == "reverted"


def test_a_stopped_server_migrates_stopped_and_reverts_stopped(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.act(sid, "stop")
    cloud.settle()
    cloud.api.migrate(sid)
    cloud.settle()
    assert cloud.api.get_server(sid).status == "VERIFY_RESIZE"
    assert cloud.running_copies(sid) == 0
    cloud.api.act(sid, "revert_resize")
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("SHUTOFF", "compute-1")
    assert cloud.running_copies(sid) == 0


def test_a_cold_migration_is_confirmed_by_the_timer_after_the_window(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.migrate(sid)
    cloud.settle()
    cloud.clock.advance(timedelta(hours=24, seconds=1))
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-2")
    assert cloud.guest("compute-1", sid) is None
    assert _record(cloud, sid)["status"] == "confirmed"
    timer = [e for e in cloud.api.history(sid) if e.event == "ActionRequested"][-1]
    assert (timer.details["action"], timer.cause) == ("confirm_resize", "timer")


def test_deleting_a_moved_server_removes_both_copies(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.migrate(sid)
    cloud.settle()
    cloud.api.delete(sid)
    cloud.settle()
    assert cloud.guest("compute-1", sid) is None and cloud.guest("compute-2", sid) is None
    assert cloud.usage() == {}
    done = [e for e in cloud.api.history(sid) if e.event == "ActionCompleted"][-1]
    assert (done.details["action"], done.details["vm_state"]) == ("delete", "deleted")
    hosts = [e.details["host"] for e in cloud.api.history(sid)
             if e.event == "HypervisorCalled" and e.details["call"] == "destroy"]
    assert sorted(hosts) == ["compute-1", "compute-2"]


def test_deleting_a_server_mid_move_removes_what_the_destination_made(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    cloud.engines["compute-2"].run_until_idle()  # the destination prepared its copy
    cloud.api.delete(sid)
    cloud.settle()
    assert cloud.guest("compute-1", sid) is None and cloud.guest("compute-2", sid) is None
    assert cloud.usage() == {}


# --- resize onto another host -----------------------------------------------------------
def test_a_resize_goes_to_another_host_when_its_own_has_no_room(url: str) -> None:
    # each host takes about 6.3 GB of servers: three small ones fill compute-1
    made = Cloud(url, allocation_ratios=AllocationRatios(ram=0.1))
    try:
        sids = [made.server() for _ in range(3)]
        made.api.resize(sids[0], "m1.medium")
        made.settle()
        info = made.api.get_server(sids[0])
        assert (info.status, info.host) == ("VERIFY_RESIZE", "compute-2")
        assert info.doc["flavor"]["name"] == "m1.medium"
        record = _record(made, sids[0])
        assert (record["migration_type"], record["dest_compute"]) == ("resize", "compute-2")
        # the old flavor is held on the source until the resize is settled
        assert made.usage()["compute-1"]["ram"] == 3 * 2048
        assert made.usage()["compute-2"]["ram"] == 4096
        made.api.act(sids[0], "confirm_resize")
        made.settle()
        assert made.usage() == {"compute-1": {"servers": 2, "vcpus": 2, "ram": 4096,
                                              "disk": 40},
                                "compute-2": {"servers": 1, "vcpus": 2, "ram": 4096,
                                              "disk": 40}}
        assert made.guest("compute-1", sids[0]) is None
    finally:
        made.close()


def test_a_resize_stays_on_its_own_host_when_it_has_room(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.resize(sid, "m1.medium")
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("VERIFY_RESIZE", "compute-1")
    assert _record(cloud, sid)["dest_compute"] == "compute-1"


def test_without_resize_to_the_same_host_a_resize_always_moves(url: str) -> None:
    made = Cloud(url)
    for engine in made.engines.values():
        engine.service.allow_resize_to_same_host = False
    try:
        sid = made.server()
        made.api.resize(sid, "m1.medium")
        made.settle()
        assert made.api.get_server(sid).host == "compute-2"
        made.api.act(sid, "revert_resize")
        made.settle()
        info = made.api.get_server(sid)
        assert (info.status, info.host) == ("ACTIVE", "compute-1")
        assert info.doc["flavor"]["name"] == "m1.small"
    finally:
        made.close()


# --- live migration ----------------------------------------------------------------------
def test_a_live_migration_keeps_the_guest_running_and_ends_on_the_destination(
        cloud: Cloud) -> None:
    sid = cloud.server()
    before = cloud.guest("compute-1", sid)
    console = cloud.sims["compute-1"].console_output(sid)
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    assert cloud.api.get_server(sid).status == "MIGRATING"
    assert _record(cloud, sid)["status"] == "queued"
    assert cloud.usage()["compute-2"]["ram"] == 2048  # held there while it moves
    cloud.engines["compute-2"].run_until_idle()
    assert _record(cloud, sid)["status"] == "running"
    assert cloud.running_copies(sid) == 1
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-2")
    after = cloud.guest("compute-2", sid)
    assert after is not None and cloud.guest("compute-1", sid) is None
    # not rebooted: the same boot, the same console
    assert after["boot_count"] == before["boot_count"]  # type: ignore[index]
    assert cloud.sims["compute-2"].console_output(sid) == console
    assert cloud.usage() == {"compute-2": SMALL}
    record = _record(cloud, sid)
    assert (record["migration_type"], record["status"]) == ("live-migration", "completed")
    assert cloud.api.verify().ok


def test_a_paused_server_live_migrates_paused(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.act(sid, "pause")
    cloud.settle()
    cloud.api.live_migrate(sid, block_migration=False)  # the scheduler picks compute-2
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("PAUSED", "compute-2")
    assert cloud.guest("compute-2", sid)["power_state"] == PowerState.PAUSED  # type: ignore[index]


def test_a_live_migration_that_fails_leaves_the_server_where_it_was(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.sims["compute-1"].inject("live_migrate", "fail", server_id=sid, rollback=True)
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-1")
    assert cloud.guest("compute-2", sid) is None  # what the destination prepared is gone
    assert cloud.running_copies(sid) == 1
    assert _record(cloud, sid)["status"] == "failed"
    assert cloud.usage() == {"compute-1": SMALL}


def test_a_destination_that_cannot_prepare_rolls_the_cold_migration_back(
        cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.sims["compute-2"].inject("prepare_migration", "fail", server_id=sid, rollback=True)
    cloud.api.migrate(sid)
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-1")
    assert cloud.running_copies(sid) == 1 and cloud.guest("compute-2", sid) is None
    assert _record(cloud, sid)["status"] == "error"
    assert cloud.usage() == {"compute-1": SMALL}


def _steer(cloud: Cloud, sid: str, steer: str, statuses: frozenset[str]) -> None:
    record = _record(cloud, sid)
    cloud.api.commands.actions.steer_migration(cloud.api.service.context(), sid,
                                               record["request_id"], steer,
                                               statuses=statuses)


def test_an_abort_stops_a_live_migration_in_progress(url: str) -> None:
    made = Cloud(url)
    made.sims["compute-1"].live_migration_seconds = 5.0  # a long copy
    try:
        sid = made.server()
        made.api.live_migrate(sid, host="compute-2", block_migration="auto")
        made.engines["compute-2"].run_until_idle()
        source = threading.Thread(target=made.engines["compute-1"].run_until_idle)
        started = time.monotonic()
        source.start()
        time.sleep(0.2)  # the source is copying
        _steer(made, sid, "abort", frozenset({"running"}))
        source.join(10)
        assert time.monotonic() - started < 4  # it did not copy to the end
        made.settle()
        info = made.api.get_server(sid)
        assert (info.status, info.host) == ("ACTIVE", "compute-1")
        assert _record(made, sid)["status"] == "cancelled"
        assert made.guest("compute-2", sid) is None and made.running_copies(sid) == 1
        with pytest.raises(BadRequest):  # nothing left to abort
            _steer(made, sid, "abort", frozenset({"running"}))
    finally:
        made.close()


def test_a_force_complete_finishes_a_long_live_migration_now(url: str) -> None:
    made = Cloud(url)
    made.sims["compute-1"].live_migration_seconds = 5.0
    try:
        sid = made.server()
        made.api.live_migrate(sid, host="compute-2", block_migration="auto")
        made.engines["compute-2"].run_until_idle()
        source = threading.Thread(target=made.engines["compute-1"].run_until_idle)
        started = time.monotonic()
        source.start()
        time.sleep(0.2)
        _steer(made, sid, "force_complete", frozenset({"running"}))
        source.join(10)
        assert time.monotonic() - started < 4
        made.settle()
        info = made.api.get_server(sid)
        assert (info.status, info.host) == ("ACTIVE", "compute-2")
        assert _record(made, sid)["status"] == "completed"
        calls = [e.details["call"] for e in made.api.history(sid)
                 if e.event == "HypervisorCalled"]
        assert "force_complete_migration" in calls
    finally:
        made.close()


def test_an_abort_asked_before_the_source_starts_cancels_the_move(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    cloud.engines["compute-2"].run_until_idle()
    _steer(cloud, sid, "abort", frozenset({"running"}))
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-1")
    assert _record(cloud, sid)["status"] == "cancelled"
    assert cloud.sims["compute-1"].guests()[sid]["power_state"] == PowerState.RUNNING
    assert cloud.guest("compute-2", sid) is None


def test_an_abort_that_races_the_completion_loses_to_it(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    cloud.engines["compute-2"].run_until_idle()  # prepared
    cloud.engines["compute-1"].run_until_idle()  # sent: the guest runs on compute-2
    _steer(cloud, sid, "abort", frozenset({"running"}))  # too late
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-2")
    assert _record(cloud, sid)["status"] == "completed"
    assert cloud.running_copies(sid) == 1 and cloud.guest("compute-1", sid) is None


def test_force_complete_is_refused_unless_the_migration_runs(cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    with pytest.raises(BadRequest, match="queued"):
        _steer(cloud, sid, "force_complete", frozenset({"running"}))


# --- refusals --------------------------------------------------------------------------
def test_migrations_are_refused_as_nova_refuses_them(cloud: Cloud) -> None:
    sid = cloud.server()
    user = cloud.api.context(user_id="u", project_id="admin", is_admin=False)
    with pytest.raises(Forbidden):
        cloud.api.migrate(sid, ctx=user)
    with pytest.raises(Forbidden):
        cloud.api.live_migrate(sid, ctx=user, block_migration="auto")
    with pytest.raises(BadRequest, match="could not be found"):
        cloud.api.migrate(sid, host="compute-9")
    with pytest.raises(BadRequest, match="Cannot migrate to the host where the server"):
        cloud.api.migrate(sid, host="compute-1")
    with pytest.raises(BadRequest, match=r"to current host \(compute-1\)"):
        cloud.api.live_migrate(sid, host="compute-1", block_migration="auto")
    cloud.api.set_compute_service("compute-2", disabled=True)
    with pytest.raises(BadRequest, match="No valid host was found"):
        cloud.api.migrate(sid)
    with pytest.raises(BadRequest, match="No valid host was found"):
        cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    # forced onto a disabled host: the scheduler is skipped
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto", force=True)
    cloud.settle()
    assert cloud.api.get_server(sid).host == "compute-2"
    cloud.api.set_compute_service("compute-2", disabled=False)
    cloud.api.set_compute_service("compute-1", forced_down=True)
    with pytest.raises(BadRequest, match="Compute service of compute-1 is unavailable"):
        cloud.api.live_migrate(sid, host="compute-1", block_migration="auto")
    cloud.api.set_compute_service("compute-1", forced_down=False)
    with pytest.raises(BadRequest, match="block_migration"):
        cloud.api.live_migrate(sid, block_migration="sometimes")


def test_a_server_waiting_for_its_resize_to_be_confirmed_cannot_migrate(
        cloud: Cloud) -> None:
    sid = cloud.server()
    cloud.api.resize(sid, "m1.medium")
    cloud.settle()
    with pytest.raises(InvalidState):
        cloud.api.migrate(sid)
    with pytest.raises(InvalidState):
        cloud.api.live_migrate(sid, block_migration="auto")


# --- an agent killed at any step -------------------------------------------------------
COLD_STEPS = [("compute-2", "prepare_migration"), ("compute-1", "migrate_disk"),
              ("compute-2", "finish_migration")]
LIVE_STEPS = [("compute-2", "prepare_migration"), ("compute-1", "live_migrate"),
              ("compute-2", "finish_live_migration")]


def _run_until_crash(cloud: Cloud) -> str:
    """Run the agents until one "dies"; returns its host."""
    for _ in range(6):
        for host, engine in cloud.engines.items():
            try:
                engine.run_until_idle()
            except SimulatedCrash:
                return host
    raise AssertionError("no agent crashed")


@pytest.mark.parametrize(("host", "call"), [*COLD_STEPS, ("compute-1", "destroy")])
def test_a_cold_migration_completes_once_whichever_agent_dies_at_any_step(
        cloud: Cloud, host: str, call: str) -> None:
    sid = cloud.server()
    cloud.sims[host].inject(call, "crash", server_id=sid)
    cloud.api.migrate(sid)
    if call == "destroy":  # at the confirm, on the source
        cloud.settle()
        cloud.api.act(sid, "confirm_resize")
    assert _run_until_crash(cloud) == host
    assert cloud.running_copies(sid) <= 1
    cloud.restart(host)
    cloud.settle()
    info = cloud.api.get_server(sid)
    if call == "destroy":
        assert (info.status, info.host) == ("ACTIVE", "compute-2")
        assert cloud.guest("compute-1", sid) is None
        assert cloud.usage() == {"compute-2": SMALL}
    else:
        assert (info.status, info.host) == ("VERIFY_RESIZE", "compute-2")
        assert cloud.usage() == {"compute-1": {**SMALL, "servers": 0}, "compute-2": SMALL}
    assert cloud.running_copies(sid) == 1
    events = [e for e in cloud.api.history(sid) if e.event == "ActionCompleted"]
    assert [e.details["action"] for e in events][-1] in ("migrate", "confirm_resize")
    made = [e for e in cloud.api.history(sid)
            if e.event == "HypervisorCalled" and e.details["call"] == call]
    assert made and all(e.details["host"] == host for e in made)
    # the call in doubt after the crash was found to have acted (a cold prepare changes
    # nothing a host shows: it is made again, and answers the same)
    if call != "prepare_migration":
        assert any("found_after_restart" in (e.details["result"] or {}) for e in made)
    assert cloud.api.verify().ok


@pytest.mark.parametrize(("host", "call"), LIVE_STEPS)
def test_a_live_migration_completes_once_whichever_agent_dies_at_any_step(
        cloud: Cloud, host: str, call: str) -> None:
    sid = cloud.server()
    boots = cloud.guest("compute-1", sid)["boot_count"]  # type: ignore[index]
    cloud.sims[host].inject(call, "crash", server_id=sid)
    cloud.api.live_migrate(sid, host="compute-2", block_migration="auto")
    assert _run_until_crash(cloud) == host
    # never two running copies, never none: the guest is somewhere, once
    assert cloud.running_copies(sid) == 1
    cloud.restart(host)
    cloud.settle()
    info = cloud.api.get_server(sid)
    assert (info.status, info.host) == ("ACTIVE", "compute-2")
    assert cloud.guest("compute-1", sid) is None
    guest = cloud.guest("compute-2", sid)
    assert guest is not None and guest["boot_count"] == boots
    assert cloud.usage() == {"compute-2": SMALL}
    assert _record(cloud, sid)["status"] == "completed"
    assert cloud.api.verify().ok
