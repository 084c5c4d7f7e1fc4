"""The SQLite store's connection pool keeps the library's rules on its own short path:
one writer at a time, a bounded number of connections, a clear timeout when none can be
had, and nothing held after a request that timed out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from eventsourcing.persistence import ConnectionPoolClosedError, ConnectionUnavailableError
from eventsourcing.sqlite import SQLiteConnection

from vmledger.audit.sqlite_recorder import StatementCachingPool
from vmledger.domain.service import ServerService
from vmledger.persistence import environment


def _pool(tmp_path: Path, **settings: int) -> StatementCachingPool:
    return StatementCachingPool(db_name=str(tmp_path / "p.db"), **settings)


def test_one_writer_at_a_time_and_a_timeout_when_it_is_not_returned(tmp_path: Path) -> None:
    pool = _pool(tmp_path)
    writer = pool.get_connection(is_writer=True)
    started = time.monotonic()
    with pytest.raises(ConnectionUnavailableError, match="writer"):
        pool.get_connection(0.05, is_writer=True)
    assert time.monotonic() - started >= 0.05
    reader = pool.get_connection(0.05, is_writer=False)  # readers do not wait for it
    pool.put_connection(reader)
    got: list[SQLiteConnection] = []
    waiting = threading.Thread(target=lambda: got.append(
        pool.get_connection(5, is_writer=True)))
    waiting.start()
    time.sleep(0.05)
    assert not got  # still waiting for the writer
    pool.put_connection(writer)
    waiting.join(5)
    assert got  # once the writer was returned
    pool.put_connection(got[0])
    assert (pool.num_in_use, pool.num_in_pool) == (0, 2)  # both kept, none leaked
    pool.close()
    with pytest.raises(ConnectionPoolClosedError):
        pool.get_connection(is_writer=True)


def test_a_writer_that_gets_no_connection_gives_its_turn_back(tmp_path: Path) -> None:
    pool = _pool(tmp_path, pool_size=1, max_overflow=0)
    reader = pool.get_connection(is_writer=False)
    with pytest.raises(ConnectionUnavailableError, match="connection"):
        pool.get_connection(0.05, is_writer=True)  # the only connection is in use
    pool.put_connection(reader)
    writer = pool.get_connection(0.05, is_writer=True)  # not locked out by the first
    assert pool.num_in_use == 1
    pool.put_connection(writer)
    assert (pool.num_in_use, pool.num_in_pool) == (0, 1)


def test_concurrent_commands_share_the_pool(tmp_path: Path) -> None:
    store = ServerService(environment(f"sqlite:///{tmp_path / 's.db'}"))
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                store.recorder.max_notification_id()
                with store.recorder.datastore.transaction(commit=True) as curs:
                    curs.execute("SELECT 1")
        except BaseException as error:  # reported below
            failures.append(error)
    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures
    pool = store.recorder.datastore.pool
    assert pool.num_in_use == 0 and pool.num_in_pool >= 1
