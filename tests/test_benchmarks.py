"""The benchmarks still run: every suite at a tiny size, its report checked for shape.

Nothing here measures speed (targets live in the benchmarks' own reports); these tests
only make sure ``python -m benchmarks`` cannot break unnoticed when the code it drives
changes. PostgreSQL parts run when PostgreSQL's binaries are installed (as in CI) and
are reported as skipped by the benchmark otherwise.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from benchmarks import (
    actions,
    api,
    audit,
    commands,
    hypervisors,
    moves,
    projections,
    scale,
    writers,
)
from tests.support.postgres import postgres_skip_reason

pytestmark = pytest.mark.slow

BACKENDS = ("sqlite", "postgres")


def _quiet(_line: str) -> None:
    pass


def _backends_line(report: str) -> None:
    """Both backends appear: measured, or skipped with the reason when PostgreSQL's
    binaries are missing (never silently left out)."""
    assert "sqlite" in report
    if postgres_skip_reason() is None:
        assert "postgres" in report and "postgres  skipped" not in report


def test_projections_benchmark_runs() -> None:
    sizes = projections.Sizes(servers=12, group=12, repetitions=1, profile=True,
                              lag_commands=8, lag_spacing=0.002)
    report = projections.run(BACKENDS, sizes, log=_quiet)
    assert "Projection rebuild" in report
    assert "same in every rebuild" in report
    assert "where the rebuild's time goes" in report
    assert "x its own read + decode:" in report
    if postgres_skip_reason() is None:
        assert "Live projection lag" in report and "lag: save returned" in report
    _backends_line(report)


def test_commands_benchmark_runs() -> None:
    sizes = commands.Sizes(sqlite_servers=3, postgres_servers=2, repetitions=1,
                           profile_servers=2)
    report = commands.run(BACKENDS, sizes, variants=False, log=_quiet)
    assert "cmd/s" in report
    _backends_line(report)


def test_actions_benchmark_runs() -> None:
    report = actions.run(BACKENDS, actions.Sizes(servers=3, rounds=1, repetitions=1),
                         log=_quiet)
    assert "act/s" in report and "Nova/s" in report
    assert "commits/action" in report and "statements/action" in report
    assert "CPU ms/action" in report
    _backends_line(report)


def test_the_actions_benchmark_counts_statements_apart_from_its_timed_rounds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No statement of a timed round reaches a trace callback (``sqlite3`` expands every
    traced statement with its parameters, which costs vmledger's larger rows more than
    Nova's): commits and statements come from untimed rounds of the same work, and the
    report still prints them."""
    timing = [False]
    traced = {True: 0, False: 0}

    class Spied(sqlite3.Connection):
        def set_trace_callback(self, trace: Callable[[str], object] | None) -> None:
            if trace is None:
                super().set_trace_callback(None)
                return

            def spied(statement: str) -> None:
                traced[timing[0]] += 1
                trace(statement)

            super().set_trace_callback(spied)

    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", Spied)
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        return conn

    def timed_steps(job: commands.Job) -> commands.Job:
        try:
            yield next(job)  # set-up: not timed
            while True:
                timing[0] = True
                try:
                    n = next(job)
                except StopIteration:
                    return
                finally:
                    timing[0] = False
                yield n
        finally:
            job.close()

    real_interleave = commands.interleave

    def interleave(jobs: Sequence[commands.Job], seed: int) -> list[commands.Run]:
        return real_interleave([timed_steps(job) for job in jobs], seed)

    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(commands, "interleave", interleave)
    report = actions.run(("sqlite",), actions.Sizes(servers=3, rounds=1, repetitions=1),
                         log=_quiet)
    assert traced[True] == 0
    assert traced[False] > 0
    row = re.search(r"^sqlite +read models folded in the command +([0-9.]+) +[0-9.]+x +"
                    r"([0-9.]+) +([0-9.]+) +[0-9.]+x +([0-9.]+) +([0-9.]+) +[0-9.]+x +"
                    r"([0-9.]+)$", report, re.MULTILINE)
    assert row, report
    commits, nova_commits, statements, nova_statements, cpu, nova_cpu = map(
        float, row.groups())
    assert commits > 0 and nova_commits == 6 and statements > nova_statements > 0
    assert cpu > 0 and nova_cpu > 0


