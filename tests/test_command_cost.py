"""What a command costs on SQLite, as a caller of the engine pays it: the statements a
hard reboot and a lock run, and the statements compiled for them.

Budgets, not targets: a change that makes a command run more statements fails here and
says what it costs (``python -m benchmarks --suite actions`` prints the same figures per
action, beside Nova's row pattern).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from benchmarks.sqlite_trace import tracing_connections
from tests.engines import make_engine
from vmledger import Engine
from vmledger.audit.chain import request_fields
from vmledger.projections import allocations, migrations, project_usage, runner

#: a hard reboot through the embedding API, request to outcome, read models caught up
REBOOT_STATEMENTS = 29
#: the same for one server alone (each pass has one action: a client's reboot over
#: HTTP): the passes' reads are not shared with other actions
LONE_REBOOT_STATEMENTS = 44
#: a lock decided in the request, folded into the read models in its transaction
LOCK_STATEMENTS = 13
#: a pass of the agent and the timer with nothing to do (the background loop runs one
#: after every busy pass, and one whenever a command wakes it): the guests' questions,
#: the read models' position and log page once, the agent's work, the due deadlines
IDLE_PASS_STATEMENTS = 5


def traced(statements: list[str], opened: list[dict[str, Any]]
           ) -> contextlib.AbstractContextManager[None]:
    """Every SQLite connection opened meanwhile reports its statements to
    ``statements``; the keyword arguments it was opened with go to ``opened``."""

    def trace_for(kwargs: dict[str, Any]) -> Callable[[str], None]:
        opened.append(kwargs)
        return statements.append

    return tracing_connections(trace_for)


@pytest.fixture
def engine_traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[Engine, list[str], list[dict[str, Any]]]]:
    # the check for a read-model layout switched by another process runs at most once a
    # second, whatever the commands do: not a command's cost, so kept out of the
    # counted statements (a loaded machine can stretch a test past a second)
    monkeypatch.setattr(runner, "REFRESH_EVERY", 3600.0)
    statements: list[str] = []
    opened: list[dict[str, Any]] = []
    with traced(statements, opened):
        engine = make_engine(f"sqlite:///{tmp_path / 'cost.db'}")
    try:
        yield engine, statements, opened
    finally:
        engine.close()


def _servers(engine: Engine, count: int) -> list[str]:
    ids = [engine.create_server(f"cost-{i}", "1", "cirros-0.6.2-x86_64").id
           for i in range(count)]
    engine.run_until_idle()
    for server_id in ids:  # the first reboot warms what a first use prepares
        engine.reboot(server_id, hard=True)
    engine.run_until_idle()
    return ids


def test_an_idle_pass_reads_the_log_once(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]]) -> None:
    engine, statements, _ = engine_traced
    server_id = _servers(engine, 1)[0]
    engine.lock(server_id)
    statements.clear()
    passes = 10
    for _ in range(passes):
        assert engine.run_once() == 0
    assert len(statements) / passes <= IDLE_PASS_STATEMENTS, statements[:12]
    assert engine.get_server(server_id).locked


def test_a_hard_reboot_runs_within_its_statement_budget(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]]) -> None:
    engine, statements, _ = engine_traced
    ids = _servers(engine, 10)
    statements.clear()
    for server_id in ids:
        engine.reboot(server_id, hard=True)
    engine.run_until_idle()
    per_action = len(statements) / len(ids)
    assert per_action <= REBOOT_STATEMENTS, per_action
    # no load reads the log: the request decides on the copy the previous outcome saved,
    # the agent looks at the one the request saved (nothing newer known to this
    # process), its first commit starts from that one and the outcome from the server
    # as that commit saved it
    loads = [s for s in statements
             if s.startswith("SELECT * FROM stored_events WHERE originator_id")]
    assert loads == []
    for server_id in ids:
        assert engine.get_server(server_id).status == "ACTIVE"


def test_a_lone_hard_reboot_runs_within_its_statement_budget(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]]) -> None:
    engine, statements, _ = engine_traced
    server_id = _servers(engine, 1)[0]
    statements.clear()
    engine.reboot(server_id, hard=True)
    engine.run_until_idle()
    assert len(statements) <= LONE_REBOOT_STATEMENTS, statements
    # the agent's outcome was folded in its own transaction, with the step before it:
    # the timer, after the agent, reads no log page; the next pass's agent reads one
    pages = [s for s in statements if s.startswith("SELECT rowid, originator_id")
             and "ORDER BY rowid LIMIT 1000" in s]
    assert len(pages) == 2, pages
    assert engine.get_server(server_id).status == "ACTIVE"


def test_a_lock_runs_within_its_statement_budget(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]]) -> None:
    engine, statements, _ = engine_traced
    ids = _servers(engine, 3)
    engine.lock(ids[0])
    engine.act(ids[0], "unlock")
    statements.clear()
    for server_id in ids:
        engine.lock(server_id)
    assert len(statements) / len(ids) <= LOCK_STATEMENTS, statements
    assert all(engine.get_server(server_id).locked for server_id in ids)


def _held(hypervisors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # (without the uptime: a clock's text, which moves on between two reads)
    return [{k: v for k, v in h.items() if k != "uptime"} for h in hypervisors]


def test_a_lock_works_out_no_allocations_nor_usage(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a lock changes nothing a server holds of its host nor counts against its quota:
    # its fold neither works them out nor touches their rows (the per-host and
    # per-project sums read as before)
    engine, statements, _ = engine_traced
    ids = _servers(engine, 3)
    project = engine.get_server(ids[0]).project_id
    hosts, usage = engine.hypervisors(), engine.quota_usage(project)
    worked_out: list[str] = []

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            worked_out.append(name)
            return real(*args)
        return call

    monkeypatch.setattr(allocations, "allocations_of",
                        counted("allocations", allocations.allocations_of))
    monkeypatch.setattr(project_usage, "quota_of", counted("usage", project_usage.quota_of))
    statements.clear()
    for server_id in ids:
        engine.lock(server_id)
        engine.act(server_id, "unlock")
    assert worked_out == []
    touched = [s for s in statements if any(table in s for table in (
        allocations.TABLE, allocations.HOSTS_TABLE, project_usage.TABLE))]
    assert touched == []
    assert not any(engine.get_server(server_id).locked for server_id in ids)
    assert _held(engine.hypervisors()) == _held(hosts)
    assert engine.quota_usage(project) == usage
    # what changes them is still worked out: a deleted server frees its host and quota
    engine.act(ids[0], "delete")
    engine.run_until_idle()
    assert {"allocations", "usage"} <= set(worked_out)
    assert engine.quota_usage(project)["instances"] == usage["instances"] - 1
    assert (sum(h["running_vms"] for h in engine.hypervisors())
            == sum(h["running_vms"] for h in hosts) - 1)


def test_a_lock_makes_no_migrations_batch(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a lock changes nothing a migration record follows, and a command's own fold
    # preloads no records: its fold makes no batch of the migrations read model (nor
    # writes one), yet a record a later command begins is there as before
    engine, _, _ = engine_traced
    ids = _servers(engine, 3)
    made: list[bool] = []
    batch = migrations.Migrations.batch

    def counted(self: migrations.Migrations, writer: Any, *, empty: bool) -> Any:
        made.append(writer.bulk)
        return batch(self, writer, empty=empty)

    monkeypatch.setattr(migrations.Migrations, "batch", counted)
    for server_id in ids:
        engine.lock(server_id)
        engine.act(server_id, "unlock")
    assert made == []
    assert not any(engine.get_server(server_id).locked for server_id in ids)
    engine.resize(ids[0], flavor="2")
    engine.run_until_idle()
    assert made
    [record] = engine.migrations(server_id=ids[0])
    assert record["migration_type"] == "resize" and record["old_flavor_id"] == 1


def test_sqlite_connections_keep_their_prepared_statements(
        engine_traced: tuple[Engine, list[str], list[dict[str, Any]]]) -> None:
    """eventsourcing opens its connections with ``cached_statements=True``: a cache of
    one statement, every other one compiled again each time it runs."""
    engine, _, opened = engine_traced
    _servers(engine, 2)
    assert opened
    for kwargs in opened:
        assert kwargs.get("cached_statements", 128) >= 128, kwargs


def _json_request_fields(state: bytes) -> tuple[str, datetime] | None:
    """The request index's fields read with the standard library alone."""
    try:
        data = json.loads(state)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    request_id, stamp = data.get("request_id"), data.get("timestamp")
    if not isinstance(request_id, str) or not isinstance(stamp, dict):
        return None
    raw = stamp.get("_data_")
    if not isinstance(raw, str):
        return None
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return request_id, at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


