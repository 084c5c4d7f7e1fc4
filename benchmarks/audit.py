"""The audit core at scale: verify throughput over a large chained log, and as-of latency.

What is measured
----------------
*Verify*: :func:`vmledger.audit.verify.verify` (what ``Engine.verify()`` calls) over a
whole log, in events per second: it reads every event and every chain row in pages,
recomputes both HMAC links of each event and checks the request index.

*As of*: :meth:`vmledger.audit.ledger.Ledger.as_of` for servers with 1,000 events each,
at random times (``at=``: a request-index lookup, then the replay) and random versions
(``version=``), with snapshots (the service takes one every 100 events: at most 99
events are replayed) and without (``use_snapshots=False``: every event up to the
version is replayed). Both modes answer the same queries, interleaved in a shuffled
order; medians and 95th percentiles are reported, and each pair of answers is checked
to be the same server state.

How the log is made
-------------------
Through the real write path: servers are created with ``ServerService.create_server``
(one command each), then their events are triggered with the domain's own commands
(the lifecycle of :data:`benchmarks.commands.PHASES`: user actions with the guard, the
host agent's steps, hypervisor calls, outcomes) and saved with ``service.save(*servers)``
- many servers, one lifecycle cycle each, per call - so the audited recorder computes and
writes the chain links and the request index of every event, in the events' transaction.
Servers are written in groups of 100, interleaved within a group (a server's events are
spread over the group's part of the log). Every event has its own timestamp (a clock
that moves 1 ms per reading).

The bulk of the log is saved by ``ServerService`` with snapshotting switched off
(:class:`benchmarks.commands.NoSnapshotsService`: same recorder, same chain): taking a
snapshot every 100 events replays those 100 events and commits (fsyncs) the snapshot in
its own transaction, which nearly halves the generation rate; snapshots are not part of
the chain and verify does not read them. The servers used for the as-of measurement
are saved by the shipped ``ServerService`` (snapshot every 100 events), interleaved with
the bulk; their generation rate is reported as well, with what the whole log would take
as shipped (an extrapolation).

If generating the log takes longer than a time budget, generation stops at the end of a
group and the smaller log is measured; extrapolations to the target size are printed
and labelled as such.
"""

from __future__ import annotations

import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path

import psycopg

from benchmarks.commands import (
    FLAVOR,
    IMAGE,
    METADATA,
    PHASES,
    NoSnapshotsService,
    Phase,
    WorkloadError,
    commands_of,
    contention,
    postgres_cluster,
    pressure_totals,
    settle,
)
from vmledger.audit.ledger import Ledger
from vmledger.audit.verify import VerifyReport, verify
from vmledger.domain.server import Context, Server
from vmledger.domain.service import ServerService
from vmledger.persistence import environment

USER, PROJECT = "audit-user", "audit-project"
CREATE = PHASES[0]
#: the lifecycle every server goes round (create is done once; servers are not deleted)
CYCLE: tuple[Phase, ...] = tuple(p for p in PHASES if p.action not in ("create", "delete"))
EVENTS_PER_CYCLE = sum(1 + len(p.agent) for p in CYCLE)
GROUP = 100  # servers written together (interleaved) before the next group starts
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Sizes:
    sqlite_events: int
    postgres_events: int
    events_per_server: int
    asof_servers: int  # of the first group, saved by the shipped service (snapshots)
    asof_queries: int  # per kind (by time, by version); each runs in both modes
    sqlite_budget: float  # seconds of generation before stopping at a group boundary
    postgres_budget: float


FULL = Sizes(sqlite_events=1_000_000, postgres_events=100_000, events_per_server=1000,
             asof_servers=20, asof_queries=200, sqlite_budget=150.0, postgres_budget=60.0)
QUICK = Sizes(sqlite_events=100_000, postgres_events=20_000, events_per_server=1000,
              asof_servers=5, asof_queries=40, sqlite_budget=30.0, postgres_budget=15.0)


