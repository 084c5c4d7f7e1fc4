"""Durable commands per second: vmledger's command service against a raw driver.

What is measured
----------------
*Engine*: N servers, each driven through a realistic lifecycle directly on the command
service :class:`~vmledger.domain.service.ServerService` — ``create_server``, the host
agent's outcome commands (``record``: advance the task state, record each hypervisor
call, complete) and user actions (``act``: stop, start, hard reboot, pause, unpause,
lock, unlock, delete). Each call is one durable command (load → decide → save in one
transaction, as the service does it). Only the command path is timed: no servers view,
no host agent, no HTTP.

*Raw*: the same number of commands, in the same order over the same number of
aggregates, with the raw driver (``sqlite3`` / ``psycopg`` 3): one transaction per
command that SELECTs the aggregate's rows, INSERTs one row (a payload of the engine
run's average stored-event size) and COMMITs, into a table laid out like
eventsourcing's stored events, with the same durability settings.

How it is timed
---------------
Every configuration (the shipped engine, the engine variants, the raw baseline and
the raw replays of the engine's SQL protocol) runs on its own fresh database. Within
one repetition they all run *interleaved*: the lifecycle is cut into batches (the
users' requests of one phase, then the agent's pass) and the configurations take
turns, batch by batch, in a shuffled order, so a burst of outside load (this machine
is shared) hits all of them alike instead of spoiling one. Only the batches are timed.
Repetitions use fresh databases; medians are reported.

The ratio engine/raw is reported with the project's target (>= 0.8), the time split
of a sample of engine commands, and configuration variants tried inside this
benchmark only (no vmledger code is changed).
"""

from __future__ import annotations

import contextlib
import cProfile
import gc
import math
import os
import platform
import pstats
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
import weakref
from collections import defaultdict
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import psycopg
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder
from psycopg import sql

from vmledger.domain import lifecycle as lc
from vmledger.domain import service as store_module
from vmledger.domain.catalog import image_id_for
from vmledger.domain.commands import CommandResult, Commands
from vmledger.domain.server import Context, Server
from vmledger.domain.service import ServerService
from vmledger.engine import AllocationRatios
from vmledger.persistence import environment

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.8

# ---------------------------------------------------------------------------------------
# The workload: one realistic lifecycle per server
# ---------------------------------------------------------------------------------------

Step = Callable[[Server, Context, datetime], None]

IMAGE = image_id_for("cirros-0.6.2-x86_64")
FLAVOR = "2"
METADATA = {"role": "web", "team": "benchmarks"}
CONFIRM_WINDOW = timedelta(hours=24)
SPAWN_ARGS = {"flavor_id": FLAVOR, "vcpus": 1, "ram_mb": 2048, "disk_gb": 20,
              "image_id": IMAGE}

#: the benchmarks' engines keep thousands of servers on one simulated host: no capacity
#: limit (a full host would turn the measured lifecycles into scheduling failures)
UNLIMITED = AllocationRatios(cpu=math.inf, ram=math.inf, disk=math.inf)


def _observation(power_state: int, *, exists: bool = True) -> dict[str, Any]:
    """What the simulator's ``observe`` answers (as the agent records it)."""
    return {"exists": exists, "power_state": power_state, "flavor_id": FLAVOR if exists
            else None, "image_id": IMAGE if exists else None, "resize_pending": False}


def _advance(task_state: str) -> Step:
    def step(server: Server, ctx: Context, at: datetime) -> None:
        server.advance(ctx, at, task_state)
    return step


def _call(name: str, arguments: dict[str, Any], result: dict[str, Any] | None) -> Step:
    def step(server: Server, ctx: Context, at: datetime) -> None:
        server.record_call(ctx, at, host=server.host, driver="simulator", call=name,
                           arguments=arguments, result=result, error=None,
                           duration_ms=0.412)
    return step


def _complete(power_state: int) -> Step:
    def step(server: Server, ctx: Context, at: datetime) -> None:
        server.complete(ctx, at, power_state=power_state, confirm_window=CONFIRM_WINDOW)
    return step


RUNNING, PAUSED, SHUTDOWN, NOSTATE = 1, 3, 4, 0


@dataclass(frozen=True)
class Phase:
    """One user command per server, then the host agent's pass over every server."""

    action: str  # "create", or an action name of ServerService.act
    params: dict[str, Any]
    agent: tuple[Step, ...]  # the agent's outcome commands (ServerService.record)


PHASES: tuple[Phase, ...] = (
    Phase("create", {}, (
        _advance(lc.NETWORKING), _advance(lc.BLOCK_DEVICE_MAPPING), _advance(lc.SPAWNING),
        _call("observe", {}, _observation(NOSTATE, exists=False)),
        _call("spawn", SPAWN_ARGS, {"domain": "instance-bench", "method": "define+start"}),
        _complete(RUNNING))),
    Phase("stop", {}, (
        _call("observe", {}, _observation(RUNNING)), _call("power_off", {}, {"clean": True}),
        _complete(SHUTDOWN))),
    Phase("start", {}, (
        _call("observe", {}, _observation(SHUTDOWN)), _call("power_on", {}, None),
        _complete(RUNNING))),
    Phase("reboot", {"type": "HARD"}, (
        _advance(lc.REBOOT_PENDING_HARD), _advance(lc.REBOOT_STARTED_HARD),
        _call("observe", {}, _observation(RUNNING)),
        _call("reboot", {"hard": True}, {"method": "reset"}), _complete(RUNNING))),
    Phase("pause", {}, (
        _call("observe", {}, _observation(RUNNING)), _call("pause", {}, None),
        _complete(PAUSED))),
    Phase("unpause", {}, (
        _call("observe", {}, _observation(PAUSED)), _call("unpause", {}, None),
        _complete(RUNNING))),
    Phase("lock", {"reason": "maintenance window"}, ()),
    Phase("unlock", {}, ()),
    Phase("delete", {}, (
        _call("observe", {}, _observation(RUNNING)), _call("destroy", {}, None),
        _complete(NOSTATE))),
)

