"""Scheduling: which host a server goes to, and the claims that make the choice hold.

One function, :meth:`Scheduler.place`, serves every placement — a create (one server or
many, in a server group or not), a resize (on the server's own host), an evacuation and
an unshelve of an offloaded server: the candidate hosts' claims versions are read
*before* their room, the hosts with room for the flavor are kept, the one with the most
free memory is chosen (as Nova's RAM weigher spreads servers), a group's policy has the
last word, and each placement on a host of limited room is recorded on that host's
:class:`~vmledger.domain.host_claims.HostClaims` at the version read first: a placement
another request recorded meanwhile makes the save conflict, and the command is decided
again against a room that counts it.

:class:`AllocationRatios` says how much of a host's reported capacity servers may take.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate

from vmledger.domain import server_group as groups
from vmledger.domain.catalog import Flavor, flavor_resources
from vmledger.domain.clock import Clock
from vmledger.domain.commands.pipeline import UnitOfWork
from vmledger.domain.commands.reads import ReadSide
from vmledger.domain.host_claims import HostClaims, host_claims_id
from vmledger.domain.server import Context

Room = Mapping[str, Mapping[str, float]]

#: per database (see :func:`_database_key`): the lock placements in this process take
_PLACEMENT_LOCKS: dict[str, threading.Lock] = {}
_PLACEMENT_LOCKS_GUARD = threading.Lock()


def _database_key(recorder: Any) -> str:
    """Which database a recorder writes to (stores on one database share it)."""
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
    return f"process:{id(recorder)}"  # in memory: this store alone


def flavor_need(flavor: Flavor | Mapping[str, Any]) -> dict[str, int]:
    """What a server of ``flavor`` asks of a host (see :func:`flavor_resources`)."""
    return flavor_resources(flavor.as_dict() if isinstance(flavor, Flavor) else dict(flavor))


def fitting(hosts: Sequence[str], room: Room, need: Mapping[str, int]) -> list[str]:
    """The ``hosts`` with room for ``need`` (those of unknown capacity included)."""
    out = []
    for host in hosts:
        left = room.get(host)
        if left is None or all(amount <= 0 or left.get(r, 0) >= amount
                               for r, amount in need.items()):
            out.append(host)
    return out


@dataclass
class Placement:
    """A host for each server of a request (all None when the request could not be
    placed whole: Nova's ``No valid host was found``), and the claims to save with it."""

    hosts: list[str | None]
    claims: list[Aggregate] = field(default_factory=list)

    @property
    def placed(self) -> bool:
        return all(h is not None for h in self.hosts)


@dataclass(frozen=True)
class GroupPolicy:
    """A server group's placement rule and where its members already are."""

    policy: str
    rules: Mapping[str, int]
    member_hosts: list[str]


class Scheduler:
    """Places servers on hosts (see the module's text)."""

    def __init__(self, store: Application[Any], reads: ReadSide, clock: Clock,
                 own_hosts: Sequence[str] = ()) -> None:
        self.store = store
        self.reads = reads
        self.clock = clock
        #: this process's own hosts: preferred among equals
        self.own_hosts = tuple(own_hosts)

    def place(self, ctx: Context, uow: UnitOfWork, server_ids: Sequence[str],
              need: Mapping[str, int], candidates: Sequence[str], *,
              force: str | None = None, prefer: str | None = None,
              group: GroupPolicy | None = None) -> Placement:
        """A host of ``candidates`` for each of ``server_ids``, each taking its share of
        its host's room before the next is placed, and their claims (for the caller to add to
        ``uow``, in the order its events are to be saved).

        ``force``: that host, with or without room (Nova skips the scheduler then).
        ``prefer``: that host when it has room (an unshelve goes back to its old host).
        ``group``: the policy of the group the servers join."""
        versions = self._claim_versions(candidates)  # before the room is read
        seen = self.reads.host_room(candidates)
        room: dict[str, Mapping[str, float]] = dict(seen)
        placed = list(group.member_hosts) if group else []
        hosts: list[str | None] = []
        for _ in server_ids:
            fits = fitting(candidates, room, need)
            if force is not None:
                chosen: str | None = force
            elif prefer is not None and prefer in fits:
                chosen = prefer
            else:
                chosen = self.weighed(fits, room)
            if group is not None and chosen is not None:
                chosen = groups.place(group.policy, group.rules, placed, fits, chosen)
            if chosen is None:
                return Placement([None] * len(server_ids))
            placed.append(chosen)
            if chosen in room:  # what this server takes is no longer free
                left = room[chosen] = dict(room[chosen])
                for resource, amount in need.items():
                    left[resource] = left.get(resource, 0) - amount
            hosts.append(chosen)
        by_host: dict[str, dict[str, Mapping[str, int]]] = {}
        for server_id, host in zip(server_ids, hosts, strict=True):
            assert host is not None
            by_host.setdefault(host, {})[server_id] = need
        return Placement(hosts, self._claims(ctx, uow, by_host, seen, versions))

    def lock(self) -> threading.Lock:
        """Placements (creates, resizes, evacuations, unshelves) on this database are
        decided one after the other in this process, by every store on it: they contend
        for the same hosts' claims, and a queue is fairer than losing the race again and
        again. Other processes are serialised by the claims alone."""
        key = _database_key(self.store.recorder)
        with _PLACEMENT_LOCKS_GUARD:
            found = _PLACEMENT_LOCKS.get(key)
            if found is None:
                found = _PLACEMENT_LOCKS[key] = threading.Lock()
            return found

    def weighed(self, candidates: Sequence[str], room: Room) -> str | None:
        """Of the ``candidates``, the one with the most free memory, then this process's
        own, then by name; None when there is none."""
        if not candidates:
            return None
        return min(candidates, key=lambda h: (-(room.get(h) or {}).get("ram", 0),
                                              h not in self.own_hosts, h))

    def _claim_versions(self, hosts: Sequence[str]) -> dict[str, int | None]:
        versions: dict[str, int | None] = {}
        recorder: Any = self.store.recorder
        for host in hosts:
            last = recorder.select_events(host_claims_id(host), desc=True, limit=1)
            versions[host] = last[0].originator_version if last else None
        return versions

    def _claims(self, ctx: Context, uow: UnitOfWork,
                placements: Mapping[str, Mapping[str, Mapping[str, int]]], room: Room,
                versions: Mapping[str, int | None]) -> list[Aggregate]:
        """The placements recorded on each host whose room is limited, taken at the
        version read before the room. Hosts of unknown or unlimited room need none."""
        out: list[Aggregate] = []
        for host, servers in placements.items():
            left = room.get(host)
            if not servers or left is None or all(math.isinf(v) for v in left.values()):
                continue
            version = versions.get(host)
            found = (None if version is None
                     else uow.get(host_claims_id(host), version=version))
            claims = (found if isinstance(found, HostClaims)
                      else HostClaims.start(ctx, self.clock.now(), host))
            claims.claim(ctx, self.clock.now(), servers,
                         {r: v for r, v in left.items() if not math.isinf(v)})
            out.append(claims)
        return out


@dataclass(frozen=True)
class AllocationRatios:
    """How much of each host's capacity servers may take, as Nova's
    ``cpu_allocation_ratio``, ``ram_allocation_ratio``, ``disk_allocation_ratio`` (its
    initial defaults: 4.0, 1.0, 1.0) and ``reserved_host_memory_mb`` (512): a host takes
    a server only while its flavor fits in (capacity - reserved) * ratio less what the
    host's servers hold. ``float("inf")`` lifts a limit."""

    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0
    reserved_host_memory_mb: int = 512

    def __post_init__(self) -> None:
        for name in ("cpu", "ram", "disk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    value > 0):
                raise ValueError(f"the {name} allocation ratio must be above 0, "
                                 f"not {value!r}")
        reserved = self.reserved_host_memory_mb
        if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0:
            raise ValueError(f"the reserved host memory must be 0 MB or more, "
                             f"not {reserved!r}")

    def capacity(self, info: dict[str, Any] | None) -> dict[str, float] | None:
        """What servers may take of a host reporting ``info`` (its ``vcpus``,
        ``memory_mb``, ``local_gb``); None when it reported none of them. A resource
        reported as 0 (not measured: a disk directory the hypervisor could not read)
        is not limited."""
        if not info or not any(info.get(k) for k in ("vcpus", "memory_mb", "local_gb")):
            return None
        return {"vcpus": _limit(info.get("vcpus"), self.cpu),
                "ram": _limit(info.get("memory_mb"), self.ram,
                              self.reserved_host_memory_mb),
                "disk": _limit(info.get("local_gb"), self.disk)}


def _limit(reported: Any, ratio: float, reserved: int = 0) -> float:
    """(reported - reserved) * ratio; unlimited when nothing was reported (0)."""
    amount = _count(reported)
    if amount == 0:
        return math.inf  # not measured
    return (amount - reserved) * ratio if amount > reserved else 0.0


def _count(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0
