"""The command pipeline: one unit of work per attempt, one retry policy, idempotency."""

from __future__ import annotations

import uuid

import pytest
from eventsourcing.domain import Aggregate

from tests.unit.conftest import IMAGE, user
from vmledger.domain.commands import Commands
from vmledger.domain.commands.pipeline import MAX_ATTEMPTS, UnitOfWork, idempotency
from vmledger.domain.errors import BadRequest, Conflict, IdempotencyConflict
from vmledger.domain.server import Server
from vmledger.domain.service import ServerService


def _created(commands: Commands) -> str:
    return commands.servers.create(user(), name="web", flavor="m1.small",
                                   image=IMAGE).server_id


def test_a_lost_race_is_decided_again_against_fresh_state(commands: Commands,
                                                          store: ServerService) -> None:
    sid = _created(commands)
    attempts: list[str | None] = []

    def decide(uow: UnitOfWork) -> Aggregate | None:
        server = uow.get(uuid.UUID(sid))
        assert isinstance(server, Server)
        attempts.append(server.name)
        if len(attempts) == 1:  # another writer saves first: this save must conflict
            rival = store.get(sid)
            rival.update(user(), store.clock.now(), {"name": "renamed"})
            store.save(rival)
        server.update(user(), store.clock.now(), {"description": "mine"})
        return server

    result = commands.deps.pipeline.execute(user(), decide, what="The server")
    assert result.accepted and attempts == ["web", "renamed"]
    assert store.get(sid).name == "renamed" and store.get(sid).description == "mine"


def test_a_command_that_keeps_losing_ends_in_a_conflict(commands: Commands,
                                                        store: ServerService) -> None:
    sid = _created(commands)
    calls = 0

    def decide(uow: UnitOfWork) -> Aggregate | None:
        nonlocal calls
        calls += 1
        server = store.get(sid)
        rival = store.get(sid)
        rival.update(user(), store.clock.now(), {"name": f"rival-{calls}"})
        store.save(rival)
        server.update(user(), store.clock.now(), {"description": "never"})
        return server

    commands.deps.pipeline.back_off = lambda attempt, wait=True: None  # type: ignore[method-assign]
    with pytest.raises(Conflict, match="The server was changed by another request"):
        commands.deps.pipeline.execute(user(), decide, what="The server")
    assert calls == MAX_ATTEMPTS


def test_nothing_to_record_writes_nothing(commands: Commands, store: ServerService) -> None:
    sid = _created(commands)
    version = store.get(sid).version
    result = commands.servers.update(user(), sid)  # no change asked
    assert not result.accepted and result.position is None
    assert store.get(sid).version == version


def test_the_same_key_acts_once_and_another_body_is_refused(commands: Commands,
                                                            store: ServerService) -> None:
    ctx = user()
    first = commands.servers.create(ctx, name="web", flavor="m1.small", image=IMAGE,
                                    idempotency_key="k1")
    again = commands.servers.create(user(), name="web", flavor="m1.small", image=IMAGE,
                                    idempotency_key="k1")
    assert again.server_id == first.server_id and not again.accepted
    assert again.request_id == first.request_id
    with pytest.raises(IdempotencyConflict):
        commands.servers.create(user(), name="other", flavor="m1.small", image=IMAGE,
                                idempotency_key="k1")
    assert [s.name for s in _servers(store)] == ["web"]


def test_an_action_key_covers_its_parameters(commands: Commands) -> None:
    sid = _created(commands)
    commands.outcomes.record(sid, commands.deps.store.get(sid).pending_request_id or "",
                             lambda s, c, at: s.complete(c, at, power_state=1))
    commands.actions.act(user(), sid, "reboot", idempotency_key="r1", type="SOFT")
    with pytest.raises(IdempotencyConflict):
        commands.actions.act(user(), sid, "reboot", idempotency_key="r1", type="HARD")


def test_a_bad_key_is_refused() -> None:
    with pytest.raises(BadRequest):
        idempotency("", "create", {})


def _servers(store: ServerService) -> list[Server]:
    out = []
    for notification in store.recorder.select_notifications(start=1, limit=100):
        found = store.repository.get(notification.originator_id)
        if isinstance(found, Server) and found not in out:
            out.append(found)
    return out