COMMANDS_PER_SERVER = sum(1 + len(phase.agent) for phase in PHASES)


Batch = list[tuple[int, bool]]  # (server index, the command loads the aggregate first)


def command_batches(servers: int) -> list[Batch]:
    """The engine's command order, cut where :func:`lifecycle` yields."""
    batches: list[Batch] = []
    for phase in PHASES:
        batches.append([(i, phase.action != "create") for i in range(servers)])
        if phase.agent:
            batches.append([(i, True) for i in range(servers) for _ in phase.agent])
    return batches


class WorkloadError(RuntimeError):
    """A command of the workload was refused or ignored: the benchmark is wrong."""


def _accepted(result: CommandResult, what: str) -> None:
    if not result.accepted:
        raise WorkloadError(f"{what} was not accepted: {result}")



_COMMANDS: weakref.WeakKeyDictionary[ServerService, Commands] = weakref.WeakKeyDictionary()


def commands_of(service: ServerService) -> Commands:
    """The command modules over ``service`` (built once per store)."""
    found = _COMMANDS.get(service)
    if found is None:
        found = _COMMANDS[service] = Commands.build(service)
    return found


def lifecycle(service: ServerService, servers: int) -> Iterator[int]:
    """Drive ``servers`` servers through their lifecycle, yielding after each batch
    (one user command per server, then the agent's pass) the commands it ran."""
    def ctx() -> Context:
        return service.context(user_id="bench-user", project_id="bench-project",
                               is_admin=False)

    ids: list[str] = []
    pending: list[str] = []
    for phase in PHASES:
        for i in range(servers):  # the users' requests
            if phase.action == "create":
                result = commands_of(service).servers.create(
                    ctx(), name=f"bench-{i}", flavor=FLAVOR, image=IMAGE, metadata=METADATA)
                ids.append(result.server_id)
                pending.append(result.request_id)
            else:
                result = commands_of(service).actions.act(ctx(), ids[i], phase.action,
                                                          **phase.params)
                pending[i] = result.request_id
            _accepted(result, phase.action)
        yield servers
        if not phase.agent:
            continue
        for i in range(servers):  # the host agent's pass: each action to its outcome
            for step in phase.agent:
                _accepted(commands_of(service).outcomes.record(ids[i], pending[i], step),
                          f"{phase.action} step")
        yield servers * len(phase.agent)


def drive(service: ServerService, servers: int) -> int:
    """Run the whole lifecycle of ``servers`` servers; return the number of commands."""
    return sum(lifecycle(service, servers))


# ---------------------------------------------------------------------------------------
# Configuration variants of the engine (benchmark-only: vmledger code is not changed)
# ---------------------------------------------------------------------------------------


class NoSnapshotsService(ServerService):
    """ServerService without snapshots (the snapshot store is not even read)."""

    name = "vmledger"
    snapshotting_intervals: ClassVar[dict[Any, int]] = {}


class NoNotifyService(ServerService):
    """ServerService whose recorder (whichever class the environment selects) does not
    send ``NOTIFY`` in its write transactions; the table lock is kept.

    Caveat: vmledger's background mode LISTENs on the log's channel to fold events
    written by other processes within milliseconds; without NOTIFY it falls back to its
    poll interval. eventsourcing's own ``recorder.subscribe()`` would block instead.
    """

    name = "vmledger"

    def construct_recorder(self) -> ApplicationRecorder:
        recorder = super().construct_recorder()
        if hasattr(recorder, "notify"):  # vmledger's recorder
            recorder.notify = False
        elif hasattr(recorder, "_notify_channel"):
            recorder._notify_channel = lambda curs: None
        return recorder


class NoSnapshotsNoNotifyService(NoSnapshotsService, NoNotifyService):
    name = "vmledger"


class ReadingService(ServerService):
    """ServerService whose commands read the log after the cached version on every load
    (as every load did before the cached copy the service saved itself was trusted)."""

    name = "vmledger"

    def construct_repository(self) -> Any:
        repository = super().construct_repository()
        repository.latest = None  # type: ignore[attr-defined]
        return repository


@dataclass(frozen=True)
class Variant:
    label: str
    env: dict[str, str] = field(default_factory=dict)
    service_class: type[ServerService] = ServerService
    backends: tuple[str, ...] = ("sqlite", "postgres")
    #: only measured when the shipped environment selects a recorder of its own
    needs_custom_recorder: bool = False


SHIPPED = Variant("as shipped (ServerService, env from URL)")
_LRU = {"AGGREGATE_CACHE_MAXSIZE": "10000"}
_NO_PING = {"POSTGRES_PRE_PING": "n"}
LIBRARY_RECORDERS = {"sqlite": "eventsourcing.sqlite:SQLiteApplicationRecorder",
                     "postgres": "eventsourcing.postgres:PostgresApplicationRecorder"}