class SteppingClock:
    """Each reading is 1 ms after the previous one: every event has its own timestamp,
    increasing in log order."""

    def __init__(self, start: datetime = START, step: timedelta = timedelta(milliseconds=1)
                 ) -> None:
        self._next = start
        self._step = step

    def now(self) -> datetime:
        now = self._next
        self._next += self._step
        return now


# ---------------------------------------------------------------------------------------
# Generating the log
# ---------------------------------------------------------------------------------------

def _request(server: Server, ctx: Context, at: datetime, phase: Phase) -> None:
    """The user's request of ``phase``, as ServerService's handlers make it."""
    if phase.action == "lock":
        server.lock(ctx, at, phase.params.get("reason"))
    elif phase.action == "unlock":
        server.unlock(ctx, at)
    elif phase.action == "reboot":
        kind = str(phase.params["type"]).upper()
        server.request_action(f"reboot_{kind.lower()}", ctx, at, params={"type": kind})
    else:
        server.request_action(phase.action, ctx, at)


def event_stream(server: Server, service: ServerService) -> Iterator[None]:
    """Each step triggers one event on ``server`` (created, not yet built): the host
    agent's build, then user requests and the agent's outcomes, round the cycle."""
    clock = service.clock
    request_id = server.pending_request_id
    if request_id is None:
        raise WorkloadError("the server has no create in flight")
    agent = service.agent_context(request_id)
    for step in CREATE.agent:
        step(server, agent, clock.now())
        yield
    while True:
        for phase in CYCLE:
            ctx = service.context(user_id=USER, project_id=PROJECT, is_admin=False)
            _request(server, ctx, clock.now(), phase)
            yield
            agent = service.agent_context(ctx.request_id)
            for step in phase.agent:
                step(server, agent, clock.now())
                yield


@dataclass
class Writer:
    """One service writing part of the log, and what it cost."""

    label: str
    service: ServerService
    events: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class AsOfServer:
    server_id: str
    first: datetime
    last: datetime
    version: int


@dataclass
class Generated:
    target: int
    events: int
    servers: int
    seconds: float
    writers: list[Writer]
    asof: list[AsOfServer]
    contention: dict[str, float]

    @property
    def stopped_early(self) -> bool:
        return self.events < self.target

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def generate(bulk: ServerService, shipped: ServerService, *, target: int, per_server: int,
             asof_servers: int, budget: float, log: Callable[[str], None]) -> Generated:
    """Write about ``target`` events: ``per_server`` events for each of
    ``ceil(target / per_server)`` servers, the first ``asof_servers`` by ``shipped``."""
    writers = {"bulk": Writer("ServerService, snapshotting off (bulk)", bulk),
               "shipped": Writer("ServerService as shipped, snapshot every 100 (as-of "
                                 "servers)", shipped)}
    needed = math.ceil(target / per_server)
    stalls = pressure_totals()
    started = time.perf_counter()
    made = 0
    asof: list[Server] = []
    for first in range(0, needed, GROUP):
        elapsed = time.perf_counter() - started
        if first and elapsed > budget:
            log(f"  generation budget of {budget:.0f} s spent after {made:,} servers: "
                "stopping there")
            break
        members: list[tuple[Server, Writer, Iterator[None]]] = []
        for i in range(first, min(first + GROUP, needed)):
            writer = writers["shipped" if i < asof_servers else "bulk"]
            service = writer.service
            began = time.perf_counter()
            ctx = service.context(user_id=USER, project_id=PROJECT, is_admin=False)
            result = commands_of(service).servers.create(
                ctx, name=f"audit-{i}", flavor=FLAVOR, image=IMAGE, metadata=METADATA)
            server = service.get(result.server_id, include_deleted=True)
            writer.seconds += time.perf_counter() - began
            writer.events += 1
            members.append((server, writer, event_stream(server, service)))
            if i < asof_servers:
                asof.append(server)
        remaining = per_server - 1
        while remaining > 0:
            chunk = min(EVENTS_PER_CYCLE, remaining)
            for writer in writers.values():
                mine = [(s, stream) for s, w, stream in members if w is writer]
                if not mine:
                    continue
                began = time.perf_counter()
                for _server, stream in mine:
                    for _ in islice(stream, chunk):
                        pass
                writer.service.save(*(s for s, _ in mine))
                writer.seconds += time.perf_counter() - began
                writer.events += chunk * len(mine)
            remaining -= chunk
        made += len(members)
        total = sum(w.events for w in writers.values())
        log(f"  {total:,} events, {made:,} servers ({time.perf_counter() - started:.0f} s)")
    seconds = time.perf_counter() - started
    events = sum(w.events for w in writers.values())
    return Generated(target, events, made, seconds, list(writers.values()),
                     [AsOfServer(str(s.id), s.created_on, s.modified_on, s.version)
                      for s in asof], contention(stalls, pressure_totals(), seconds))


