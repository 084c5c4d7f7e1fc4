"""The event store: the eventsourcing Application every aggregate is saved in.

It holds the store's settings (the aggregate cache, snapshotting), the lifecycle
settings every command module reads, and the reading every part needs: a server by id
(as a caller may see it), one at a version, its history. Commands live in
:mod:`vmledger.domain.commands`, one module per concept, and all run through one
pipeline (:mod:`vmledger.domain.commands.pipeline`).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Sequence
from copy import deepcopy
from datetime import timedelta
from typing import Any, ClassVar

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    LRUCache,
    ProcessingEvent,
    ProjectorFunction,
    Repository,
)
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Notification, Recording

from vmledger.domain import lifecycle as lc
from vmledger.domain import quota as quotas
from vmledger.domain.aggregate_cache import DEFAULT_MAX_BYTES, SizedLRUCache
from vmledger.domain.catalog import Catalog
from vmledger.domain.clock import Clock, SystemClock
from vmledger.domain.errors import ServerNotFound
from vmledger.domain.host_claims import HostClaims
from vmledger.domain.server import ADMIN, Context, Server


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


@functools.lru_cache(maxsize=4096)
def _parsed_uuid(text: str) -> uuid.UUID:
    """``uuid.UUID(text)``, remembered for the ids in use (each command of a server
    parses its id again: about 1 µs each)."""
    return uuid.UUID(text)


def server_uuid(server_id: str | uuid.UUID) -> uuid.UUID:
    """A server id as a UUID (not a UUID: the server is not found)."""
    if isinstance(server_id, uuid.UUID):
        return server_id
    try:
        return _parsed_uuid(str(server_id))
    except ValueError:
        raise ServerNotFound(str(server_id)) from None


def project(aggregate: Any, events: Iterable[Any]) -> Any:
    """The library's ``project_aggregate`` without its per-event ``isinstance`` check
    against a runtime protocol (about 10 µs each on Python 3.11, more than decoding
    the event): every event of vmledger's aggregates, and their snapshots, mutate."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def copy_of(aggregate: Any) -> Any:
    """A copy of an aggregate for one command: a server's own cheap copy (see
    :meth:`Server.__deepcopy__`) called straight, without ``copy.deepcopy``'s memo."""
    if type(aggregate) is Server:
        return aggregate.__deepcopy__({})
    return deepcopy(aggregate)