VARIANTS: tuple[Variant, ...] = (
    # ServerService.env sets AGGREGATE_CACHE_MAXSIZE="0", which eventsourcing 9.5 reads
    # as an *unbounded* cache with fast-forward, not as "no cache".
    Variant("cache off (AGGREGATE_CACHE_MAXSIZE unset)", {"AGGREGATE_CACHE_MAXSIZE": ""}),
    Variant("bounded LRU cache 10000 + fast-forward", _LRU),
    Variant("snapshotting off", service_class=NoSnapshotsService),
    Variant("POSTGRES_PRE_PING=n", _NO_PING, backends=("postgres",)),
    Variant("NOTIFY off (caveat: LISTENers poll)", service_class=NoNotifyService,
            backends=("postgres",)),
    Variant("pool 20 + overflow 20",
            {"POSTGRES_POOL_SIZE": "20", "POSTGRES_MAX_OVERFLOW": "20"},
            backends=("postgres",)),
    Variant("LRU 10000 + snapshots off", _LRU, NoSnapshotsService, backends=("sqlite",)),
    Variant("LRU + snapshots off + no pre-ping + no NOTIFY", {**_LRU, **_NO_PING},
            NoSnapshotsNoNotifyService, backends=("postgres",)),
    # informational: what deciding on the copy it saved, unread, saves a command
    Variant("(info) every load reads the log", service_class=ReadingService),
    # informational: what vmledger's own recorder (the audit chain) costs
    Variant("(info) library recorder: no audit chain",
            {"APPLICATION_RECORDER_TOPIC": LIBRARY_RECORDERS["sqlite"]},
            backends=("sqlite",), needs_custom_recorder=True),
    Variant("(info) library recorder: no audit chain",
            {"APPLICATION_RECORDER_TOPIC": LIBRARY_RECORDERS["postgres"]},
            backends=("postgres",), needs_custom_recorder=True),
)


def make_service(url: str, variant: Variant) -> ServerService:
    env = {**environment(url), **variant.env}
    return variant.service_class(env=env)


def recorder_topic(url: str, backend: str) -> str:
    """The application recorder class the shipped environment selects."""
    return environment(url).get("APPLICATION_RECORDER_TOPIC") or LIBRARY_RECORDERS[backend]


# ---------------------------------------------------------------------------------------
# Backends: a fresh database per run, the raw-driver baseline, durability checks
# ---------------------------------------------------------------------------------------

RAW_TOPIC = "vmledger.domain.server:Server.HypervisorCalled"


def raw_payload(size: int) -> bytes:
    """A JSON document of ``size`` bytes, like the transcoder's output."""
    head, tail = b'{"request_id":"', b'"}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


@dataclass(frozen=True)
class EventStats:
    events: int
    avg_state: float
    avg_topic: float


@dataclass(frozen=True)
class RawProtocol:
    """How the raw driver runs one command (the minimal baseline has every flag off)."""

    label: str
    split_read: bool = False  # the read in its own transaction, then the write transaction
    lock: bool = False  # PostgreSQL: SET LOCAL lock_timeout + LOCK TABLE ... EXCLUSIVE
    notify: bool = False  # PostgreSQL: NOTIFY in the write transaction
    #: the aggregate's rows read before the write; off: the version known from the
    #: previous write (as the engine decides on the copy it saved, unread)
    read: bool = True


MINIMAL = RawProtocol("raw: SELECT + INSERT + COMMIT, one transaction")
SQLITE_STEPS = (
    MINIMAL,
    RawProtocol("+ read in its own transaction", split_read=True),
    RawProtocol("- that read: the copy saved, unread (engine-shaped)", split_read=True,
                read=False),
)
POSTGRES_STEPS = (
    MINIMAL,
    RawProtocol("+ read in autocommit, pipelined write transaction", split_read=True),
    RawProtocol("+ LOCK TABLE ... IN EXCLUSIVE MODE", split_read=True, lock=True),
    RawProtocol("+ NOTIFY", split_read=True, lock=True, notify=True),
    RawProtocol("- the read: the copy saved, unread (engine-shaped)", split_read=True,
                lock=True, notify=True, read=False),
)


class Backend:
    name: str
    example_url: str
    #: the raw protocols measured, cumulative; the first is the baseline, the last is
    #: the engine's own protocol replayed by the raw driver
    steps: tuple[RawProtocol, ...] = (MINIMAL,)

    def database(self) -> contextlib.AbstractContextManager[str]:
        raise NotImplementedError

    def event_stats(self, url: str, table: str) -> EventStats:
        raise NotImplementedError

    def engine_durability(self, service: ServerService) -> str:
        raise NotImplementedError

    def ready(self, service: ServerService) -> None:
        """Wait until the service's connections are open (not part of a command's cost)."""

    def raw_job(self, url: str, batches: Sequence[Batch], servers: int, payload: bytes,
                protocol: RawProtocol, info: dict[str, str]) -> Job:
        """The raw driver's run: set up, yield 0, then run and yield batch by batch.

        ``info["durability"]`` is set to the connection's durability settings.
        """
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"
    example_url = "sqlite:///example.db"
    steps = SQLITE_STEPS
    TABLE = ("CREATE TABLE IF NOT EXISTS stored_events (originator_id TEXT, "
             "originator_version INTEGER, topic TEXT, state BLOB, "
             "PRIMARY KEY (originator_id, originator_version))")
    SELECT = ("SELECT originator_id, originator_version, topic, state FROM stored_events "
              "WHERE originator_id=? ORDER BY originator_version ASC")
    INSERT = "INSERT INTO stored_events VALUES (?,?,?,?)"

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        path = self.directory / f"bench-{uuid.uuid4().hex[:12]}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}{suffix}")

    @staticmethod
    def _path(url: str) -> str:
        return environment(url)["SQLITE_DBNAME"]

    def event_stats(self, url: str, table: str) -> EventStats:
        with contextlib.closing(sqlite3.connect(self._path(url))) as conn:
            n, state, topic = conn.execute(
                "SELECT count(*), avg(length(state)), avg(length(topic)) "
                f'FROM "{table}"').fetchone()
        return EventStats(int(n), float(state or 0), float(topic or 0))

    @staticmethod
    def _settings(cursor: Any) -> str:
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()[0]
        cursor.execute("PRAGMA synchronous")
        sync = cursor.fetchone()[0]
        names = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}
        return f"journal_mode={mode} synchronous={names.get(int(sync), sync)}"

    def engine_durability(self, service: ServerService) -> str:
        datastore = service.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cursor:
            return self._settings(cursor)

    def raw_job(self, url: str, batches: Sequence[Batch], servers: int, payload: bytes,
                protocol: RawProtocol, info: dict[str, str]) -> Job:
        conn = sqlite3.connect(self._path(url), isolation_level=None,
                               check_same_thread=False, cached_statements=128)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(self.TABLE)
            info["durability"] = self._settings(conn.cursor())
            ids = [uuid.uuid4().hex for _ in range(servers)]
            cur = conn.cursor()
            select, insert, topic = self.SELECT, self.INSERT, RAW_TOPIC
            split = protocol.split_read
            known = [0] * servers  # the version each server was last written at
            yield 0
            for batch in batches:
                for i, loads in batch:
                    oid = ids[i]
                    version = 1
                    if loads and not protocol.read:
                        version = known[i] + 1
                    elif split and loads:  # read in its own transaction
                        cur.execute("BEGIN")
                        rows = cur.execute(select, (oid,)).fetchall()
                        cur.execute("ROLLBACK")
                        version = rows[-1][1] + 1
                    cur.execute("BEGIN")
                    if loads and not split:
                        rows = cur.execute(select, (oid,)).fetchall()
                        version = rows[-1][1] + 1
                    cur.execute(insert, (oid, version, topic, payload))
                    cur.execute("COMMIT")
                    known[i] = version
                yield len(batch)
        finally:
            conn.close()