def test_api_benchmark_runs() -> None:
    sizes = api.Sizes(servers=12, round_trips=4, warmup=1, repetitions=1, window=0.1,
                      connections=2, profile=False)
    report = api.run(sizes, log=_quiet)
    assert "servers/detail" in report
    assert "round trip" in report.lower()
    # the request, the agent's "about to call" and its outcome, flushed; the read models'
    # fold rides in the outcome's transaction (a heartbeat, or the follower folding the
    # agent's first commit before the outcome does, may add a fraction)
    found = re.search(r"commits per round trip .*: ([0-9.]+) flushed, ([0-9.]+) not", report)
    assert found, report
    assert 3.0 <= float(found[1]) < 3.5 and float(found[2]) < 0.5, found[0]
    assert "floor of a round trip" in report
    assert "uvicorn (httptools, uvloop)" in report  # the server vmledger serve runs
    # the in-process round trip on PostgreSQL too, or why it was skipped
    if postgres_skip_reason() is None:
        assert "in-process, PostgreSQL: the same" in report, report
        assert "postgres  skipped" not in report
    else:
        assert "postgres  skipped" in report


def test_audit_benchmark_runs() -> None:
    sizes = audit.Sizes(sqlite_events=600, postgres_events=300, events_per_server=100,
                        asof_servers=1, asof_queries=2, sqlite_budget=5.0,
                        postgres_budget=5.0)
    report = audit.run(BACKENDS, sizes, log=_quiet)
    assert "verify" in report.lower()
    _backends_line(report)


def test_hypervisors_benchmark_runs() -> None:
    sizes = hypervisors.Sizes(engine_servers=2, repetitions=1, driver_guests=3,
                              qemu_repetitions=0)
    report = hypervisors.run(sizes, log=_quiet)
    assert "simulator" in report


def test_scale_benchmark_runs() -> None:
    sizes = scale.Sizes(fleets=(30, 60), repetitions=1, sync_passes=1)
    report = scale.run(("sqlite",), sizes, log=_quiet)
    assert "fleet scale" in report
    for _, label, _ in scale.FIGURES:
        assert label in report
    assert "x0k" not in report
    assert "first page during a sync pass / quiet" in report
    assert "RSS after the requests, ratio to 30" in report


def test_moves_benchmark_runs() -> None:
    report = moves.run(moves.Sizes(servers=2, repetitions=1), log=_quiet)
    for label in ("resize + confirm on its own host", "cold migration + confirm",
                  "live migration"):
        assert label in report
    assert "1.00x" in report  # the baseline against itself


def test_writers_benchmark_runs() -> None:
    sizes = writers.Sizes(writers=(2,), seconds=0.3, repetitions=1, http_clients=2,
                          http_processes=2, http_seconds=0.3)
    report = writers.run(sizes, log=_quiet)
    if postgres_skip_reason() is not None:
        assert "postgres  skipped" in report
        return
    assert "command service" in report and "raw driver" in report
    assert "2 API processes" in report
    assert "every acknowledged command's event is in the log: yes" in report
    # each configuration's CPU per command (client, server), commands per commit, the
    # ceilings on this machine's cores and in one interpreter, and the measured figure
    number = r"(\d+\.\d\d)"
    count = r"([\d,]+|inf)"
    for label in (writers.STORE, writers.GRAPH, writers.RAW):
        row = re.search(rf"{re.escape(label)}\s+{number}\s+{number}\s+{number}\s+{count}"
                        rf"\s+{count}\s+{count}\s+{number}/{number}  3,000/s "
                        rf"(fits|needs -\d+ % CPU/cmd)", report)
        assert row is not None, (label, report)
        assert float(row[1]) > 0 and float(row[2]) > 0  # client, server ms/command
        if label == writers.RAW:
            assert row[3] == "1.00"  # one command per transaction
    for label in ("2 API processes", "1 API process (the other idle)"):
        row = re.search(rf"{re.escape(label)}\s+API {number}  server {number}  load "
                        rf"generator {number}  cmd/commit {number}  ceiling {count}/s "
                        rf"\({count}/s with the load generator\)  busy {number}/{number} "
                        rf"cores  1,000/s "
                        rf"(fits|needs -\d+ % CPU/cmd)", report)
        assert row is not None, (label, report)
        assert float(row[1]) > 0 and float(row[2]) > 0
    assert re.search(r"Ceiling at this CPU per command, in process: [\d,]+/s .* against "
                     r"the target 3,000/s: (NOT )?met; over HTTP \(2 API processes\): "
                     r"[\d,]+/s against 1,000/s: (NOT )?met", report), report


def test_the_scale_benchmark_on_postgres_folds_every_command_in_its_transaction(
        caplog: pytest.LogCaptureFixture) -> None:
    """The fold in a command's own transaction runs inside the recorder's pipeline on
    PostgreSQL: none may fail (a failed one falls back to a catch-up, silently slower),
    whatever the statements before it queued."""
    reason = postgres_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    sizes = scale.QUICK
    with caplog.at_level("ERROR", logger="vmledger.projections.command_fold"):
        report = scale.run(("postgres",), sizes, log=_quiet)
    assert "fleet scale" in report
    failed = [r.getMessage() for r in caplog.records if "folding" in r.getMessage()]
    assert failed == []
