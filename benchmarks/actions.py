"""Complete lifecycle actions per second: vmledger against Nova's row pattern.

What is measured
----------------
*vmledger*: N ACTIVE servers on one simulated host (the simulator, no latency). A round
is one hard reboot of every server through the embedding API — ``engine.act(id,
"reboot", type="HARD")`` for each (each returns once the read models reflect it), then
``engine.run_until_idle()`` (the host agent takes every reboot to its outcome, the read
models follow). An action is complete when its outcome is recorded and the read models
show the server ACTIVE again with no task state (checked after the last round).

*Nova's pattern*: the same rounds over the same number of rows, with the raw driver
(``sqlite3`` / ``psycopg`` 3) on tables laid out like Nova's ``instances``,
``instance_actions`` and ``instance_actions_events``, the API and the compute host on
connections of their own, six transactions per action:

1. the API reads the instance row;
2. the API CAS-updates ``task_state`` (``WHERE task_state IS NULL``);
3. the API inserts the ``instance_actions`` row;
4. the compute host inserts the action event (finding its action by request id);
5. the compute host CAS-updates the task step;
6. the compute host sets the final state and finishes the event.

No hypervisor is called in the baseline (so it is, if anything, flattered).

How it is timed
---------------
Each configuration runs on its own fresh database with the same durability (SQLite:
WAL, ``synchronous=FULL``, as vmledger opens it; PostgreSQL: the benchmarks' throwaway
cluster, ``fsync=on``, ``synchronous_commit=on``). Setting up (creating and booting
the servers, inserting the rows) is not timed. Rounds of the two take turns in a
shuffled order (``commands.interleave``), so outside load hits both alike;
repetitions use fresh databases; medians are reported, with the ratio vmledger/Nova
of each repetition (target >= 1.5).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import commands
from vmledger.adapters.simulator import Simulator
from vmledger.domain import lifecycle as lc
from vmledger.engine import Engine

TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Sizes:
    servers: int
    rounds: int
    repetitions: int


FULL = Sizes(servers=50, rounds=4, repetitions=3)
QUICK = Sizes(servers=10, rounds=2, repetitions=1)


# ---------------------------------------------------------------------------------------
# vmledger through the embedding API
# ---------------------------------------------------------------------------------------


def engine_job(url: str, sizes: Sizes, info: dict[str, Any], *, fold: bool = True
               ) -> commands.Job:
    """vmledger's run: boot the servers, yield 0, then one round of reboots per yield.

    ``fold=False``: the read models are not folded in the commands' transactions but
    caught up after each command, in a transaction of their own (the path before the
    fold moved into the command's transaction), for comparison in the same run."""
    engine = Engine(url, hypervisor=Simulator(seed=0), allocation_ratios=commands.UNLIMITED)
    if not fold:
        engine.service.recorder.in_transaction.clear()  # type: ignore[attr-defined]
    try:
        info["durability"] = _engine_durability(engine)
        ids = [engine.create_server(f"bench-{i}", commands.FLAVOR, commands.IMAGE).id
               for i in range(sizes.servers)]
        engine.run_until_idle()
        yield 0
        for _ in range(sizes.rounds):
            for server_id in ids:
                engine.act(server_id, "reboot", type="HARD")
            engine.run_until_idle()
            yield len(ids)
        for server_id in ids:
            doc = engine.view.get(server_id)
            if doc is None or doc["vm_state"] != lc.ACTIVE or doc["task_state"] is not None:
                raise commands.WorkloadError(f"server {server_id} did not end ACTIVE: {doc}")
    finally:
        engine.close()


def command_job(url: str, sizes: Sizes, *, fold: bool) -> commands.Job:
    """Commands decided in the request (lock, then unlock, of every server, each
    returning once the read models show it): what read-your-writes costs a caller."""
    engine = Engine(url, hypervisor=Simulator(seed=0), allocation_ratios=commands.UNLIMITED)
    if not fold:
        engine.service.recorder.in_transaction.clear()  # type: ignore[attr-defined]
    try:
        ids = [engine.create_server(f"bench-{i}", commands.FLAVOR, commands.IMAGE).id
               for i in range(sizes.servers)]
        engine.run_until_idle()
        yield 0
        for _ in range(sizes.rounds):
            for server_id in ids:
                engine.lock(server_id)
            yield len(ids)
            for server_id in ids:
                engine.unlock(server_id)
            yield len(ids)
    finally:
        engine.close()


def _engine_durability(engine: Engine) -> str:
    datastore: Any = engine.service.recorder.datastore  # type: ignore[attr-defined]
    if engine.url.startswith("sqlite"):
        with datastore.transaction(commit=False) as cursor:
            return commands.SQLiteBackend._settings(cursor)
    with datastore.get_connection() as conn:
        return commands.PostgresBackend._settings(conn)


# ---------------------------------------------------------------------------------------
# Nova's six transactions, with the raw driver
# ---------------------------------------------------------------------------------------

INSTANCES = (
    "CREATE TABLE instances (id {serial}, uuid VARCHAR(36) NOT NULL UNIQUE, "
    "user_id VARCHAR(255), project_id VARCHAR(255), image_ref VARCHAR(255), "
    "instance_type_id INTEGER, host VARCHAR(255), node VARCHAR(255), "
    "display_name VARCHAR(255), hostname VARCHAR(255), vm_state VARCHAR(255), "
    "power_state INTEGER, task_state VARCHAR(255), memory_mb INTEGER, vcpus INTEGER, "
    "root_gb INTEGER, launched_at {time}, created_at {time}, updated_at {time}, "
    "deleted_at {time}, deleted INTEGER DEFAULT 0, locked BOOLEAN DEFAULT FALSE, "
    "availability_zone VARCHAR(255))")
ACTIONS = (
    "CREATE TABLE instance_actions (id {serial}, action VARCHAR(255), "
    "instance_uuid VARCHAR(36), request_id VARCHAR(255), user_id VARCHAR(255), "
    "project_id VARCHAR(255), start_time {time}, finish_time {time}, "
    "message VARCHAR(255), created_at {time}, updated_at {time}, deleted INTEGER DEFAULT 0)")
ACTIONS_INDEX = ("CREATE INDEX instance_uuid_idx ON instance_actions "
                 "(instance_uuid, request_id)")
EVENTS = (
    "CREATE TABLE instance_actions_events (id {serial}, event VARCHAR(255), "
    "action_id INTEGER NOT NULL REFERENCES instance_actions (id), start_time {time}, "
    "finish_time {time}, result VARCHAR(255), traceback TEXT, host VARCHAR(255), "
    "details TEXT, created_at {time}, updated_at {time}, deleted INTEGER DEFAULT 0)")

READ = "SELECT * FROM instances WHERE uuid = ? AND deleted = 0"
CAS_API = ("UPDATE instances SET task_state = ?, updated_at = ? WHERE uuid = ? "
           "AND task_state IS NULL AND vm_state = 'active'")
INSERT_ACTION = ("INSERT INTO instance_actions (action, instance_uuid, request_id, user_id, "
                 "project_id, start_time, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
FIND_ACTION = ("SELECT id FROM instance_actions WHERE instance_uuid = ? AND request_id = ? "
               "AND deleted = 0")
INSERT_EVENT = ("INSERT INTO instance_actions_events (event, action_id, start_time, host, "
                "created_at) VALUES (?, ?, ?, ?, ?)")
TOUCH_ACTION = "UPDATE instance_actions SET updated_at = ? WHERE id = ?"
CAS_STEP = ("UPDATE instances SET task_state = ?, updated_at = ? WHERE uuid = ? "
            "AND task_state = ?")
FINAL = ("UPDATE instances SET vm_state = 'active', power_state = 1, task_state = NULL, "
         "updated_at = ? WHERE uuid = ? AND task_state = ?")
FINISH_EVENT = ("UPDATE instance_actions_events SET finish_time = ?, result = 'Success', "
                "updated_at = ? WHERE action_id = ? AND event = ?")


class NovaRows:
    """One side's connection (the API's or the compute host's): run a transaction."""

    def transaction(self, statements: Callable[[Callable[[str, Sequence[Any]], Any]], Any]
                    ) -> Any:
        raise NotImplementedError


class _SQLiteSide(NovaRows):
    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.cur = self.conn.cursor()

    def transaction(self, statements: Callable[[Callable[[str, Sequence[Any]], Any]], Any]
                    ) -> Any:
        cur = self.cur
        cur.execute("BEGIN")

        def run(statement: str, params: Sequence[Any]) -> Any:
            cur.execute(statement, params)
            return cur

        try:
            result = statements(run)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")
        return result

    def close(self) -> None:
        self.conn.close()


class _PostgresSide(NovaRows):
    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url)
        self.cur = self.conn.cursor()

    def transaction(self, statements: Callable[[Callable[[str, Sequence[Any]], Any]], Any]
                    ) -> Any:
        cur = self.cur

        def run(statement: str, params: Sequence[Any]) -> Any:
            cur.execute(statement.replace("?", "%s"), params, prepare=True)  # type: ignore[arg-type]
            return cur

        try:
            result = statements(run)
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.commit()
        return result

    def close(self) -> None:
        self.conn.close()


def _one(cur: Any, what: str) -> None:
    if cur.rowcount != 1:
        raise commands.WorkloadError(f"Nova pattern: {what} matched {cur.rowcount} rows")


def nova_job(backend: str, url: str, sizes: Sizes, info: dict[str, Any]) -> commands.Job:
    """Nova's six transactions per action: set up, yield 0, then one round per yield."""
    if backend == "sqlite":
        path = url.removeprefix("sqlite:///")
        api: Any = _SQLiteSide(path)
        compute: Any = _SQLiteSide(path)
        serial, stamp = "INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT"
        info["durability"] = commands.SQLiteBackend._settings(api.conn.cursor())
    else:
        api, compute = _PostgresSide(url), _PostgresSide(url)
        serial, stamp = "SERIAL PRIMARY KEY", "TIMESTAMP"
        info["durability"] = commands.PostgresBackend._settings(api.conn)
    try:
        now = datetime.now(UTC).replace(tzinfo=None)
        ids = [str(uuid.uuid4()) for _ in range(sizes.servers)]

        def schema(run: Callable[[str, Sequence[Any]], Any]) -> None:
            for statement in (INSTANCES, ACTIONS, ACTIONS_INDEX, EVENTS):
                run(statement.format(serial=serial, time=stamp), ())
            for i, server_id in enumerate(ids):
                run("INSERT INTO instances (uuid, user_id, project_id, image_ref, "
                    "instance_type_id, host, node, display_name, hostname, vm_state, "
                    "power_state, task_state, memory_mb, vcpus, root_gb, launched_at, "
                    "created_at, updated_at, availability_zone) VALUES "
                    "(?, 'bench-user', 'bench-project', ?, 2, 'compute-1', 'compute-1', ?, "
                    "?, 'active', 1, NULL, 2048, 1, 20, ?, ?, ?, 'nova')",
                    (server_id, commands.IMAGE, f"bench-{i}", f"bench-{i}", now, now, now))

        api.transaction(schema)
        yield 0
        for _ in range(sizes.rounds):
            requests = {server_id: f"req-{uuid.uuid4()}" for server_id in ids}
            for server_id in ids:  # the API: three transactions per action
                request = requests[server_id]
                at = datetime.now(UTC).replace(tzinfo=None)
                api.transaction(lambda run, s=server_id: run(READ, (s,)).fetchone())
                api.transaction(lambda run, s=server_id, t=at: _one(
                    run(CAS_API, (lc.REBOOTING_HARD, t, s)), "the API's CAS"))
                api.transaction(lambda run, s=server_id, r=request, t=at: run(
                    INSERT_ACTION, ("reboot", s, r, "bench-user", "bench-project", t, t)))
            for server_id in ids:  # the compute host: three transactions per action
                request = requests[server_id]
                at = datetime.now(UTC).replace(tzinfo=None)

                def start_event(run: Callable[[str, Sequence[Any]], Any], s: str = server_id,
                                r: str = request, t: datetime = at) -> int:
                    row = run(FIND_ACTION, (s, r)).fetchone()
                    run(INSERT_EVENT, ("compute_reboot_instance", row[0], t, "compute-1", t))
                    run(TOUCH_ACTION, (t, row[0]))
                    return int(row[0])

                action_id = compute.transaction(start_event)
                compute.transaction(lambda run, s=server_id, t=at: _one(
                    run(CAS_STEP, (lc.REBOOT_STARTED_HARD, t, s, lc.REBOOTING_HARD)),
                    "the compute host's CAS"))

                def finish(run: Callable[[str, Sequence[Any]], Any], s: str = server_id,
                           a: int = action_id, t: datetime = at) -> None:
                    _one(run(FINAL, (t, s, lc.REBOOT_STARTED_HARD)), "the final state")
                    _one(run(FINISH_EVENT, (t, t, a, "compute_reboot_instance")),
                         "the event's finish")

                compute.transaction(finish)
            yield len(ids)
    finally:
        api.close()
        compute.close()


# ---------------------------------------------------------------------------------------
# Runs and the report
# ---------------------------------------------------------------------------------------


@dataclass
class BackendReport:
    backend: str
    sizes: Sizes
    engine: list[commands.Run] = field(default_factory=list)
    nova: list[commands.Run] = field(default_factory=list)
    #: the same engine with the read models caught up after each command
    unfolded: list[commands.Run] = field(default_factory=list)
    #: lock / unlock commands, folded in their transaction / caught up after
    commands_folded: list[commands.Run] = field(default_factory=list)
    commands_unfolded: list[commands.Run] = field(default_factory=list)
    engine_durability: str = "?"
    nova_durability: str = "?"
    seconds: float = 0.0

    def rates(self, runs: Sequence[commands.Run]) -> float:
        return statistics.median(r.rate for r in runs)

    def ratios(self, runs: Sequence[commands.Run] | None = None) -> list[float]:
        chosen = self.engine if runs is None else runs
        return [e.rate / n.rate for e, n in zip(chosen, self.nova, strict=True)]


def bench(backend: str, database: Callable[[], contextlib.AbstractContextManager[str]],
          sizes: Sizes, log: Callable[[str], None]) -> BackendReport:
    report = BackendReport(backend, sizes)
    started = time.perf_counter()
    # warm-up: imports, statement caches, the filesystem
    warm = Sizes(servers=max(2, sizes.servers // 10), rounds=1, repetitions=1)
    with database() as a, database() as b:
        commands.interleave([engine_job(a, warm, {}), nova_job(backend, b, warm, {})], seed=0)
    for rep in range(1, sizes.repetitions + 1):
        engine_info: dict[str, Any] = {}
        nova_info: dict[str, Any] = {}
        with database() as a, database() as b, database() as c:
            engine_run, nova_run, unfolded_run = commands.interleave(
                [engine_job(a, sizes, engine_info), nova_job(backend, b, sizes, nova_info),
                 engine_job(c, sizes, {}, fold=False)], seed=rep)
        report.engine.append(engine_run)
        report.nova.append(nova_run)
        report.unfolded.append(unfolded_run)
        with database() as a, database() as b:
            folded_run, caught_up_run = commands.interleave(
                [command_job(a, sizes, fold=True), command_job(b, sizes, fold=False)],
                seed=rep)
        report.commands_folded.append(folded_run)
        report.commands_unfolded.append(caught_up_run)
        report.engine_durability = engine_info.get("durability", "?")
        report.nova_durability = nova_info.get("durability", "?")
        log(f"  {backend} repetition {rep}/{sizes.repetitions}: vmledger "
            f"{engine_run.rate:.0f} actions/s, Nova's pattern {nova_run.rate:.0f} actions/s, "
            f"ratio {engine_run.rate / nova_run.rate:.2f}; caught up after each command "
            f"{unfolded_run.rate:.0f} actions/s")
    report.seconds = time.perf_counter() - started
    return report


def format_report(reports: Sequence[BackendReport], skipped: dict[str, str]) -> str:
    out: list[str] = [""]
    w = out.append
    w("Complete actions: a hard reboot of every server per round, request -> hypervisor")
    w("(simulator, no latency) -> outcome -> read models caught up, through the embedding")
    w("API (engine.act + engine.run_until_idle), against Nova's six transactions per")
    w("action on the same database (API: read, CAS task_state, insert instance_actions;")
    w("compute: insert the event, CAS the task step, final state + finish the event).")
    for rep in reports:
        w("")
        w(f"[{rep.backend}] {rep.sizes.servers} servers x {rep.sizes.rounds} rounds = "
          f"{rep.sizes.servers * rep.sizes.rounds} actions per run; medians of "
          f"{rep.sizes.repetitions} interleaved repetitions; {rep.seconds:.0f} s")
        w(f"  durability  vmledger: {rep.engine_durability}")
        w(f"              Nova:     {rep.nova_durability}")
    if reports:
        w("")
        w(f"{'backend':<9} {'vmledger':<34} {'act/s':>6} {'Nova/s':>7} {'ratio':>6} "
          f"{'(range)':>11} {'ms/act':>7} {'Nova ms':>7}  target")
        for rep in reports:
            for label, runs in (("read models folded in the command", rep.engine),
                                ("(read models caught up after)", rep.unfolded)):
                ratios = rep.ratios(runs)
                ratio = statistics.median(ratios)
                engine, nova = rep.rates(runs), rep.rates(rep.nova)
                verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
                w(f"{rep.backend:<9} {label:<34} {engine:>6.0f} {nova:>7.0f} {ratio:>6.2f} "
                  f"{min(ratios):>5.2f}-{max(ratios):<5.2f} {1000 / engine:>7.2f} "
                  f"{1000 / nova:>7.2f}  >= {TARGET_RATIO} {verdict}")
        w("")
        w("")
        w("One command decided in the request (lock, then unlock; it returns once the read")
        w("models show it), through the embedding API, same repetitions, ms per command:")
        for rep in reports:
            folded = 1000 / rep.rates(rep.commands_folded)
            caught = 1000 / rep.rates(rep.commands_unfolded)
            w(f"  {rep.backend:<9} folded in the command {folded:6.2f} ms   caught up after "
              f"{caught:6.2f} ms   ({caught / folded:.2f}x)")
        w("")
        w("'(read models caught up after)': the same engine with the fold in the command's")
        w("transaction switched off: each command is followed by a catch-up transaction")
        w("of its own (the path before), interleaved in the same repetitions.")
    for backend, reason in skipped.items():
        w(f"{backend:<9} skipped: {reason}")
    return "\n".join(out)


@contextlib.contextmanager
def _sqlite_databases() -> Iterator[Callable[[], contextlib.AbstractContextManager[str]]]:
    directory = Path(tempfile.mkdtemp(prefix="vmledger-bench-"))
    try:
        yield commands.SQLiteBackend(directory).database
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run(backends: Sequence[str], sizes: Sizes, *, log: Callable[[str], None] = print) -> str:
    """Run the benchmark on ``backends``; return the report to print."""
    reports: list[BackendReport] = []
    skipped: dict[str, str] = {}
    if "sqlite" in backends:
        with _sqlite_databases() as database:
            reports.append(bench("sqlite", database, sizes, log))
    if "postgres" in backends:
        cluster_class, reason = commands.postgres_cluster()
        if cluster_class is None:
            skipped["postgres"] = reason or "unavailable"
        else:
            from tests.support.postgres import PostgresClusterError

            cluster = cluster_class()
            try:
                cluster.__enter__()
            except PostgresClusterError as e:
                skipped["postgres"] = str(e).splitlines()[0]
            else:
                try:
                    log(f"postgres: throwaway cluster on 127.0.0.1:{cluster.port}")
                    reports.append(bench("postgres", commands.PostgresBackend(cluster).database,
                                         sizes, log))
                finally:
                    cluster.__exit__(None, None, None)
    return format_report(reports, skipped)
