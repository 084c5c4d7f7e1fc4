"""Complete lifecycle actions per second through the embedding API, with their cost in
commits and SQL statements, against Nova's own row pattern on the same database.

What is measured
----------------
Both run on fresh databases, taking turns round by round (every server once), so outside
load on a shared machine hits both alike; medians of the repetitions are reported.

*Engine*: N servers on one simulated host (no latency, no faults). One complete action
is ``engine.reboot(sid, hard=True)`` (the request: decided, saved, the read models
caught up) then ``engine.run_until_idle()`` (the host agent enacts it on the simulator
and records the outcome; the read models catch up again). Actions go round the servers.

*Nova's pattern*: the same hard reboot as Nova's API and compute persist it, with the
raw driver (``sqlite3`` / ``psycopg`` 3) on rows laid out like Nova's ``instances``,
``instance_actions`` and ``instance_actions_events`` tables, in six transactions: the
API reads the instance, compare-and-swaps its ``task_state`` and inserts the action; the
compute host inserts the action event, moves the task state twice (compare-and-swap),
calls the same simulator (observe, reboot), then sets the final state and finishes the
event. The same durability settings as the engine's.

Counted per action (engine): write commits (SQLite: ``COMMIT`` statements traced on every
connection; PostgreSQL: transaction ids assigned, read from ``pg_current_xact_id()``
before and after) and SQL statements (SQLite only: every statement traced).

Reproduce: ``python -m benchmarks --suite actions [--backend sqlite|postgres] [--quick]``.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from vmledger import AllocationRatios, Engine, Simulator
from vmledger.adapters.hypervisor import GuestSpec, PowerState

UNLIMITED = AllocationRatios(cpu=math.inf, ram=math.inf, disk=math.inf)
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


@dataclass
class Counts:
    """What the traced connections did."""

    statements: int = 0
    commits: int = 0


@dataclass(frozen=True)
class Measured:
    actions_per_s: float
    commits_per_action: float | None
    statements_per_action: float | None


# --- counting SQLite's statements ---------------------------------------------------------
@contextlib.contextmanager
def traced_sqlite(counts: Counts) -> Iterator[None]:
    """Every sqlite3 connection made meanwhile reports its statements to ``counts``."""
    real = sqlite3.connect

    def trace(statement: str) -> None:
        counts.statements += 1
        if statement.lstrip()[:6].upper() == "COMMIT":
            counts.commits += 1

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real(*args, **kwargs)
        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        yield
    finally:
        sqlite3.connect = real


# --- the engine ----------------------------------------------------------------------------
class EngineActions:
    """Complete hard reboots through the embedding API, a round (every server once) at a
    time; the counts taken over the timed rounds only."""

    def __init__(self, url: str, sizes: Sizes, counts: Counts,
                 xact: Callable[[], int] | None) -> None:
        self.sizes, self.counts, self.xact = sizes, counts, xact
        self.engine = Engine(url, hypervisor=Simulator(seed=0), allocation_ratios=UNLIMITED)
        self.ids = [self.engine.create_server(f"bench-{i}", flavor="m1.small",
                                              image="cirros-0.6.2-x86_64").id
                    for i in range(sizes.servers)]
        self.engine.run_until_idle()
        self.statements = self.commits = 0
        self.elapsed = 0.0

    def round(self) -> None:
        engine = self.engine
        before = Counts(self.counts.statements, self.counts.commits)
        xid = self.xact() if self.xact is not None else 0
        started = time.perf_counter()
        for sid in self.ids:
            engine.reboot(sid, hard=True)
            engine.run_until_idle()
        self.elapsed += time.perf_counter() - started
        # (reading the transaction id takes one itself)
        self.commits += (self.xact() - xid - 1 if self.xact is not None
                         else self.counts.commits - before.commits)
        self.statements += self.counts.statements - before.statements

    def close(self) -> Measured:
        try:
            for sid in self.ids:
                assert self.engine.get_server(sid).status == "ACTIVE"
        finally:
            self.engine.close()
        actions = self.sizes.servers * self.sizes.rounds
        return Measured(actions / self.elapsed, self.commits / actions,
                        None if self.xact is not None else self.statements / actions)


# --- Nova's six transactions -----------------------------------------------------------------
NOVA_TABLES = (
    "CREATE TABLE instances (uuid {id} PRIMARY KEY, vm_state TEXT, task_state TEXT, "
    "power_state INTEGER, updated_at {ts})",
    "CREATE TABLE instance_actions (id {serial}, request_id TEXT, instance_uuid {id}, "
    "action TEXT, start_time {ts}, finish_time {ts})",
    "CREATE TABLE instance_actions_events (id {serial}, action_id INTEGER, event TEXT, "
    "start_time {ts}, finish_time {ts}, result TEXT)",
)


class Nova:
    """One hard reboot in Nova's six transactions, on a DB-API connection whose
    placeholder is ``mark`` (``?`` or ``%s``)."""

    def __init__(self, conn: Any, mark: str, hypervisor: Simulator) -> None:
        self.conn = conn
        self.cur = conn.cursor()
        self.hv = hypervisor
        q = {"?": lambda s: s, "%s": lambda s: s.replace("?", "%s")}[mark]
        self.select = q("SELECT uuid, vm_state, task_state, power_state FROM instances "
                        "WHERE uuid=?")
        self.cas = q("UPDATE instances SET task_state=?, updated_at=? "
                     "WHERE uuid=? AND task_state IS NOT DISTINCT FROM ?")
        self.action = q("INSERT INTO instance_actions (request_id, instance_uuid, action, "
                        "start_time) VALUES (?, ?, 'reboot', ?) RETURNING id")
        self.event = q("INSERT INTO instance_actions_events (action_id, event, start_time) "
                       "VALUES (?, 'compute_reboot_instance', ?) RETURNING id")
        self.final = q("UPDATE instances SET vm_state='active', task_state=NULL, "
                       "power_state=?, updated_at=? WHERE uuid=? AND task_state=?")
        self.finish = q("UPDATE instance_actions_events SET finish_time=?, "
                        "result='Success' WHERE id=?")

    def _txn(self, statement: str, args: Sequence[Any], fetch: bool = False) -> Any:
        self.cur.execute("BEGIN")
        self.cur.execute(statement, args)
        row = self.cur.fetchone() if fetch else None
        if not fetch and self.cur.rowcount != 1:
            raise RuntimeError("a compare-and-swap lost")
        self.cur.execute("COMMIT")
        return row

    def reboot(self, sid: str) -> None:
        now = time.time()
        cur = self.cur
        # 1: the API
        cur.execute("BEGIN")
        cur.execute(self.select, (sid,))
        cur.fetchone()
        cur.execute(self.cas, ("rebooting_hard", now, sid, None))
        cur.execute(self.action, (uuid.uuid4().hex, sid, now))
        action_id = cur.fetchone()[0]
        cur.execute("COMMIT")
        # 2-4: the compute host
        event_id = self._txn(self.event, (action_id, now), fetch=True)[0]
        self._txn(self.cas, ("reboot_pending_hard", now, sid, "rebooting_hard"))
        self._txn(self.cas, ("reboot_started_hard", now, sid, "reboot_pending_hard"))
        self.hv.observe(sid)
        self.hv.reboot(sid, hard=True)
        power = int(self.hv.observe(sid).power_state)
        # 5-6: the outcome
        self._txn(self.final, (power, now, sid, "reboot_started_hard"))
        self._txn(self.finish, (now, event_id))


class NovaActions:
    """The same hard reboots in Nova's six transactions, a round at a time."""

    def __init__(self, conn: Any, mark: str, serial: str, id_type: str, ts: str,
                 sizes: Sizes) -> None:
        self.sizes = sizes
        cur = conn.cursor()
        for table in NOVA_TABLES:
            cur.execute(table.format(id=id_type, serial=serial, ts=ts))
        hv = Simulator(seed=0)
        self.ids = [str(uuid.uuid4()) for _ in range(sizes.servers)]
        for sid in self.ids:
            hv.spawn(GuestSpec(server_id=sid, name=sid, flavor_id="1", vcpus=1, ram_mb=512,
                               disk_gb=1, image_id="cirros"))
            cur.execute("BEGIN")
            cur.execute(f"INSERT INTO instances VALUES ({', '.join([mark] * 5)})",
                        (sid, "active", None, int(PowerState.RUNNING), time.time()))
            cur.execute("COMMIT")
        self.nova = Nova(conn, mark, hv)
        self.elapsed = 0.0

    def round(self) -> None:
        started = time.perf_counter()
        for sid in self.ids:
            self.nova.reboot(sid)
        self.elapsed += time.perf_counter() - started

    def rate(self) -> float:
        return self.sizes.servers * self.sizes.rounds / self.elapsed


