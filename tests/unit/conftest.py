"""The unit layer: the command modules over an in-memory event store (the library's
plain-Python recorders: no SQL, no read models) and a fake read side, as handler tests
are written in cosmicpython. Each test takes milliseconds."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from tests.engines import counter_ids, counter_request_ids
from vmledger.domain import quota as quotas
from vmledger.domain.clock import FakeClock
from vmledger.domain.commands import Commands
from vmledger.domain.server import Context
from vmledger.domain.service import ServerService

IMAGE = "cirros-0.6.2-x86_64"


@dataclass
class FakeReads:
    """A read side the test sets up by hand (see ``ReadSide``)."""

    hosts: list[str] = field(default_factory=lambda: ["compute-1"])
    down: set[str] = field(default_factory=set)
    disabled: set[str] = field(default_factory=set)
    room: dict[str, dict[str, float]] = field(default_factory=dict)
    in_use: dict[str, str] = field(default_factory=dict)
    usage: dict[str, dict[str, int]] | None = None
    limits: dict[str, dict[str, int]] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    keypairs: dict[str, int] = field(default_factory=dict)

    def usable_hosts(self) -> Sequence[str]:
        return [h for h in self.hosts if h not in self.down and h not in self.disabled]

    def known_hosts(self) -> Sequence[str]:
        return list(self.hosts)

    def host_is_up(self, host: str) -> bool:
        return host in self.hosts and host not in self.down

    def host_room(self, hosts: Sequence[str]) -> Mapping[str, Mapping[str, float]]:
        return {h: dict(self.room[h]) for h in hosts if h in self.room}

    def host_in_use(self, host: str) -> str | None:
        return self.in_use.get(host)

    def project_usage(self, project_id: str) -> Mapping[str, int] | None:
        if self.usage is None:
            return None
        return self.usage.get(project_id, {})

    def project_limits(self, project_id: str) -> Mapping[str, int]:
        return {**quotas.DEFAULTS, **self.limits.get(project_id, {})}

    def group_member_hosts(self, group_id: str) -> list[str]:
        return list(self.members.get(group_id, []))

    def server_group_count(self, project_id: str) -> int:
        return self.groups.get(project_id, 0)

    def keypair_count(self, user_id: str) -> int:
        return self.keypairs.get(user_id, 0)


@pytest.fixture
def reads() -> FakeReads:
    return FakeReads()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[ServerService]:
    service = ServerService({"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock,
                            hosts=("compute-1",), id_factory=counter_ids(),
                            request_id_factory=counter_request_ids())
    yield service
    service.close()


@pytest.fixture
def commands(store: ServerService, reads: FakeReads) -> Commands:
    return Commands.build(store, reads, seed=0)


def user(project: str = "p1", name: str = "alice") -> Context:
    return Context(request_id=f"req-{uuid.uuid4()}", user_id=name, project_id=project)


def admin() -> Context:
    return Context(request_id=f"req-{uuid.uuid4()}", user_id="admin", project_id="admin",
                   is_admin=True)
