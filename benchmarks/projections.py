"""Read models: how fast they are rebuilt from the log, and how far live writes trail.

What is measured
----------------
*Rebuild*: a deterministic log of >= 100k events (servers driven through realistic
lifecycles: create, rename, stop, start, hard reboot, pause, unpause, lock, unlock,
resize and confirm, snapshots, failed reboots and resets, power-state drift, delete) is
written quickly (many aggregates per ``service.save``), then
``engine.updater.rebuild()`` drops the read models (servers, instance actions, images)
and folds the whole log again. Reported: events per second, the median of a few
rebuilds, next to two floors measured on the same log in the same run: the library's
own read of the log (``recorder.select_notifications`` in pages) and that read plus
the library's decoding of every event (``mapper.to_domain_event``), and the rebuild's
own read and decode (``log_reading.read_page`` + ``log_reading.EventDecoder``), and the rebuild's
rate as a share of that last floor (the target). On SQLite also the
ceiling of splitting the rebuild over two forked processes: each folds half of the
aggregates into its own copy of the database (no write lock shared, copies never
merged), which no split rebuild on this machine could beat. Every rebuild must
produce the same read models: a digest of every row is compared (and, the log being
deterministic, is the same from run to run and from one code version to the next).

*Live lag* (PostgreSQL): ``updater.follow()`` runs in a thread (LISTEN/NOTIFY); single
commands (creates, locks, unlocks) are issued a few milliseconds apart; the lag of one
command is the time from ``service.save()`` returning to the view's tracking position
covering it (the commit of the view's transaction). Floors from the same run: the
database's commit latency and its NOTIFY delivery latency, measured with the raw
driver.
"""

from __future__ import annotations

import contextlib
import cProfile
import hashlib
import math
import os
import pstats
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from eventsourcing.domain import Aggregate
from psycopg import sql

from benchmarks import commands
from vmledger.domain import lifecycle as lc
from vmledger.domain.catalog import image_id_for
from vmledger.domain.commands.actions import HANDLERS, Request
from vmledger.domain.commands.pipeline import UnitOfWork
from vmledger.domain.commands.servers import addresses as _addresses
from vmledger.domain.image import CustomImage
from vmledger.domain.server import Context, Server
from vmledger.domain.service import ServerService
from vmledger.engine import Engine
from vmledger.projections import actions as actions_view
from vmledger.projections import folding, log_reading, rebuilding, runner
from vmledger.projections.servers import ServersView

#: the rebuild's events/s as a share of its own read + decode's, measured in the same
#: run (an absolute figure depends on the machine and its load; the earlier 150,000
#: events/s target is retired)
TARGET_RATIO = 0.6
TARGET_LAG_P99_MS = 10.0

# ---------------------------------------------------------------------------------------
# A deterministic log, written fast (also used by benchmarks.api)
# ---------------------------------------------------------------------------------------
#
# Each server's lifecycle is driven on the aggregates themselves with the calls the
# command service and the host agent make (Server.request, the service's action
# handlers, advance, record_call, complete, fail, observe_drift, CustomImage.queue...).
# A group of servers advances in lockstep, one command per server per round, and each
# round is saved with one service.save(*aggregates): one transaction for hundreds of
# events, and pages of the log interleave many servers' events as a busy log does.

IMAGE = image_id_for("cirros-0.6.2-x86_64")
FLAVOR, BIGGER_FLAVOR = "2", "3"
METADATA = {"role": "web", "team": "benchmarks"}
CONFIRM_WINDOW = timedelta(hours=24)
RUNNING, PAUSED, SHUTDOWN, NOSTATE = 1, 3, 4, 0
#: average events per server of a full lifecycle (47, plus the extras of some servers)
EVENTS_PER_FULL_SERVER = 49.5


class StepClock:
    """Deterministic time: every reading is one millisecond after the previous one."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, tzinfo=UTC),
                 step: timedelta = timedelta(milliseconds=1)) -> None:
        self._now = start
        self._step = step

    def now(self) -> datetime:
        self._now += self._step
        return self._now


class Ids:
    """Seeded server, image and request ids."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def request_id(self) -> str:
        return f"req-{self.uuid()}"


def _observation(power_state: int, *, exists: bool = True) -> dict[str, Any]:
    return {"exists": exists, "power_state": power_state,
            "flavor_id": FLAVOR if exists else None, "image_id": IMAGE if exists else None,
            "resize_pending": False}


#: per action: (hypervisor call, its arguments, its answer), the power state at the end
_CALLS: dict[str, tuple[tuple[str, dict[str, Any], dict[str, Any] | None], int]] = {
    "create": (("spawn", {"flavor_id": FLAVOR, "vcpus": 1, "ram_mb": 2048, "disk_gb": 20,
                          "image_id": IMAGE}, {"domain": "instance-bench",
                                               "method": "define+start"}), RUNNING),
    "stop": (("power_off", {}, {"clean": True}), SHUTDOWN),
    "start": (("power_on", {}, None), RUNNING),
    "reboot_hard": (("reboot", {"hard": True}, {"method": "reset"}), RUNNING),
    "reboot_soft": (("reboot", {"hard": False}, None), RUNNING),
    "pause": (("pause", {}, None), PAUSED),
    "unpause": (("unpause", {}, None), RUNNING),
    "resize": (("resize", {"flavor_id": BIGGER_FLAVOR, "vcpus": 2, "ram_mb": 4096,
                           "disk_gb": 40, "image_id": IMAGE}, None), RUNNING),
    "confirm_resize": (("confirm_resize", {}, None), RUNNING),
    "create_image": (("snapshot", {}, {"size": 13_000_000, "checksum": "d41d8cd9"}),
                     RUNNING),
    "delete": (("destroy", {}, None), NOSTATE),
}
_POWER_BEFORE = {"create": NOSTATE, "start": SHUTDOWN, "unpause": PAUSED}

Changed = list[Aggregate]