def alternate(sizes: Sizes, engine: EngineActions, nova: NovaActions) -> None:
    """The rounds of both, taking turns, so a burst of outside load (the machine is
    shared) hits both alike."""
    for n in range(sizes.rounds):
        first, second = (engine, nova) if n % 2 == 0 else (nova, engine)
        first.round()
        second.round()


# --- backends ----------------------------------------------------------------------------
@dataclass
class Result:
    backend: str
    engine: list[Measured]
    nova: list[float]
    durability: str


def bench_sqlite(sizes: Sizes, log: Callable[[str], None]) -> Result:
    directory = Path(tempfile.mkdtemp(prefix="vmledger-actions-"))
    result = Result("sqlite", [], [], "journal_mode=WAL synchronous=FULL")
    try:
        for rep in range(sizes.repetitions):
            counts = Counts()
            conn = sqlite3.connect(directory / f"n{rep}.db", isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                nova = NovaActions(conn, "?", "INTEGER PRIMARY KEY", "TEXT", "REAL", sizes)
                with traced_sqlite(counts):
                    engine = EngineActions(f"sqlite:///{directory / f'e{rep}.db'}", sizes,
                                           counts, None)
                    try:
                        alternate(sizes, engine, nova)
                    finally:
                        measured = engine.close()
            finally:
                conn.close()
            result.engine.append(measured)
            result.nova.append(nova.rate())
            log(f"sqlite: repetition {rep + 1}: engine {measured.actions_per_s:.0f}/s, "
                f"nova {result.nova[-1]:.0f}/s")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return result


def bench_postgres(cluster: Any, sizes: Sizes, log: Callable[[str], None]) -> Result:
    result = Result("postgres", [], [], "")
    for rep in range(sizes.repetitions):
        name = f"actions_{uuid.uuid4().hex[:10]}"
        url: str = cluster.create_database(name)
        nova_name = f"nova_{uuid.uuid4().hex[:10]}"
        nova_url: str = cluster.create_database(nova_name)
        try:
            with psycopg.connect(url, autocommit=True) as probe:
                def xact() -> int:
                    row = probe.execute("SELECT pg_current_xact_id()::text::bigint"
                                        ).fetchone()
                    assert row is not None
                    return int(row[0])

                settings = []
                for setting in ("fsync", "synchronous_commit"):
                    row = probe.execute(f"SHOW {setting}").fetchone()
                    settings.append(f"{setting}={row[0] if row else '?'}")
                result.durability = " ".join(settings)
                with psycopg.connect(nova_url, autocommit=True) as conn:
                    nova = NovaActions(conn, "%s", "BIGSERIAL PRIMARY KEY", "TEXT",
                                       "DOUBLE PRECISION", sizes)
                    engine = EngineActions(url, sizes, Counts(), xact)
                    try:
                        alternate(sizes, engine, nova)
                    finally:
                        measured = engine.close()
            result.engine.append(measured)
            result.nova.append(nova.rate())
            log(f"postgres: repetition {rep + 1}: engine {measured.actions_per_s:.0f}/s, "
                f"nova {result.nova[-1]:.0f}/s")
        finally:
            for db in (name, nova_name):
                with contextlib.suppress(psycopg.Error):
                    cluster.drop_database(db)
    return result


def format_report(results: Sequence[Result], skipped: dict[str, str], sizes: Sizes) -> str:
    lines = [f"Complete actions (hard reboot: request -> agent -> outcome -> read models), "
             f"{sizes.servers} servers x {sizes.rounds} rounds, median of "
             f"{sizes.repetitions}", ""]
    lines.append(f"{'backend':<9} {'engine/s':>9} {'nova/s':>8} {'ratio':>6} "
                 f"{'commits/action':>15} {'statements/action':>18}  durability")
    for r in results:
        engine = statistics.median(m.actions_per_s for m in r.engine)
        nova = statistics.median(r.nova)
        commits = [m.commits_per_action for m in r.engine if m.commits_per_action is not None]
        statements = [m.statements_per_action for m in r.engine
                      if m.statements_per_action is not None]
        lines.append(
            f"{r.backend:<9} {engine:>9.0f} {nova:>8.0f} {engine / nova:>5.2f}x "
            f"{statistics.median(commits) if commits else float('nan'):>15.1f} "
            f"{f'{statistics.median(statements):.1f}' if statements else 'n/a':>18}  "
            f"{r.durability}")
    for backend, reason in skipped.items():
        lines.append(f"{backend:<9} skipped: {reason}")
    lines.append("")
    lines.append(f"target: engine/nova >= {TARGET_RATIO}x (Nova's pattern: six transactions "
                 "per action). Commits: write transactions (SQLite: COMMIT statements; "
                 "PostgreSQL: transaction ids assigned).")
    return "\n".join(lines)


def run(backends: Sequence[str], sizes: Sizes, *,
        log: Callable[[str], None] = print) -> str:
    results: list[Result] = []
    skipped: dict[str, str] = {}
    if "sqlite" in backends:
        results.append(bench_sqlite(sizes, log))
    if "postgres" in backends:
        from benchmarks.commands import postgres_cluster

        cluster_class, reason = postgres_cluster()
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
                    results.append(bench_postgres(cluster, sizes, log))
                finally:
                    cluster.__exit__(None, None, None)
    return format_report(results, skipped, sizes)
