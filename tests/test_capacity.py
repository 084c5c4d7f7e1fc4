"""Hosts fill up: a host takes a new server only while the server's flavor fits in what
is left of its capacity (vCPUs, memory, disk, times the allocation ratios, less the
reserved memory), as Nova's placement allows; a server nowhere fits fails to schedule.

The simulator's host has 16 vCPUs, 64 GiB and 1 TiB: with Nova's defaults (ratios 4.0,
1.0, 1.0 and 512 MB reserved) it holds 7 m1.large servers (8 GiB each) by memory.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.engines import make_engine
from tests.support.compute import IMAGE_ID
from tests.support.racing import racing
from vmledger import AllocationRatios, Engine, FakeClock
from vmledger.api import create_app
from vmledger.api.testing import ApiClient
from vmledger.cli import build_parser
from vmledger.domain.host_claims import HostClaims, host_claims_id
from vmledger.domain.server_group import NO_VALID_HOST

IMAGE = "cirros-0.6.2-x86_64"


def _fill(engine: Engine, n: int, flavor: str = "m1.large") -> list[str]:
    made = [str(engine.create_server(f"big-{i}", flavor=flavor, image=IMAGE).id)
            for i in range(n)]
    engine.run_until_idle()
    return made


def test_a_full_host_takes_no_more_servers(engine: Engine) -> None:
    seven = _fill(engine, 7)
    assert {engine.get_server(s).status for s in seven} == {"ACTIVE"}
    room = engine.host_room([engine.host])[engine.host]
    assert room == {"vcpus": 64 - 28, "ram": 65536 - 512 - 7 * 8192, "disk": 1024 - 560}
    eighth = engine.create_server("one-too-many", flavor="m1.large", image=IMAGE)
    assert eighth.status == "ERROR" and eighth.host is None
    assert eighth.fault is not None and eighth.fault["message"] == NO_VALID_HOST
    # a smaller one still fits
    assert engine.create_server("small", flavor="m1.small", image=IMAGE).status == "BUILD"
    engine.run_until_idle()
    # a deleted server gives its room back; the failed one never held any
    engine.delete(seven[0])
    engine.run_until_idle()
    assert engine.create_server("again", flavor="m1.large", image=IMAGE).status == "BUILD"


def test_resize_beyond_the_room_left_fails_and_leaves_the_server_as_it_was(
        engine: Engine) -> None:
    servers = _fill(engine, 7)
    sid = servers[0]
    result = engine.resize(sid, flavor="m1.xlarge")
    info = engine.get_server(sid)
    assert (info.status, info.flavor["name"]) == ("ACTIVE", "m1.large")
    actions = engine.instance_actions(sid)
    assert actions[0]["action"] == "resize" and actions[0]["message"] == "Error"
    assert actions[0]["request_id"] == result.request_id
    [migration] = engine.migrations(server_id=sid)
    assert migration["status"] == "error"
    # one server fewer is not enough: the host holds both flavors until confirmed
    engine.delete(servers[1])
    engine.run_until_idle()
    engine.resize(sid, flavor="m1.xlarge")
    assert engine.get_server(sid).status == "ACTIVE"
    # two fewer is: the resize goes through
    engine.delete(servers[2])
    engine.run_until_idle()
    engine.resize(sid, flavor="m1.xlarge")
    engine.run_until_idle()
    assert engine.get_server(sid).status == "VERIFY_RESIZE"
    held = 65536 - 512 - engine.host_room([engine.host])[engine.host]["ram"]
    assert held == 4 * 8192 + 8192 + 16384
    engine.confirm_resize(sid)
    engine.run_until_idle()
    held = 65536 - 512 - engine.host_room([engine.host])[engine.host]["ram"]
    assert held == 4 * 8192 + 16384


def test_offloaded_servers_hold_nothing_and_unshelve_needs_room(engine: Engine) -> None:
    servers = _fill(engine, 7)
    sid = servers[0]
    engine.act(sid, "shelve")  # offloaded at once (the default offload time is 0)
    engine.run_until_idle()
    assert engine.get_server(sid).status == "SHELVED_OFFLOADED"
    taker = engine.create_server("taker", flavor="m1.large", image=IMAGE)
    assert taker.status == "BUILD"
    engine.run_until_idle()
    engine.unshelve(sid)
    info = engine.get_server(sid)
    assert info.status == "SHELVED_OFFLOADED"
    assert info.fault is not None and info.fault["message"] == NO_VALID_HOST
    # with room again, it is placed, and the placement claimed on the host
    engine.delete(str(taker.id))
    engine.run_until_idle()
    result = engine.unshelve(sid)
    engine.run_until_idle()
    assert engine.get_server(sid).status == "ACTIVE"
    [claim] = [e for e in engine.service.repository.event_store.get(
        host_claims_id(engine.host)) if e.request_id == result.request_id]
    assert isinstance(claim, HostClaims.Claimed)
    assert claim.servers == {sid: {"vcpus": 4, "ram": 8192, "disk": 80}}


def test_a_request_for_several_servers_is_placed_whole_or_not_at_all(
        engine: Engine) -> None:
    """Each server of a request takes its share before the next is placed; when one
    does not fit, the whole request fails to schedule (as Nova's scheduler fails it)."""
    _fill(engine, 5)
    made = engine.create_servers("trio", flavor="m1.large", image=IMAGE, count=3)
    assert [(s.status, s.host) for s in made] == [("ERROR", None)] * 3
    made = engine.create_servers("pair", flavor="m1.large", image=IMAGE, count=2)
    assert [s.status for s in made] == ["BUILD", "BUILD"]


def test_allocation_ratios_and_reserved_memory(url: str) -> None:
    e = make_engine(url, allocation_ratios=AllocationRatios(
        cpu=1.0, ram=2.0, disk=math.inf, reserved_host_memory_mb=0))
    try:
        assert e.host_room([e.host])[e.host] == {"vcpus": 16, "ram": 131072,
                                                 "disk": math.inf}
        made = [e.create_server(f"x-{i}", flavor="m1.xlarge", image=IMAGE).status
                for i in range(3)]
        assert made == ["BUILD", "BUILD", "ERROR"]  # 8 vCPUs each, at ratio 1.0
    finally:
        e.close()
    for bad in ({"cpu": 0}, {"ram": -1.0}, {"disk": math.nan}, {"cpu": True},
                {"reserved_host_memory_mb": -1}):
        with pytest.raises(ValueError):
            AllocationRatios(**bad)  # type: ignore[arg-type]


def test_the_command_line_sets_the_ratios() -> None:
    from vmledger.cli_config import parse_args
    from vmledger.cli_ops import allocation_ratios_from

    # as the command does: the flags given, then the environment, a file, the defaults
    args = parse_args(build_parser(), ["serve", "--ram-allocation-ratio", "1.5",
                                       "--cpu-allocation-ratio", "inf",
                                       "--reserved-host-memory-mb", "0"])
    assert allocation_ratios_from(args) == AllocationRatios(
        cpu=math.inf, ram=1.5, disk=1.0, reserved_host_memory_mb=0)
    for bad in (["--ram-allocation-ratio", "0"], ["--cpu-allocation-ratio", "x"],
                ["--reserved-host-memory-mb", "-5"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])


def test_full_hosts_are_skipped_and_the_others_take_the_servers(url: str) -> None:
    clock = FakeClock()
    first = make_engine(url, clock=clock)
    second = make_engine(url, clock=clock, host="compute-2", seed=2)
    try:
        second.run_until_idle()  # it reports its host
        first.set_compute_service("compute-2", disabled=True)
        _fill(first, 7)
        first.set_compute_service("compute-2", disabled=False)
        spread = [first.create_server(f"more-{i}", flavor="m1.large", image=IMAGE)
                  for i in range(8)]
        assert [s.host for s in spread[:7]] == ["compute-2"] * 7
        assert spread[7].status == "ERROR"  # both full
    finally:
        second.close()
        first.close()


def test_the_room_held_is_rebuilt_from_the_log(engine: Engine) -> None:
    servers = _fill(engine, 3)
    engine.resize(servers[0], flavor="m1.xlarge")
    engine.run_until_idle()
    engine.delete(servers[1])
    engine.run_until_idle()
    before = engine.host_room([engine.host])
    engine.updater.rebuild()
    assert engine.host_room([engine.host]) == before


def test_the_api_answers_202_and_the_server_fails_to_schedule(engine: Engine) -> None:
    _fill(engine, 7)
    client = ApiClient(create_app(engine))
    r = client.post("/v2.1/servers", json={"server": {
        "name": "late", "flavorRef": "4", "imageRef": IMAGE_ID, "networks": "none"}},
        headers={"OpenStack-API-Version": "compute 2.96"})
    assert r.status_code == 202, r.text
    server = client.get(f"/v2.1/servers/{r.json()['server']['id']}",
                        headers={"OpenStack-API-Version": "compute 2.96"}).json()["server"]
    assert server["status"] == "ERROR"
    assert server["fault"]["message"] == NO_VALID_HOST and server["fault"]["code"] == 500
    assert server["OS-EXT-SRV-ATTR:host"] is None and server["host_status"] == ""
    # it has no guest anywhere to read
    r = client.post(f"/v2.1/servers/{server['id']}/action",
                    json={"os-getConsoleOutput": {}})
    assert r.status_code == 409
    assert r.json()["conflictingRequest"]["message"] == (
        f"Instance {server['id']} is not ready")


def test_racing_creates_never_overfill_a_host(url: str) -> None:
    """Creates racing for a host's last room — from several engines on one database (as
    several API processes) and several projects — place exactly what fits: each
    placement is recorded on the host (HostClaims), so a lost race is decided again
    against the room the winner left."""
    clock = FakeClock()
    # own seeds: distinct server ids, so the creates themselves never collide
    engines = [make_engine(url, clock=clock, seed=10 + n) for n in range(3)]
    try:
        _fill(engines[0], 5)  # room for 2 more m1.large
        for engine in engines:  # every decision reads the room before any saves
            reads = engine.graph.reads

            def slow(hosts: Sequence[str], read: Any = reads.host_room) -> Any:
                room = read(hosts)
                time.sleep(0.05)
                return room
            reads.host_room = slow  # type: ignore[method-assign]
            # as in separate processes: nothing but the database between the engines
            # (in one process, placements on one database queue for one lock)
            own = threading.Lock()
            engine.commands.deps.scheduler.lock = (  # type: ignore[method-assign]
                lambda own=own: own)

        def create(engine: Engine, n: int) -> Callable[[], object]:
            ctx = engine.context(user_id=f"user-{n}", project_id=f"p{n}", is_admin=False)
            return lambda: engine.create_server(f"raced-{n}", flavor="m1.large",
                                                image=IMAGE, ctx=ctx)

        assert racing([create(engines[n % 3], n) for n in range(6)]) == ["ok"] * 6
        engines[0].updater.catch_up()
        raced = [s for s in engines[0].list_servers() if s.name.startswith("raced-")]
        assert sorted(s.status for s in raced) == ["BUILD"] * 2 + ["ERROR"] * 4
        assert engines[0].host_room([engines[0].host])[engines[0].host]["ram"] == (
            65536 - 512 - 7 * 8192)
        # the placements are on the host's record, with the room each decision saw
        claims = [e for e in engines[0].service.repository.event_store.get(
            host_claims_id(engines[0].host)) if isinstance(e, HostClaims.Claimed)]
        assert [e.room["ram"] for e in claims] == [
            65536 - 512 - n * 8192 for n in range(7)]  # one after the other
    finally:
        for engine in engines:
            engine.close()
