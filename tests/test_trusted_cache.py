"""A command decides on the cached server without reading the log when the cached copy is
the newest version this process knows of (its own last save, nothing newer met by a fold
since), on SQLite and on PostgreSQL, through the engine and through the command service
alone. What another process wrote meanwhile is never decided over: a write on the stale
copy loses on the version and is decided again after a read, and a decision that writes
nothing (or is refused) on an unread copy is made again after a read. Once a fold met the
other process's write, or (PostgreSQL) its notification named it, the next command reads;
where nothing names such writes, a server that lost a race so is read from then on.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from tests.engines import make_engine
from vmledger.domain.commands import Commands
from vmledger.domain.errors import InvalidState
from vmledger.domain.service import ServerService
from vmledger.domain.wakeups import folded_into, hosts_of, payload, written_of
from vmledger.persistence import environment

IMAGE = "cirros-0.6.2-x86_64"


class Elsewhere:
    """Another process's command service on the same database (no read models)."""

    def __init__(self, url: str) -> None:
        self.store = ServerService(environment(url))
        self.commands = Commands.build(self.store)

    def act(self, server_id: str, action: str) -> Any:
        return self.commands.actions.act(self.store.context(), server_id, action)

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def elsewhere(url: str) -> Iterator[Elsewhere]:
    with contextlib.closing(Elsewhere(url)) as other:
        yield other


def _trusted(engine: Any, server_id: str) -> bool:
    """Whether this process's next command on the server would take its cached copy
    unread (asked without loading it)."""
    return _trusted_in(engine.service, server_id)


def _trusted_in(store: ServerService, server_id: str) -> bool:
    from vmledger.domain.service import server_uuid

    repository = store.repository
    if repository.latest is None:
        return False
    try:
        cached = repository.cache.get(server_uuid(server_id))
    except KeyError:
        return False
    return bool(cached.version >= repository.latest.get(server_id, 1 << 62))