STAMP = '{"_type_":"datetime_iso","_data_":"2026-01-01T00:00:00+00:00"}'


@pytest.mark.parametrize("state", [
    f'{{"timestamp":{STAMP},"request_id":"req-1","n":1}}'.encode(),
    f'{{"request_id":"a","request_id":"b","timestamp":{STAMP}}}'.encode(),  # last wins
    f'\ufeff{{"request_id":"a","timestamp":{STAMP}}}'.encode(),  # a byte order mark
    f'{{"request_id":"a","timestamp":{STAMP},"x":NaN}}'.encode(),
    f'{{"request_id":"\\ud800","timestamp":{STAMP}}}'.encode(),  # a lone surrogate
    f'{{"request_id":"a","timestamp":{STAMP},"big":1e400,"n":{10**30}}}'.encode(),
    b'{"request_id":"a","timestamp":{"_data_":"2026-01-01T00:00:00"}}',
    b'{"request_id":"a","timestamp":{"_data_":"yesterday"}}',
    b'{"request_id":7,"timestamp":{"_data_":"2026-01-01T00:00:00"}}',
    b'["request_id"]', b'{"request_id":"a"', b"\xff\xfe{}", b"",
    "{\"request_id\":\"é\",\"timestamp\":{\"_data_\":\"2026-01-01T00:00:00Z\"}}".encode(),
])
def test_the_request_index_reads_a_state_as_the_standard_library_does(state: bytes) -> None:
    assert request_fields(state) == _json_request_fields(state)
    assert request_fields(state.decode("utf-8", "replace")) == _json_request_fields(
        state.decode("utf-8", "replace").encode())