class PostgresBackend(Backend):
    name = "postgres"
    example_url = "postgresql://postgres@127.0.0.1:5432/example"
    steps = POSTGRES_STEPS
    TABLE = ("CREATE TABLE IF NOT EXISTS stored_events (originator_id uuid NOT NULL, "
             "originator_version bigint NOT NULL, topic text, state bytea, "
             "notification_id bigserial, PRIMARY KEY (originator_id, originator_version))")
    INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS stored_events_notification_id_idx "
             "ON stored_events (notification_id ASC)")
    SELECT = ("SELECT originator_id, originator_version, topic, state FROM stored_events "
              "WHERE originator_id = %s ORDER BY originator_version ASC")
    INSERT = ("INSERT INTO stored_events (originator_id, originator_version, topic, state) "
              "VALUES (%s, %s, %s, %s) RETURNING notification_id")

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        name = f"bench_{uuid.uuid4().hex[:12]}"
        url: str = self.cluster.create_database(name)
        try:
            yield url
        finally:
            with contextlib.suppress(psycopg.Error):
                self.cluster.drop_database(name)

    def event_stats(self, url: str, table: str) -> EventStats:
        query = sql.SQL("SELECT count(*), avg(octet_length(state)), avg(octet_length(topic)) "
                        "FROM {}").format(sql.Identifier(table))
        with psycopg.connect(url) as conn:
            row = conn.execute(query).fetchone()
        assert row is not None
        return EventStats(int(row[0]), float(row[1] or 0), float(row[2] or 0))

    @staticmethod
    def _settings(conn: psycopg.Connection[Any]) -> str:
        values = []
        for name in ("fsync", "synchronous_commit", "wal_sync_method"):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            value = (next(iter(row.values())) if isinstance(row, dict)
                     else row[0] if row else "?")
            values.append(f"{name}={value}")
        return " ".join(values)

    def engine_durability(self, service: ServerService) -> str:
        datastore = service.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            return self._settings(conn)

    def ready(self, service: ServerService) -> None:
        # psycopg_pool opens min_size connections in background threads: without this
        # wait, connecting (and forking PostgreSQL backends) would overlap the timed run
        service.recorder.datastore.pool.wait(timeout=60)  # type: ignore[attr-defined]

    def raw_job(self, url: str, batches: Sequence[Batch], servers: int, payload: bytes,
                protocol: RawProtocol, info: dict[str, str]) -> Job:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(self.TABLE)
            conn.execute(self.INDEX)
            info["durability"] = self._settings(conn)
            conn.autocommit = protocol.split_read  # the minimal run commits by hand
            ids = [uuid.uuid4() for _ in range(servers)]
            known = [0] * servers  # the version each server was last written at
            with conn.cursor() as cur:
                yield 0
                for batch in batches:
                    if protocol.split_read:
                        self._split(conn, cur, batch, ids, payload, protocol, known)
                    else:
                        self._minimal(conn, cur, batch, ids, payload)
                    yield len(batch)

    def _minimal(self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], batch: Batch,
                 ids: list[uuid.UUID], payload: bytes) -> None:
        """SELECT the aggregate's rows, INSERT one, COMMIT: one transaction."""
        select, insert, topic = self.SELECT, self.INSERT, RAW_TOPIC
        for i, loads in batch:
            oid = ids[i]
            version = 1
            if loads:
                cur.execute(select, (oid,), prepare=True)
                version = cur.fetchall()[-1][1] + 1
            cur.execute(insert, (oid, version, topic, payload), prepare=True)
            cur.fetchone()
            conn.commit()

    def _split(self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], batch: Batch,
               ids: list[uuid.UUID], payload: bytes, protocol: RawProtocol,
               known: list[int]) -> None:
        """The read in autocommit (unless ``protocol`` reads nothing: the version last
        written, in ``known``), then a pipelined write transaction (begun and committed
        by statements in the pipeline, as vmledger's recorder does), with the parts of
        eventsourcing 9.5's protocol that ``protocol`` switches on."""
        select, insert, topic = self.SELECT, self.INSERT, RAW_TOPIC
        # the lock timeout and NOTIFY in one statement, as vmledger's recorder sends them
        lock_timeout = ("SELECT set_config('lock_timeout', '10s', true)"
                        + (", pg_notify('stored_events', '')" if protocol.notify else ""))
        lock = "LOCK TABLE public.stored_events IN EXCLUSIVE MODE"
        take_lock, notify = protocol.lock, protocol.notify
        for i, loads in batch:
            oid = ids[i]
            version = 1
            if loads and not protocol.read:
                version = known[i] + 1
            elif loads:
                cur.execute(select, (oid,), prepare=True)
                version = cur.fetchall()[-1][1] + 1
            # as vmledger's recorder writes: BEGIN ... INSERT synced once (its ids are
            # read), COMMIT synced by leaving the pipeline
            with conn.pipeline() as pipeline:
                cur.execute(b"BEGIN", prepare=True)
                if take_lock:
                    cur.execute(lock_timeout, prepare=True)
                    cur.execute(lock, prepare=True)
                if notify and not take_lock:
                    cur.execute("NOTIFY stored_events", prepare=True)
                cur.execute(insert, (oid, version, topic, payload), prepare=True)
                pipeline.sync()
                cur.fetchone()
                cur.execute(b"COMMIT")
            known[i] = version


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------