# ---------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------

@dataclass
class VerifyRun:
    report: VerifyReport
    wall: float
    contention: dict[str, float]


def measure_verify(service: ServerService) -> VerifyRun:
    settle()
    stalls = pressure_totals()
    began = time.perf_counter()
    report = verify(service)
    wall = time.perf_counter() - began
    if not report.ok:
        raise WorkloadError(f"the generated log does not verify:\n{report}")
    return VerifyRun(report, wall, contention(stalls, pressure_totals(), wall))


@dataclass(frozen=True)
class Query:
    server_id: str
    at: datetime | None
    version: int | None

    @property
    def kind(self) -> str:
        return "by time" if self.at is not None else "by version"


@dataclass
class Latencies:
    ms: list[float] = field(default_factory=list)
    replayed: list[int] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.ms)

    def p95(self) -> float:
        ordered = sorted(self.ms)
        return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


SNAPSHOTS, EVENTS_ONLY = "snapshots", "events only"
SNAPSHOT_INTERVAL = ServerService.snapshotting_intervals[Server]


def queries(servers: Sequence[AsOfServer], per_kind: int, seed: int = 0) -> list[Query]:
    rng = random.Random(seed)
    made: list[Query] = []
    for _ in range(per_kind):
        s = rng.choice(servers)
        made.append(Query(s.server_id, None, rng.randint(1, s.version)))
        span = (s.last - s.first).total_seconds()
        made.append(Query(s.server_id, s.first + timedelta(seconds=rng.uniform(0, span)),
                          None))
    rng.shuffle(made)
    return made


def measure_as_of(service: ServerService, servers: Sequence[AsOfServer], per_kind: int
                  ) -> tuple[dict[tuple[str, str], Latencies], dict[str, float]]:
    """(kind, mode) → latencies; the same queries in both modes, in a shuffled order."""
    ledger = Ledger(service)
    rng = random.Random(1)
    results: dict[tuple[str, str], Latencies] = {}
    for q in queries(servers, 3, seed=99):  # warm-up: statement caches, imports
        ledger.as_of(q.server_id, at=q.at, version=q.version)
        ledger.as_of(q.server_id, at=q.at, version=q.version, use_snapshots=False)
    settle()
    stalls = pressure_totals()
    began = time.perf_counter()
    for q in queries(servers, per_kind):
        modes = [SNAPSHOTS, EVENTS_ONLY]
        rng.shuffle(modes)
        answers: dict[str, Server] = {}
        for mode in modes:
            t = time.perf_counter()
            server = ledger.as_of(q.server_id, at=q.at, version=q.version,
                                  use_snapshots=mode == SNAPSHOTS)
            ms = 1000 * (time.perf_counter() - t)
            answers[mode] = server
            lat = results.setdefault((q.kind, mode), Latencies())
            lat.ms.append(ms)
            lat.replayed.append(server.version % SNAPSHOT_INTERVAL if mode == SNAPSHOTS
                                else server.version)
        a, b = answers[SNAPSHOTS], answers[EVENTS_ONLY]
        if (a.version, a.vm_state, a.task_state, a.power_state, a.locked) != (
                b.version, b.vm_state, b.task_state, b.power_state, b.locked) or (
                q.version is not None and a.version != q.version):
            raise WorkloadError(f"as_of answers differ for {q}: v{a.version} {a.vm_state} "
                                f"vs v{b.version} {b.vm_state}")
    seconds = time.perf_counter() - began
    return results, contention(stalls, pressure_totals(), seconds)