def _reads(engine: Any, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The reads of the log by server id from now on (each command's load, unless it
    took the cached copy unread)."""
    return _reads_of(engine.service, monkeypatch)


def _reads_of(service: ServerService, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    store = service.repository.event_store
    read = store.get
    calls: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("originator_id", args[0] if args else None))
        return read(*args, **kwargs)

    monkeypatch.setattr(store, "get", counted)
    return calls


def test_a_command_after_this_processes_own_save_reads_nothing(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_engine(url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        engine.lock(server.id)
        assert _trusted(engine, server.id)
        reads = _reads(engine, monkeypatch)
        engine.act(server.id, "unlock")
        engine.lock(server.id)
        assert reads == []
        assert engine.get_server(server.id).locked


def test_a_no_op_on_a_stale_copy_is_decided_again_on_a_read(
        url: str, elsewhere: Elsewhere) -> None:
    """This process locked the server; another one unlocked it. A lock here, on the
    cached (locked) copy, would be "nothing to do": it is decided again after a read
    and locks the server."""
    with make_engine(url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        engine.lock(server.id)
        elsewhere.act(server.id, "unlock")
        assert _trusted(engine, server.id)  # nothing has told this process yet
        result = engine.lock(server.id)
        assert result.accepted
        engine.updater.catch_up()
        assert engine.get_server(server.id).locked


def test_a_write_on_a_stale_copy_loses_and_is_refused_after_a_read(
        url: str, elsewhere: Elsewhere, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process stopped the server (it is powering off); a pause decided here on
    the cached ACTIVE copy loses on the version, and decided again at once (no back-off:
    nobody is contending) on the read it is refused, as the table says."""
    from vmledger.domain.commands import pipeline

    waits: list[float] = []
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(sleep=waits.append))
    with make_engine(url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        engine.lock(server.id)
        engine.act(server.id, "unlock")
        elsewhere.act(server.id, "stop")
        assert _trusted(engine, server.id)
        retries: list[None] = []
        engine.commands.deps.pipeline.retry_observers.append(lambda: retries.append(None))
        with pytest.raises(InvalidState):
            engine.act(server.id, "pause")
        assert len(retries) == 1 and waits == []
        history = [e.event for e in engine.history(server.id)]
        assert history.count("ActionRequested") == 1  # the stop alone
        engine.lock(server.id)
        # nothing names another process's writes to this one (SQLite has no
        # notifications; on PostgreSQL no follower listens here): the server it wrote
        # under this process's copy is read for every command from now on
        assert not engine.service.repository.told_of_writes
        assert not _trusted(engine, server.id)


def test_a_fold_that_met_another_processes_write_makes_the_next_command_read(
        url: str, elsewhere: Elsewhere) -> None:
    with make_engine(url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        engine.lock(server.id)
        elsewhere.act(server.id, "unlock")
        engine.updater.catch_up()  # the follower's catch-up, which NOTIFY starts
        assert not _trusted(engine, server.id)
        assert engine.lock(server.id).accepted
        assert _trusted(engine, server.id)  # its own save, the newest again


@pytest.mark.postgres
def test_another_processes_notification_makes_the_next_command_read(
        postgres_url: str) -> None:
    """Another API process writes the server and folds it into the shared read models
    itself, so this process's follower has nothing to catch up: the notification's
    payload names what was written, and this process's next command reads."""
    with make_engine(postgres_url) as here, \
            make_engine(postgres_url, host="compute-2", seed=1) as there:
        server = here.create_server("web", "m1.small", IMAGE)
        here.run_until_idle()
        here.lock(server.id)
        stop = threading.Event()
        follower = threading.Thread(target=here.updater.follow, args=(stop,),
                                    kwargs={"poll": 0.05}, daemon=True)
        follower.start()
        try:
            # listening: its start forgets what it cannot know, and from then on the
            # notifications name what the other processes write
            _wait_until(lambda: not _trusted(here, server.id))
            assert here.service.repository.told_of_writes
            here.act(server.id, "unlock")  # read, then saved: the newest known again
            assert _trusted(here, server.id)
            there.lock(server.id)
            _wait_until(lambda: not _trusted(here, server.id))
        finally:
            stop.set()
            follower.join(10)
        assert not here.service.repository.told_of_writes  # nobody listens any more
        assert here.act(server.id, "unlock").accepted
        assert not here.get_server(server.id).locked


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


def test_the_agent_on_a_stale_copy_makes_no_call(url: str, elsewhere: Elsewhere) -> None:
    """The agent looks at the copy the request saved here, unread; another process
    deleted the server meanwhile. Its first commit, written before any call, loses on
    the version; read again, the reboot is superseded: no call is made."""
    with make_engine(url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        request_id = engine.reboot(server.id, hard=True).request_id
        assert _trusted(engine, server.id)
        elsewhere.act(server.id, "delete")
        retries: list[None] = []
        engine.commands.deps.pipeline.retry_observers.append(lambda: retries.append(None))
        engine.agent.reconcile(server.id, request_id)
        assert len(retries) == 1  # the commit on the stale copy lost, then read
        calls = [e.call for e in engine.service.history(server.id)
                 if type(e).__name__ == "HypervisorCallStarted"]
        assert "reboot" not in calls
        assert engine.hypervisor.observe(server.id).power_state == 1  # still running
        engine.run_until_idle()
        assert "reboot" not in [e.call for e in engine.service.history(server.id)
                                if type(e).__name__ == "HypervisorCallStarted"]


def test_the_command_service_alone_decides_on_its_own_saves_unread(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No read models, no follower: the command service alone trusts what it saved."""
    with contextlib.closing(Elsewhere(url)) as alone:
        server_id = alone.commands.servers.create(
            alone.store.context(), name="web", flavor="m1.small", image=IMAGE).server_id
        assert alone.act(server_id, "lock").accepted
        assert _trusted_in(alone.store, server_id)
        reads = _reads_of(alone.store, monkeypatch)
        assert alone.act(server_id, "unlock").accepted
        assert alone.act(server_id, "lock").accepted
        assert reads == []
        assert alone.store.get(server_id).locked


def test_two_processes_taking_turns_on_a_server_lose_one_race_each(url: str) -> None:
    """Two command services with nothing naming each other's writes (no follower)
    lock and unlock one server in turn: each loses one race on its cached copy, then
    reads that server for every command; every command is applied once, in order."""
    with contextlib.closing(Elsewhere(url)) as one, contextlib.closing(Elsewhere(url)) as two:
        server_id = one.commands.servers.create(
            one.store.context(), name="web", flavor="m1.small", image=IMAGE).server_id
        retries = {id(one): 0, id(two): 0}
        for side in (one, two):
            side.commands.deps.pipeline.retry_observers.append(
                lambda side=side: retries.__setitem__(id(side), retries[id(side)] + 1))
        assert two.act(server_id, "lock").accepted  # two's copy: read, then its own save
        before = two.store.get(server_id).version
        for turn in range(8):
            side = (one, two)[turn % 2]
            action = ("unlock", "lock")[turn % 2]
            assert side.act(server_id, action).accepted, (turn, action)
        assert retries == {id(one): 1, id(two): 1}
        assert not _trusted_in(two.store, server_id)
        assert two.store.get(server_id).locked
        # each command written once, none lost or repeated by the lost races
        assert one.store.get(server_id).version == before + 8


def test_a_race_lost_to_this_processes_own_write_keeps_the_server_trusted(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command decides on the saved copy while another command of this process
    writes the server: it loses on the version and is decided again after a read, but
    the write that overtook it is one this process knows of, so the server is not
    taken for one another process writes (it stays trusted)."""
    with contextlib.closing(Elsewhere(url)) as alone:
        server_id = alone.commands.servers.create(
            alone.store.context(), name="web", flavor="m1.small", image=IMAGE).server_id
        assert alone.act(server_id, "lock").accepted
        repository = alone.store.repository
        trusted = repository.get_trusted
        overtaken: list[bool] = []

        def overtaking(aggregate_id: Any) -> Any:
            found = trusted(aggregate_id)
            if not overtaken:  # the first load: another command of this process lands
                overtaken.append(True)
                assert alone.act(server_id, "unlock").accepted
            return found

        monkeypatch.setattr(repository, "get_trusted", overtaking)
        retries: list[None] = []
        alone.commands.deps.pipeline.retry_observers.append(lambda: retries.append(None))
        before = alone.store.get(server_id).version
        # decided on the locked copy: an unlock, which loses to the unlock above, and is
        # decided again on a read
        assert alone.act(server_id, "unlock").accepted
        assert overtaken and len(retries) == 1
        assert alone.store.get(server_id).version == before + 2  # each unlock once
        assert str(server_id) not in repository.distrusted
        monkeypatch.setattr(repository, "get_trusted", trusted)
        assert _trusted_in(alone.store, server_id)


def test_the_payload_names_what_was_written_without_changing_the_rest() -> None:
    written = {"6f0c1f0e-0000-4000-8000-000000000001": 7, "quota-set": 2}
    text = payload(frozenset({"compute-2"}), folded=frozenset({"vmledger.views.5"}),
                   written=written)
    assert written_of(text) == written
    assert hosts_of(text) == frozenset({"compute-2"})
    assert folded_into(text) == frozenset({"vmledger.views.5"})
    # an earlier release's payload says nothing of what was written
    assert written_of(payload(frozenset({"compute-2"}))) is None
    many = {f"{i:036d}": i for i in range(200)}
    assert written_of(payload(None, written=many)) is None  # too many to name
    assert len(payload(frozenset(f"compute-{i:05d}.example.org" for i in range(1000)),
                       written=many)) < 8000