def pressure_totals() -> dict[str, int]:
    """Cumulative stall time (µs) from Linux PSI: tasks waiting for a CPU / for I/O."""
    totals: dict[str, int] = {}
    for resource in ("cpu", "io"):
        try:
            line = Path(f"/proc/pressure/{resource}").read_text().splitlines()[0]
        except (OSError, IndexError):
            continue
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        totals[resource] = int(fields.get("total", 0))
    return totals


def contention(before: dict[str, int], after: dict[str, int], seconds: float
               ) -> dict[str, float]:
    """Share of the wall time (%) in which some task waited for a CPU / for I/O."""
    if seconds <= 0:
        return {}
    return {k: 100 * (after[k] - before[k]) / 1e6 / seconds
            for k in ("cpu", "io") if k in before and k in after}


def settle() -> None:
    """Start every timed run alike: no garbage pending, no dirty pages being written back
    (the previous run's writes otherwise slow down the next run's fsyncs)."""
    gc.collect()
    os.sync()


@dataclass(frozen=True)
class Run:
    commands: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.commands / self.seconds


Job = Generator[int, None, None]


def engine_job(backend: Backend, variant: Variant, servers: int, info: dict[str, Any]
               ) -> Job:
    """The engine's run on a fresh database: set up, yield 0, then yield per batch.

    Sets ``info["durability"]`` and, after the last batch, ``info["stats"]``.
    """
    with backend.database() as url:
        service = make_service(url, variant)
        try:
            info["durability"] = backend.engine_durability(service)
            backend.ready(service)
            table: str = service.recorder.events_table_name  # type: ignore[attr-defined]
            yield 0
            commands = 0
            for n in lifecycle(service, servers):
                commands += n
                yield n
        finally:
            service.close()
        stats = backend.event_stats(url, table)
    if stats.events != commands:
        raise WorkloadError(f"{commands} commands stored {stats.events} events")
    info["stats"] = stats


def raw_job(backend: Backend, servers: int, payload: bytes, protocol: RawProtocol,
            info: dict[str, Any]) -> Job:
    with backend.database() as url:
        yield from backend.raw_job(url, command_batches(servers), servers, payload,
                                   protocol, info)


def interleave(jobs: Sequence[Job], seed: int) -> list[Run]:
    """Run the jobs batch by batch, taking turns in a shuffled order; time the batches.

    Every job is first advanced to its initial ``yield 0`` (set-up, not timed). A job's
    last step (after its final batch: closing, checking) is not timed either.
    """
    order = random.Random(seed)
    commands = [0] * len(jobs)
    seconds = [0.0] * len(jobs)
    clock = time.perf_counter
    try:
        for job in jobs:
            next(job)
        settle()
        active = list(range(len(jobs)))
        while active:
            order.shuffle(active)
            for k in list(active):
                started = clock()
                try:
                    n = next(jobs[k])
                except StopIteration:
                    active.remove(k)
                    continue
                seconds[k] += clock() - started
                commands[k] += n
    finally:
        for job in jobs:
            with contextlib.suppress(Exception):
                job.close()
    return [Run(c, s) for c, s in zip(commands, seconds, strict=True)]


# ---------------------------------------------------------------------------------------
# Where the time goes
# ---------------------------------------------------------------------------------------


