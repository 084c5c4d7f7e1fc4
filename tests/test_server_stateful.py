"""Hypothesis stateful test of the Server aggregate: random commands and agent outcomes
against a model that reads only the lifecycle table; replay always equals live."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.oracle import expected_refusal
from vmledger.domain import lifecycle as lc
from vmledger.domain import status as shown
from vmledger.domain.catalog import DEFAULT_FLAVORS
from vmledger.domain.errors import Forbidden, VmledgerError
from vmledger.domain.server import Context, Server

#: the actions the host agent enacts (the synchronous ones have their own rules)
ACTIONS = [n for n, a in lc.ACTIONS.items() if a.asynchronous and n != "create"]


class ServerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.at = datetime(2026, 1, 1, tzinfo=UTC)
        self.n = 0
        self.server = Server.request(
            id=uuid4(), ctx=self.ctx(), at=self.at, name="s", flavor=DEFAULT_FLAVORS[1].as_dict(),
            image={"id": "i", "name": "img"}, host="h", metadata={}, description=None,
            key_name=None, availability_zone="nova", addresses={}, attributes={})

    def ctx(self, admin: bool = False) -> Context:
        self.n += 1
        return Context(request_id=f"req-{self.n}", user_id="u", project_id="p", is_admin=admin)

    def tick(self) -> datetime:
        self.at += timedelta(seconds=1)
        return self.at

    @rule(action=st.sampled_from(ACTIONS), admin=st.booleans())
    def request(self, action: str, admin: bool) -> None:
        s = self.server
        expected = expected_refusal(lc.ACTIONS[action], s.subject, admin)
        params: dict[str, Any] = {}
        if action == "resize":
            params = {"flavor": DEFAULT_FLAVORS[2].as_dict()}
        before = s.version
        try:
            s.request_action(action, self.ctx(admin), self.tick(), params=params)
            refused: type[Exception] | None = None
        except VmledgerError as e:
            refused = type(e)
        if expected is None:
            assert refused is None
            assert s.pending_action == action
            steps = lc.ACTIONS[action].steps
            assert s.task_state == (steps[0] if steps else None)
        else:
            assert refused is not None and issubclass(refused, expected)
            assert s.version == before  # a refusal records nothing

    @rule(locked=st.booleans(), admin=st.booleans())
    def lock(self, locked: bool, admin: bool) -> None:
        s = self.server
        expected = expected_refusal(lc.ACTIONS["lock" if locked else "unlock"], s.subject, admin)
        if (expected is None and not locked and s.locked and s.locked_by == "admin"
                and not admin):
            expected = Forbidden  # only an admin lifts an admin's lock
        try:
            if locked:
                s.lock(self.ctx(admin), self.tick(), None)
            else:
                s.unlock(self.ctx(admin), self.tick())
            refused: type[Exception] | None = None
        except VmledgerError as e:
            refused = type(e)
        assert refused is expected or (refused and expected and issubclass(refused, expected))

    @rule(action=st.sampled_from(["update_metadata", "delete_metadata"]),
          admin=st.booleans(), value=st.sampled_from(["a", "b"]))
    def metadata(self, action: str, admin: bool, value: str) -> None:
        s = self.server
        expected = expected_refusal(lc.ACTIONS[action], s.subject, admin)
        wanted = {"k": value} if action == "update_metadata" else {}
        try:
            s.change_metadata(self.ctx(admin), self.tick(), wanted, action=action)
            refused: type[Exception] | None = None
        except VmledgerError as e:
            refused = type(e)
        if expected is None:
            assert refused is None and s.metadata == wanted
        else:
            assert refused is not None and issubclass(refused, expected)

    @precondition(lambda self: self.server.pending is not None)
    @rule()
    def advance(self) -> None:
        s = self.server
        steps = lc.ACTIONS[str(s.pending_action)].steps
        if s.task_state in steps and steps.index(s.task_state) + 1 < len(steps):
            s.advance(self.ctx(), self.tick(), steps[steps.index(s.task_state) + 1])

    @precondition(lambda self: self.server.pending is not None)
    @rule(kind=st.sampled_from(["complete", "fail", "rollback"]))
    def outcome(self, kind: str) -> None:
        s = self.server
        action = str(s.pending_action)
        if kind == "complete":
            s.complete(self.ctx(), self.tick(), power_state=1,
                       confirm_window=timedelta(hours=24))
        else:
            s.fail(self.ctx(), self.tick(), power_state=1, rollback=kind == "rollback",
                   message="boom")
        assert s.pending is None and s.task_state is None
        if action == "delete" and kind == "complete":
            assert s.vm_state == lc.DELETED

    @invariant()
    def replay_equals_live(self) -> None:
        events = list(self.server.collect_events())
        self.events = [*getattr(self, "events", []), *events]
        replayed: Any = None
        for event in self.events:
            replayed = event.mutate(replayed)
        assert vars(replayed) == vars(self.server)

    @invariant()
    def status_is_novas(self) -> None:
        assert self.server.status in shown.STATUSES
        if self.server.pending is None:
            assert self.server.task_state is None


TestServerStateful = ServerMachine.TestCase
TestServerStateful.settings = settings(max_examples=150, stateful_step_count=40,
                                       deadline=None)
