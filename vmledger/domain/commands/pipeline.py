"""The command pipeline: every command of every aggregate is *load → decide → save* in one
transaction, through :meth:`Pipeline.execute`.

A command's ``decide`` gets a fresh :class:`UnitOfWork` on each attempt: it loads what it
needs through it, changes or makes aggregates (adding those beside the main one with
:meth:`UnitOfWork.add`) and returns the main aggregate, or None when there is nothing to
record. Everything is saved in one transaction, with the command's idempotency record
when it has a key. When another writer won the race (the library's ``IntegrityError``
on an aggregate's version: the same server, a project's quota set, a host's claims, a
server group), the whole command is decided again against fresh state, so the guard
decides again and the loser gets the table's refusal (409), never an unhandled error.
That retry policy exists here only.

The first attempt may take cached servers that are the newest versions the process knows
of without reading the log (:meth:`StoreRepository.get_trusted`). Its write loses on the
version if another process wrote the server meanwhile (then decided again at once, after
a read, and that server is read for every command from then on unless the other
processes' writes are named to this one: :meth:`StoreRepository.distrust`); a decision
that would stand without such a write (nothing to record, a refusal, or other aggregates
written only) is made again after a read.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from vmledger.domain.clock import Clock
from vmledger.domain.errors import BadRequest, Conflict, IdempotencyConflict
from vmledger.domain.server import Context, RequestEvent, Server
from vmledger.domain.service import StoreRepository, copy_of
from vmledger.domain.wakeups import agent_hosts

_IDEMPOTENCY_NS = uuid.UUID("0b8f6a52-3a51-4d0e-8d6c-2f4b8f0d9e11")
#: attempts of one command before its losing races end in :class:`Conflict`
MAX_ATTEMPTS = 8


class IdempotencyRecord(Aggregate):
    """The first result of a command sent with an idempotency key (with the first
    request's id, so the key is in that request's causal chain; records made before
    they carried it have none)."""

    class Recorded(Aggregate.Created, RequestEvent):
        key: str
        fingerprint: str
        result: dict[str, Any]

        def apply(self, record: IdempotencyRecord) -> None:
            record.key = self.key
            record.fingerprint = self.fingerprint
            record.result = dict(self.result)

    key: str
    fingerprint: str
    result: dict[str, Any]

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Recorded.apply`."""


@dataclass(frozen=True)
class CommandResult:
    """What a command did: the request it recorded and where in the log it is."""

    server_id: str
    request_id: str
    #: the log position of the last event written (read-your-writes waits for it)
    position: int | None
    #: False when nothing was written (an ignored repeat, or an idempotent replay)
    accepted: bool = True
    #: what else the command made (``{"image_id": …}`` for createImage)
    details: dict[str, Any] = field(default_factory=dict)
    #: the hosts whose agent has work because of this command (the servers it saved
    #: with an action in flight, by the host that enacts it now; see
    #: :mod:`vmledger.domain.wakeups`); None: not known (every agent looks). Not part
    #: of :meth:`as_dict` (what an idempotency record keeps)
    agent_hosts: frozenset[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"server_id": self.server_id, "request_id": self.request_id,
                "position": self.position, "accepted": self.accepted,
                "details": self.details}


