"""Rules that live in the command modules, decided in the command's own transaction:
quotas (instances, key pairs, server groups), a compute service's deletion, admin-only
changes."""

from __future__ import annotations

import pytest

from tests.unit.conftest import IMAGE, FakeReads, admin, user
from vmledger.domain.commands import Commands
from vmledger.domain.errors import BadRequest, Conflict, Forbidden, NotFound
from vmledger.domain.quota import QuotaExceeded, QuotaSet, quota_set_id
from vmledger.domain.service import ServerService


def test_creates_are_admitted_within_the_projects_quota(
        commands: Commands, reads: FakeReads, store: ServerService) -> None:
    reads.usage = {"p1": {"instances": 1, "cores": 1, "ram": 2048}}
    reads.limits = {"p1": {"instances": 3}}
    result = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE,
                                     count=5, min_count=1)
    assert len(result.details["server_ids"]) == 2  # as many as fit
    quota = store.repository.get(quota_set_id("p1"))
    assert isinstance(quota, QuotaSet)  # the admission is recorded: racing ones conflict
    with pytest.raises(QuotaExceeded):
        commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE,
                                count=5)


def test_key_pairs_are_limited_per_user(commands: Commands, reads: FakeReads) -> None:
    reads.limits = {"p1": {"key_pairs": 2}}
    reads.keypairs = {"alice": 2}
    with pytest.raises(Forbidden, match="too many key pairs"):
        commands.keypairs.import_keypair(user(), name="k", public_key="ssh-ed25519 AAAA")


def test_server_groups_are_limited_per_project(commands: Commands, reads: FakeReads) -> None:
    reads.limits = {"p1": {"server_groups": 1}}
    reads.groups = {"p1": 1}
    with pytest.raises(Forbidden, match="too many server groups"):
        commands.groups.create(user(), name="g", policy="affinity")


def test_a_quota_below_usage_is_refused_unless_forced(commands: Commands,
                                                      reads: FakeReads) -> None:
    reads.usage = {"p1": {"instances": 4}}
    with pytest.raises(BadRequest, match="must be greater than or equal to already used"):
        commands.quotas.set_quotas(admin(), "p1", {"instances": 3})
    assert commands.quotas.set_quotas(admin(), "p1", {"instances": 3}, force=True).accepted
    with pytest.raises(Forbidden):
        commands.quotas.set_quotas(user(), "p1", {"instances": 9})


def test_a_compute_service_in_use_or_of_this_host_is_not_deleted(
        commands: Commands, reads: FakeReads) -> None:
    reads.hosts = ["compute-1", "busy", "idle"]
    reads.in_use = {"busy": "Unable to delete compute service that is hosting instances."}
    with pytest.raises(Conflict, match="hosting instances"):
        commands.compute_services.delete(admin(), "busy")
    with pytest.raises(Conflict, match="the host this process runs the agent of"):
        commands.compute_services.delete(admin(), "compute-1")
    with pytest.raises(NotFound):
        commands.compute_services.delete(admin(), "nowhere")
    with pytest.raises(Forbidden):
        commands.compute_services.delete(user(), "idle")
    assert commands.compute_services.delete(admin(), "idle").accepted


def test_an_unknown_action_is_refused(commands: Commands) -> None:
    sid = commands.servers.create(user(), name="web", flavor="m1.small",
                                  image=IMAGE).server_id
    with pytest.raises(BadRequest, match="There is no such action: fly"):
        commands.actions.act(user(), sid, "fly")