class StoreRepository(Repository[uuid.UUID]):
    """The library's repository, loading with :func:`project` unless told otherwise.

    A cached aggregate is fast-forwarded on its copy, not in place: the library
    fast-forwards the cached object itself, so it serialises loads of one aggregate
    through a lock per aggregate id (made, counted and given back on every load: about
    5 % of a command's Python). Here a load copies the cached aggregate, applies the
    events saved since to the copy and, when there were some, caches a copy of the
    result; two loads at once each apply the same events to their own copy. The cache
    only ever holds versions that were committed, so whichever of two such puts lands
    last, the next load reads the events after it, as after any other.
    """

    #: the newest version of each server this process knows to be in the log (by id
    #: text): its own saves, once committed, and what the read models' folds met or
    #: another process's notification named (:meth:`notice`). None: a command's load
    #: always reads the log after the cached version (:meth:`get_trusted`)
    latest: dict[str, int] | None = None
    #: whether something names the servers other processes write, soon after they do
    #: (PostgreSQL's notifications, while the view's follower listens). Without it a
    #: server another process wrote under this one's cached copy is learnt of only when a
    #: command on the copy loses on the version; from then on it is read for every
    #: command (:meth:`distrust`), so a server two processes take turns writing costs
    #: one lost race, not one a command
    told_of_writes = False
    #: beyond this many servers known (or distrusted), :attr:`latest` (or the distrusted
    #: set) starts again empty (each then read once more)
    LATEST_LIMIT = 100_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the servers read for every command (see :attr:`told_of_writes`), by id text
        self.distrusted: set[str] = set()

    def notice(self, versions: dict[str, int] | None) -> None:
        """Aggregates at these versions are in the log (a fold met them, another
        process said it wrote them): a cached copy of an older one is no longer taken
        as the latest. None: anything may have been written (every cached copy is read
        again before a command decides on it)."""
        latest = self.latest
        if latest is None:
            return
        if versions is None or len(latest) > self.LATEST_LIMIT:
            latest.clear()
        if versions is None:
            return
        distrusted = self.distrusted
        for key, version in versions.items():
            if latest.get(key, -1) < version and key not in distrusted:
                latest[key] = version

    def saved(self, aggregate_id: uuid.UUID, version: int) -> None:
        """This process committed ``aggregate_id`` at ``version``."""
        self.notice({str(aggregate_id): version})

    def distrust(self, copies: dict[uuid.UUID, int]) -> None:
        """A command decided on these cached copies (id: version) unread and lost on
        the version. Unless something names other processes' writes
        (:attr:`told_of_writes`), a server whose newer version this process does not
        know of (none of its own threads saved it, no fold met it) was written by
        another process: it is read for every command from now on."""
        latest = self.latest
        if latest is None or self.told_of_writes:
            return
        distrusted = self.distrusted
        if len(distrusted) > self.LATEST_LIMIT:
            distrusted.clear()
        for aggregate_id, version in copies.items():
            key = str(aggregate_id)
            if latest.get(key, -1) > version:
                continue  # overtaken by a write this process knows of: its own
            distrusted.add(key)
            latest.pop(key, None)

    def get_trusted(self, aggregate_id: uuid.UUID) -> tuple[Any, bool]:
        """A command's load: the aggregate and whether it was taken from the cache
        without reading the log. It is, when the cached server is at the newest version
        this process knows of (:attr:`latest`): nothing newer was saved here or met by
        a fold since. A write decided on it that another process overtook meanwhile
        loses on the version, as any lost race, and is decided again after a read; a
        decision that writes nothing, or writes other aggregates only, is checked
        against a read (:class:`~vmledger.domain.commands.pipeline.Pipeline`)."""
        latest, cache = self.latest, self.cache
        if latest is not None and cache is not None:
            try:
                cached = cache.get(aggregate_id)
            except KeyError:
                cached = None
            if cached is not None and cached.version >= latest.get(str(aggregate_id),
                                                                   1 << 62):
                return copy_of(cached), True
        return self.get(aggregate_id), False

    def get(self, aggregate_id: uuid.UUID, *, version: int | None = None,
            projector_func: ProjectorFunction[Any, Any] = project,
            fastforward_skipping: bool = False, deepcopy_from_cache: bool = True) -> Any:
        cache = self.cache
        if (cache is None or version is not None or not self.fastforward
                or fastforward_skipping or self.fastforward_skipping
                or projector_func is not project):
            return super().get(aggregate_id, version=version,
                               projector_func=projector_func,
                               fastforward_skipping=fastforward_skipping,
                               deepcopy_from_cache=deepcopy_from_cache)
        try:
            cached = cache.get(aggregate_id)
        except KeyError:  # read it all (from its snapshot), cache it, copy it
            return super().get(aggregate_id, projector_func=projector_func,
                               deepcopy_from_cache=deepcopy_from_cache)
        new_events = list(self.event_store.get(originator_id=aggregate_id,
                                               gt=cached.version))
        if not new_events:
            if deepcopy_from_cache and self.deepcopy_from_cache:
                return copy_of(cached)
            return cached
        aggregate = project(copy_of(cached), new_events)
        if aggregate is None:
            raise AggregateNotFoundError(aggregate_id)
        cache.put(aggregate_id, copy_of(aggregate))
        return aggregate