# ---------------------------------------------------------------------------------------
# One backend
# ---------------------------------------------------------------------------------------

@dataclass
class BackendResult:
    backend: str
    generated: Generated
    size: str
    verify: VerifyRun
    as_of: dict[tuple[str, str], Latencies]
    as_of_contention: dict[str, float]
    note: str = ""


def bench_url(backend: str, url: str, target: int, sizes: Sizes, budget: float,
              size_of: Callable[[], str], log: Callable[[str], None]) -> BackendResult:
    env = environment(url)
    shipped = ServerService(env, clock=(clock := SteppingClock()))
    bulk = NoSnapshotsService(env, clock=clock)
    try:
        for service in (shipped, bulk):  # psycopg_pool connects in background threads
            pool = getattr(getattr(service.recorder, "datastore", None), "pool", None)
            if pool is not None and hasattr(pool, "wait"):
                pool.wait(timeout=60)
        log(f"{backend}: generating {target:,} events")
        generated = generate(bulk, shipped, target=target, per_server=sizes.events_per_server,
                             asof_servers=sizes.asof_servers, budget=budget, log=log)
        log(f"{backend}: verify over {generated.events:,} events")
        checked = measure_verify(shipped)
        log(f"{backend}: {checked.report.events_per_second:,.0f} events/s; as-of queries")
        latencies, stalls = measure_as_of(shipped, generated.asof, sizes.asof_queries)
        return BackendResult(backend, generated, size_of(), checked, latencies, stalls)
    finally:
        bulk.close()
        shipped.close()


def _sqlite_size(path: Path) -> Callable[[], str]:
    def size() -> str:
        total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        return f"database file {total / 1e6:,.0f} MB"
    return size


def _postgres_size(url: str) -> Callable[[], str]:
    def size() -> str:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return f"database {int(row[0]) / 1e6:,.0f} MB" if row else "database size ?"
    return size


# ---------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------

def _stalls(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} %" for k, v in values.items()) or "unknown"