def _agent(service: ServerService, server: Server, *, image: CustomImage | None = None,
           fail: bool = False) -> Iterator[Changed]:
    """The host agent's commands for the server's action in flight, one per yield."""
    action = server.pending_action
    assert action is not None and server.pending_request_id is not None
    ctx = service.agent_context(server.pending_request_id)
    steps = lc.ACTIONS[action].steps
    while server.task_state in steps and steps.index(server.task_state) + 1 < len(steps):
        server.advance(ctx, service.clock.now(), steps[steps.index(server.task_state) + 1])
        yield [server]
    (call, arguments, result), power = _CALLS[action]
    before = _POWER_BEFORE.get(action, RUNNING)

    def record(name: str, args: dict[str, Any], answer: dict[str, Any] | None,
               error: str | None = None) -> None:
        server.record_call(ctx, service.clock.now(), host=server.host, driver="simulator",
                           call=name, arguments=args, result=answer, error=error,
                           duration_ms=0.412)

    record("observe", {}, _observation(before, exists=action != "create"))
    yield [server]
    if image is not None:
        image.saving(ctx, service.clock.now())
        yield [image]
        arguments = {"image_id": str(image.id)}
    if fail:
        record(call, arguments, None, "libvirtError: injected failure")
        yield [server]
        server.fail(ctx, service.clock.now(), power_state=before, rollback=False,
                    message="injected failure", code=500, details="libvirtError")
        yield [server]
        return
    record(call, arguments, result)
    yield [server]
    if image is not None:
        assert result is not None
        image.activate(ctx, service.clock.now(), size=int(result["size"]),
                       checksum=str(result["checksum"]))
        yield [image]
    server.complete(ctx, service.clock.now(), power_state=power,
                    confirm_window=CONFIRM_WINDOW)
    yield [server]


#: the user's actions of a full lifecycle, after the create (service action, params)
FULL_ACTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("update", {}), ("stop", {}), ("start", {}), ("reboot", {"type": "HARD"}),
    ("pause", {}), ("unpause", {}), ("lock", {"reason": "maintenance window"}),
    ("unlock", {}), ("resize", {"flavor": BIGGER_FLAVOR}), ("confirm_resize", {}),
    ("extras", {}), ("delete", {}),
)


def server_life(service: ServerService, index: int, *, project_id: str, full: bool
                ) -> Iterator[Changed]:
    """One server's commands (the user's and the agent's), one per yield.

    Not full: create and build (the server ends ACTIVE). Full: then rename, stop,
    start, hard reboot, pause, unpause, lock, unlock, resize and confirm, then for some
    servers a snapshot image (some deleted again), a failed reboot and an
    administrator's reset, or a power-state drift and a start; then delete.
    """
    def user() -> Context:
        return service.context(user_id=f"user-{index % 7}", project_id=project_id,
                               is_admin=False)

    ctx = user()
    sid = service.id_factory()
    _, image_ref = commands.commands_of(service).images.image_for(IMAGE, ctx)
    server = Server.request(
        id=sid, ctx=ctx, at=service.clock.now(), name=f"bench-{index}",
        flavor=service.catalog.flavor(FLAVOR).as_dict(), image=image_ref,
        host=service.hosts[sid.int % len(service.hosts)], metadata=dict(METADATA),
        description=None, key_name=None, availability_zone="nova",
        addresses=_addresses(sid),
        attributes={"security_groups": ["default"], "disk_config": "MANUAL",
                    "reservation_id": f"r-{index:08x}", "tags": []})
    yield [server]
    yield from _agent(service, server)
    if not full:
        return
    for action, params in FULL_ACTIONS:
        ctx = user()
        if action == "update":
            server.update(ctx, service.clock.now(), {"name": f"renamed-{index}"})
            yield [server]
        elif action == "extras":
            yield from _extras(service, server, index, ctx)
        else:
            _decide(service, ctx, action, params, server)
            yield [server]
            if server.pending_action is not None:
                yield from _agent(service, server)



class _Holding(UnitOfWork):
    """A unit of work over aggregates in hand: the bulk writer saves them itself."""

    def __init__(self, service: ServerService, *held: Aggregate) -> None:
        super().__init__(service)
        self.held = {a.id: a for a in held}

    def get(self, aggregate_id: uuid.UUID, version: int | None = None) -> object | None:
        return self.held.get(aggregate_id) or super().get(aggregate_id, version)


def _decide(service: ServerService, ctx: Context, action: str, params: dict[str, Any],
            server: Server) -> None:
    """Apply the command handler's decision for ``action`` to ``server`` (unsaved)."""
    request = Request(ctx, str(server.id), dict(params), {})
    HANDLERS[action].build(commands.commands_of(service).actions, request)(
        _Holding(service, server))


def _extras(service: ServerService, server: Server, index: int, ctx: Context
            ) -> Iterator[Changed]:
    if index % 10 == 0:  # a snapshot image (every other one deleted again)
        image = CustomImage.queue(
            id=service.id_factory(), ctx=ctx, at=service.clock.now(), name=f"snap-{index}",
            server_id=str(server.id), metadata={"kind": "nightly"}, min_ram=0,
            min_disk=int(server.flavor.get("disk") or 0), base_image=dict(server.image))
        server.request_action("create_image", ctx, service.clock.now(),
                              params={"image_id": str(image.id), "name": f"snap-{index}"})
        yield [server, image]
        yield from _agent(service, server, image=image)
        if index % 20 == 0:
            image.delete(ctx, service.clock.now())
            yield [image]
    if index % 7 == 0:  # a failed reboot, then an administrator's reset
        _decide(service, ctx, "reboot", {"type": "SOFT"}, server)
        yield [server]
        yield from _agent(service, server, fail=True)
        admin = service.admin_context()
        _decide(service, admin, "reset_state", {"state": lc.ACTIVE}, server)
        yield [server]
    if index % 11 == 0:  # the guest was found off: Nova's power-state sync stops it
        agent = service.agent_context(service.request_id_factory())
        server.observe_drift(agent, service.clock.now(), host=server.host,
                             observed=SHUTDOWN, power_state=SHUTDOWN, call=None)
        yield [server]
        _decide(service, ctx, "start", {}, server)
        yield [server]
        yield from _agent(service, server)


def populate(service: ServerService, servers: int, *, project_id: str = "bench-project",
             full: bool = True, group: int = 500, first: int = 0,
             progress: Callable[[int], None] | None = None) -> int:
    """Write ``servers`` lifecycles, ``group`` servers in lockstep, one
    ``service.save`` per round; return the number of events written."""
    written = 0
    for start in range(first, first + servers, group):
        lives = [server_life(service, i, project_id=project_id, full=full)
                 for i in range(start, min(start + group, first + servers))]
        while lives:
            changed: dict[int, Aggregate] = {}
            running = []
            for life in lives:
                try:
                    for aggregate in next(life):
                        changed[id(aggregate)] = aggregate
                except StopIteration:
                    continue
                running.append(life)
            lives = running
            if changed:
                written += len(service.save(*changed.values()))
        if progress is not None:
            progress(written)
    return written


