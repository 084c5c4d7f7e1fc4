"""Scheduling through the commands: one place() for creates, resizes, evacuations and
unshelves, with claims on hosts of limited room."""

from __future__ import annotations

import pytest

from tests.unit.conftest import IMAGE, FakeReads, admin, user
from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import Commands
from vmledger.domain.errors import BadRequest
from vmledger.domain.host_claims import HostClaims, host_claims_id
from vmledger.domain.server import Server
from vmledger.domain.server_group import NO_VALID_HOST
from vmledger.domain.service import ServerService

ROOMY = {"vcpus": 64.0, "ram": 65536.0, "disk": 1000.0}


def _built(commands: Commands, store: ServerService, sid: str) -> None:
    pending = store.get(sid).pending_request_id or ""
    commands.outcomes.record(sid, pending, lambda s, c, at: s.complete(c, at, power_state=1))


def test_a_create_goes_to_the_host_with_the_most_free_memory(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.hosts = ["a", "b", "c"]
    reads.room = {"a": {**ROOMY, "ram": 4096.0}, "b": ROOMY, "c": {**ROOMY, "ram": 8192.0}}
    sid = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE).server_id
    assert store.get(sid).host == "b"
    claims = store.repository.get(host_claims_id("b"))
    assert isinstance(claims, HostClaims)


def test_a_multi_create_is_placed_whole_or_not_at_all(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.hosts = ["a"]
    reads.room = {"a": {**ROOMY, "ram": 4096.0}}  # two m1.small (2048 MB) fit, not three
    result = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE,
                                     count=3)
    servers = [store.get(s) for s in result.details["server_ids"]]
    assert [s.vm_state for s in servers] == [lc.ERROR] * 3
    assert all(s.fault and s.fault["message"] == NO_VALID_HOST for s in servers)
    assert store.recorder.select_events(host_claims_id("a")) == []  # nothing claimed


def test_a_host_of_unknown_room_takes_servers_without_claims(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    sid = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE).server_id
    assert store.get(sid).host == "compute-1" and store.get(sid).vm_state == lc.BUILDING
    assert store.recorder.select_events(host_claims_id("compute-1")) == []


def test_hard_anti_affinity_spreads_members_and_fails_when_hosts_run_out(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.hosts = ["a", "b"]
    group = commands.groups.create(user(), name="g", policy="anti-affinity")
    gid = group.details["group_id"]
    made = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE,
                                   count=2, server_group=gid)
    hosts = sorted(store.get(s).host for s in made.details["server_ids"])
    assert hosts == ["a", "b"]
    reads.members[gid] = hosts
    third = commands.servers.create(user(), name="more", flavor="m1.small", image=IMAGE,
                                    server_group=gid)
    assert store.get(third.server_id).fault["message"] == NO_VALID_HOST  # type: ignore[index]


def test_a_resize_without_room_fails_as_no_valid_host_and_keeps_the_server(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.room = {"compute-1": {**ROOMY, "ram": 4096.0}}
    sid = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE).server_id
    _built(commands, store, sid)
    reads.room = {"compute-1": {**ROOMY, "ram": 1024.0}}
    commands.actions.act(user(), sid, "resize", flavor="m1.medium")
    server = store.get(sid)
    assert server.vm_state == lc.ACTIVE and server.flavor["name"] == "m1.small"
    assert server.migration_status == "error"
    assert server.fault and server.fault["message"] == NO_VALID_HOST


def test_an_evacuation_needs_its_host_down_and_goes_to_another(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.hosts = ["compute-1", "spare"]
    reads.room = {"spare": ROOMY}
    reads.disabled = {"spare"}  # not chosen by the create
    sid = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE).server_id
    _built(commands, store, sid)
    reads.disabled = set()
    with pytest.raises(BadRequest, match="still in use"):
        commands.actions.act(admin(), sid, "evacuate")
    reads.down = {"compute-1"}
    commands.actions.act(admin(), sid, "evacuate")
    server = store.get(sid)
    assert server.host == "spare" and server.task_state == lc.REBUILDING
    assert isinstance(store.repository.get(host_claims_id("spare")), HostClaims)


def test_an_offloaded_server_goes_back_to_its_host_when_it_has_room(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.hosts = ["compute-1", "other"]
    reads.room = {"compute-1": {**ROOMY, "ram": 8192.0}, "other": ROOMY}
    reads.disabled = {"other"}
    sid = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE).server_id
    _built(commands, store, sid)
    reads.disabled = set()
    commands.actions.act(user(), sid, "shelve")
    pending = store.get(sid).pending_request_id or ""
    commands.outcomes.record(sid, pending, lambda s, c, at: s.complete(c, at, power_state=4))
    assert store.get(sid).vm_state == lc.SHELVED_OFFLOADED
    commands.actions.act(user(), sid, "unshelve")
    server: Server = store.get(sid)
    assert server.host == "compute-1"  # preferred, though "other" has more memory free