class SplitTimer:
    """Accumulated wall time per label, by wrapping callables of one service instance."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        had_own = attribute in vars(owner)
        original = getattr(owner, attribute)
        totals = self.seconds
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                totals[label] += clock() - started

        setattr(owner, attribute, timed)
        if had_own:
            self._undo.append(lambda: setattr(owner, attribute, original))
        else:
            self._undo.append(lambda: delattr(owner, attribute))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


TOTAL = "command (total)"
LOAD = "load: repository.get_trusted"
READ = "  SQL read (recorder.select_events)"
DECODE = "  decode (mapper.to_domain_event)"
DEEPCOPY = "  deepcopy of the cached aggregate"
SAVE = "save: Application.save"
ENCODE = "  encode (mapper.to_stored_event)"
WRITE = "  SQL write + commit (recorder.insert_events)"
AUDIT = "    of which audit chain links (HMAC, JSON parse)"
FIRE = "decide: lifecycle machine (lc.fire)"
TRIGGER = "decide: trigger_event (new event + apply)"
LAYOUT: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (LOAD, (READ, DECODE, DEEPCOPY), "  rest of load (fast-forward, cache, pool)"),
    (SAVE, (ENCODE, WRITE), "  rest of save (collect, snapshot check, pool)"),
    (FIRE, (), ""),
    (TRIGGER, (), ""),
)
REST = "rest: service loop, contexts, clock, guard checks"


def _instrument(service: ServerService, timer: SplitTimer) -> None:
    """Wrap the stages of one service instance (and two module functions) with timers."""
    modules = commands_of(service)
    for owner, method in ((modules.servers, "create"), (modules.actions, "act"),
                          (modules.outcomes, "record")):
        timer.wrap(owner, method, TOTAL)
    timer.wrap(service.repository, "get_trusted", LOAD)
    timer.wrap(service.recorder, "select_events", READ)
    if service.snapshots is not None:
        timer.wrap(service.snapshots.recorder, "select_events", READ)
    timer.wrap(service.mapper, "to_domain_event", DECODE)
    timer.wrap(store_module, "copy_of", DEEPCOPY)  # the repository's copy per load
    timer.wrap(service, "save", SAVE)
    timer.wrap(service.mapper, "to_stored_event", ENCODE)
    timer.wrap(service.recorder, "insert_events", WRITE)
    timer.wrap(lc, "fire", FIRE)
    timer.wrap(Server, "trigger_event", TRIGGER)
    recorders = sys.modules.get(type(service.recorder).__module__)
    if recorders is not None and hasattr(recorders, "_links"):  # the audited recorders
        timer.wrap(recorders, "_links", AUDIT)


@dataclass(frozen=True)
class Profile:
    commands: int
    split: list[tuple[str, float]]  # (label, µs per command)
    top: list[tuple[str, float, float]]  # (function, self µs per command, calls/command)

    @property
    def total_us(self) -> float:
        return self.split[0][1]


def profile(backend: Backend, servers: int, variant: Variant = SHIPPED, top: int = 12
            ) -> Profile:
    """Split timings of one sample run, then cProfile self times of another."""
    timer = SplitTimer()
    with backend.database() as url:
        service = make_service(url, variant)
        try:
            backend.ready(service)
            _instrument(service, timer)
            settle()
            commands = drive(service, servers)
        finally:
            timer.restore()
            service.close()
    assert Server.trigger_event is Aggregate.trigger_event  # restored
    sec = timer.seconds
    split: list[tuple[str, float]] = [(TOTAL, sec[TOTAL])]
    for parent, children, rest in LAYOUT:
        split.append((parent, sec[parent]))
        for child in children:
            split.append((child, sec[child]))
            if child == WRITE and AUDIT in sec:
                split.append((AUDIT, sec[AUDIT]))
        if children:
            split.append((rest, sec[parent] - sum(sec[c] for c in children)))
    split.append((REST, sec[TOTAL] - sum(sec[parent] for parent, _, _ in LAYOUT)))
    database = sec[READ] + sec[WRITE] - sec.get(AUDIT, 0.0)
    split.append(("", 0.0))
    split.append(("SQL calls (driver + pool + database)", database))
    split.append(("everything else (Python in the library and vmledger)",
                  sec[TOTAL] - database))

    profiler = cProfile.Profile()
    with backend.database() as url:
        service = make_service(url, variant)
        try:
            backend.ready(service)
            settle()
            profiler.enable()
            profiled = drive(service, servers)
            profiler.disable()
        finally:
            service.close()
    raw_stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = (
        pstats.Stats(profiler).stats)  # type: ignore[attr-defined]
    entries = sorted(((tottime, ncalls, _short(*key))
                      for key, (_cc, ncalls, tottime, _ct, _callers) in raw_stats.items()),
                     reverse=True)[:top]
    return Profile(commands, [(label, s / commands * 1e6) for label, s in split],
                   [(name, t / profiled * 1e6, n / profiled) for t, n, name in entries])


def _short(filename: str, line: int, func: str) -> str:
    if filename == "~":
        return func.strip("<>")
    parts = Path(filename).parts
    for anchor in ("eventsourcing", "vmledger", "psycopg", "psycopg_pool", "transitions"):
        if anchor in parts:
            index = len(parts) - 1 - parts[::-1].index(anchor)
            return f"{'/'.join(parts[index:])}:{line}({func})"
    return f"{Path(filename).name}:{line}({func})"


# ---------------------------------------------------------------------------------------
# The whole benchmark of one backend
# ---------------------------------------------------------------------------------------


@dataclass
class Series:
    """The runs of one configuration (an engine variant or a raw protocol)."""

    label: str
    variant: Variant | None = None
    runs: list[Run] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(r.rate for r in self.runs)

    @property
    def us(self) -> float:
        return 1e6 / self.rate

    def ratios(self, other: Series) -> list[float]:
        """Per-repetition ratios of this series' rate to ``other``'s (same repetition:
        both ran interleaved, under the same conditions)."""
        return [a.rate / b.rate for a, b in zip(self.runs, other.runs, strict=True)]

    def ratio(self, other: Series) -> float:
        """The median of the per-repetition ratios: outside load that slows down a
        whole repetition cancels out."""
        return statistics.median(self.ratios(other))


@dataclass
class BackendReport:
    backend: str
    servers: int
    repetitions: int
    stats: EventStats
    engine_durability: str
    raw_durability: str
    engine: list[Series]  # engine[0] is the shipped configuration
    raw_steps: list[Series]  # raw_steps[0] is the baseline, [-1] the engine-shaped protocol
    profile: Profile | None
    seconds: float
    contention: dict[str, float]
    recorder: str

    @property
    def commands(self) -> int:
        return self.servers * COMMANDS_PER_SERVER

    @property
    def raw(self) -> Series:
        return self.raw_steps[0]

    @property
    def stalled(self) -> bool:
        """More than 20 % CPU or I/O stall (PSI 'some') during the run."""
        return any(value > 20 for value in self.contention.values())

    @property
    def contention_text(self) -> str:
        return ", ".join(f"{k} {v:.0f} %" for k, v in self.contention.items()) or \
            "unknown (no /proc/pressure)"

    @property
    def shaped(self) -> Series:
        return self.raw_steps[-1]


def bench_backend(backend: Backend, servers: int, repetitions: int, *,
                  variants: Sequence[Variant], profile_servers: int,
                  log: Callable[[str], None]) -> BackendReport:
    started = time.perf_counter()
    stalls = pressure_totals()
    # warm-up (imports, statement caches, the filesystem) and the engine's event size
    warm = max(4, servers // 10)
    info: dict[str, Any] = {}
    interleave([engine_job(backend, SHIPPED, warm, info)], seed=0)
    stats: EventStats = info["stats"]
    payload = raw_payload(round(stats.avg_state))
    interleave([raw_job(backend, warm, payload, MINIMAL, {})], seed=0)

    recorder = recorder_topic(backend.example_url, backend.name)
    custom = recorder != LIBRARY_RECORDERS[backend.name]
    engine = [Series(v.label, v) for v in (SHIPPED, *variants)
              if backend.name in v.backends and (custom or not v.needs_custom_recorder)]
    raw_steps = [Series(step.label) for step in backend.steps]
    engine_info: list[dict[str, Any]] = [{} for _ in engine]
    raw_info: list[dict[str, Any]] = [{} for _ in raw_steps]
    for rep in range(1, repetitions + 1):
        jobs = [engine_job(backend, series.variant, servers, engine_info[k])
                for k, series in enumerate(engine) if series.variant is not None]
        jobs += [raw_job(backend, servers, payload, protocol, raw_info[k])
                 for k, protocol in enumerate(backend.steps)]
        began = time.perf_counter()
        runs = interleave(jobs, seed=rep)
        for series, run in zip([*engine, *raw_steps], runs, strict=True):
            series.runs.append(run)
        shipped, raw = engine[0].runs[-1].rate, raw_steps[0].runs[-1].rate
        log(f"  {backend.name} repetition {rep}/{repetitions} "
            f"({time.perf_counter() - began:.0f} s): engine as shipped {shipped:.0f} cmd/s, "
            f"raw {raw:.0f} cmd/s, ratio {shipped / raw:.2f}")
    stats = engine_info[0].get("stats", stats)
    prof = profile(backend, profile_servers) if profile_servers else None
    seconds = time.perf_counter() - started
    return BackendReport(backend.name, servers, repetitions, stats,
                         engine_info[0].get("durability", "?"),
                         raw_info[0].get("durability", "?"), engine, raw_steps, prof,
                         seconds, contention(stalls, pressure_totals(), seconds), recorder)


# ---------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------


def _verdict(ratio: float) -> str:
    return "met" if ratio >= TARGET_RATIO else "NOT met"


def format_report(reports: Sequence[BackendReport], skipped: dict[str, str]) -> str:
    out: list[str] = []
    w = out.append
    w("")
    w("Measured: the command path only - ServerService.create_server / act / record called")
    w("directly (no servers-view updates, no host agent loop, no HTTP). One command = load")
    w("+ guard + save, durable on return; the load takes the copy the service saved, unread,")
    w("when nothing newer is known (as the engine loads). Raw = the driver doing, per command, one")
    w("transaction: SELECT the aggregate's rows, INSERT one row, COMMIT (creates skip the")
    w("SELECT, as the engine does not load on create). Same table layout as eventsourcing's")
    w("stored events, same durability settings, payload = the engine run's average size.")
    for rep in reports:
        w("")
        w(f"[{rep.backend}] {rep.servers} servers x {COMMANDS_PER_SERVER} commands = "
          f"{rep.commands:,} commands per run; medians of {rep.repetitions} interleaved "
          f"repetitions; {rep.seconds:.0f} s")
        w(f"  recorder    engine: {rep.recorder}")
        w(f"  durability  engine: {rep.engine_durability}")
        w(f"              raw:    {rep.raw_durability}")
        w(f"  stalls (PSI 'some', share of wall time): {rep.contention_text}; high values mean "
          "other work competed for the CPUs or the disk: noisier numbers")
        w(f"  stored events: avg state {rep.stats.avg_state:.0f} B, avg topic "
          f"{rep.stats.avg_topic:.0f} B (engine run); raw payload "
          f"{round(rep.stats.avg_state)} B")
    if reports:
        w("")
        head = (f"{'backend':<9} {'configuration':<46} {'engine/s':>8} {'raw/s':>6} "
                f"{'ratio':>5} {'(range)':>11} {'eng µs':>7} {'raw µs':>6} {'vs shipped':>10}"
                f"  target 0.8")
        w(head)
        w("-" * len(head))
    for rep in reports:
        raw_rate = rep.raw.rate
        shipped = rep.engine[0]
        for series in rep.engine:
            rate = series.rate
            ratio, ratios = series.ratio(rep.raw), series.ratios(rep.raw)
            change = ("" if series is shipped
                      else f"{100 * (series.ratio(shipped) - 1):+.0f} %")
            w(f"{rep.backend:<9} {series.label:<46} {rate:>8,.0f} {raw_rate:>6,.0f} "
              f"{ratio:>5.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
              f"{series.us:>7.0f} {rep.raw.us:>6.0f} {change:>10}  {_verdict(ratio)}")
        shaped = rep.shaped.rate
        w(f"{rep.backend:<9} {'(raw driver replaying the library protocol)':<46} {shaped:>8,.0f} "
          f"{raw_rate:>6,.0f} {rep.shaped.ratio(rep.raw):>5.2f} {'':>11} {rep.shaped.us:>7.0f} "
          f"{rep.raw.us:>6.0f} {'':>10}  (ceiling, no Python)")
    for backend, reason in skipped.items():
        w(f"{backend:<9} skipped: {reason}")
    if reports:
        w("")
        w("cmd/s and µs = medians over the repetitions; ratio = median of the per-repetition")
        w("ratios engine/raw (both interleaved in the same repetition), (range) = their min-max;")
        w("vs shipped = median per-repetition change of cmd/s against the shipped engine.")
        w("'NOTIFY off' is a ServerService subclass defined here whose recorder skips NOTIFY:")
        w("vmledger's background mode then folds other processes' events at its poll interval")
        w("instead of within milliseconds. '(info)' rows drop a feature (the audit chain) and")
        w("only show its cost. The raw replay of the library protocol does not include the")
        w("audit chain's SQL. Unsafe options were not tried (POSTGRES_ENABLE_DB_FUNCTIONS,")
        w("DEEPCOPY_FROM_AGGREGATE_CACHE=n, a cache without fast-forward, synchronous=NORMAL).")
    for rep in reports:
        w("")
        w(f"[{rep.backend}] the engine's SQL protocol on the raw driver, step by step "
          "(no Python; medians)")
        previous: Series | None = None
        for series in rep.raw_steps:
            delta = "" if previous is None else f"{series.us - previous.us:+7.0f} µs"
            w(f"  {series.label:<54} {series.rate:>7,.0f}/s {series.us:>6.0f} µs/cmd "
              f"{delta:>10}  ratio {series.ratio(rep.raw):.2f}")
            previous = series
    for rep in reports:
        if rep.profile is None:
            continue
        p = rep.profile
        w("")
        w(f"[{rep.backend}] where the time goes: shipped configuration, a sample of "
          f"{p.commands:,} commands, perf_counter split timings")
        for label, us in p.split:
            if not label:
                w("")
                continue
            w(f"  {label:<54} {us:>7.1f} µs/cmd {100 * us / p.total_us:>5.1f} %")
        w(f"[{rep.backend}] cProfile of another sample: top self time (µs/cmd, inflated by "
          "the profiler)")
        for name, us, calls in p.top:
            w(f"  {us:>7.1f} µs/cmd {calls:>6.1f} calls/cmd  {name}")
    for rep in reports:
        candidates = [e for e in rep.engine
                      if e.variant is not None and not e.variant.needs_custom_recorder]
        best = max(candidates, key=lambda r: r.ratio(rep.raw))
        shipped_ratio = rep.engine[0].ratio(rep.raw)
        best_ratio = best.ratio(rep.raw)
        w("")
        w(f"[{rep.backend}] target engine/raw >= {TARGET_RATIO}: shipped {shipped_ratio:.2f} "
          f"({_verdict(shipped_ratio)}); best tried: '{best.label}' {best_ratio:.2f} "
          f"({_verdict(best_ratio)}); the engine's SQL protocol on the raw driver, without "
          f"any Python: {rep.shaped.ratio(rep.raw):.2f}")
        if rep.stalled:
            w(f"[{rep.backend}] WARNING: tasks stalled this run ({rep.contention_text}); "
              "its numbers are noisy - rerun on a quiet machine before deciding")
    return "\n".join(out)


def header_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        es_version = version("eventsourcing")
    except PackageNotFoundError:  # pragma: no cover
        es_version = "?"
    return (f"vmledger command benchmark - Python {platform.python_version()}, "
            f"eventsourcing {es_version}, SQLite {sqlite3.sqlite_version}, "
            f"psycopg {psycopg.__version__}, {os.cpu_count()} CPUs")


# ---------------------------------------------------------------------------------------
# Entry point used by __main__
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    sqlite_servers: int
    postgres_servers: int
    repetitions: int
    profile_servers: int


FULL = Sizes(sqlite_servers=60, postgres_servers=24, repetitions=3, profile_servers=24)
QUICK = Sizes(sqlite_servers=20, postgres_servers=10, repetitions=3, profile_servers=10)


def postgres_cluster() -> tuple[Any, str | None]:
    """(the PostgresCluster class, None), or (None, why PostgreSQL is skipped)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.support.postgres import PostgresCluster, postgres_skip_reason
    except ImportError as e:  # pragma: no cover - the repository layout changed
        return None, f"cannot import tests.support.postgres ({e})"
    reason = postgres_skip_reason()
    if reason is not None:
        return None, reason
    return PostgresCluster, None


