"""PostgreSQL: a command decides on the cached server without reading the log when the
cached copy is the newest version this process knows of (its own last save, nothing
newer met by a fold since). What another process wrote meanwhile is never decided over:
a write on the stale copy loses on the version and is decided again after a read, and a
decision that writes nothing (or is refused) on an unread copy is made again after a
read. Once a fold met the other process's write, or its notification named it, the
next command reads. (The SQLite and payload checks need no cluster but live here with
the rest.)
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

pytestmark = pytest.mark.postgres

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
def elsewhere(postgres_url: str) -> Iterator[Elsewhere]:
    with contextlib.closing(Elsewhere(postgres_url)) as other:
        yield other


def _trusted(engine: Any, server_id: str) -> bool:
    """Whether this process's next command on the server would take its cached copy
    unread (asked without loading it)."""
    from vmledger.domain.service import server_uuid

    repository = engine.service.repository
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
    store = engine.service.repository.event_store
    read = store.get
    calls: list[Any] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("originator_id", args[0] if args else None))
        return read(*args, **kwargs)

    monkeypatch.setattr(store, "get", counted)
    return calls


def test_a_command_after_this_processes_own_save_reads_nothing(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with make_engine(postgres_url) as engine:
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
        postgres_url: str, elsewhere: Elsewhere) -> None:
    """This process locked the server; another one unlocked it. A lock here, on the
    cached (locked) copy, would be "nothing to do": it is decided again after a read
    and locks the server."""
    with make_engine(postgres_url) as engine:
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
        postgres_url: str, elsewhere: Elsewhere, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process stopped the server (it is powering off); a pause decided here on
    the cached ACTIVE copy loses on the version, and decided again at once (no back-off:
    nobody is contending) on the read it is refused, as the table says."""
    from vmledger.domain.commands import pipeline

    waits: list[float] = []
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(sleep=waits.append))
    with make_engine(postgres_url) as engine:
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


def test_a_fold_that_met_another_processes_write_makes_the_next_command_read(
        postgres_url: str, elsewhere: Elsewhere) -> None:
    with make_engine(postgres_url) as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        engine.lock(server.id)
        elsewhere.act(server.id, "unlock")
        engine.updater.catch_up()  # the follower's catch-up, which NOTIFY starts
        assert not _trusted(engine, server.id)
        assert engine.lock(server.id).accepted
        assert _trusted(engine, server.id)  # its own save, the newest again


def test_sqlite_reads_the_log_for_every_command(tmp_path: Any) -> None:
    with make_engine(f"sqlite:///{tmp_path / 'v.db'}") as engine:
        server = engine.create_server("web", "m1.small", IMAGE)
        engine.run_until_idle()
        engine.lock(server.id)
        assert not _trusted(engine, server.id)


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
            # listening: its start forgets what it cannot know
            _wait_until(lambda: not _trusted(here, server.id))
            here.act(server.id, "unlock")  # read, then saved: the newest known again
            assert _trusted(here, server.id)
            there.lock(server.id)
            _wait_until(lambda: not _trusted(here, server.id))
        finally:
            stop.set()
            follower.join(10)
        assert here.act(server.id, "unlock").accepted
        assert not here.get_server(server.id).locked


def _wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.01)


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
