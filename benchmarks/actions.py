"""Complete lifecycle actions per second through the embedding API, with their cost in
commits and SQL statements, against Nova's own row pattern on the same database; and what
folding the read models in the command's own transaction buys.

What is measured
----------------
*vmledger*: N ACTIVE servers on one simulated host (the simulator, no latency, no faults).
A round is one hard reboot of every server through the embedding API — ``engine.act(id,
"reboot", type="HARD")`` for each (each returns once the read models reflect it), then
``engine.run_until_idle()`` (the host agent takes every reboot to its outcome on the
simulator, the read models follow). An action is complete when its outcome is recorded
and the read models show the server ACTIVE again with no task state (checked after the
last round). Run twice: as shipped (this process's read models folded in each request's
own transaction) and with that fold switched off (the *old path*: each request followed
by a catch-up transaction of its own).

*Nova's pattern*: the same rounds over the same number of rows, with the raw driver
(``sqlite3`` / ``psycopg`` 3) on tables laid out like Nova's ``instances``,
``instance_actions`` and ``instance_actions_events``, the API and the compute host on
connections of their own, six transactions per action:

1. the API reads the instance row;
2. the API CAS-updates ``task_state`` (``WHERE task_state IS NULL``);
3. the API inserts the ``instance_actions`` row;
4. the compute host inserts the action event (finding its action by request id);
5. the compute host CAS-updates the task step, then calls the same simulator as the
   engine's agent (observe, hard reboot, observe);
6. the compute host sets the final state (the power state observed) and finishes the
   event.

*One command decided in the request* (lock, then unlock, of every server; each returns
once the read models show it), folded in its transaction against caught up after: what
read-your-writes costs a caller, per command.

Per action: the CPU time of this process over the timed rounds (user + system,
``time.process_time``: what a command costs in Python and in the SQLite library, which
the disk's fsync hides in the wall time; the PostgreSQL server's work is not in it),
and, counted in separate untimed rounds of the same work, commits (SQLite: ``COMMIT``
statements traced on every connection of the run, :func:`traced_sqlite`; PostgreSQL:
transaction ids assigned, ``pg_current_xact_id()`` read before and after each round, so
a read-only transaction is not counted there and a savepoint that writes — the fold's —
takes an id of its own) and SQL statements (SQLite only: every statement traced).
Nova's connections are counted alike, so every figure has its ratio to Nova's.

How it is timed
---------------
Each configuration runs on its own fresh database with the same durability (SQLite:
WAL, ``synchronous=FULL``, as vmledger opens it; PostgreSQL: the benchmarks' throwaway
cluster, ``fsync=on``, ``synchronous_commit=on``). Setting up (creating and booting
the servers, inserting the rows) is not timed. The rounds of the three (vmledger,
Nova's pattern, the old path) take turns in a shuffled order (``commands.interleave``),
so outside load on a shared machine hits all alike, as do the lock/unlock rounds of the
two paths; repetitions use fresh databases; medians are reported, each with its ratio
(vmledger/Nova per repetition for actions/s: target >= 1.5; commits and statements:
vmledger/Nova; lock/unlock: caught up/folded).

The timed rounds are untraced on both sides: no trace callback on any connection (the
``sqlite3`` module expands every traced statement with its parameters, the events'
state blobs as hex, about a sixth of vmledger's instructions per action and little of
Nova's, whose rows are smaller) and no transaction-id read between rounds (a round trip
to the server). After the timed rounds of each repetition the three configurations run
the same rounds again (same sizes, same hard reboots, each on a fresh database, one
after the other, untimed), traced or probed, and those rounds give the commits and
statements per action.

Reproduce: ``python -m benchmarks --suite actions [--backend sqlite|postgres] [--quick]``.
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
from benchmarks.sqlite_trace import tracing_connections
from vmledger.adapters.hypervisor import GuestSpec
from vmledger.adapters.simulator import Simulator
from vmledger.domain import lifecycle as lc
from vmledger.engine import Engine

#: the issue's target: complete actions/s at least 1.5x Nova's row pattern
TARGET_RATIO = 1.5


@dataclass(frozen=True)
class Sizes:
    servers: int
    #: actions per server per repetition
    rounds: int
    repetitions: int


FULL = Sizes(servers=50, rounds=4, repetitions=3)
QUICK = Sizes(servers=10, rounds=2, repetitions=1)


# ---------------------------------------------------------------------------------------
# Counting commits and statements
# ---------------------------------------------------------------------------------------


@dataclass
class Counts:
    """What the traced connections did."""

    statements: int = 0
    commits: int = 0


def traced_sqlite(counts: Counts) -> contextlib.AbstractContextManager[None]:
    """Every sqlite3 connection made meanwhile reports its statements to ``counts``
    (for as long as it lives)."""

    def trace(statement: str) -> None:
        counts.statements += 1
        if statement.lstrip()[:6].upper() == "COMMIT":
            counts.commits += 1

    return tracing_connections(lambda _opened: trace)


class Meter:
    """One job's cost over its rounds, either timed or counted, never both.

    A *timed* job (``counting=False``) installs no trace callback and reads nothing
    between its rounds: it adds up this process's CPU time over them. A *counting* job
    (``counting=True``, never timed: :func:`count`) counts commits and statements.
    SQLite: the job's own connections are traced (:meth:`tracing` around the job's code
    that may open one; a counting job runs alone, so no other job's connections are).
    PostgreSQL: transaction ids are cluster-wide, read before and after each round (no
    other job runs meanwhile); statements are not counted."""

    def __init__(self, url: str, *, counting: bool = False) -> None:
        self.counting = counting
        self.seen = Counts()
        self.taken = Counts()
        self.actions = 0
        #: CPU seconds of this process (user + system) over the timed rounds
        self.cpu = 0.0
        self._probe = (psycopg.connect(url, autocommit=True)
                       if counting and not url.startswith("sqlite") else None)
        self._sqlite = url.startswith("sqlite")

    def tracing(self) -> contextlib.AbstractContextManager[None]:
        if self.counting and self._sqlite:
            return traced_sqlite(self.seen)
        return contextlib.nullcontext()

    def _xact(self) -> int:
        assert self._probe is not None
        row = self._probe.execute("SELECT pg_current_xact_id()::text::bigint").fetchone()
        assert row is not None
        return int(row[0])

    @contextlib.contextmanager
    def round(self, actions: int) -> Iterator[None]:
        self.actions += actions
        if not self.counting:
            cpu = time.process_time()
            yield
            self.cpu += time.process_time() - cpu
            return
        before = Counts(self.seen.statements, self.seen.commits)
        xid = self._xact() if self._probe is not None else 0
        with self.tracing():
            yield
        if self._probe is not None:
            # (reading the transaction id takes one itself)
            self.taken.commits += self._xact() - xid - 1
        else:
            self.taken.commits += self.seen.commits - before.commits
            self.taken.statements += self.seen.statements - before.statements

    def per_action(self) -> tuple[float | None, float | None, float | None]:
        """(commits, statements, CPU milliseconds of this process) per action, each None
        where this job did not measure it (statements: not on PostgreSQL)."""
        actions = max(self.actions, 1)
        if not self.counting:
            return None, None, 1000 * self.cpu / actions
        return (self.taken.commits / actions,
                self.taken.statements / actions if self._sqlite else None, None)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()


def count(jobs: Sequence[commands.Job]) -> None:
    """Run counting jobs to their end, one after the other, untimed."""
    for job in jobs:
        for _ in job:
            pass


# ---------------------------------------------------------------------------------------
# vmledger through the embedding API
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _booted(url: str, sizes: Sizes, *, fold: bool, meter: Meter | None = None
            ) -> Iterator[tuple[Engine, list[str]]]:
    """An engine with ``sizes.servers`` ACTIVE servers; ``fold=False``: the read models
    are not folded in the commands' transactions but caught up after each command, in a
    transaction of their own (the path before the fold moved into the command's
    transaction)."""
    with meter.tracing() if meter is not None else contextlib.nullcontext():
        engine = Engine(url, hypervisor=Simulator(seed=0),
                        allocation_ratios=commands.UNLIMITED)
    try:
        if not fold:
            engine.service.recorder.in_transaction.clear()  # type: ignore[attr-defined]
        ids = [engine.create_server(f"bench-{i}", commands.FLAVOR, commands.IMAGE).id
               for i in range(sizes.servers)]
        engine.run_until_idle()
        yield engine, ids
    finally:
        engine.close()


def engine_job(url: str, sizes: Sizes, info: dict[str, Any], *, fold: bool = True,
               counting: bool = False) -> commands.Job:
    """vmledger's run: boot the servers, yield 0, then one round of reboots per yield.
    Sets ``info["durability"]`` and ``info["meter"]`` (counting: see :class:`Meter`)."""
    meter = info["meter"] = Meter(url, counting=counting)
    try:
        with _booted(url, sizes, fold=fold, meter=meter) as (engine, ids):
            info["durability"] = _engine_durability(engine)
            yield 0
            for _ in range(sizes.rounds):
                with meter.round(len(ids)):
                    for server_id in ids:
                        engine.act(server_id, "reboot", type="HARD")
                    engine.run_until_idle()
                yield len(ids)
            for server_id in ids:
                doc = engine.view.get(server_id)
                if doc is None or doc["vm_state"] != lc.ACTIVE or doc["task_state"] is not None:
                    raise commands.WorkloadError(f"server {server_id} did not end ACTIVE: "
                                                 f"{doc}")
    finally:
        meter.close()


def command_job(url: str, sizes: Sizes, *, fold: bool) -> commands.Job:
    """Commands decided in the request (lock, then unlock, of every server, each
    returning once the read models show it): what read-your-writes costs a caller."""
    with _booted(url, sizes, fold=fold) as (engine, ids):
        yield 0
        for _ in range(sizes.rounds):
            for server_id in ids:
                engine.lock(server_id)
            yield len(ids)
            for server_id in ids:
                engine.act(server_id, "unlock")
            yield len(ids)


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
FINAL = ("UPDATE instances SET vm_state = 'active', power_state = ?, task_state = NULL, "
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


def nova_job(backend: str, url: str, sizes: Sizes, info: dict[str, Any], *,
             counting: bool = False) -> commands.Job:
    """Nova's six transactions per action: set up, yield 0, then one round per yield.
    Sets ``info["durability"]`` and ``info["meter"]`` (counting: see :class:`Meter`)."""
    meter = info["meter"] = Meter(url, counting=counting)
    with meter.tracing():
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
        hypervisor = Simulator(seed=0)
        for i, server_id in enumerate(ids):
            hypervisor.spawn(GuestSpec(server_id=server_id, name=f"bench-{i}",
                                       flavor_id=commands.FLAVOR, vcpus=1, ram_mb=2048,
                                       disk_gb=20, image_id=commands.IMAGE))

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
            with meter.round(len(ids)):
                _nova_round(api, compute, hypervisor, ids)
            yield len(ids)
    finally:
        api.close()
        compute.close()
        meter.close()


def _nova_round(api: Any, compute: Any, hypervisor: Simulator,
                ids: Sequence[str]) -> None:
    """A hard reboot of every server: the API's three transactions for each, then the
    compute host's three (and the simulator's calls) for each."""
    requests = {server_id: f"req-{uuid.uuid4()}" for server_id in ids}
    for server_id in ids:
        request = requests[server_id]
        at = datetime.now(UTC).replace(tzinfo=None)
        api.transaction(lambda run, s=server_id: run(READ, (s,)).fetchone())
        api.transaction(lambda run, s=server_id, t=at: _one(
            run(CAS_API, (lc.REBOOTING_HARD, t, s)), "the API's CAS"))
        api.transaction(lambda run, s=server_id, r=request, t=at: run(
            INSERT_ACTION, ("reboot", s, r, "bench-user", "bench-project", t, t)))
    for server_id in ids:
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
        hypervisor.observe(server_id)
        hypervisor.reboot(server_id, hard=True)
        power = int(hypervisor.observe(server_id).power_state)

        def finish(run: Callable[[str, Sequence[Any]], Any], s: str = server_id,
                   a: int = action_id, t: datetime = at, p: int = power) -> None:
            _one(run(FINAL, (p, t, s, lc.REBOOT_STARTED_HARD)), "the final state")
            _one(run(FINISH_EVENT, (t, t, a, "compute_reboot_instance")),
                 "the event's finish")

        compute.transaction(finish)


# ---------------------------------------------------------------------------------------
# Runs and the report
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One job's run: its timing and, for the action jobs, its cost per action."""

    run: commands.Run
    #: per action, counted in the untimed rounds of the same work
    commits: float | None = None
    statements: float | None = None
    #: CPU milliseconds of this process per action over the timed rounds (the database
    #: server's not counted)
    cpu_ms: float | None = None

    @classmethod
    def of(cls, run: commands.Run, timed: dict[str, Any], counted: dict[str, Any]
           ) -> Measured:
        _, _, cpu_ms = timed["meter"].per_action()
        commits, statements, _ = counted["meter"].per_action()
        return cls(run, commits, statements, cpu_ms)