def format_result(r: BackendResult, target: int) -> list[str]:
    g, v = r.generated, r.verify
    per_server = g.events // g.servers if g.servers else 0
    out = ["", f"[{r.backend}] log: {g.events:,} events ({g.servers:,} servers x "
               f"{per_server:,} events), {r.size}{r.note}"]
    if g.stopped_early:
        out.append(f"  NOTE: generation stopped at {g.events:,} of the {target:,} events "
                   "targeted (time budget); extrapolations below are labelled")
    out.append(f"  generation: {g.seconds:.1f} s = {g.rate:,.0f} events/s through "
               f"create_server + Application.save (stalls: {_stalls(g.contention)})")
    for w in g.writers:
        if w.events:
            out.append(f"    {w.label:<66} {w.events:>9,} events {w.rate:>7,.0f}/s")
    shipped = next((w for w in g.writers if "shipped" in w.label and w.events), None)
    if shipped is not None:
        out.append(f"    EXTRAPOLATED: {target:,} events all written as shipped (snapshots "
                   f"included) at {shipped.rate:,.0f}/s ~ {target / shipped.rate:.0f} s")
    if g.stopped_early:
        out.append(f"    EXTRAPOLATED: {target:,} events at this run's overall rate "
                   f"~ {target / g.rate:.0f} s")
    rep = v.report
    out.append(f"  verify (what Engine.verify() runs): {rep.events_checked:,} events + "
               f"{rep.chain_rows_checked:,} chain rows of {rep.servers:,} aggregates in "
               f"{rep.seconds:.1f} s = {rep.events_per_second:,.0f} events/s, "
               f"{'OK' if rep.ok else 'BROKEN'} (stalls: {_stalls(v.contention)})")
    if g.stopped_early:
        out.append(f"    EXTRAPOLATED: verify of {target:,} events at this rate "
                   f"~ {target / rep.events_per_second:.0f} s (one linear pass)")
    n = len(next(iter(r.as_of.values())).ms) if r.as_of else 0
    out.append(f"  as of, servers with {per_server:,} events ({len(g.asof)} servers, "
               f"{n} random queries per row, both modes on the same queries; "
               f"stalls: {_stalls(r.as_of_contention)})")
    out.append(f"    {'query':<11} {'mode':<12} {'median':>9} {'p95':>9} "
               f"{'events replayed (mean)':>23}")
    for kind in ("by time", "by version"):
        for mode in (SNAPSHOTS, EVENTS_ONLY):
            lat = r.as_of.get((kind, mode))
            if lat is None:
                continue
            out.append(f"    {kind:<11} {mode:<12} {lat.median():>6.2f} ms {lat.p95():>6.2f} ms "
                       f"{statistics.mean(lat.replayed):>23.0f}")
    return out


def header_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        es_version = version("eventsourcing")
    except PackageNotFoundError:  # pragma: no cover
        es_version = "?"
    return (f"vmledger audit benchmark - Python {platform.python_version()}, "
            f"eventsourcing {es_version}, SQLite {sqlite3.sqlite_version}, "
            f"psycopg {psycopg.__version__}, {os.cpu_count()} CPUs")


def run(backends: Sequence[str] = ("sqlite", "postgres"), sizes: Sizes = FULL, *,
        log: Callable[[str], None] = print) -> str:
    """Run the audit benchmark on ``backends``; return the report to print."""
    out = [header_line(),
           "Logs written through ServerService (create_server, domain commands, "
           "Application.save of many servers per call): the audited recorder chains every "
           "event. Bulk saved with snapshotting off, as-of servers by the shipped service "
           "(see benchmarks/audit.py)."]
    if "sqlite" in backends:
        directory = Path(tempfile.mkdtemp(prefix="vmledger-audit-"))
        try:
            path = directory / "audit.db"
            log(f"sqlite: log in {path} (deleted at the end of the run)")
            result = bench_url("sqlite", f"sqlite:///{path}", sizes.sqlite_events, sizes,
                               sizes.sqlite_budget, _sqlite_size(path), log)
            out += format_result(result, sizes.sqlite_events)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if "postgres" in backends:
        cluster_class, reason = postgres_cluster()
        if cluster_class is None:
            out += ["", f"[postgres] skipped: {reason}"]
        else:
            from tests.support.postgres import PostgresClusterError

            try:
                with cluster_class() as cluster:
                    url = cluster.create_database(f"audit_{uuid.uuid4().hex[:8]}")
                    log(f"postgres: throwaway cluster on 127.0.0.1:{cluster.port}")
                    result = bench_url("postgres", url, sizes.postgres_events, sizes,
                                       sizes.postgres_budget, _postgres_size(url), log)
                    if sizes.postgres_events < sizes.sqlite_events:
                        result.note = (f" - a smaller log than SQLite's "
                                       f"{sizes.sqlite_events:,} to fit the time budget")
                    out += format_result(result, sizes.postgres_events)
            except PostgresClusterError as e:
                out += ["", f"[postgres] skipped: {str(e).splitlines()[0]}"]
    return "\n".join(out)
