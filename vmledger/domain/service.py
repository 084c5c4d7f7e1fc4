"""The command service: the eventsourcing Application that owns every server.

Each command is *load → decide → save* in one transaction. A lost optimistic
concurrency race (``IntegrityError``) is retried against fresh state, so the guard
decides again and the loser gets the table's refusal (409), never an unhandled error.
Mutating calls take an optional idempotency key: the key is recorded in the same
transaction as the command's events, so the same key twice acts once and returns the
first result.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError

from vmledger.domain import compute_service as compute_services
from vmledger.domain import flavors as flavor_records
from vmledger.domain import image as image_states
from vmledger.domain import keypair as keypairs
from vmledger.domain import lifecycle as lc
from vmledger.domain import quota as quotas
from vmledger.domain import server_group as groups
from vmledger.domain.catalog import Catalog, Flavor, Image, flavor_resources
from vmledger.domain.clock import Clock, SystemClock
from vmledger.domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    ImageNotFound,
    NotFound,
    ServerNotFound,
)
from vmledger.domain.host_claims import HostClaims, host_claims_id
from vmledger.domain.image import CustomImage
from vmledger.domain.server import ADMIN, TIMER, Context, Server

_IDEMPOTENCY_NS = uuid.UUID("0b8f6a52-3a51-4d0e-8d6c-2f4b8f0d9e11")
MAX_ATTEMPTS = 8
#: servers one create request may ask for (Nova bounds it by quota)
MAX_SERVERS_PER_REQUEST = 100
NAME_MAX = 255
METADATA_MAX_ITEMS = 128
#: no count limit (checked later against the server's project's quota)
UNLIMITED_ITEMS = -1
#: tags one server may carry (Nova's ``MAX_TAGS_PER_INSTANCE``)
MAX_TAGS = 50


class IdempotencyRecord(Aggregate):
    """The first result of a command sent with an idempotency key."""

    class Recorded(Aggregate.Created):
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

    def as_dict(self) -> dict[str, Any]:
        return {"server_id": self.server_id, "request_id": self.request_id,
                "position": self.position, "accepted": self.accepted,
                "details": self.details}


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


def keypair_owner(ctx: Context, user_id: str | None) -> str:
    """Whose key pairs a call is about: the caller's, or (admins only) ``user_id``'s."""
    if user_id is not None and user_id != ctx.user_id:
        if not ctx.is_admin:
            raise Forbidden("Only administrators may manage another user's key pairs")
        return user_id
    if ctx.user_id is None:
        raise BadRequest("Key pairs belong to a user")
    return ctx.user_id


def _check_keypair_name(name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
        raise BadRequest("A key pair name is 1 to 255 characters, without leading or "
                         "trailing spaces")
    return name


def _check_name(name: object, field: str = "name") -> str:
    if (not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX
            or name != name.strip()):
        raise BadRequest(f"Invalid input for field/attribute {field}. Value: {name!r}. "
                         f"It must be a string of 1 to {NAME_MAX} characters without "
                         "leading or trailing whitespace.")
    return name


_METADATA_KEY = re.compile(r"^[a-zA-Z0-9-_:. ]{1,255}$")


def _check_tag(tag: object) -> str:
    if not isinstance(tag, str) or not 1 <= len(tag) <= 60 or "/" in tag or "," in tag:
        raise BadRequest(f"Invalid tag {tag!r}: 1 to 60 characters, without '/' or ','")
    return tag


def _check_metadata_count(metadata: dict[Any, Any], *, quota: bool = True,
                          limit: int = METADATA_MAX_ITEMS) -> None:
    if limit >= 0 and len(metadata) > limit:
        message = f"Maximum number of metadata items exceeds {limit}"
        # a server's: Nova's metadata_items quota (403); an image's: its own limit (400)
        raise Forbidden(message) if quota else BadRequest(message)


def _check_metadata(metadata: object, *, quota: bool = True,
                    limit: int = METADATA_MAX_ITEMS) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise BadRequest("Invalid input for field/attribute metadata. "
                         "It must be an object of string keys and string values.")
    _check_metadata_count(metadata, quota=quota, limit=limit)
    for key, value in metadata.items():
        if not isinstance(key, str) or not _METADATA_KEY.match(key):
            raise BadRequest(f"Invalid input for field/attribute metadata. Key: {key!r}. "
                             "Keys are 1 to 255 characters of [a-zA-Z0-9-_:. ].")
        if not isinstance(value, str) or len(value) > NAME_MAX:
            raise BadRequest(f"Invalid input for field/attribute metadata. Value of {key!r} "
                             "must be a string of at most 255 characters.")
    return dict(metadata)


def _check_description(description: object) -> str | None:
    if description is None:
        return None
    if not isinstance(description, str) or len(description) > NAME_MAX:
        raise BadRequest("Invalid input for field/attribute description. "
                         "It must be a string of at most 255 characters.")
    return description


#: per database (see :func:`_database_key`): the lock placements in this process take
_PLACEMENT_LOCKS: dict[str, threading.Lock] = {}
_PLACEMENT_LOCKS_GUARD = threading.Lock()


def _database_key(recorder: Any) -> str:
    """Which database a recorder writes to (services on one database share it)."""
    datastore = getattr(recorder, "datastore", None)
    pool = getattr(datastore, "pool", None)
    name = getattr(pool, "db_name", None)  # SQLite
    if name is not None and not getattr(pool, "is_sqlite_memory_mode", False):
        return f"sqlite:{name}"
    kwargs = getattr(pool, "kwargs", None)  # PostgreSQL
    if isinstance(kwargs, dict) and kwargs.get("dbname"):
        return "postgres:{host}:{port}:{dbname}:".format(**{
            k: kwargs.get(k) for k in ("host", "port", "dbname")}) + str(
            getattr(datastore, "schema", ""))
    return f"process:{id(recorder)}"  # in memory: this service alone


def flavor_need(flavor: Flavor | Mapping[str, Any]) -> dict[str, int]:
    """What a server of ``flavor`` asks of a host (see :func:`flavor_resources`)."""
    return flavor_resources(flavor.as_dict() if isinstance(flavor, Flavor) else dict(flavor))


def _fitting(hosts: Sequence[str], room: Mapping[str, Mapping[str, float]],
             need: Mapping[str, int]) -> list[str]:
    """The ``hosts`` with room for ``need`` (those of unknown capacity included)."""
    out = []
    for host in hosts:
        left = room.get(host)
        if left is None or all(amount <= 0 or left.get(r, 0) >= amount
                               for r, amount in need.items()):
            out.append(host)
    return out


def _fits(flavor: Flavor, image: Image) -> None:
    if flavor.ram < image.min_ram:
        raise BadRequest("Flavor's memory is too small for requested image.")
    if flavor.disk and flavor.disk < image.min_disk:
        raise BadRequest("Flavor's disk is too small for requested image.")


#: the one availability zone every host is in (Nova's default ``default_availability_zone``)
ZONE = "nova"


def _addresses(server_id: uuid.UUID) -> dict[str, Any]:
    """A stable fixed address and MAC for a server (the simulated network)."""
    b = server_id.bytes
    ip = f"10.0.{b[0] % 250 + 1}.{b[1] % 250 + 2}"
    mac = "fa:16:3e:" + ":".join(f"{x:02x}" for x in b[2:5])
    return {"private": [{"addr": ip, "version": 4, "OS-EXT-IPS:type": "fixed",
                         "OS-EXT-IPS-MAC:mac_addr": mac}]}


def _fingerprint(operation: str, payload: dict[str, Any]) -> str:
    body = json.dumps([operation, payload], sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


class ServerService(Application[uuid.UUID]):
    """Every server's lifecycle, persisted as events."""

    name = "vmledger"
    log_section_size = 1000
    # a project's quota set gets an event per admitted create or resize
    snapshotting_intervals: ClassVar[dict[Any, int]] = {
        Server: 100, quotas.QuotaSet: 100, HostClaims: 100}
    # eventsourcing: 0 would be an *unbounded* cache; a bounded LRU keeps the speed-up
    # (loads fast-forward from the cached version) without holding every server forever
    env: ClassVar[dict[str, str]] = {"AGGREGATE_CACHE_MAXSIZE": "10000"}

    def __init__(self, env: dict[str, str] | None = None, *, clock: Clock | None = None,
                 catalog: Catalog | None = None, hosts: Sequence[str] = ("compute-1",),
                 confirm_window: timedelta = timedelta(hours=24),
                 id_factory: Callable[[], uuid.UUID] = uuid.uuid4,
                 request_id_factory: Callable[[], str] = new_request_id,
                 seed: int | None = None,
                 shelved_offload_time: timedelta | None = timedelta(0),
                 reclaim_interval: timedelta = timedelta(0)) -> None:
        super().__init__(env=env)
        if not hosts:
            raise ValueError("at least one host is needed")
        self.clock: Clock = clock or SystemClock()
        self.catalog = catalog or Catalog()
        self.hosts = tuple(hosts)
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
        self.id_factory = id_factory
        self.request_id_factory = request_id_factory
        self._jitter = random.Random(seed)
        #: a project's ``metadata_items`` quota (-1: unlimited); the engine answers it
        #: from the quota read model
        self.metadata_limit: Callable[[str | None], int] = lambda _: METADATA_MAX_ITEMS
        #: the hosts of a server group's members (not deleted), one entry per member;
        #: the engine answers it from the servers view
        self.group_member_hosts: Callable[[str], list[str]] = lambda _: []
        #: the hosts whose compute service takes new servers (not disabled or forced
        #: down); the engine answers it from the services read model
        self.usable_hosts: Callable[[], Sequence[str]] = lambda: self.hosts
        #: every compute host (this service's and those other processes' agents run);
        #: the engine answers it from the host reports and the services read model
        self.known_hosts: Callable[[], Sequence[str]] = lambda: self.hosts
        #: the room left on each of the given hosts (``vcpus``, ``ram`` MB, ``disk``
        #: GB: capacity times allocation ratio, less what its servers hold): a host
        #: takes a server only if its flavor fits, and the scheduler weighs free memory
        #: (the most first, as Nova's RAM weigher spreads servers); a host left out has
        #: no known capacity and is not filtered
        self.host_room: Callable[[Sequence[str]], Mapping[str, Mapping[str, float]]] = (
            lambda hosts: {})
        #: whether a host's compute service is up (its agent reports, not forced down):
        #: a server is evacuated only from a host that is not
        self.host_is_up: Callable[[str], bool] = lambda host: host in self.hosts
        #: a project's counted usage (``instances``, ``cores``, ``ram``), including every
        #: request admitted before; the engine answers it from its servers view, caught
        #: up first. None: quotas are not enforced (a service used on its own)
        self.project_usage: Callable[[str], Mapping[str, int]] | None = None
        #: a project's limits (its own over the ``default`` quota class's over the
        #: built-in defaults); the engine answers it from the quota read models
        self.project_limits: Callable[[str], Mapping[str, int]] = (
            lambda _: dict(quotas.DEFAULTS))
        # requests of one project admitted one at a time in this process (across
        # processes the quota set's version serialises them: the loser decides again)
        self._quota_locks: dict[str, threading.Lock] = {}
        self._quota_locks_guard = threading.Lock()

    # --- context helpers ----------------------------------------------------------
    def context(self, *, user_id: str = "admin", project_id: str = "admin",
                is_admin: bool = True, request_id: str | None = None,
                cause: str = "user") -> Context:
        return Context(request_id=request_id or self.request_id_factory(), user_id=user_id,
                       project_id=project_id, cause=cause, is_admin=is_admin)

    # --- reading ------------------------------------------------------------------
    def get(self, server_id: str | uuid.UUID, ctx: Context | None = None, *,
            include_deleted: bool = False) -> Server:
        """The live aggregate, as the caller may see it (another project's is not found)."""
        sid = self._uuid(server_id)
        try:
            server: object = self.repository.get(sid)
        except AggregateNotFoundError:
            raise ServerNotFound(str(server_id)) from None
        if not isinstance(server, Server):
            raise ServerNotFound(str(server_id))
        if ctx is not None and not ctx.is_admin and server.project_id != ctx.project_id:
            raise ServerNotFound(str(server_id))
        if server.vm_state == lc.DELETED and not include_deleted:
            raise ServerNotFound(str(server_id))
        return server

    def get_at(self, server_id: str | uuid.UUID, version: int) -> Server:
        server: object = self.repository.get(self._uuid(server_id), version=version)
        assert isinstance(server, Server)
        return server

    def history(self, server_id: str | uuid.UUID) -> list[Server.Event]:
        """Every event of one server, oldest first (deleted servers included)."""
        events = [e for e in self.repository.event_store.get(self._uuid(server_id))
                  if isinstance(e, Server.Event)]
        if not events:
            raise ServerNotFound(str(server_id))
        return events

    @staticmethod
    def _uuid(server_id: str | uuid.UUID) -> uuid.UUID:
        if isinstance(server_id, uuid.UUID):
            return server_id
        try:
            return uuid.UUID(str(server_id))
        except ValueError:
            raise ServerNotFound(str(server_id)) from None

    # --- the command loop ---------------------------------------------------------
    def _run(self, ctx: Context, server_id: uuid.UUID | None,
             decide: Callable[[Server | None], Server | None], *,
             idempotency_key: str | None = None, operation: str = "",
             payload: dict[str, Any] | None = None,
             load: Callable[[uuid.UUID], Server] | None = None,
             extras: list[Aggregate] | None = None,
             details: dict[str, Any] | None = None) -> CommandResult:
        """Load, decide, save; retry the whole command when another writer won.

        ``decide`` may put other new aggregates in ``extras`` (cleared before each
        attempt): they are saved in the same transaction as the server's events.
        """
        record_id = None
        fingerprint = ""
        if idempotency_key is not None:
            if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 255:
                raise BadRequest("An idempotency key is a string of 1 to 255 characters")
            record_id = uuid.uuid5(_IDEMPOTENCY_NS, f"{ctx.project_id}:{idempotency_key}")
            fingerprint = _fingerprint(operation, {"server": str(server_id),
                                                   **(payload or {})})
        for attempt in range(MAX_ATTEMPTS):
            if record_id is not None:
                replay = self._replay(record_id, fingerprint, idempotency_key or "")
                if replay is not None:
                    return replay
            server = None
            if extras is not None:
                extras.clear()
            if server_id is not None:
                server = (load or (lambda sid: self.get(sid, ctx)))(server_id)
            changed = decide(server)
            if changed is None or not changed.pending_events:
                return CommandResult(str(server_id), ctx.request_id, None, accepted=False)
            aggregates: list[Aggregate] = [changed, *(extras or [])]
            result = CommandResult(str(changed.id), ctx.request_id, None,
                                   details=dict(details or {}))
            if record_id is not None:
                aggregates.append(IdempotencyRecord._create(
                    IdempotencyRecord.Recorded, id=record_id, timestamp=self.clock.now(),
                    key=idempotency_key, fingerprint=fingerprint, result=result.as_dict()))
            try:
                recordings = self.save(*aggregates)
            except IntegrityError:
                # another writer won the race: decide again against fresh state
                self._back_off(attempt)
                continue
            position = recordings[-1].notification.id if recordings else None
            return CommandResult(str(changed.id), ctx.request_id, position,
                                 details=dict(details or {}))
        if server_id is None:
            raise Conflict("Other requests placing servers at the same time kept winning; "
                           "try again.")
        raise Conflict("The server was changed by another request at the same time; "
                       "try again.")

    def _back_off(self, attempt: int) -> None:
        """Wait before deciding again after losing a race: a random time up to 2 ms,
        doubling with each lost attempt (at most 0.2 s), so writers contending for one
        aggregate (a host's claims, a project's quota set) spread out instead of
        colliding again."""
        time.sleep(self._jitter.uniform(0, min(0.2, 0.002 * 2 ** attempt)))

    def _replay(self, record_id: uuid.UUID, fingerprint: str, key: str
                ) -> CommandResult | None:
        try:
            record: object = self.repository.get(record_id)
        except AggregateNotFoundError:
            return None
        assert isinstance(record, IdempotencyRecord)
        if record.fingerprint != fingerprint:
            raise IdempotencyConflict(key)
        r = record.result
        return CommandResult(r["server_id"], r["request_id"], r["position"], accepted=False,
                             details=r.get("details") or {})

    # --- user commands ------------------------------------------------------------
    def create_server(self, ctx: Context, *, name: str, flavor: str | int, image: str,
                      metadata: dict[str, str] | None = None,
                      description: str | None = None, key_name: str | None = None,
                      availability_zone: str | None = None,
                      attributes: dict[str, Any] | None = None,
                      idempotency_key: str | None = None, count: int = 1,
                      min_count: int | None = None,
                      server_group: str | None = None) -> CommandResult:
        """Ask for new servers (``count`` of them, in one transaction and one request);
        each starts BUILD and the host agent builds it.

        Each server goes to a host that takes servers and has room for its flavor; with
        ``server_group`` (a group of the caller's project) each joins it and is placed
        by its policy. When one of the request's servers cannot be placed, they all fail
        to schedule (ERROR, ``No valid host was found``, no host), as Nova's scheduler
        fails the whole request.

        With ``count`` > 1 the servers are named ``NAME-1`` … ``NAME-N`` (and a requested
        hostname gets the same suffix), as Nova's default
        ``multi_instance_display_name_template``; the result is the first server's,
        with every id in ``details["server_ids"]``. Within the project's quotas: as
        many as fit when that is at least ``min_count`` (default ``count``), else
        :class:`~vmledger.domain.quota.QuotaExceeded` (see :meth:`admit`).
        """
        _check_name(name)
        if isinstance(count, bool) or not isinstance(count, int) or not (
                1 <= count <= MAX_SERVERS_PER_REQUEST):
            raise BadRequest(f"A request creates 1 to {MAX_SERVERS_PER_REQUEST} servers, "
                             f"not {count!r}")
        meta = _check_metadata(metadata, limit=self.metadata_limit(ctx.project_id))
        desc = _check_description(description)
        if availability_zone is not None and availability_zone != ZONE:
            raise BadRequest("The requested availability zone is not available")
        chosen_flavor = self.catalog.flavor(flavor)
        chosen_image, image_ref = self.image_for(image, ctx)
        _fits(chosen_flavor, chosen_image)
        if ctx.project_id is None or ctx.user_id is None:
            raise BadRequest("A server is created on behalf of a user and a project")
        if min_count is not None and (isinstance(min_count, bool) or not isinstance(
                min_count, int) or not 1 <= min_count <= count):
            raise BadRequest(f"min_count must be 1 to {count}, not {min_count!r}")
        project_id = ctx.project_id
        each = {"instances": 1, "cores": chosen_flavor.vcpus, "ram": chosen_flavor.ram}
        group = self._group_for_create(ctx, server_group) if server_group else None
        payload: dict[str, Any] = {
            "name": name, "flavor": chosen_flavor.id, "image": chosen_image.id,
            "metadata": meta, "description": desc, "key_name": key_name,
            "availability_zone": availability_zone, "attributes": attributes}
        if count > 1:
            payload["count"] = count
        if group is not None:
            payload["server_group"] = str(group.id)
        extras: list[Aggregate] = []
        details: dict[str, Any] = {}
        placed: list[str] = []  # hosts of the group's members, this request's included
        usable: list[str] = []  # hosts whose compute service takes new servers

        # the room left on each usable host, as servers are placed
        room: dict[str, Mapping[str, float]] = {}
        need = flavor_need(chosen_flavor)
        # the group as loaded by the current attempt (its version serialises placements)
        current: list[groups.ServerGroup] = []

        def choose(total: int) -> list[str | None]:
            """A host for each server of the request, each taking its share of its
            host's room before the next is placed; None for all when one cannot be
            placed (Nova's scheduler: not enough hosts for the request, which fails
            whole)."""
            hosts: list[str | None] = []
            for _ in range(total):
                fitting = _fitting(usable, room, need)
                chosen = self._weighed(fitting, room)
                if current and chosen is not None:
                    chosen = groups.place(current[0].policy, current[0].rules, placed,
                                          fitting, chosen)
                if chosen is None:
                    return [None] * total
                placed.append(chosen)
                if chosen in room:  # what this server takes is no longer free
                    left = room[chosen] = dict(room[chosen])
                    for resource, amount in need.items():
                        left[resource] = left.get(resource, 0) - amount
                hosts.append(chosen)
            return hosts

        def one(index: int, total: int, chosen: str | None) -> Server:
            sid = self.id_factory()
            attrs = dict(attributes or {})
            own_name = name if total == 1 else f"{name}-{index}"
            if total > 1 and attrs.get("hostname"):
                attrs["hostname"] = f"{attrs['hostname']}-{index}"
            if current:
                attrs["server_group"] = str(current[0].id)
            if chosen is None:  # the scheduler's answer: the server fails in ERROR
                server = self._request(sid, ctx, own_name, chosen_flavor, image_ref,
                                       self.hosts[0], meta, desc, key_name,
                                       availability_zone, attrs)
                server.fail(ctx, self.clock.now(), power_state=0, rollback=False,
                            message=groups.NO_VALID_HOST, code=500, unplaced=True)
                return server
            return self._request(sid, ctx, own_name, chosen_flavor, image_ref, chosen, meta,
                                 desc, key_name, availability_zone, attrs)

        def decide(_: Server | None) -> Server:
            total, quota = self.admit(ctx, project_id, each, count=count,
                                      min_count=min_count)
            usable[:] = self.usable_hosts()
            versions = self._claim_versions(usable)  # before the room is read
            room.clear()
            room.update(self.host_room(usable))
            seen = dict(room)
            current.clear()
            placed.clear()
            if server_group:
                current.append(self._group_for_create(ctx, server_group))  # fresh
                placed.extend(self.group_member_hosts(str(current[0].id)))
                limit = self.project_limits(project_id)["server_group_members"]
                if limit != quotas.UNLIMITED and len(placed) + total > limit:
                    raise Forbidden("Quota exceeded, too many servers in group")
            made = [one(index, total, host)
                    for index, host in enumerate(choose(total), start=1)]
            first = made[0]
            extras.extend(made[1:])
            placements: dict[str, dict[str, dict[str, int]]] = {}
            for s in made:
                if s.vm_state != lc.ERROR:
                    placements.setdefault(s.host, {})[str(s.id)] = need
            extras.extend(self._claims(ctx, placements, seen, versions))
            details.clear()
            if total > 1:
                details["server_ids"] = [str(s.id) for s in made]
            if current:  # recorded on the group too: racing placements conflict
                current[0].place_members(ctx, self.clock.now(), {
                    str(s.id): (None if s.vm_state == lc.ERROR else s.host) for s in made})
                extras.append(current[0])
            if quota is not None:
                extras.append(quota)
            return first

        with self._placement_lock(), self._quota_lock(project_id):
            return self._run(ctx, None, decide, idempotency_key=idempotency_key,
                             operation="create", payload=payload, extras=extras,
                             details=details)

    def _request(self, sid: uuid.UUID, ctx: Context, name: str, flavor: Flavor,
                 image: dict[str, Any], host: str, metadata: dict[str, str],
                 description: str | None, key_name: str | None,
                 availability_zone: str | None, attributes: dict[str, Any]) -> Server:
        return Server.request(
            id=sid, ctx=ctx, at=self.clock.now(), name=name, flavor=flavor.as_dict(),
            image=image, host=host, metadata=metadata, description=description,
            key_name=key_name, availability_zone=availability_zone or ZONE,
            addresses=_addresses(sid), attributes=attributes)

    # --- quotas ----------------------------------------------------------------------
    def quota_set(self, project_id: str) -> quotas.QuotaSet | None:
        """The project's quota set; None while its limits were never changed."""
        try:
            found: object = self.repository.get(quotas.quota_set_id(project_id))
        except AggregateNotFoundError:
            return None
        return found if isinstance(found, quotas.QuotaSet) else None

    def admit(self, ctx: Context, project_id: str, each: Mapping[str, int], *,
              count: int = 1, min_count: int | None = None
              ) -> tuple[int, quotas.QuotaSet | None]:
        """How many of ``count`` requests, each adding ``each`` to the project's usage,
        its quotas admit (as many as fit when that is at least ``min_count``, default
        ``count``; else :class:`~vmledger.domain.quota.QuotaExceeded`), and the project's
        quota set with an ``Admitted`` event recorded, to be saved with the request's
        own events (None when no limit applies: nothing to serialise).

        Saving it is what makes the check hold under concurrency: a request admitted
        meanwhile in the same project (in any process) moved the quota set on, so this
        save conflicts and the command is decided again, against a usage that now
        includes the other request's servers."""
        if self.project_usage is None:
            return count, None
        limits = self.project_limits(project_id)
        if all(limits.get(r, quotas.UNLIMITED) == quotas.UNLIMITED
               for r in quotas.SERVER_RESOURCES if each.get(r, 0) > 0):
            return count, None  # the common case: nothing loaded, nothing recorded
        # limited by the default class only: the project's quota set starts here, to
        # serialise its requests all the same
        quota = self.quota_set(project_id) or quotas.QuotaSet.start(
            ctx, self.clock.now(), project_id)
        usage = self.project_usage(project_id)
        used = {r: int(usage.get(r, 0)) for r in quotas.SERVER_RESOURCES}
        admitted = quotas.admissible(limits, used, each, count,
                                     count if min_count is None else min_count)
        quota.admit(ctx, self.clock.now(), {r: n * admitted for r, n in each.items() if n},
                    used)
        return admitted, quota

    def set_quota_class(self, ctx: Context, name: str, limits: dict[str, int]
                        ) -> CommandResult:
        """Record new limits for a quota class (administrators; checked by the caller);
        the ``default`` class's are every project's defaults."""
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-quota-class-sets:update "
                            "to be performed.")

        def decide(found: object) -> Aggregate:
            quota = (found if isinstance(found, quotas.QuotaClass)
                     else quotas.QuotaClass.start(ctx, self.clock.now(), name))
            quota.set_limits(ctx, self.clock.now(), limits)
            return quota
        return self._load_decide_save(ctx, quotas.quota_class_id(name), decide,
                                      f"The quota class {name}")

    def _placement_lock(self) -> threading.Lock:
        """Placements (creates, resizes) on this database are decided one after the other
        in this process, by every service on it: they contend for the same hosts'
        claims, and a queue is fairer than losing the race again and again. Other
        processes are serialised by the claims alone."""
        key = _database_key(self.recorder)
        with _PLACEMENT_LOCKS_GUARD:
            lock = _PLACEMENT_LOCKS.get(key)
            if lock is None:
                lock = _PLACEMENT_LOCKS[key] = threading.Lock()
            return lock

    def _quota_lock(self, project_id: str | None) -> threading.Lock:
        with self._quota_locks_guard:
            lock = self._quota_locks.get(project_id or "")
            if lock is None:
                lock = self._quota_locks[project_id or ""] = threading.Lock()
            return lock

    # --- scheduling ---------------------------------------------------------------------
    def _weighed(self, candidates: Sequence[str], room: Mapping[str, Mapping[str, float]]
                 ) -> str | None:
        """The host a new server goes to: of the ``candidates`` (enabled, up, with room
        for it), the one with the most free memory, then this service's own, then by
        name; None when there is none (Nova's ``No valid host was found``)."""
        if not candidates:
            return None
        return min(candidates, key=lambda h: (-(room.get(h) or {}).get("ram", 0),
                                              h not in self.hosts, h))

    def _claim_versions(self, hosts: Sequence[str]) -> dict[str, int | None]:
        """The version of each host's claims (None: none yet), read *before* the room is
        (see :meth:`_claims`)."""
        versions: dict[str, int | None] = {}
        for host in hosts:
            last = self.recorder.select_events(host_claims_id(host), desc=True, limit=1)
            versions[host] = last[0].originator_version if last else None
        return versions

    def _claims(self, ctx: Context, placements: Mapping[str, Mapping[str, Mapping[str, int]]],
                room: Mapping[str, Mapping[str, float]],
                versions: Mapping[str, int | None]) -> list[Aggregate]:
        """The placements (servers by host, with what each takes) recorded on each host
        whose room is limited (:class:`~vmledger.domain.host_claims.HostClaims`), to be
        saved with the request. Each host's claims are taken at the version read before
        the room (``versions``): a placement that another request recorded after that
        makes this save conflict, and the request is decided again against a room that
        counts it; one recorded before is in the room already. Hosts of unknown or
        unlimited room need none."""
        out: list[Aggregate] = []
        for host, servers in placements.items():
            left = room.get(host)
            if not servers or left is None or all(math.isinf(v) for v in left.values()):
                continue
            version = versions.get(host)
            found: object = (None if version is None else
                             self.repository.get(host_claims_id(host), version=version))
            claims = (found if isinstance(found, HostClaims)
                      else HostClaims.start(ctx, self.clock.now(), host))
            claims.claim(ctx, self.clock.now(), servers,
                         {r: v for r, v in left.items() if not math.isinf(v)})
            out.append(claims)
        return out

    # --- other aggregates: load, decide, save, retry -------------------------------
    def _load_decide_save(self, ctx: Context, aggregate_id: uuid.UUID | None,
                decide: Callable[[object], Aggregate | None], what: str,
                details: dict[str, Any] | None = None) -> CommandResult:
        """Load an aggregate (None when there is none), let ``decide`` change it (or make
        it, or return None: nothing to record), save; a concurrent save makes it decide
        again, up to :data:`MAX_ATTEMPTS` times (then :class:`Conflict` naming ``what``)."""
        for attempt in range(MAX_ATTEMPTS):
            found: object = None
            if aggregate_id is not None:
                try:
                    found = self.repository.get(aggregate_id)
                except AggregateNotFoundError:
                    found = None
            changed = decide(found)
            if changed is None:
                return CommandResult("", ctx.request_id, None, details=details or {})
            try:
                recordings = self.save(changed)
            except IntegrityError:  # changed meanwhile: decide again
                self._back_off(attempt)
                continue
            return CommandResult("", ctx.request_id, recordings[-1].notification.id,
                                 details=details or {})
        raise Conflict(f"{what} was changed concurrently; try again.")

    # --- server groups --------------------------------------------------------------
    def _group(self, ctx: Context, group_id: object) -> groups.ServerGroup | None:
        """The live group, if the caller may see it (its project's, or any for admins)."""
        try:
            gid = uuid.UUID(str(group_id))
            found: object = self.repository.get(gid)
        except (ValueError, AggregateNotFoundError):
            return None
        if not isinstance(found, groups.ServerGroup) or found.deleted:
            return None
        if not ctx.is_admin and found.owner_project_id != ctx.project_id:
            return None
        return found

    def _group_for_create(self, ctx: Context, group_id: str) -> groups.ServerGroup:
        group = self._group(ctx, group_id)
        if group is None or group.owner_project_id != ctx.project_id:
            raise BadRequest(f"Instance group {group_id} could not be found.")
        return group

    def create_server_group(self, ctx: Context, *, name: object, policy: object,
                            rules: object = None) -> CommandResult:
        """A new group in the caller's project; ``details["group_id"]``."""
        checked_name, checked_policy, checked_rules = groups.check_group(name, policy, rules)
        if ctx.project_id is None or ctx.user_id is None:
            raise BadRequest("A server group is created on behalf of a user and a project")
        group = groups.ServerGroup.create(ctx, self.clock.now(), group_id=self.id_factory(),
                                          name=checked_name, policy=checked_policy,
                                          rules=checked_rules)
        recordings = self.save(group)
        return CommandResult("", ctx.request_id, recordings[-1].notification.id,
                             details={"group_id": str(group.id)})

    def delete_server_group(self, ctx: Context, group_id: str) -> CommandResult:
        """Delete a group (its project's members or an admin); its servers stay."""

        def decide(_: object) -> Aggregate:
            group = self._group(ctx, group_id)
            if group is None:
                raise NotFound(f"Server group {group_id} could not be found.")
            group.delete(ctx, self.clock.now())
            return group
        return self._load_decide_save(ctx, None, decide, f"Server group {group_id}")

    def act(self, ctx: Context, server_id: str | uuid.UUID, action: str,
            *, idempotency_key: str | None = None, **params: Any) -> CommandResult:
        """Request a lifecycle action by its table name (``pause``, ``reboot_hard``…)."""
        if action == "shelve":  # it makes an image too
            return self.shelve(ctx, server_id, idempotency_key=idempotency_key, **params)
        handler = self._ACTIONS.get(action)
        if handler is None:
            raise BadRequest(f"There is no such action: {action}")
        sid = self._uuid(server_id)
        if action == "resize":  # a larger flavor is admitted by the project's quotas
            extras: list[Aggregate] = []
            resize = self._h_resize(ctx, params, extras)
            with self._placement_lock(), self._quota_lock(ctx.project_id):
                return self._run(ctx, sid, resize, idempotency_key=idempotency_key,
                                 operation=action, payload=params, extras=extras)
        if action in ("evacuate", "unshelve"):  # placed on a host: claimed there
            placing: list[Aggregate] = []
            place = handler(self, ctx, params, placing)
            with self._placement_lock():
                return self._run(ctx, sid, place, idempotency_key=idempotency_key,
                                 operation=action, payload=params, extras=placing)
        decide = handler(self, ctx, params)
        return self._run(ctx, sid, decide, idempotency_key=idempotency_key,
                         operation=action, payload=params)

    def update_server(self, ctx: Context, server_id: str | uuid.UUID, *,
                      name: str | None = None, description: object = ...,
                      ) -> CommandResult:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = _check_name(name)
        if description is not ...:
            changes["description"] = _check_description(description)

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            if changes:
                server.update(ctx, self.clock.now(), changes)
            return server

        return self._run(ctx, self._uuid(server_id), decide)

    def set_metadata(self, ctx: Context, server_id: str | uuid.UUID,
                     items: dict[str, str], *, replace: bool = False) -> CommandResult:
        """Merge ``items`` into the server's metadata, or (``replace``) make them all of
        it. At most 128 items in all (Forbidden, as Nova's metadata quota)."""
        checked = _check_metadata(items, limit=UNLIMITED_ITEMS)

        def decide(server: Server | None) -> Server:
            assert server is not None
            merged = checked if replace else {**server.metadata, **checked}
            _check_metadata_count(merged, limit=self.metadata_limit(server.project_id))
            server.change_metadata(ctx, self.clock.now(), merged)
            return server

        return self._run(ctx, self._uuid(server_id), decide)

    def delete_metadata(self, ctx: Context, server_id: str | uuid.UUID, key: str
                        ) -> CommandResult:
        """Remove one metadata item (NotFound when the server has no such key)."""

        def decide(server: Server | None) -> Server:
            assert server is not None
            if key not in server.metadata:
                lc.check("delete_metadata", server.subject, is_admin=ctx.is_admin)
                raise NotFound("Metadata item was not found")
            server.change_metadata(ctx, self.clock.now(),
                                   {k: v for k, v in server.metadata.items() if k != key},
                                   action="delete_metadata")
            return server

        return self._run(ctx, self._uuid(server_id), decide)

    def change_tags(self, ctx: Context, server_id: str | uuid.UUID, action: str, *,
                    tag: str | None = None, tags: Sequence[str] | None = None
                    ) -> CommandResult:
        """``update_tag`` (add ``tag``), ``update_tags`` (replace with ``tags``),
        ``delete_tag`` (remove ``tag``: NotFound when absent) or ``delete_tags``. The
        result's ``details["created"]`` says whether ``update_tag`` added the tag."""
        if action not in ("update_tag", "update_tags", "delete_tag", "delete_tags"):
            raise BadRequest(f"There is no such tag operation: {action}")
        wanted = [_check_tag(t) for t in (tags or [])]
        one = _check_tag(tag) if action in ("update_tag", "delete_tag") else None
        details: dict[str, Any] = {}

        def decide(server: Server | None) -> Server:
            assert server is not None
            current = list(server.attributes.get("tags") or [])
            if action == "update_tag":
                new = current if one in current else [*current, str(one)]
                details["created"] = one not in current
            elif action == "update_tags":
                new = list(dict.fromkeys(wanted))
            elif action == "delete_tag":
                if one not in current:
                    lc.check(action, server.subject, is_admin=ctx.is_admin)
                    raise NotFound(f"Tag {one} could not be found.")
                new = [t for t in current if t != one]
            else:
                new = []
            if len(new) > MAX_TAGS:
                raise BadRequest(f"The number of tags exceeded the per-server limit {MAX_TAGS}")
            server.change_tags(ctx, self.clock.now(), new, action=action)
            return server

        return self._run(ctx, self._uuid(server_id), decide, details=details)

    # each handler validates its parameters and returns the decision for _run
    def _h_simple(self, ctx: Context, params: dict[str, Any], action: str
                  ) -> Callable[[Server | None], Server]:
        if params:
            raise BadRequest(f"Action {action} takes no parameters: "
                             f"{', '.join(sorted(params))}")

        def decide(server: Server | None) -> Server:
            assert server is not None
            server.request_action(action, ctx, self.clock.now())
            return server
        return decide

    def _h_reboot(self, ctx: Context, params: dict[str, Any]
                  ) -> Callable[[Server | None], Server]:
        kind = str(params.pop("type", "SOFT")).upper()
        if kind not in ("SOFT", "HARD") or params:
            raise BadRequest(f"Invalid input for field/attribute type. Value: {kind}. "
                             "'SOFT' or 'HARD' expected.")
        action = "reboot_hard" if kind == "HARD" else "reboot_soft"

        def decide(server: Server | None) -> Server:
            assert server is not None
            server.request_action(action, ctx, self.clock.now(), params={"type": kind})
            return server
        return decide

    def _h_resize(self, ctx: Context, params: dict[str, Any],
                  extras: list[Aggregate] | None = None
                  ) -> Callable[[Server | None], Server]:
        ref = params.pop("flavor", None)
        if ref is None or params:
            raise BadRequest("Resize requires a flavor (flavorRef) and nothing else")

        def decide(server: Server | None) -> Server:
            assert server is not None
            lc.check("resize", server.subject, is_admin=ctx.is_admin)
            new = self.catalog.flavor(ref)
            if new.id == server.flavor.get("id"):
                raise BadRequest("When resizing, instances must change flavor!")
            versions = self._claim_versions([server.host])
            room = self.host_room([server.host])
            if not _fitting([server.host], room, flavor_need(new)):
                # Nova's scheduler: no host for the new flavor (its own host holds both
                # while it waits). The server is left as it was, the action failed.
                server.request_action("resize", ctx, self.clock.now(),
                                      params={"flavor": new.as_dict()},
                                      changes={"migration_status": "pre-migrating"})
                server.fail(ctx, self.clock.now(), power_state=server.power_state,
                            rollback=True, message=groups.NO_VALID_HOST, code=500)
                return server
            growth = {"cores": new.vcpus - int(server.flavor.get("vcpus") or 0),
                      "ram": new.ram - int(server.flavor.get("ram") or 0)}
            growth = {r: n for r, n in growth.items() if n > 0}
            if growth and server.project_id is not None:
                _, quota = self.admit(ctx, server.project_id, growth)
                if quota is not None and extras is not None:
                    extras.append(quota)
            server.request_action("resize", ctx, self.clock.now(),
                                  params={"flavor": new.as_dict()},
                                  changes={"migration_status": "pre-migrating"})
            if extras is not None:  # the host holds the new flavor too from now on
                extras.extend(self._claims(
                    ctx, {server.host: {str(server.id): flavor_need(new)}}, room, versions))
            return server
        return decide

    def _h_evacuate(self, ctx: Context, params: dict[str, Any],
                    extras: list[Aggregate] | None = None
                    ) -> Callable[[Server | None], Server]:
        """Nova's ``evacuate`` (administrators): the server's host is down, so it is
        rebuilt from its image on another one — ``host`` if given (it must exist and
        take servers, unless ``force``), else the one the scheduler picks — by that
        host's agent; ``stop`` (2.95) leaves it
        stopped there. With no host to go to it fails at once: ERROR with Nova's
        ``No valid host was found``. Its migration record (``evacuation``) is
        ``accepted``, then ``done`` or ``failed``."""
        params = dict(params)
        host = params.pop("host", None)
        stop = bool(params.pop("stop", False))
        force = bool(params.pop("force", False))
        if params:
            raise BadRequest(f"Action evacuate takes no parameters: {', '.join(sorted(params))}")
        if force and host is None:
            raise BadRequest("Can't force to a non-provided destination")
        action = "evacuate_stopped" if stop else "evacuate"

        def decide(server: Server | None) -> Server:
            assert server is not None
            # Nova's order: the server (404), the policy, the host, then the state
            if lc.ACTIONS[action].admin_only and not ctx.is_admin:
                raise Forbidden("Policy doesn't allow os_compute_api:os-evacuate to be "
                                "performed.")
            if host is not None and host not in self.known_hosts():
                raise NotFound(f"Compute host {host} not found.")
            if host is not None and host == server.host:
                raise BadRequest("The target host can't be the same one.")
            lc.check(action, server.subject, is_admin=ctx.is_admin)
            if self.host_is_up(server.host):
                raise BadRequest(f"Compute service of {server.host} is still in use.")
            usable = ([host] if force else  # forced: the host, whether it takes servers
                      [h for h in self.usable_hosts()
                       if h != server.host and (host is None or h == host)])
            need = flavor_need(server.flavor)
            versions = self._claim_versions(usable)  # before the room is read
            room = self.host_room(usable)
            # forced: that host, with or without room (Nova skips the scheduler)
            chosen = host if force else self._weighed(_fitting(usable, room, need), room)
            changes: dict[str, Any] = {"migration_status": "accepted"}
            if chosen is not None:
                changes["host"] = chosen
                if extras is not None:
                    extras.extend(self._claims(ctx, {chosen: {str(server.id): need}},
                                               room, versions))
            server.request_action(action, ctx, self.clock.now(),
                                  params={"source_host": server.host}, changes=changes)
            if chosen is None:  # Nova's conductor: the scheduler found no host
                server.fail(ctx, self.clock.now(), power_state=0, rollback=False,
                            message=groups.NO_VALID_HOST, code=500)
            return server
        return decide

    def _h_migration(self, ctx: Context, params: dict[str, Any], action: str, status: str,
                     ) -> Callable[[Server | None], Server | None]:
        deadline = params.pop("deadline", None)
        if params:
            raise BadRequest(f"Action {action} takes no parameters")

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            if deadline is not None and server.confirm_deadline != deadline:
                return None  # a stale timer: the resize it was for is already settled
            server.request_action(action, ctx, self.clock.now(),
                                  changes={"migration_status": status})
            return server
        return decide

    def _h_rebuild(self, ctx: Context, params: dict[str, Any]
                   ) -> Callable[[Server | None], Server]:
        ref = params.pop("image", None)
        if not ref:
            raise BadRequest("Rebuild requires an image (imageRef)")
        changes: dict[str, Any] = {}
        if "name" in params:
            changes["name"] = _check_name(params.pop("name"))
        if "metadata" in params:
            changes["metadata"] = _check_metadata(params.pop("metadata"),
                                                  limit=UNLIMITED_ITEMS)
        if "description" in params:
            changes["description"] = _check_description(params.pop("description"))
        if params:
            raise BadRequest(f"Unknown rebuild parameters: {', '.join(sorted(params))}")

        def decide(server: Server | None) -> Server:
            assert server is not None
            lc.check("rebuild", server.subject, is_admin=ctx.is_admin)
            if "metadata" in changes:
                _check_metadata_count(changes["metadata"],
                                      limit=self.metadata_limit(server.project_id))
            try:
                image, image_ref = self.image_for(str(ref), ctx)
            except ImageNotFound:
                raise BadRequest("Cannot find image for rebuild") from None
            _fits(Flavor(**server.flavor), image)
            server.request_action("rebuild", ctx, self.clock.now(),
                                  params={"image": image_ref},
                                  changes={**changes, "image": image_ref})
            return server
        return decide

    def _h_delete(self, ctx: Context, params: dict[str, Any], *, force: bool = False
                  ) -> Callable[[Server | None], Server | None]:
        """A delete: soft (the table's ``soft_delete`` row) when the reclaim interval is
        above 0 and the server was launched and is not soft-deleted already, as Nova;
        else, and for ``forceDelete`` (``force``), the real one."""
        if params:
            raise BadRequest("Delete takes no parameters")

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            if server.task_state == lc.DELETING:
                lc.check("delete", server.subject, is_admin=ctx.is_admin)  # lock still 409
                return None  # Nova ignores a repeated delete
            soft = (not force and self.reclaim_interval > timedelta(0)
                    and server.launched_at is not None
                    and server.vm_state != lc.SOFT_DELETED)
            server.request_action("soft_delete" if soft else "delete", ctx, self.clock.now(),
                                  changes={"confirm_deadline": None})
            return server
        return decide

    def _h_lock(self, ctx: Context, params: dict[str, Any]
                ) -> Callable[[Server | None], Server]:
        reason = params.pop("reason", None)
        if params or (reason is not None and (not isinstance(reason, str)
                                              or not 1 <= len(reason) <= NAME_MAX)):
            raise BadRequest("Invalid input for field/attribute locked_reason.")

        def decide(server: Server | None) -> Server:
            assert server is not None
            server.lock(ctx, self.clock.now(), reason)
            return server
        return decide

    def _h_unlock(self, ctx: Context, params: dict[str, Any]
                  ) -> Callable[[Server | None], Server]:
        if params:
            raise BadRequest("Unlock takes no parameters")

        def decide(server: Server | None) -> Server:
            assert server is not None
            server.unlock(ctx, self.clock.now())
            return server
        return decide

    def _h_reset_state(self, ctx: Context, params: dict[str, Any]
                       ) -> Callable[[Server | None], Server]:
        state = params.pop("state", None)
        if state not in (lc.ACTIVE, lc.ERROR) or params:
            raise BadRequest(f"Invalid input for field/attribute state. Value: {state}. "
                             "'active' or 'error' expected.")

        def decide(server: Server | None) -> Server:
            assert server is not None
            server.reset_state(ctx, self.clock.now(), state)
            return server
        return decide

    def _h_rescue(self, ctx: Context, params: dict[str, Any]
                  ) -> Callable[[Server | None], Server]:
        """``image``: the rescue image (id or name, one the caller may use); by default
        the image the server was built from (as Nova without a configured one)."""
        params = dict(params)
        ref = params.pop("image", None)
        if params:
            raise BadRequest(f"Action rescue takes no parameters: {', '.join(sorted(params))}")

        def decide(server: Server | None) -> Server:
            assert server is not None
            lc.check("rescue", server.subject, is_admin=ctx.is_admin)  # before the image
            image = self.image_for(str(ref if ref is not None else server.image["id"]),
                                   ctx)[1]
            server.request_action("rescue", ctx, self.clock.now(),
                                  params={"image_id": image["id"],
                                          "image_name": image.get("name")})
            return server
        return decide

    def _h_unshelve(self, ctx: Context, params: dict[str, Any],
                    extras: list[Aggregate] | None = None
                    ) -> Callable[[Server | None], Server]:
        """``availability_zone`` (2.77) and ``host`` (2.91, administrators) only for a
        server whose guest was offloaded; a host must be one of this service's."""
        params = dict(params)
        zone = params.pop("availability_zone", None)
        host = params.pop("host", None)
        if params:
            raise BadRequest(f"Action unshelve takes no parameters: {', '.join(sorted(params))}")
        if host is not None and not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-shelve:unshelve_to_host "
                            "to be performed.")
        if host is not None and host not in self.known_hosts():
            raise BadRequest(f"Compute host {host} could not be found.")

        def decide(server: Server | None) -> Server:
            assert server is not None
            if (zone is not None or host is not None) and server.vm_state == lc.SHELVED:
                lc.check("unshelve", server.subject, is_admin=ctx.is_admin)  # lock first
                raise Conflict(
                    "Specifying an availability zone or a host when unshelving server "
                    f"{server.id} with status SHELVED is not supported. The server status "
                    "must be SHELVED_OFFLOADED.")
            if zone is not None and zone != server.availability_zone:
                raise BadRequest("The requested availability zone is not available")
            changes = {"host": host} if host is not None else {}
            no_host = False
            if server.vm_state == lc.SHELVED_OFFLOADED:
                # placed again: the host asked for (administrators; it must have room),
                # else its old host if that still takes servers and has room, else the
                # scheduler's choice
                usable = [host] if host is not None else list(self.usable_hosts())
                need = flavor_need(server.flavor)
                versions = self._claim_versions(usable)  # before the room is read
                room = self.host_room(usable)
                fitting = _fitting(usable, room, need)
                chosen = (server.host if host is None and server.host in fitting
                          else self._weighed(fitting, room))
                if chosen is None:
                    no_host = True
                else:
                    changes["host"] = chosen
                    if extras is not None:
                        extras.extend(self._claims(ctx, {chosen: {str(server.id): need}},
                                                   room, versions))
            server.request_action("unshelve", ctx, self.clock.now(), changes=changes,
                                  params={"image_id": getattr(server, "shelved_image_id",
                                                              None)})
            if no_host:  # Nova's conductor: back to SHELVED_OFFLOADED, with the fault
                server.fail(ctx, self.clock.now(), power_state=0, rollback=True,
                            message=groups.NO_VALID_HOST, code=500)
            return server
        return decide

    def shelve(self, ctx: Context, server_id: str | uuid.UUID, *,
               idempotency_key: str | None = None, **params: Any) -> CommandResult:
        """Shelve a server (Nova's ``shelve``): the host agent powers it off and saves
        its disk as the custom image ``<name>-shelved`` (queued in the same transaction
        as the request); with a shelved offload time of 0 it then removes the guest in
        the same action (the table's ``shelve_and_offload`` row), else the guest stays
        until the timer or a ``shelveOffload`` removes it."""
        if params:
            raise BadRequest(f"Action shelve takes no parameters: {', '.join(sorted(params))}")
        action = ("shelve_and_offload" if self.shelved_offload_time == timedelta(0)
                  else "shelve")
        return self._snapshot(ctx, server_id, action, lambda s: f"{s.name}-shelved"[:255],
                              {}, {}, idempotency_key=idempotency_key, operation="shelve",
                              payload={})

    def offload_shelved(self, server_id: str | uuid.UUID) -> CommandResult:
        """Offload a server left shelved, unchanged, for the shelved offload time (the
        timer asks, cause ``timer``; Nova's ``_poll_shelved_instances``). A no-op when
        the time is 0 or None, or the server has moved on (unshelved, offloaded,
        deleted, changed since)."""
        wait = self.shelved_offload_time
        return self._after_idle(server_id, lc.SHELVED, "shelve_offload",
                                wait if wait is not None else timedelta(0))

    def reclaim(self, server_id: str | uuid.UUID) -> CommandResult:
        """Delete a server left soft-deleted, unchanged, for the reclaim interval (the
        timer asks, cause ``timer``; Nova's ``_reclaim_queued_deletes``)."""
        return self._after_idle(server_id, lc.SOFT_DELETED, "delete", self.reclaim_interval)

    def _after_idle(self, server_id: str | uuid.UUID, vm_state: str, action: str,
                    wait: timedelta) -> CommandResult:
        """Request ``action`` (cause ``timer``) of a server idle in ``vm_state`` and
        unchanged for ``wait``; nothing when ``wait`` is 0 or it is not so (any more)."""
        ctx = Context(request_id=self.request_id_factory(), user_id=None, project_id=None,
                      cause=TIMER, is_admin=True)
        if wait <= timedelta(0):
            return CommandResult(str(server_id), ctx.request_id, None, accepted=False)

        def load(sid: uuid.UUID) -> Server:
            return self.get(sid, include_deleted=True)

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            if (server.vm_state != vm_state or server.task_state is not None
                    or server.modified_on + wait > self.clock.now()):
                return None
            server.request_action(action, ctx, self.clock.now())
            return server

        return self._run(ctx, self._uuid(server_id), decide, load=load)

    _ACTIONS: ClassVar[dict[str, Callable[..., Callable[[Server | None], Server | None]]]] = {
        "reboot": _h_reboot,
        "reboot_soft": lambda s, c, p: s._h_reboot(c, {**p, "type": "SOFT"}),
        "reboot_hard": lambda s, c, p: s._h_reboot(c, {**p, "type": "HARD"}),
        "rebuild": _h_rebuild,
        "resize": _h_resize,
        "evacuate": _h_evacuate,
        "confirm_resize": lambda s, c, p: s._h_migration(c, p, "confirm_resize", "confirming"),
        "revert_resize": lambda s, c, p: s._h_migration(c, p, "revert_resize", "reverting"),
        "delete": _h_delete,
        "force_delete": lambda s, c, p: s._h_delete(c, p, force=True),
        "lock": _h_lock,
        "unlock": _h_unlock,
        "reset_state": _h_reset_state,
        "unshelve": _h_unshelve,
        "rescue": _h_rescue,
        **{name: (lambda action: lambda s, c, p: s._h_simple(c, p, action))(name)
           for name in ("pause", "unpause", "suspend", "resume", "stop", "start",
                        "shelve_offload", "unrescue", "trigger_crash_dump", "restore")},
    }

    # --- images -------------------------------------------------------------------------
    def image_for(self, ref: str, ctx: Context) -> tuple[Image, dict[str, Any]]:
        """A usable image by id or name: pre-built, or a custom image the caller may see.

        Returns the image and the reference a server records (a custom image's reference
        names the server it is a snapshot of).
        """
        try:
            image = self.catalog.image(ref)
        except ImageNotFound:
            try:
                custom = self.get_image(ref, ctx)
            except NotFound:
                raise ImageNotFound(str(ref)) from None
            image = Image(id=str(custom.id), name=custom.name, min_ram=custom.min_ram,
                          min_disk=custom.min_disk, size=custom.size, status=custom.status)
            if image.status != "active":
                raise BadRequest(f"Image {image.id} is not active.") from None
            return image, {"id": image.id, "name": image.name,
                           "snapshot_of": custom.server_id}
        if image.status != "active":
            raise BadRequest(f"Image {image.id} is not active.")
        return image, {"id": image.id, "name": image.name}

    def get_image(self, ref: str | uuid.UUID, ctx: Context | None = None) -> CustomImage:
        """A custom image (not deleted) its owner project or an admin may see (else 404)."""
        missing = NotFound(f"Image {ref} could not be found.")
        try:
            image_id = uuid.UUID(str(ref))
            image: object = self.repository.get(image_id)
        except (ValueError, AggregateNotFoundError):
            raise missing from None
        if not isinstance(image, CustomImage) or image.status == image_states.DELETED or (
                ctx is not None and not ctx.is_admin and image.project_id != ctx.project_id):
            raise missing
        return image

    def create_image(self, ctx: Context, server_id: str | uuid.UUID, *, name: str,
                     metadata: dict[str, str] | None = None,
                     idempotency_key: str | None = None) -> CommandResult:
        """Snapshot a server into a new custom image (Nova's ``createImage``).

        The image (queued) and the server's request are saved in one transaction; the
        host agent takes the snapshot, then activates the image.
        """
        _check_name(name)
        meta = _check_metadata(metadata, quota=False)
        return self._snapshot(ctx, server_id, "create_image", name, meta, {},
                              idempotency_key=idempotency_key, operation="createImage",
                              payload={"name": name, "metadata": meta})

    def create_backup(self, ctx: Context, server_id: str | uuid.UUID, *, name: str,
                      backup_type: str, rotation: int,
                      metadata: dict[str, str] | None = None,
                      idempotency_key: str | None = None) -> CommandResult:
        """Back a server up (Nova's ``createBackup``): a snapshot image with the
        properties ``image_type: backup`` and ``backup_type``; once it is saved the host
        agent deletes this server's older backups of that type beyond the newest
        ``rotation`` (0: the new one too, as Nova)."""
        _check_name(name)
        if not isinstance(backup_type, str):  # "" is one (the openstack CLI's default)
            raise BadRequest("Invalid input for field/attribute backup_type.")
        if isinstance(rotation, bool) or not isinstance(rotation, int) or rotation < 0:
            raise BadRequest("Invalid input for field/attribute rotation.")
        meta = _check_metadata(metadata, quota=False)
        properties = {**meta, "image_type": "backup", "backup_type": backup_type}
        return self._snapshot(
            ctx, server_id, "create_backup", name, properties,
            {"backup_type": backup_type, "rotation": rotation},
            idempotency_key=idempotency_key, operation="createBackup",
            payload={"name": name, "backup_type": backup_type, "rotation": rotation,
                     "metadata": meta})

    def _snapshot(self, ctx: Context, server_id: str | uuid.UUID, action: str,
                  name: str | Callable[[Server], str], metadata: dict[str, str],
                  params: dict[str, Any], *, idempotency_key: str | None, operation: str,
                  payload: dict[str, Any]) -> CommandResult:
        """Queue a custom image of the server and request ``action`` to save it, in
        one transaction (``result.details["image_id"]``); ``name`` may be derived from
        the server as loaded in that transaction."""
        extras: list[Aggregate] = []
        details: dict[str, Any] = {}

        def decide(server: Server | None) -> Server:
            assert server is not None
            lc.check(action, server.subject, is_admin=ctx.is_admin)
            image_id = self.id_factory()
            details["image_id"] = str(image_id)
            base = server.image
            image_name = name(server) if callable(name) else name
            extras.append(CustomImage.queue(
                id=image_id, ctx=ctx, at=self.clock.now(), name=image_name,
                server_id=str(server.id), metadata=metadata, min_ram=0,
                min_disk=int(server.flavor.get("disk") or 0), base_image=dict(base)))
            server.request_action(action, ctx, self.clock.now(),
                                  params={"image_id": str(image_id), "name": image_name,
                                          **params})
            return server

        return self._run(ctx, self._uuid(server_id), decide, idempotency_key=idempotency_key,
                         operation=operation, payload=payload, extras=extras, details=details)

    def record_image(self, image_id: str, request_id: str,
                     step: Callable[[CustomImage, Context, datetime], None]) -> bool:
        """Apply one agent step to a custom image (saving, activated, failed)."""
        ctx = self.agent_context(request_id)
        for attempt in range(MAX_ATTEMPTS):
            image = self.get_image(image_id)
            step(image, ctx, self.clock.now())
            if not image.pending_events:
                return False
            try:
                self.save(image)
                return True
            except IntegrityError:
                self._back_off(attempt)
        raise Conflict(f"Image {image_id} was changed concurrently; try again.")

    def delete_image(self, ctx: Context, image_id: str) -> CommandResult:
        """Delete a custom image (its owner project or an admin; others: not found)."""
        for attempt in range(MAX_ATTEMPTS):
            image = self.get_image(image_id, ctx)
            image.delete(ctx, self.clock.now())
            if not image.pending_events:
                return CommandResult("", ctx.request_id, None, accepted=False)
            try:
                recordings = self.save(image)
            except IntegrityError:
                self._back_off(attempt)
                continue
            return CommandResult("", ctx.request_id, recordings[-1].notification.id,
                                 details={"image_id": str(image.id)})
        raise Conflict(f"Image {image_id} was changed concurrently; try again.")

    # --- key pairs ------------------------------------------------------------------
    def import_keypair(self, ctx: Context, *, name: str, public_key: str,
                       key_type: str = keypairs.SSH, user_id: str | None = None
                       ) -> CommandResult:
        """Record a user's public key under ``name`` (the caller's own unless an admin
        names ``user_id``). A name the user already holds: :class:`Conflict`."""
        owner = keypair_owner(ctx, user_id)
        _check_keypair_name(name)
        if key_type not in keypairs.KEY_TYPES:
            raise BadRequest(f"Key pair type must be one of {', '.join(keypairs.KEY_TYPES)}")
        if not isinstance(public_key, str):
            raise BadRequest(keypairs.INVALID_KEY)
        key_fingerprint = keypairs.fingerprint(public_key, key_type)
        kid = keypairs.keypair_id(owner, name)

        def decide(found: object) -> Aggregate:
            if found is None:
                return keypairs.Keypair.import_key(
                    ctx=ctx, at=self.clock.now(), user_id=owner, name=name,
                    public_key=public_key, key_type=key_type, key_fingerprint=key_fingerprint)
            assert isinstance(found, keypairs.Keypair)
            found.reimport(ctx, self.clock.now(), public_key=public_key, key_type=key_type,
                           key_fingerprint=key_fingerprint)
            return found
        return self._load_decide_save(ctx, kid, decide, f"Key pair '{name}'",
                                      details={"keypair_id": str(kid), "user_id": owner})

    def delete_keypair(self, ctx: Context, name: str, *, user_id: str | None = None
                       ) -> CommandResult:
        owner = keypair_owner(ctx, user_id)
        kid = keypairs.keypair_id(owner, name) if isinstance(name, str) else None

        def decide(found: object) -> Aggregate:
            if not isinstance(found, keypairs.Keypair) or found.deleted:
                raise NotFound(f"Keypair {name} not found for user {owner}")
            found.delete(ctx, self.clock.now())
            return found
        return self._load_decide_save(ctx, kid, decide, f"Key pair '{name}'")

    # --- compute services -----------------------------------------------------------
    def change_compute_service(self, ctx: Context, host: str, *,
                               disabled: bool | None = None, reason: str | None = None,
                               forced_down: bool | None = None) -> CommandResult:
        """Disable or enable a host's compute service, or force it down (admins)."""

        def change(record: compute_services.ComputeService) -> None:
            if disabled is not None:
                record.set_status(ctx, self.clock.now(), disabled=disabled, reason=reason)
            if forced_down is not None:
                record.set_forced_down(ctx, self.clock.now(), forced_down)
        return self._compute_service(ctx, host, "update", change)

    def delete_compute_service(self, ctx: Context, host: str) -> CommandResult:
        """Delete a host's compute service (administrators): its settings are dropped
        and it is listed no more, until its agent reports again. The caller checks that
        no server and no migration in progress is on the host."""
        return self._compute_service(ctx, host, "delete",
                                     lambda record: record.delete(ctx, self.clock.now()))

    def _compute_service(self, ctx: Context, host: str, rule: str,
                         change: Callable[[compute_services.ComputeService], None]
                         ) -> CommandResult:
        """Change a known host's service record (made on its first change), as an
        administrator allowed by Nova's ``os-services:<rule>`` policy."""
        if not ctx.is_admin:
            raise Forbidden(f"Policy doesn't allow os_compute_api:os-services:{rule} to be "
                            "performed.")
        if host not in self.known_hosts():
            raise NotFound(f"Compute host {host} could not be found.")

        def decide(found: object) -> Aggregate:
            record = (found if isinstance(found, compute_services.ComputeService)
                      else compute_services.ComputeService.register(ctx, self.clock.now(),
                                                                    host))
            change(record)
            return record
        return self._load_decide_save(ctx, compute_services.service_record_id(host), decide,
                                      f"The service of {host}")

    # --- flavors --------------------------------------------------------------------
    def _flavor_admin(self, ctx: Context, rule: str) -> None:
        if not ctx.is_admin:
            raise Forbidden(f"Policy doesn't allow os_compute_api:{rule} to be performed.")

    def create_flavor(self, ctx: Context, fields: dict[str, Any]) -> CommandResult:
        """A new flavor from Nova's create body (administrators); ``details["flavor_id"]``.
        A taken id or name is a :class:`Conflict`."""
        self._flavor_admin(ctx, "os-flavor-manage:create")
        flavor = flavor_records.check_flavor(fields, str(self.id_factory()))
        taken = self.catalog.flavors()
        if any(f.id == flavor.id for f in taken):
            raise Conflict(f"Flavor with ID {flavor.id} already exists.")
        if any(f.name == flavor.name for f in taken):
            raise Conflict(f"Flavor with name {flavor.name} already exists.")
        try:
            found: object = self.repository.get(flavor_records.flavor_record_id(flavor.id))
        except AggregateNotFoundError:
            found = None
        if found is not None:  # deleted before: Nova's ids are not reused either
            raise Conflict(f"Flavor with ID {flavor.id} already exists.")
        record = flavor_records.FlavorRecord.make(ctx, self.clock.now(), flavor)
        try:
            recordings = self.save(record)
        except IntegrityError:
            raise Conflict(f"Flavor with ID {flavor.id} already exists.") from None
        return CommandResult("", ctx.request_id, recordings[-1].notification.id,
                             details={"flavor_id": flavor.id})

    def change_flavor(self, ctx: Context, flavor_id: str, rule: str,
                      change: Callable[[flavor_records.FlavorRecord], None]) -> CommandResult:
        """Apply ``change`` to a flavor's record (adopting a configured flavor first)."""
        self._flavor_admin(ctx, rule)
        def decide(found: object) -> Aggregate:
            if isinstance(found, flavor_records.FlavorRecord) and not found.deleted:
                record = found
            else:
                configured = self.catalog.configured_flavor(flavor_id)
                if found is not None or configured is None:
                    raise NotFound(f"Flavor {flavor_id} could not be found.")
                record = flavor_records.FlavorRecord.make(ctx, self.clock.now(), configured,
                                                          adopted=True)
            change(record)
            return record
        return self._load_decide_save(ctx, flavor_records.flavor_record_id(flavor_id), decide,
                            f"Flavor {flavor_id}")

    # --- quotas ---------------------------------------------------------------------
    def set_quotas(self, ctx: Context, project_id: str, limits: dict[str, int]
                   ) -> CommandResult:
        """Record new limits for a project (administrators; checked by the caller)."""
        return self._change_quotas(ctx, project_id, lambda q: q.set_limits(
            ctx, self.clock.now(), limits), start=True)

    def revert_quotas(self, ctx: Context, project_id: str) -> CommandResult:
        """Back to the defaults (nothing is recorded for a project that has them)."""
        return self._change_quotas(ctx, project_id, lambda q: q.revert(
            ctx, self.clock.now()), start=False)

    def _change_quotas(self, ctx: Context, project_id: str,
                       change: Callable[[quotas.QuotaSet], None], *, start: bool
                       ) -> CommandResult:
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-quota-sets:update to "
                            "be performed.")
        def decide(found: object) -> Aggregate | None:
            if isinstance(found, quotas.QuotaSet):
                quota = found
            elif start:
                quota = quotas.QuotaSet.start(ctx, self.clock.now(), project_id)
            else:
                return None  # the defaults already: nothing to record
            change(quota)
            return quota
        return self._load_decide_save(ctx, quotas.quota_set_id(project_id), decide,
                            f"The quotas of {project_id}")

    # --- the timer ------------------------------------------------------------------
    def auto_confirm(self, server_id: str | uuid.UUID, deadline: datetime) -> CommandResult:
        """Confirm a resize whose deadline has passed: idempotent, safe to race.

        Recorded with cause ``timer`` and no user or project, as Nova records its
        periodic confirmations. A resize settled in the meantime (confirmed, reverted,
        deleted, or a newer resize with another deadline) makes this a no-op.
        """
        ctx = Context(request_id=self.request_id_factory(), user_id=None, project_id=None,
                      cause=TIMER, is_admin=True)
        if deadline > self.clock.now():
            return CommandResult(str(server_id), ctx.request_id, None, accepted=False)

        def load(sid: uuid.UUID) -> Server:
            return self.get(sid, include_deleted=True)

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            if (server.confirm_deadline != deadline or server.vm_state != lc.RESIZED
                    or server.task_state is not None
                    or server.migration_status != "finished"):
                return None
            server.request_action("confirm_resize", ctx, self.clock.now(),
                                  changes={"migration_status": "confirming"})
            return server

        return self._run(ctx, self._uuid(server_id), decide, load=load)

    # --- agent outcomes -------------------------------------------------------------
    def agent_context(self, request_id: str) -> Context:
        return Context(request_id=request_id, user_id=None, project_id=None, cause="agent",
                       is_admin=True)

    def record(self, server_id: str | uuid.UUID, request_id: str,
               step: Callable[[Server, Context, datetime], None]) -> CommandResult:
        """Apply one agent step to the action ``request_id``; a no-op when it is stale.

        Stale means the server has no action in flight any more, or another one (for
        instance a delete or a hard reboot superseded it): the agent's step is then
        dropped, so an outcome is never recorded twice.
        """
        ctx = self.agent_context(request_id)

        def load(sid: uuid.UUID) -> Server:
            return self.get(sid, include_deleted=True)

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            if server.pending_request_id != request_id:
                return None
            step(server, ctx, self.clock.now())
            return server

        return self._run(ctx, self._uuid(server_id), decide, load=load)

    def record_drift(self, server_id: str | uuid.UUID, *, host: str, observed: int,
                     power_state: int, call: dict[str, Any] | None) -> CommandResult:
        """Record a power-state sync's finding (skipped if an action started meanwhile)."""
        ctx = self.agent_context(self.request_id_factory())

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            changed = server.observe_drift(ctx, self.clock.now(), host=host,
                                           observed=observed, power_state=power_state,
                                           call=call)
            return server if changed else None

        return self._run(ctx, self._uuid(server_id), decide,
                         load=lambda sid: self.get(sid, include_deleted=True))

    def record_evacuated_guest_removed(self, server_id: str | uuid.UUID, *, host: str,
                                       call: dict[str, Any] | None) -> CommandResult:
        """Record that ``host``'s agent removed the guest a server left there when it
        was evacuated (skipped unless that evacuation is done)."""
        ctx = self.agent_context(self.request_id_factory())

        def decide(server: Server | None) -> Server | None:
            assert server is not None
            changed = server.evacuated_guest_removed(ctx, self.clock.now(), host=host,
                                                     call=call)
            return server if changed else None

        return self._run(ctx, self._uuid(server_id), decide,
                         load=lambda sid: self.get(sid, include_deleted=True))

    def admin_context(self, request_id: str | None = None) -> Context:
        return self.context(request_id=request_id, cause=ADMIN)