@contextlib.contextmanager
def throwaway_postgres(log: Callable[[str], None]
                       ) -> Iterator[tuple[PostgresBackend | None, str | None]]:
    """A suite's PostgreSQL: (a backend on a throwaway cluster, None) for as long as the
    block runs, or (None, why PostgreSQL is skipped)."""
    cluster_class, reason = postgres_cluster()
    if cluster_class is None:
        yield None, reason or "unavailable"
        return
    from tests.support.postgres import PostgresClusterError

    cluster = cluster_class()
    try:
        cluster.__enter__()
    except PostgresClusterError as e:
        yield None, str(e).splitlines()[0]
        return
    try:
        log(f"postgres: throwaway cluster on 127.0.0.1:{cluster.port}")
        yield PostgresBackend(cluster), None
    finally:
        cluster.__exit__(None, None, None)


def run(backends: Sequence[str], sizes: Sizes, *, variants: bool = True,
        log: Callable[[str], None] = print) -> str:
    """Run the benchmark on ``backends``; return the report to print."""
    reports: list[BackendReport] = []
    skipped: dict[str, str] = {}
    chosen = VARIANTS if variants else ()
    if "sqlite" in backends:
        directory = Path(tempfile.mkdtemp(prefix="vmledger-bench-"))
        try:
            log(f"sqlite: databases in {directory}")
            reports.append(bench_backend(
                SQLiteBackend(directory), sizes.sqlite_servers, sizes.repetitions,
                variants=chosen, profile_servers=sizes.profile_servers, log=log))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if "postgres" in backends:
        with throwaway_postgres(log) as (backend, reason):
            if backend is None:
                skipped["postgres"] = reason or "unavailable"
                log(f"postgres: skipped: {reason}")
            else:
                reports.append(bench_backend(
                    backend, sizes.postgres_servers, sizes.repetitions,
                    variants=chosen, profile_servers=sizes.profile_servers, log=log))
    return format_report(reports, skipped)