@dataclass(frozen=True)
class Idempotency:
    """A command's idempotency key with what it asked for: the same key again with the
    same ``operation`` and ``payload`` replays the first result, with others it is
    refused (:class:`~vmledger.domain.errors.IdempotencyConflict`)."""

    key: str
    operation: str
    payload: dict[str, Any]

    def record_id(self, ctx: Context) -> uuid.UUID:
        return uuid.uuid5(_IDEMPOTENCY_NS, f"{ctx.project_id}:{self.key}")

    def fingerprint(self) -> str:
        body = json.dumps([self.operation, self.payload], sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()


def idempotency(key: str | None, operation: str, payload: dict[str, Any]
                ) -> Idempotency | None:
    """The checked key (None: none given)."""
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= 255:
        raise BadRequest("An idempotency key is a string of 1 to 255 characters")
    return Idempotency(key, operation, payload)


class UnitOfWork:
    """One attempt of one command: loads from the store, collects what to save."""

    def __init__(self, store: Application[uuid.UUID],
                 primed: Sequence[Aggregate] = (), *, trusting: bool = False) -> None:
        self.store = store
        #: aggregates saved beside the command's main one, in the same transaction
        self.added: list[Aggregate] = []
        #: aggregates the caller loaded just before, by id: the first load of each is a
        #: copy of it instead of a read (see :meth:`Pipeline.execute`)
        self._primed = {aggregate.id: aggregate for aggregate in primed}
        #: loads may take a cached server known to be the newest without reading the
        #: log (:meth:`StoreRepository.get_trusted`)
        self._trusting = trusting and isinstance(store.repository, StoreRepository)
        #: the aggregates loaded so, unread: their ids and versions
        self.unread: dict[uuid.UUID, int] = {}

    def get(self, aggregate_id: uuid.UUID, version: int | None = None) -> object | None:
        """The aggregate (None when there is none)."""
        if version is None and self._primed:
            found_primed = self._primed.pop(aggregate_id, None)
            if found_primed is not None:
                copied: object = copy_of(found_primed)
                return copied
        try:
            if version is None and self._trusting:
                repository = self.store.repository
                assert isinstance(repository, StoreRepository)
                found, unread = repository.get_trusted(aggregate_id)
                if unread:
                    self.unread[aggregate_id] = found.version
                return found  # type: ignore[no-any-return]
            found = self.store.repository.get(aggregate_id, version=version)
        except AggregateNotFoundError:
            return None
        return found  # type: ignore[no-any-return]

    def checked(self, saved: Sequence[Aggregate]) -> bool:
        """Whether the decision needs no read to stand: every aggregate it took from
        the cache unread is among those it saves (a write overtaken meanwhile loses on
        the version). A decision to write nothing, or to write other aggregates only,
        on such a copy is made again after reading."""
        return not self.unread or self.unread.keys() <= {a.id for a in saved}

    def add(self, *aggregates: Aggregate) -> None:
        self.added.extend(aggregates)


Decide = Callable[[UnitOfWork], Aggregate | None]


class Pipeline:
    """Runs commands: one unit of work per attempt, one retry policy, idempotency records
    and serialising claims saved in the command's own transaction."""

    def __init__(self, store: Application[uuid.UUID], clock: Clock, *,
                 seed: int | None = None) -> None:
        self.store = store
        self.clock = clock
        self._jitter = random.Random(seed)
        #: called on every lost race, before deciding again (the metrics count retries)
        self.retry_observers: list[Callable[[], None]] = []
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._on_saved: list[Callable[[CommandResult], None]] = []

    def on_saved(self, callback: Callable[[CommandResult], None]) -> None:
        """Call ``callback`` with the result of every command that saved something, once
        it is committed (the workers of this process are woken so, not by polling). It
        must be quick and must not raise."""
        self._on_saved.append(callback)

    def execute(self, ctx: Context, decide: Decide, *, what: str,
                subject: str = "", key: Idempotency | None = None,
                details: dict[str, Any] | None = None,
                serialise: Sequence[AbstractContextManager[Any]] = (),
                primed: Sequence[Aggregate] = ()) -> CommandResult:
        """Decide and save; decide again when another writer won, up to
        :data:`MAX_ATTEMPTS` times (then :class:`Conflict` naming ``what``).

        ``subject`` is the id reported when nothing is written; a written server reports
        its own id, another aggregate ``""``. ``details`` (which ``decide`` may fill in)
        are returned with the result. ``serialise``: locks held for the whole command
        (requests of this process contending for the same aggregates queue instead of
        losing the race again and again; other processes are serialised by the
        aggregates' versions alone). ``primed``: aggregates the caller has just loaded
        (not changed): the first attempt decides on copies of them instead of reading
        them again; if one is stale meanwhile, its save loses on the version and the
        next attempt reads it afresh, as after any lost race."""
        record_id = key.record_id(ctx) if key is not None else None
        fingerprint = key.fingerprint() if key is not None else ""
        with ExitStack() as held:
            for lock in serialise:
                held.enter_context(lock)
            for attempt in range(MAX_ATTEMPTS):
                # the first attempt may decide on cached copies known to be the newest;
                # any later one (after a lost race, or to check a decision made on such
                # a copy) reads
                uow = UnitOfWork(self.store, primed if attempt == 0 else (),
                                 trusting=attempt == 0)
                if record_id is not None:
                    replay = self._replay(uow, record_id, fingerprint, key)
                    if replay is not None:
                        return replay
                try:
                    changed = decide(uow)
                except Exception:
                    if not uow.unread:
                        raise
                    continue  # refused on a copy unread: decided again after a read
                if changed is None or not changed.pending_events:
                    if uow.unread:
                        continue  # nothing to do, on a copy unread: the same after a read
                    return CommandResult(subject, ctx.request_id, None, accepted=False,
                                         details=dict(details or {}))
                reported = str(changed.id) if isinstance(changed, Server) else ""
                aggregates = [changed, *uow.added]
                if not uow.checked(aggregates):
                    continue
                if record_id is not None:
                    first = CommandResult(reported, ctx.request_id, None,
                                          details=dict(details or {}))
                    aggregates.append(IdempotencyRecord._create(
                        IdempotencyRecord.Recorded, id=record_id, timestamp=self.clock.now(),
                        key=key.key if key else "", fingerprint=fingerprint,
                        result=first.as_dict(), **ctx.fields()))
                hosts = agent_hosts(aggregates)
                try:
                    # the hosts travel with the write: PostgreSQL's notification tells
                    # the other processes' agents whether to look
                    recordings = self.store.save(*aggregates, agent_hosts=hosts)
                except IntegrityError:
                    # decided on a cached copy unread: another process had written it
                    # (no contention to spread out), read at once; and, unless that
                    # process's writes are named to this one, read from now on
                    if uow.unread:
                        repository = self.store.repository
                        assert isinstance(repository, StoreRepository)
                        repository.distrust(uow.unread)
                    self.back_off(attempt, wait=not uow.unread)
                    continue
                position = recordings[-1].notification.id if recordings else None
                result = CommandResult(reported, ctx.request_id, position,
                                       details=dict(details or {}), agent_hosts=hosts)
                for callback in self._on_saved:
                    callback(result)
                return result
        raise Conflict(f"{what} was changed by another request at the same time; "
                       "try again.")

    def unit_of_work(self) -> UnitOfWork:
        """A unit of work for reading before a command is decided (its checks that need
        no retry)."""
        return UnitOfWork(self.store)

    def back_off(self, attempt: int, *, wait: bool = True) -> None:
        """Wait before deciding again after losing a race: a random time up to 2 ms,
        doubling with each lost attempt (at most 0.2 s), so writers contending for one
        aggregate (a host's claims, a project's quota set) spread out instead of
        colliding again (``wait=False``: counted, not waited)."""
        for observe in self.retry_observers:
            observe()
        if wait:
            time.sleep(self._jitter.uniform(0, min(0.2, 0.002 * 2 ** attempt)))

    def lock(self, name: str) -> threading.Lock:
        """A lock of this pipeline's, by name (made on first use)."""
        with self._locks_guard:
            found = self._locks.get(name)
            if found is None:
                found = self._locks[name] = threading.Lock()
            return found

    def _replay(self, uow: UnitOfWork, record_id: uuid.UUID, fingerprint: str,
                key: Idempotency | None) -> CommandResult | None:
        record = uow.get(record_id)
        if record is None:
            return None
        assert isinstance(record, IdempotencyRecord)
        if record.fingerprint != fingerprint:
            raise IdempotencyConflict(key.key if key else "")
        r = record.result
        # the first result was recorded before its position was known: the head of the
        # log is at or after it (the record was saved with its events), so a reader
        # waiting for the head sees what the first request wrote
        position = r["position"] or self.store.recorder.max_notification_id()
        return CommandResult(r["server_id"], r["request_id"], position, accepted=False,
                             details=r.get("details") or {})