VIEW_TABLES = ("vmledger_servers", actions_view.TABLE, "vmledger_images")


def view_digest(view: ServersView) -> str:
    """A digest of every row of the read models and of the view's position."""
    digest = hashlib.sha256(str(view.position()).encode())
    with view.transaction(commit=False) as curs:
        for table in VIEW_TABLES:
            curs.execute(f"SELECT * FROM {table} ORDER BY 1, 2")
            for row in curs.fetchall():
                values = tuple(row.values()) if isinstance(row, dict) else tuple(row)
                digest.update(repr(values).encode())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---------------------------------------------------------------------------------------
# Rebuild
# ---------------------------------------------------------------------------------------


@dataclass
class RebuildReport:
    backend: str
    events: int
    servers: int
    generate_seconds: float
    rebuilds: list[float] = field(default_factory=list)  # events/s
    read_only: list[float] = field(default_factory=list)
    read_decode: list[float] = field(default_factory=list)
    own_decode: list[float] = field(default_factory=list)  # log_reading.read_page + EventDecoder
    digests: list[str] = field(default_factory=list)
    split: list[tuple[str, float]] = field(default_factory=list)  # (stage, µs/event)
    #: events/s of the fold split over forked processes, each into its own copy of the
    #: database (SQLite; see :func:`_partitioned_ceiling`), and how many processes
    partitioned: list[float] = field(default_factory=list)
    processes: int = 0
    top: list[tuple[str, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    contention: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return statistics.median(self.rebuilds)

    @property
    def ratio(self) -> float:
        """The rebuild's events/s over its own read + decode's (medians)."""
        return self.rate / statistics.median(self.own_decode)


def _library_read(engine: Engine, page: int, decode: bool) -> int:
    """Read (and decode) the whole log as the library offers it, in pages."""
    recorder, mapper = engine.service.recorder, engine.service.mapper
    start, read = 0, 0
    while True:
        notifications = recorder.select_notifications(start=start, limit=page,
                                                      inclusive_of_start=False)
        if not notifications:
            return read
        if decode:
            for n in notifications:
                mapper.to_domain_event(n)
        read += len(notifications)
        start = notifications[-1].id


def _own_read(engine: Engine, page: int) -> int:
    """Read and decode the whole log as the rebuild does (log_reading.read_page and
    log_reading.EventDecoder, every event), folding nothing."""
    recorder = engine.service.recorder
    decode = log_reading.EventDecoder(engine.service.mapper)
    start, read = 0, 0
    ids: dict[Any, Any] = {}
    while True:
        rows = log_reading.read_page(recorder, start, page, ids)
        if not rows:
            return read
        decode(rows)
        read += len(rows)
        start = rows[-1][0]


def _fold_share(engine: Engine, share: int, shares: int) -> None:
    """Fold into ``engine``'s (emptied) read models the events of one share of the
    aggregates (by originator id), as a rebuild folds them."""
    view, app = engine.view, engine.service
    decode_all = log_reading.EventDecoder(app.mapper, view.wants)

    def decode(rows: Sequence[Any]) -> list[Any]:
        return decode_all([r for r in rows if (
            r[1].int if isinstance(r[1], uuid.UUID) else hash(r[1])) % shares == share])

    with view.bulk():  # as a rebuild's transactions
        view.clear(drop_indexes=True)
        start, ids = 0, {}
        at_end = False
        while not at_end:
            pages: list[tuple[Any, int]] = []
            size = 0
            while size < runner.REBUILD_BATCH_EVENTS:
                page = log_reading.read_page(app.recorder, start, runner.PAGE_SIZE, ids)
                if not page:
                    at_end = True
                    break
                pages.append((page, page[-1][0]))
                size += len(page)
                start = page[-1][0]
            if pages:
                view.apply_pages(pages, decode)
    view.restore_indexes()


def _partitioned_ceiling(engine: Engine, directory: Path, processes: int,
                         repetitions: int) -> list[float]:
    """Events/s of the rebuild's fold split over ``processes`` forked processes, each
    folding its share of the aggregates into its own copy of the SQLite database: no
    write lock shared, and the copies never merged into one, so a rebuild split this way
    cannot be faster on this machine (what two cores can give the fold)."""
    url = engine.url
    assert url.startswith("sqlite:///")
    source = sqlite3.connect(url[len("sqlite:///"):])
    copies: list[Engine] = []
    try:
        for k in range(processes):
            path = directory / f"share-{k}.db"
            with contextlib.closing(sqlite3.connect(path)) as target:
                source.backup(target)
            copies.append(Engine(f"sqlite:///{path}",
                                 allocation_ratios=commands.UNLIMITED))
        events = engine.service.recorder.max_notification_id() or 0
        rates = []
        for _ in range(repetitions):
            commands.settle()
            started = time.perf_counter()
            children = []
            for k in range(1, processes):
                pid = os.fork()
                if pid == 0:  # pragma: no cover - the child
                    code = 1
                    try:
                        _fold_share(copies[k], k, processes)
                        code = 0
                    finally:
                        os._exit(code)
                children.append(pid)
            _fold_share(copies[0], 0, processes)
            failed = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
            if failed:
                raise commands.WorkloadError(f"{len(failed)} share(s) of the fold failed")
            rates.append(events / (time.perf_counter() - started))
        return rates
    finally:
        source.close()
        for copy in copies:
            copy.close()


def _timed(fn: Callable[[], int]) -> float:
    commands.settle()
    started = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - started)


class _Split:
    """Wall time of the rebuild's stages, by wrapping attributes of one engine."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        if not hasattr(owner, attribute):
            return
        had_own = attribute in vars(owner)
        original = getattr(owner, attribute)
        seconds = self.seconds
        seconds.setdefault(label, 0.0)
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += clock() - started

        setattr(owner, attribute, timed)
        self._undo.append((lambda: setattr(owner, attribute, original)) if had_own
                          else (lambda: delattr(owner, attribute)))

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _split(engine: Engine) -> list[tuple[str, float]]:
    """µs per event of the rebuild's stages (one more rebuild, instrumented)."""
    from vmledger.projections.actions import ActionsBatch
    from vmledger.projections.aggregates import AggregateRowsBatch

    split = _Split()
    view = engine.view
    split.wrap(log_reading, "read_page", "read (log_reading.read_page)")
    split.wrap(type(view), "apply_pages", "decode + fold + write + commit (apply_pages)")
    split.wrap(log_reading.EventDecoder, "__call__", "  of which: decode (EventDecoder)")
    split.wrap(folding, "load_documents", "  of which: load the servers' rows")
    split.wrap(ActionsBatch, "fold", "  of which: instance actions: fold")
    split.wrap(ActionsBatch, "write", "  of which: instance actions: write")
    split.wrap(AggregateRowsBatch, "fold", "  of which: images, key pairs: fold")
    split.wrap(AggregateRowsBatch, "write", "  of which: images, key pairs: write")
    split.wrap(type(view), "restore_indexes", "build the secondary indexes")
    try:
        commands.settle()
        started = time.perf_counter()
        events = engine.updater.rebuild()
        total = time.perf_counter() - started
    finally:
        split.restore()
    rows = [("rebuild (total)", total)]
    rows += [(label, s) for label, s in split.seconds.items() if s > 0]
    rows.append(("rest (loop, clear, tracking reads)",
                 total - sum(s for label, s in split.seconds.items()
                             if not label.startswith("  "))))
    return [(label, s / events * 1e6) for label, s in rows]


def _profile(engine: Engine, top: int = 12) -> list[tuple[str, float, float]]:
    profiler = cProfile.Profile()
    profiler.enable()
    events = engine.updater.rebuild()
    profiler.disable()
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = (
        pstats.Stats(profiler).stats)  # type: ignore[attr-defined]
    entries = sorted(((tottime, ncalls, commands._short(*key))
                      for key, (_cc, ncalls, tottime, _ct, _callers) in raw.items()),
                     reverse=True)[:top]
    return [(name, t / events * 1e6, n / events) for t, n, name in entries]


def bench_rebuild(backend: commands.Backend, sizes: Sizes, log: Callable[[str], None]
                  ) -> RebuildReport:
    began = time.perf_counter()
    stalls = commands.pressure_totals()
    with backend.database() as url:
        ids = Ids(seed=20261127)
        engine = Engine(url, clock=StepClock(), id_factory=ids.uuid,
                        allocation_ratios=commands.UNLIMITED,
                        request_id_factory=ids.request_id)
        try:
            backend.ready(engine.service)
            started = time.perf_counter()
            events = populate(engine.service, sizes.servers, group=sizes.group)
            generated = time.perf_counter() - started
            log(f"  {backend.name}: wrote {events:,} events ({sizes.servers} servers) in "
                f"{generated:.1f} s")
            report = RebuildReport(backend.name, events, sizes.servers, generated)
            for rep in range(sizes.repetitions):
                jobs: list[tuple[str, Callable[[], int]]] = [
                    ("rebuild", engine.updater.rebuild),
                    ("read", lambda: _library_read(engine, runner.PAGE_SIZE, False)),
                    ("decode", lambda: _library_read(engine, runner.PAGE_SIZE, True)),
                    ("own", lambda: _own_read(engine, runner.PAGE_SIZE))]
                random.Random(rep).shuffle(jobs)
                for name, job in jobs:
                    rate = _timed(job)
                    {"rebuild": report.rebuilds, "read": report.read_only,
                     "decode": report.read_decode, "own": report.own_decode}[name].append(rate)
                    if name == "rebuild":
                        report.digests.append(view_digest(engine.view))
                log(f"  {backend.name} repetition {rep + 1}/{sizes.repetitions}: rebuild "
                    f"{report.rebuilds[-1]:,.0f} events/s, library read+decode "
                    f"{report.read_decode[-1]:,.0f}/s, the rebuild's own read+decode "
                    f"{report.own_decode[-1]:,.0f}/s")
            if backend.name == "sqlite" and hasattr(os, "fork"):
                report.processes = 2
                with tempfile.TemporaryDirectory(prefix="vmledger-shares-") as shares:
                    report.partitioned = _partitioned_ceiling(
                        engine, Path(shares), report.processes, sizes.repetitions)
                log(f"  {backend.name}: fold split over {report.processes} processes, "
                    f"each into its own copy: {statistics.median(report.partitioned):,.0f}"
                    " events/s")
            if sizes.profile:
                report.split = _split(engine)
                report.digests.append(view_digest(engine.view))
                if backend.name == "sqlite":  # the same Python runs on both backends
                    report.top = _profile(engine)
        finally:
            engine.close()
    report.seconds = time.perf_counter() - began
    report.contention = commands.contention(stalls, commands.pressure_totals(),
                                            report.seconds)
    return report


# ---------------------------------------------------------------------------------------
# Live lag (PostgreSQL)
# ---------------------------------------------------------------------------------------


@dataclass
class LagReport:
    commands: int
    spacing_ms: float
    lags_ms: list[float]
    wake_ms: list[float]  # save returned -> the follower's catch-up started
    commit_ms: list[float]  # raw driver: one INSERT + COMMIT
    notify_ms: list[float]  # raw driver: COMMIT with NOTIFY -> a LISTENer has it
    seconds: float
    contention: dict[str, float]


class _Applied:
    """Records when the view's transactions commit, and when catch-ups start."""

    def __init__(self, engine: Engine) -> None:
        self.cond = threading.Condition()
        self.position = engine.view.position()
        self.applied_at: list[tuple[int, float]] = []
        self.catch_up_started: list[float] = []
        self.saved_at = 0.0
        view, updater, service = engine.view, engine.updater, engine.service
        catch_up, save = updater.catch_up, service.save
        # the view's write: apply_pages (pages of (rows, position))
        method = "apply_pages"
        apply: Callable[..., int] = getattr(view, method)

        def timed_apply(*args: Any, **kwargs: Any) -> int:
            changed = apply(*args, **kwargs)
            now = time.perf_counter()
            position = args[0][-1][1]
            with self.cond:
                self.position = max(self.position, position)
                self.applied_at.append((position, now))
                self.cond.notify_all()
            return changed

        def timed_catch_up(*args: Any, **kwargs: Any) -> int:
            self.catch_up_started.append(time.perf_counter())
            return catch_up(*args, **kwargs)

        def timed_save(*args: Any, **kwargs: Any) -> Any:
            result = save(*args, **kwargs)
            self.saved_at = time.perf_counter()
            return result

        setattr(view, method, timed_apply)
        updater.catch_up = timed_catch_up  # type: ignore[method-assign]
        service.save = timed_save  # type: ignore[method-assign]

    def wait(self, position: int, timeout: float = 10.0) -> float:
        """When the view reached ``position`` (perf_counter)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.position < position:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the view did not reach {position}")
                self.cond.wait(left)
            return next(t for p, t in self.applied_at if p >= position)


def _raw_floors(url: str, samples: int) -> tuple[list[float], list[float]]:
    """Commit latency and NOTIFY delivery latency of the database (raw psycopg)."""
    commit_ms: list[float] = []
    notify_ms: list[float] = []
    with psycopg.connect(url, autocommit=True) as writer, \
            psycopg.connect(url, autocommit=True) as listener:
        writer.execute("CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY,"
                       " payload text)")
        listener.execute("LISTEN bench_floor")
        payload = "x" * 400
        for i in range(samples):
            started = time.perf_counter()
            with writer.transaction():
                writer.execute("INSERT INTO bench_floor (payload) VALUES (%s)", [payload],
                               prepare=True)
                if i % 2:
                    writer.execute("NOTIFY bench_floor")
            committed = time.perf_counter()
            if i % 2:
                for _ in listener.notifies(timeout=5.0, stop_after=1):
                    pass
                notify_ms.append((time.perf_counter() - committed) * 1000)
            else:
                commit_ms.append((committed - started) * 1000)
            time.sleep(0.002)
        writer.execute(sql.SQL("DROP TABLE bench_floor"))
    return commit_ms, notify_ms


def bench_lag(backend: commands.Backend, sizes: Sizes, log: Callable[[str], None]
              ) -> LagReport:
    began = time.perf_counter()
    stalls = commands.pressure_totals()
    with backend.database() as url:
        engine = Engine(url, allocation_ratios=commands.UNLIMITED)
        # the follower's lag is what another process's commands see: this process's own
        # are folded in their transaction, so that fold is switched off here
        engine.service.recorder.in_transaction.clear()  # type: ignore[attr-defined]
        stop = threading.Event()
        follower: threading.Thread | None = None
        try:
            backend.ready(engine.service)
            service = engine.service
            populate(service, 20, project_id="lag", full=False, group=20)
            engine.updater.catch_up()
            servers = [info.id for info in engine.list_servers()]
            applied = _Applied(engine)
            follower = threading.Thread(target=engine.updater.follow, args=(stop, None, 0.5),
                                        name="bench-follower", daemon=True)
            follower.start()
            ctx = service.context(user_id="lag-user", project_id="lag", is_admin=False)
            locked: set[str] = set()
            lags: list[float] = []
            wakes: list[float] = []
            warmup = 10
            for i in range(warmup + sizes.lag_commands):
                if i % 4 == 3:
                    result = engine.commands.servers.create(ctx, name=f"lag-{i}",
                                                            flavor=FLAVOR, image=IMAGE)
                else:
                    sid = servers[i % len(servers)]
                    action = "unlock" if sid in locked else "lock"
                    result = engine.commands.actions.act(ctx, sid, action)
                    locked.symmetric_difference_update({sid})
                saved = applied.saved_at
                assert result.position is not None
                done = applied.wait(result.position)
                if i >= warmup:
                    lags.append(max(0.0, done - saved) * 1000)
                    started = [t for t in applied.catch_up_started if t >= saved]
                    if started:
                        wakes.append((started[0] - saved) * 1000)
                time.sleep(sizes.lag_spacing)
            log(f"  postgres live lag: p50 {percentile(lags, 50):.1f} ms, "
                f"p99 {percentile(lags, 99):.1f} ms")
        finally:
            stop.set()
            if follower is not None:
                follower.join(timeout=10)
            engine.close()
        commit_ms, notify_ms = _raw_floors(url, 2 * sizes.lag_commands)
    seconds = time.perf_counter() - began
    return LagReport(sizes.lag_commands, sizes.lag_spacing * 1000, lags, wakes, commit_ms,
                     notify_ms, seconds,
                     commands.contention(stalls, commands.pressure_totals(), seconds))


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def _stall_text(contention: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.0f} %" for k, v in contention.items()) or "unknown"


def _stalled(contention: dict[str, float]) -> bool:
    return any(v > 20 for v in contention.values())


def format_report(rebuilds: Sequence[RebuildReport], lag: LagReport | None,
                  skipped: dict[str, str]) -> str:
    out: list[str] = []
    w = out.append
    w("")
    w("Projection rebuild: engine.updater.rebuild() (drop the servers, instance-actions and")
    w("images read models, fold the whole log again) on a deterministic log; events/s =")
    w("medians of the repetitions. Floors on the same log, same run: the library's read of")
    w("the log (select_notifications, pages of 1000), its read + decode of every event")
    w("(mapper.to_domain_event), and the rebuild's own read + decode (log_reading.read_page +")
    w("EventDecoder, nothing folded): the rebuild cannot beat the last one.")
    w(f"Target: the rebuild >= {TARGET_RATIO}x its own read + decode (ratio = rebuild/s /")
    w("own r+d/s, both medians of the same run).")
    if rebuilds:
        w("")
        head = (f"{'backend':<9} {'events':>8} {'rebuild/s':>10} {'(range)':>17} "
                f"{'µs/event':>8} {'read/s':>9} {'read+decode/s':>13} {'own r+d/s':>10}"
                f" {'ratio':>6}  view digest")
        w(head)
        w("-" * len(head))
    for r in rebuilds:
        same = ("same in every rebuild" if len(set(r.digests)) == 1
                else "DIFFERS: " + ",".join(r.digests))
        w(f"{r.backend:<9} {r.events:>8,} {r.rate:>10,.0f} "
          f"({min(r.rebuilds):>7,.0f}-{max(r.rebuilds):>7,.0f}) {1e6 / r.rate:>8.1f} "
          f"{statistics.median(r.read_only):>9,.0f} {statistics.median(r.read_decode):>13,.0f}"
          f" {statistics.median(r.own_decode):>10,.0f} {r.ratio:>5.2f}x  {r.digests[0]} ({same})")
    for backend, reason in skipped.items():
        w(f"{backend:<9} skipped: {reason}")
    for r in rebuilds:
        w("")
        w(f"[{r.backend}] log: {r.events:,} events of {r.servers:,} servers written in "
          f"{r.generate_seconds:.1f} s ({r.events / r.generate_seconds:,.0f} events/s, many "
          f"aggregates per save); benchmark {r.seconds:.0f} s; stalls (PSI 'some'): "
          f"{_stall_text(r.contention)}")
        if r.split:
            w(f"[{r.backend}] where the rebuild's time goes (one instrumented rebuild, µs/event)")
            total = r.split[0][1]
            for label, us in r.split:
                w(f"  {label:<44} {us:>7.2f} µs {100 * us / total:>5.1f} %")
        if r.top:
            w(f"[{r.backend}] cProfile of another rebuild: top self time (µs/event, inflated "
              "by the profiler)")
            for name, us, calls in r.top:
                w(f"  {us:>7.2f} µs/event {calls:>6.2f} calls/event  {name}")
        if r.partitioned:
            w(f"[{r.backend}] ceiling of a rebuild split over {r.processes} processes "
              f"(forked; each folds 1/{r.processes} of the aggregates into its own copy "
              "of the database: no shared write lock, copies never merged): "
              f"{statistics.median(r.partitioned):,.0f} events/s "
              f"({min(r.partitioned):,.0f}-{max(r.partitioned):,.0f}), "
              f"{statistics.median(r.partitioned) / r.rate:.2f}x the rebuild")
        verdict = "met" if r.ratio >= TARGET_RATIO else "NOT met"
        w(f"[{r.backend}] target rebuild >= {TARGET_RATIO}x its own read + decode: "
          f"{r.ratio:.2f}x ({verdict}): {r.rate:,.0f} events/s, reading + decoding alone "
          f"{statistics.median(r.own_decode):,.0f}/s (the library's: "
          f"{statistics.median(r.read_decode):,.0f}/s)")
        if _stalled(r.contention):
            w(f"[{r.backend}] WARNING: tasks stalled this run ({_stall_text(r.contention)}); "
              "its numbers are noisy")
    if lag is not None:
        w("")
        w("Live projection lag (PostgreSQL): updater.follow() in a thread (LISTEN/NOTIFY);")
        w(f"{lag.commands} single commands (3 of 4 lock/unlock, 1 of 4 create) "
          f"{lag.spacing_ms:.0f} ms apart; lag = service.save() returned -> the view's "
          "transaction")
        w("covering it committed. Floors (raw psycopg, same database, same run): a commit of")
        w("one INSERT, and a NOTIFY's delivery to a LISTENing connection after its commit.")
        w(f"  {'':<44} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7}")
        rows = [("lag: save returned -> view committed", lag.lags_ms),
                ("  of which: save returned -> catch-up started", lag.wake_ms),
                ("floor: raw commit (INSERT + COMMIT)", lag.commit_ms),
                ("floor: raw NOTIFY delivery after COMMIT", lag.notify_ms)]
        for label, values in rows:
            w(f"  {label:<44} {percentile(values, 50):>7.2f} {percentile(values, 90):>7.2f} "
              f"{percentile(values, 99):>7.2f} {max(values, default=math.nan):>7.2f}")
        p99 = percentile(lag.lags_ms, 99)
        w(f"[postgres] target lag p99 <= {TARGET_LAG_P99_MS:.0f} ms: {p99:.1f} ms "
          f"({'met' if p99 <= TARGET_LAG_P99_MS else 'NOT met'}); {lag.seconds:.0f} s; "
          f"stalls: {_stall_text(lag.contention)}")
        if _stalled(lag.contention):
            w("[postgres] WARNING: tasks stalled during the lag run; its tail is noisy")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Entry point used by __main__
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    servers: int  # servers in the rebuild's log
    group: int  # servers driven in lockstep while writing it
    repetitions: int  # rebuilds per backend
    profile: bool  # the split and cProfile sections
    lag_commands: int
    lag_spacing: float  # seconds


FULL = Sizes(servers=2050, group=550, repetitions=3, profile=True, lag_commands=200,
             lag_spacing=0.005)
QUICK = Sizes(servers=300, group=300, repetitions=2, profile=False, lag_commands=60,
              lag_spacing=0.005)


def run(backends: Sequence[str], sizes: Sizes, *, log: Callable[[str], None] = print
        ) -> str:
    rebuilds: list[RebuildReport] = []
    lag: LagReport | None = None
    skipped: dict[str, str] = {}
    if "sqlite" in backends:
        directory = Path(tempfile.mkdtemp(prefix="vmledger-bench-"))
        try:
            rebuilds.append(bench_rebuild(commands.SQLiteBackend(directory), sizes, log))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if "postgres" in backends:
        with _cluster(skipped, log) as cluster:
            if cluster is not None:
                backend = commands.PostgresBackend(cluster)
                rebuilds.append(bench_rebuild(backend, sizes, log))
                lag = bench_lag(backend, sizes, log)
    return format_report(rebuilds, lag, skipped)


@contextlib.contextmanager
def _cluster(skipped: dict[str, str], log: Callable[[str], None]) -> Iterator[Any]:
    """A throwaway PostgreSQL cluster, or None (the reason is put in ``skipped``)."""
    cluster_class, reason = commands.postgres_cluster()
    if cluster_class is None:
        skipped["postgres"] = reason or "unavailable"
        log(f"postgres: skipped: {reason}")
        yield None
        return
    from tests.support.postgres import PostgresClusterError

    cluster = cluster_class()
    try:
        cluster.__enter__()
    except PostgresClusterError as e:
        skipped["postgres"] = str(e).splitlines()[0]
        log(f"postgres: skipped: {e}")
        yield None
        return
    try:
        log(f"postgres: throwaway cluster on 127.0.0.1:{cluster.port}")
        yield cluster
    finally:
        cluster.__exit__(None, None, None)


# ---------------------------------------------------------------------------------------
# Instructions per event of the rebuild's stages (under cachegrind)
# ---------------------------------------------------------------------------------------

#: what ``python -m benchmarks.projections rebuild`` can leave out of the rebuild, to
#: measure a read model's share by difference: the instance actions, the migrations,
#: every read model but the servers view, or the fold itself (the log read and decoded
#: as the rebuild does, folding nothing)
_WITHOUT = ("actions", "migrations", "extensions", "fold")
#: the tracking record of the instance actions folded alone (:func:`_actions_alone`)
_ACTIONS_ALONE = "vmledger.views.actions-alone"


def _actions_alone(engine: Engine) -> int:
    """A prototype of the second process of a rebuild split by read model: the instance
    actions alone, from their own read of the log, with their own tracking record
    (nothing else is folded; the other process is the rebuild ``--without actions``).
    Transactions, pages and batches as the rebuild's. Returns the events read."""
    from vmledger.projections.actions import ActionsBatch
    from vmledger.projections.store import RowWriter

    view, app = engine.view, engine.service
    decoder = log_reading.EventDecoder(app.mapper, view.wants)
    table = actions_view.TABLE
    read = 0
    with view.bulk():
        with view.transaction(commit=True) as curs:
            curs.execute(view.sql(f"DELETE FROM {table}"))
            curs.execute(view.sql(f"DROP INDEX IF EXISTS {table}_server"))
            curs.execute(view.sql("DELETE FROM tracking WHERE application_name = ?"),
                         [_ACTIONS_ALONE])
        pages = log_reading.Pages(app.recorder, runner.PAGE_SIZE, 0)
        at_end = False
        while not at_end:
            with view.transaction(commit=True, flushed=False) as curs:
                writer = RowWriter(curs, view.sql, view.dialect, bulk=True, fresh=True)
                batch = ActionsBatch(writer, empty=read == 0)
                names: dict[Any, str] = {}
                size = 0
                while size < runner.REBUILD_BATCH_EVENTS:
                    page = pages.next()
                    if not page:
                        at_end = True
                        break
                    pairs = []
                    for event in decoder(page):
                        if isinstance(event, Server.Event):
                            oid = event.originator_id
                            sid = names.get(oid.int)
                            if sid is None:
                                sid = names[oid.int] = str(oid)
                            pairs.append((sid, event))
                    batch.fold_servers(pairs)
                    curs.execute(view.sql("INSERT INTO tracking VALUES (?, ?) ON CONFLICT "
                                          "(application_name) DO UPDATE SET "
                                          "notification_id = excluded.notification_id"),
                                 [_ACTIONS_ALONE, page[-1][0]])
                    size += len(page)
                    read += len(page)
                batch.write()
        pages.close()
        with view.transaction(commit=True) as curs:
            curs.execute(view.sql(f"CREATE INDEX IF NOT EXISTS {table}_server ON {table}"
                                  " (server_id, start_time)"))
    return read


def _cpu_main(argv: Sequence[str]) -> None:
    """``python -m benchmarks.projections prepare DB SERVERS``: write the log of SERVERS
    servers (as the projections suite does) into the SQLite file DB.
    ``python -m benchmarks.projections rebuild DB TIMES [--without actions|migrations|
    extensions|fold]``: open it and rebuild the read models TIMES times, then print the
    events and the digest of the tables.

    Run ``rebuild`` under ``valgrind --tool=cachegrind --cache-sim=no`` with TIMES 0 and
    2 (say): the difference of the two totals divided by twice the events is the
    rebuild's instructions per event, start-up cancelled out. With ``--without X`` the
    difference to the full rebuild is X's share."""
    # no cyclic collection anywhere in the run (a rebuild pauses it anyway): where a
    # full pass falls moves with any allocation, by ~800 instructions per event here
    import gc

    from vmledger.projections.actions import InstanceActions
    from vmledger.projections.migrations import Migrations

    gc.disable()
    if len(argv) >= 3 and argv[0] == "prepare":
        ids = Ids(seed=20261127)
        engine = Engine(f"sqlite:///{argv[1]}", clock=StepClock(), id_factory=ids.uuid,
                        allocation_ratios=commands.UNLIMITED,
                        request_id_factory=ids.request_id)
        try:
            servers = int(argv[2])
            events = populate(engine.service, servers, group=min(servers, 300))
            engine.updater.catch_up()
            print(f"{events} events, digest {view_digest(engine.view)}")
        finally:
            engine.close()
        return
    if len(argv) == 3 and argv[0] == "part":  # one process of :func:`_split_rebuild`
        _split_part(argv[1], argv[2])
        return
    if len(argv) >= 3 and argv[0] == "split":
        _split_rebuild(argv[1], int(argv[2]), "--copies" in argv[3:])
        return
    if len(argv) < 3 or argv[0] != "rebuild" or (len(argv) > 3 and (
            len(argv) != 5 or argv[3] not in ("--without", "--only")
            or argv[4] not in _WITHOUT)):
        raise SystemExit("usage: python -m benchmarks.projections prepare DB SERVERS | "
                         "rebuild DB TIMES [--without actions|migrations|extensions|fold]"
                         " | rebuild DB TIMES --only actions")
    without = argv[4] if len(argv) > 3 and argv[3] == "--without" else None
    only = argv[4] if len(argv) > 3 and argv[3] == "--only" else None
    engine = Engine(f"sqlite:///{argv[1]}", allocation_ratios=commands.UNLIMITED)
    try:
        view = engine.view
        every = view.extensions
        if without in ("actions", "migrations", "extensions"):
            dropped = {"actions": InstanceActions, "migrations": Migrations,
                       "extensions": object}[without]
            view.extensions = tuple(e for e in view.extensions
                                    if not isinstance(e, dropped))
            view.__dict__.pop("_event_routes", None)
            view.__dict__.pop("_wanted", None)
        events = 0
        for _ in range(int(argv[2])):
            if only == "actions":
                events = _actions_alone(engine)
            elif without == "fold":
                events = _own_read(engine, runner.PAGE_SIZE)
            else:
                events = engine.updater.rebuild()
        # every read model's tables digested, whichever were left out (the same reads)
        view.extensions = every
        print(f"{events} events, digest {view_digest(view)}, every table "
              f"{_tables_digest(view)}")
    finally:
        engine.close()


def _split_rebuild(path: str, repetitions: int, copies: bool) -> None:
    """A prototype of the rebuild split by read model over two processes, timed against
    the same run's read + decode and single-process rebuild: one process rebuilds every
    read model but the instance actions, the other folds those alone
    (:func:`_actions_alone`), each reading the log itself, each with its own tracking
    record; into the same SQLite file (its one write lock shared), or with ``copies``
    each into its own copy (no lock shared: the ceiling). Prints events/s."""
    def part_of(where: str, part: str) -> subprocess.Popen[bytes]:
        """Start a process (a fresh interpreter, as a second rebuilding process would
        be) that opens ``where`` and says so, then, told to start, folds ``part``."""
        child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.projections", "part", where, part],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout is not None
        if child.stdout.readline() != b"ready\n":
            raise commands.WorkloadError(f"the {part} process did not start")
        return child

    second = path
    if copies:
        second = f"{path}.copy"
        with contextlib.closing(sqlite3.connect(path)) as source, \
                contextlib.closing(sqlite3.connect(second)) as target:
            source.backup(target)
    main = Engine(f"sqlite:///{path}", allocation_ratios=commands.UNLIMITED)
    events = main.service.recorder.max_notification_id() or 0
    own, single, split = [], [], []
    for _ in range(repetitions):
        own.append(_timed(lambda: _own_read(main, runner.PAGE_SIZE)))
        single.append(_timed(main.updater.rebuild))
        children = [part_of(path, "others"), part_of(second, "actions")]
        commands.settle()
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        # until both have folded (their interpreters' exits not counted)
        done = [child.stdout.readline() == b"done\n" for child in children
                if child.stdout is not None]
        seconds = time.perf_counter() - started
        failed = [child for child in children if child.wait() != 0] or not all(done)
        if failed:
            raise commands.WorkloadError("a part of the split failed")
        split.append(events / seconds)
    main.close()
    own_rate = statistics.median(own)
    print(f"{events} events; read + decode {own_rate:,.0f}/s; rebuild "
          f"{statistics.median(single):,.0f}/s ({statistics.median(single) / own_rate:.2f}x);"
          f" split over two processes ({'own copies' if copies else 'one file'}) "
          f"{statistics.median(split):,.0f}/s ({statistics.median(split) / own_rate:.2f}x)")
    print("  each repetition (read + decode, rebuild, split):",
          "; ".join(f"{o:,.0f} {r:,.0f} {s:,.0f}" for o, r, s in zip(own, single, split,
                                                                    strict=True)))


def _split_part(path: str, part: str) -> None:
    """One process of :func:`_split_rebuild`: open ``path``, fold ``part`` ("others":
    every read model but the instance actions; "actions": those alone) once to warm up,
    print "ready", fold it again once a line arrives on the standard input, print
    "done"."""
    from vmledger.projections.actions import InstanceActions

    engine = Engine(f"sqlite:///{path}", allocation_ratios=commands.UNLIMITED)
    try:
        if part == "others":
            view = engine.view
            view.extensions = tuple(e for e in view.extensions
                                    if not isinstance(e, InstanceActions))
            view.__dict__.pop("_event_routes", None)
            view.__dict__.pop("_wanted", None)
        fold = ((lambda: _actions_alone(engine)) if part == "actions"
                else engine.updater.rebuild)
        fold()  # warm, as the single process's rebuild it is compared with
        print("ready", flush=True)
        sys.stdin.readline()
        fold()
        print("done", flush=True)
    finally:
        engine.close()


def _tables_digest(view: ServersView) -> str:
    """A digest of every row of every read model's table (in a stable order)."""
    digest = hashlib.sha256(str(view.position()).encode())
    with view.transaction(commit=False) as curs:
        for table in sorted(view.defined_tables()):
            curs.execute(f"SELECT * FROM {view.sql(table)}")
            rows = sorted(repr(tuple(row)) for row in curs.fetchall())
            digest.update(f"{table} {len(rows)}".encode())
            for row in rows:
                digest.update(row.encode())
    return digest.hexdigest()[:12]


def _clear_pairs(backend_name: str, pairs: int) -> None:
    """``python -m benchmarks.projections clear-beside sqlite|postgres PAIRS``: rebuild
    the ``--quick`` log with the clear inline and in a thread beside the first fold
    (``rebuilding.CLEAR_BESIDE``), alternating in one process, PAIRS times each; print the
    medians (wall and process CPU), how many pairs the thread won, and the digests."""
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        backend: commands.Backend
        if backend_name == "postgres":
            cluster = stack.enter_context(_cluster(skipped, print))
            if cluster is None:
                return
            backend = commands.PostgresBackend(cluster)
        else:
            backend = commands.SQLiteBackend(
                Path(stack.enter_context(tempfile.TemporaryDirectory())))
        url = stack.enter_context(backend.database())
        ids = Ids(seed=20261127)
        engine = Engine(url, clock=StepClock(), id_factory=ids.uuid,
                        allocation_ratios=commands.UNLIMITED,
                        request_id_factory=ids.request_id)
        stack.callback(engine.close)
        backend.ready(engine.service)
        populate(engine.service, QUICK.servers, group=QUICK.group)
        walls: dict[str, list[float]] = {"inline": [], "thread": []}
        cpus: dict[str, list[float]] = {"inline": [], "thread": []}
        digests = set()
        kept = rebuilding.CLEAR_BESIDE
        engine.updater.rebuild()
        try:
            for i in range(pairs):
                for mode in (("inline", "thread") if i % 2 == 0 else ("thread", "inline")):
                    rebuilding.CLEAR_BESIDE = (frozenset() if mode == "inline"
                                           else frozenset({backend_name}))
                    commands.settle()
                    started, cpu = time.perf_counter(), time.process_time()
                    engine.updater.rebuild()
                    walls[mode].append((time.perf_counter() - started) * 1e3)
                    cpus[mode].append((time.process_time() - cpu) * 1e3)
                    digests.add(_tables_digest(engine.view))
        finally:
            rebuilding.CLEAR_BESIDE = kept
        for mode, wall in walls.items():
            print(f"{backend_name}, the clear {mode}: rebuild median "
                  f"{statistics.median(wall):.1f} ms (lower quartile "
                  f"{sorted(wall)[len(wall) // 4]:.1f}), process CPU median "
                  f"{statistics.median(cpus[mode]):.1f} ms")
        won = sum(t < i for t, i in zip(walls["thread"], walls["inline"], strict=True))
        print(f"the thread faster in {won} of {pairs} pairs; digests {sorted(digests)}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "clear-beside":
        _clear_pairs(sys.argv[2], int(sys.argv[3]))
    else:
        _cpu_main(sys.argv[1:])