class ServerService(Application[uuid.UUID]):
    """Every aggregate of vmledger, persisted as events, and the settings its commands
    share."""

    name = "vmledger"
    log_section_size = 1000
    # a project's quota set gets an event per admitted create or resize
    snapshotting_intervals: ClassVar[dict[Any, int]] = {
        Server: 100, quotas.QuotaSet: 100, HostClaims: 100}
    # eventsourcing: 0 would be an *unbounded* cache; a bounded LRU keeps the speed-up
    # (loads fast-forward from the cached version) without holding every server forever
    env: ClassVar[dict[str, str]] = {"AGGREGATE_CACHE_MAXSIZE": "10000"}
    #: the aggregate cache's bound in bytes besides its entries (see
    #: :mod:`vmledger.domain.aggregate_cache`); ``VMLEDGER_AGGREGATE_CACHE_BYTES``
    #: in the environment overrides it
    aggregate_cache_bytes: ClassVar[int] = DEFAULT_MAX_BYTES

    def __init__(self, env: dict[str, str] | None = None, *, clock: Clock | None = None,
                 catalog: Catalog | None = None, hosts: Sequence[str] = ("compute-1",),
                 confirm_window: timedelta = timedelta(hours=24),
                 id_factory: Callable[[], uuid.UUID] = uuid.uuid4,
                 request_id_factory: Callable[[], str] = new_request_id,
                 shelved_offload_time: timedelta | None = timedelta(0),
                 reclaim_interval: timedelta = timedelta(0),
                 allow_resize_to_same_host: bool = True) -> None:
        super().__init__(env=env)
        if not hosts:
            raise ValueError("at least one host is needed")
        self.clock: Clock = clock or SystemClock()
        self.catalog = catalog or Catalog()
        #: the hosts this process's agent serves
        self.hosts = tuple(hosts)
        #: how long a resize waits in VERIFY_RESIZE before the timer confirms it
        self.confirm_window = confirm_window
        #: when a shelved server's guest is removed from the hypervisor (Nova's
        #: ``shelved_offload_time``): 0 (the default) as soon as the shelve is done, a
        #: longer time by the timer once the server was left shelved that long, None
        #: never (only ``shelveOffload`` does)
        if shelved_offload_time is not None and shelved_offload_time < timedelta(0):
            raise ValueError("the shelved offload time cannot be negative (None: never)")
        self.shelved_offload_time = shelved_offload_time
        #: Nova's ``reclaim_instance_interval``: above 0, a delete only powers the
        #: server off (SOFT_DELETED) and the timer deletes it after this long
        if reclaim_interval < timedelta(0):
            raise ValueError("the reclaim interval cannot be negative (0: no soft delete)")
        self.reclaim_interval = reclaim_interval
        #: Nova's ``allow_resize_to_same_host``: a resize may stay on the server's own
        #: host (preferred when it has room); False: it always goes to another
        self.allow_resize_to_same_host = allow_resize_to_same_host
        self.id_factory = id_factory
        self.request_id_factory = request_id_factory

    # --- saving ---------------------------------------------------------------------
    def save(self, *objs: Any, **kwargs: Any) -> list[Recording[uuid.UUID]]:
        """The library's ``save``, collecting an aggregate's events without its
        ``isinstance`` checks against runtime protocols (about 10 µs each on Python
        3.11); what is recorded is the same."""
        processing_event: ProcessingEvent[uuid.UUID] = ProcessingEvent()
        for obj in objs:
            if isinstance(obj, Aggregate):
                processing_event.events.extend(obj.collect_events())
                processing_event.aggregates[obj.id] = obj
            else:
                processing_event.collect_events(obj)
        processing_event.saved_kwargs.update(kwargs)
        recordings = self._record(processing_event)
        cache = self.repository.cache
        if cache is not None and self.repository.fastforward:
            # the servers as saved, so that their next load (the agent's of a request,
            # the next request's of the agent's outcome) reads no event back and
            # decodes none; a load after a newer save, another process's too,
            # fast-forwards from this version as from any other. A copy: the caller
            # keeps the one it saved (copies share the nested values, see
            # :meth:`Server.__deepcopy__`)
            # (and, where the read models' folds report what they meet, the version
            # saved is the newest known: see StoreRepository.get_trusted)
            repository = self.repository
            trusting = repository if (isinstance(repository, StoreRepository)
                                      and repository.latest is not None) else None
            for aggregate_id, aggregate in processing_event.aggregates.items():
                if type(aggregate) is Server:
                    cache.put(aggregate_id, copy_of(aggregate))
                    if trusting is not None:
                        trusting.saved(aggregate_id, aggregate.version)
        self._take_snapshots(processing_event)
        self._notify(recordings)
        self.notify(processing_event.events)  # the library's deprecated hook
        return recordings

    def _record(self, processing_event: ProcessingEvent[uuid.UUID]
                ) -> list[Recording[uuid.UUID]]:
        """The library's ``_record`` (its event store's ``put``, inlined: the same
        mapper, the same recorder call, the same recordings)."""
        events = processing_event.events
        to_stored = self.mapper.to_stored_event
        stored = [to_stored(event) for event in events]
        ids = self.recorder.insert_events(stored, tracking=processing_event.tracking,
                                          **processing_event.saved_kwargs)
        recordings: list[Recording[uuid.UUID]] = []
        if ids:
            if len(ids) != len(stored):
                raise AssertionError(f"{len(ids)} notification ids for {len(stored)} events")
            recordings = [Recording(event, Notification(
                id=nid, originator_id=row.originator_id,
                originator_version=row.originator_version, topic=row.topic,
                state=row.state)) for event, row, nid in zip(events, stored, ids, strict=True)]
        repository = self.repository
        if repository.cache and not repository.fastforward:
            for aggregate_id, aggregate in processing_event.aggregates.items():
                repository.cache.put(aggregate_id, aggregate)
        return recordings

    def _take_snapshots(self, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        """The library's snapshots, taken of the aggregate just saved when the snapshot's
        version is the one it reached (the library loads it again from its last
        snapshot, reading and decoding up to an interval of events, a hundred, to
        rebuild the same state); at a version before it, rebuilt at that version as
        the library does."""
        if not (self.snapshots and self.snapshotting_intervals):
            return
        for event in processing_event.events:
            aggregate = processing_event.aggregates.get(event.originator_id)
            if aggregate is None:
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is None or event.originator_version % interval:
                continue
            snapshot_class = getattr(type(aggregate), "Snapshot", type(self).snapshot_class)
            if aggregate.version != event.originator_version or snapshot_class is None:
                self.take_snapshot(event.originator_id, version=event.originator_version,
                                   projector_func=project)
                continue
            self.snapshots.put([snapshot_class.take(aggregate)])

    # --- contexts -------------------------------------------------------------------
    def construct_repository(self) -> Repository[uuid.UUID]:
        """The library's repository, its LRU cache bounded in bytes as well."""
        built = super().construct_repository()
        repository = StoreRepository(
            built.event_store, snapshot_store=built.snapshot_store,
            fastforward=built.fastforward, fastforward_skipping=built.fastforward_skipping,
            deepcopy_from_cache=built.deepcopy_from_cache)
        repository.cache = built.cache
        # a command decides on a cached server known to be the newest without reading
        # the log: its own saves say so, and the read models' folds (bootstrap) say
        # what they met of the other processes' writes
        repository.latest = {}
        if isinstance(repository.cache, LRUCache):
            limit = self.env.get("VMLEDGER_AGGREGATE_CACHE_BYTES")
            repository.cache = SizedLRUCache(
                repository.cache.maxsize,
                int(limit) if limit else self.aggregate_cache_bytes)
        return repository

    def context(self, *, user_id: str = "admin", project_id: str = "admin",
                is_admin: bool = True, request_id: str | None = None,
                cause: str = "user", pinned: bool = True) -> Context:
        return Context(request_id=request_id or self.request_id_factory(), user_id=user_id,
                       project_id=project_id, cause=cause, is_admin=is_admin,
                       pinned=pinned)

    def agent_context(self, request_id: str) -> Context:
        return Context(request_id=request_id, user_id=None, project_id=None, cause="agent",
                       is_admin=True)

    def admin_context(self, request_id: str | None = None) -> Context:
        return self.context(request_id=request_id, cause=ADMIN)

    # --- reading --------------------------------------------------------------------
    def get(self, server_id: str | uuid.UUID, ctx: Context | None = None, *,
            include_deleted: bool = False, trusted: bool = False) -> Server:
        """The live aggregate, as the caller may see it (another project's is not found).

        ``trusted``: the cached copy, unread, when it is the newest version this
        process knows of (:meth:`StoreRepository.get_trusted`): for a caller whose use
        of it is a command that loses on the version if another process wrote the
        server meanwhile (the host agent, whose first commit comes before any call)."""
        sid = server_uuid(server_id)
        repository = self.repository
        try:
            server: object
            if trusted and isinstance(repository, StoreRepository):
                server = repository.get_trusted(sid)[0]
            else:
                server = repository.get(sid)
        except AggregateNotFoundError:
            raise ServerNotFound(str(server_id)) from None
        return visible(server, str(server_id), ctx, include_deleted)

    def get_at(self, server_id: str | uuid.UUID, version: int) -> Server:
        server: object = self.repository.get(server_uuid(server_id), version=version)
        assert isinstance(server, Server)
        return server

    def history(self, server_id: str | uuid.UUID) -> list[Server.Event]:
        """Every event of one server, oldest first (deleted servers included)."""
        events = [e for e in self.repository.event_store.get(server_uuid(server_id))
                  if isinstance(e, Server.Event)]
        if not events:
            raise ServerNotFound(str(server_id))
        return events


def visible(found: object, server_id: str, ctx: Context | None, include_deleted: bool
            ) -> Server:
    """``found`` if it is a server the caller may see, else :class:`ServerNotFound`."""
    if not isinstance(found, Server):
        raise ServerNotFound(server_id)
    if ctx is not None and not ctx.is_admin and found.project_id != ctx.project_id:
        raise ServerNotFound(server_id)
    if found.vm_state == lc.DELETED and not include_deleted:
        raise ServerNotFound(server_id)
    return found