@dataclass
class BackendReport:
    backend: str
    sizes: Sizes
    engine: list[Measured] = field(default_factory=list)
    nova: list[Measured] = field(default_factory=list)
    #: the same engine with the read models caught up after each command (the old path)
    unfolded: list[Measured] = field(default_factory=list)
    #: lock / unlock commands, folded in their transaction / caught up after
    commands_folded: list[commands.Run] = field(default_factory=list)
    commands_unfolded: list[commands.Run] = field(default_factory=list)
    engine_durability: str = "?"
    nova_durability: str = "?"
    seconds: float = 0.0


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def bench(backend: str, database: Callable[[], contextlib.AbstractContextManager[str]],
          sizes: Sizes, log: Callable[[str], None]) -> BackendReport:
    report = BackendReport(backend, sizes)
    started = time.perf_counter()
    # warm-up: imports, statement caches, the filesystem
    warm = Sizes(servers=max(2, sizes.servers // 10), rounds=1, repetitions=1)
    with database() as a, database() as b:
        commands.interleave([engine_job(a, warm, {}), nova_job(backend, b, warm, {})], seed=0)
    for rep in range(1, sizes.repetitions + 1):
        infos: list[dict[str, Any]] = [{}, {}, {}]
        with database() as a, database() as b, database() as c:
            runs = commands.interleave(
                [engine_job(a, sizes, infos[0]), nova_job(backend, b, sizes, infos[1]),
                 engine_job(c, sizes, infos[2], fold=False)], seed=rep)
        # the same work again on fresh databases, untimed and counted (the trace callback
        # and the transaction-id reads would otherwise weigh on the timed rounds)
        counted: list[dict[str, Any]] = [{}, {}, {}]
        with database() as a, database() as b, database() as c:
            count([engine_job(a, sizes, counted[0], counting=True),
                   nova_job(backend, b, sizes, counted[1], counting=True),
                   engine_job(c, sizes, counted[2], fold=False, counting=True)])
        engine, nova, unfolded = (Measured.of(r, t, n) for r, t, n
                                  in zip(runs, infos, counted, strict=True))
        report.engine.append(engine)
        report.nova.append(nova)
        report.unfolded.append(unfolded)
        with database() as a, database() as b:
            folded_run, caught_up_run = commands.interleave(
                [command_job(a, sizes, fold=True), command_job(b, sizes, fold=False)],
                seed=rep)
        report.commands_folded.append(folded_run)
        report.commands_unfolded.append(caught_up_run)
        report.engine_durability = infos[0].get("durability", "?")
        report.nova_durability = infos[1].get("durability", "?")
        log(f"  {backend} repetition {rep}/{sizes.repetitions}: vmledger "
            f"{engine.run.rate:.0f} actions/s, Nova's pattern {nova.run.rate:.0f} actions/s, "
            f"ratio {engine.run.rate / nova.run.rate:.2f}; old path "
            f"{unfolded.run.rate:.0f} actions/s")
    report.seconds = time.perf_counter() - started
    return report


def _cost(ours: Sequence[Measured], nova: Sequence[Measured], what: str,
          digits: int = 1) -> str:
    """``what`` per action (median) and its ratio to Nova's, or n/a."""
    mine = _median([getattr(m, what) for m in ours])
    theirs = _median([getattr(m, what) for m in nova])
    if mine is None or theirs is None:
        return f"{'n/a':>6} {'':>6}"
    return f"{mine:>6.{digits}f} {mine / theirs if theirs else float('nan'):>5.2f}x"


def format_report(reports: Sequence[BackendReport], skipped: dict[str, str]) -> str:
    out: list[str] = [""]
    w = out.append
    w("Complete actions: a hard reboot of every server per round, request -> hypervisor")
    w("(simulator, no latency) -> outcome -> read models caught up, through the embedding")
    w("API (engine.act + engine.run_until_idle), against Nova's six transactions per")
    w("action on the same database (API: read, CAS task_state, insert instance_actions;")
    w("compute: insert the event, CAS the task step, the simulator's observe + reboot +")
    w("observe, final state + finish the event).")
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
                                ("(old path: caught up after)", rep.unfolded)):
                ratios = [e.run.rate / n.run.rate for e, n in zip(runs, rep.nova, strict=True)]
                ratio = statistics.median(ratios)
                engine = statistics.median(m.run.rate for m in runs)
                nova = statistics.median(m.run.rate for m in rep.nova)
                verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
                w(f"{rep.backend:<9} {label:<34} {engine:>6.0f} {nova:>7.0f} {ratio:>6.2f} "
                  f"{min(ratios):>5.2f}-{max(ratios):<5.2f} {1000 / engine:>7.2f} "
                  f"{1000 / nova:>7.2f}  >= {TARGET_RATIO} {verdict}")
        w("")
        w("Cost per action, with its ratio to Nova's (commits: SQLite COMMIT statements,")
        w("PostgreSQL transaction ids assigned, the fold's savepoint taking one too;")
        w("statements: SQLite only; both counted in untimed rounds of the same work after")
        w("the timed ones, SQLite's connections traced; CPU: this process's user + system")
        w("time over the timed rounds, untraced on both sides, so without the PostgreSQL")
        w("server's, and with the simulator's calls on both sides):")
        w(f"{'backend':<9} {'vmledger':<34} {'commits/action':>14} {'Nova':>6} "
          f"{'statements/action':>17} {'Nova':>6} {'CPU ms/action':>14} {'Nova':>6}")
        for rep in reports:
            nova_commits = _median([m.commits for m in rep.nova])
            nova_statements = _median([m.statements for m in rep.nova])
            nova_cpu = _median([m.cpu_ms for m in rep.nova])
            for label, runs in (("read models folded in the command", rep.engine),
                                ("(old path: caught up after)", rep.unfolded)):
                w(f"{rep.backend:<9} {label:<34} {_cost(runs, rep.nova, 'commits'):>14} "
                  f"{_figure(nova_commits):>6} {_cost(runs, rep.nova, 'statements'):>17} "
                  f"{_figure(nova_statements):>6} {_cost(runs, rep.nova, 'cpu_ms', 2):>14} "
                  f"{_figure(nova_cpu, 2):>6}")
        w("")
        w("One command decided in the request (lock, then unlock; it returns once the read")
        w("models show it), through the embedding API, same repetitions, ms per command:")
        for rep in reports:
            folded = 1000 / statistics.median(r.rate for r in rep.commands_folded)
            caught = 1000 / statistics.median(r.rate for r in rep.commands_unfolded)
            w(f"  {rep.backend:<9} folded in the command {folded:6.2f} ms   caught up after "
              f"{caught:6.2f} ms   ({caught / folded:.2f}x)")
        w("")
        w("'(old path: caught up after)': the same engine with the fold in the command's")
        w("transaction switched off: each command is followed by a catch-up transaction")
        w("of its own (the path before), interleaved in the same repetitions.")
    for backend, reason in skipped.items():
        w(f"{backend:<9} skipped: {reason}")
    return "\n".join(out)


def _figure(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


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
        with commands.throwaway_postgres(log) as (backend, reason):
            if backend is None:
                skipped["postgres"] = reason or "unavailable"
            else:
                reports.append(bench("postgres", backend.database, sizes, log))
    return format_report(reports, skipped)
