"""Project quotas (Nova's ``os-quota-sets``), event-sourced like servers.

A project's quota set is an aggregate (its id derived from the project) holding the
limits an administrator set; every other limit is the default. Changing limits and
going back to the defaults are events, so the ledger says who changed which limit
when.

Enforced: ``instances``, ``cores`` and ``ram`` (MB), counted over the project's servers
that are not deleted (Nova's legacy counting: shelved and soft-deleted servers count),
when servers are created and resized (each request admitted records
:class:`QuotaSet.Admitted` with its own events, which serialises a project's concurrent
requests: see :meth:`~vmledger.domain.service.ServerService.admit`); ``metadata_items``
per server; ``key_pairs`` per user; ``server_groups`` and ``server_group_members``. The
other limits Nova has (injected files, and until 2.36 the network ones) are kept and
shown but enforce nothing: vmledger has none of those resources. -1 is unlimited.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from vmledger.domain.errors import BadRequest, Forbidden
from vmledger.domain.server import Context, RequestEvent

UNLIMITED = -1

#: the defaults: unlimited servers, cores and RAM (a single-tenant embedded default;
#: an administrator sets per-project limits), Nova's defaults for the rest
DEFAULTS: dict[str, int] = {
    "instances": UNLIMITED, "cores": UNLIMITED, "ram": UNLIMITED,
    "metadata_items": 128, "key_pairs": 100,
    "server_groups": 10, "server_group_members": 10,
    "injected_files": 5, "injected_file_content_bytes": 10240,
    "injected_file_path_bytes": 255,
    "fixed_ips": UNLIMITED, "floating_ips": 10, "security_groups": 10,
    "security_group_rules": 20,
}
#: limits whose usage vmledger counts (the others are never used)
COUNTED = ("instances", "cores", "ram", "key_pairs")
#: the limits servers use (checked when servers are created and resized)
SERVER_RESOURCES = ("instances", "cores", "ram")
#: shown and settable until microversion 2.35 (Nova's network quotas)
NETWORK = ("fixed_ips", "floating_ips", "security_groups", "security_group_rules")
#: shown and settable until microversion 2.56 (personality files)
INJECTED = ("injected_files", "injected_file_content_bytes", "injected_file_path_bytes")

_NAMESPACE = uuid.UUID("9a4c2e1f-3b5d-4f60-8e7a-1c2b3d4e5f60")


def quota_set_id(project_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, project_id)


class QuotaExceeded(Forbidden):
    """Nova's ``TooManyInstances``/``OverQuota`` (403)."""

    def __init__(self, resources: list[str], requested: int, used: int, allowed: int
                 ) -> None:
        names = ", ".join(resources)
        super().__init__(f"Quota exceeded for {names}: Requested {requested}, but already "
                         f"used {used} of {allowed} {names}")


def check_usage(limits: Mapping[str, int], used: Mapping[str, int],
                wanted: Mapping[str, int]) -> None:
    """:class:`QuotaExceeded` when adding ``wanted`` to ``used`` goes over ``limits``
    (the first resource over, in Nova's order: instances, cores, ram)."""
    for resource in ("instances", "cores", "ram", "key_pairs"):
        add = wanted.get(resource, 0)
        limit = limits.get(resource, UNLIMITED)
        if add > 0 and limit != UNLIMITED and used.get(resource, 0) + add > limit:
            raise QuotaExceeded([resource], add, used.get(resource, 0), limit)


def allowed_count(limits: Mapping[str, int], used: Mapping[str, int],
                  per_server: Mapping[str, int], wanted: int) -> int:
    """How many of ``wanted`` servers, each using ``per_server`` (``instances``: 1 for a
    new server), fit the limits."""
    fits = wanted
    for resource in SERVER_RESOURCES:
        limit = limits.get(resource, UNLIMITED)
        each = per_server.get(resource, 0)
        if limit == UNLIMITED or each <= 0:
            continue
        fits = min(fits, max(limit - used.get(resource, 0), 0) // each)
    return fits


def admissible(limits: Mapping[str, int], used: Mapping[str, int],
               each: Mapping[str, int], count: int, min_count: int) -> int:
    """How many of ``count`` requests, each adding ``each``, the limits admit: all that
    fit when that is at least ``min_count`` (Nova creates as many servers as fit), else
    :class:`QuotaExceeded` naming the first resource that ``count`` of them exceed."""
    fits = allowed_count(limits, used, each, count)
    if fits >= min_count:
        return min(fits, count)
    check_usage(limits, used, {resource: n * count for resource, n in each.items()})
    raise AssertionError("fewer fit than asked, yet nothing is over")  # pragma: no cover


def check_limits(values: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, int]:
    """Limits as integers: each a known name, an integer (or its digits) from -1 up."""
    checked: dict[str, int] = {}
    for name, value in values.items():
        if name not in allowed:
            raise BadRequest("Additional properties are not allowed "
                             f"('{name}' was unexpected)")
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value.strip())
        if number is None:
            raise BadRequest(f"Invalid input for field/attribute {name}. Value: {value}. "
                             f"{value!r} is not valid under any of the given schemas")
        if not UNLIMITED <= number <= 0x7FFFFFFF:
            raise BadRequest(f"Invalid input for field/attribute {name}. Value: {value}. "
                             f"{number} is {'less' if number < 0 else 'greater'} than the "
                             f"{'minimum of -1' if number < 0 else 'maximum of 2147483647'}")
        checked[name] = number
    return checked


class QuotaSet(Aggregate):
    class Event(RequestEvent):
        pass

    class Started(Aggregate.Created, Event):
        """The first change of a project's limits."""

        quota_project_id: str

        def apply(self, quota: QuotaSet) -> None:
            quota.quota_project_id = self.quota_project_id
            quota.limits = {}

    class LimitsSet(Event):
        """An administrator set these limits (the others stay as they were)."""

        limits: dict[str, int]

        def apply(self, quota: QuotaSet) -> None:
            quota.limits = {**quota.limits, **self.limits}

    class Reverted(Event):
        """Back to the defaults."""

        def apply(self, quota: QuotaSet) -> None:
            quota.limits = {}

    class Admitted(Event):
        """A request that adds to the project's counted usage (servers created, a
        resize to a larger flavor) was checked against the limits and let through:
        ``requested`` is what it adds, ``used`` the usage it was checked against.

        Recorded in the same transaction as the request's own events, so two requests
        of one project cannot both be admitted against the same usage: the second's
        save conflicts on this aggregate's version, and it is decided again against
        the usage that now includes the first. Changes no limit."""

        requested: dict[str, int]
        used: dict[str, int]

        def apply(self, quota: QuotaSet) -> None:
            pass

    quota_project_id: str
    limits: dict[str, int]

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Started.apply`."""

    @classmethod
    def start(cls, ctx: Context, at: datetime, project_id: str) -> QuotaSet:
        return cls._create(cls.Started, id=quota_set_id(project_id), timestamp=at,
                           **ctx.fields(), quota_project_id=project_id)

    def set_limits(self, ctx: Context, at: datetime, limits: dict[str, int]) -> None:
        self.trigger_event(self.LimitsSet, timestamp=at, **ctx.fields(), limits=limits)

    def revert(self, ctx: Context, at: datetime) -> None:
        self.trigger_event(self.Reverted, timestamp=at, **ctx.fields())

    def admit(self, ctx: Context, at: datetime, requested: Mapping[str, int],
              used: Mapping[str, int]) -> None:
        self.trigger_event(self.Admitted, timestamp=at, **ctx.fields(),
                           requested=dict(requested), used=dict(used))



#: the quota class whose limits are every project's defaults (Nova's ``default``)
DEFAULT_CLASS = "default"
_CLASS_NAMESPACE = uuid.UUID("5d1e7f2a-8c3b-4a6d-9e0f-1b2c3d4e5f70")


def quota_class_id(name: str) -> uuid.UUID:
    return uuid.uuid5(_CLASS_NAMESPACE, name)


class QuotaClass(Aggregate):
    """A named set of limits (Nova's ``os-quota-class-sets``). The ``default`` class's
    limits replace the built-in defaults for every project; other classes are kept and
    shown but apply to nothing (as in Nova)."""

    class Event(RequestEvent):
        pass

    class Started(Aggregate.Created, Event):
        """The first change of a class's limits."""

        quota_class: str

        def apply(self, quota: QuotaClass) -> None:
            quota.quota_class = self.quota_class
            quota.limits = {}

    class LimitsSet(Event):
        """An administrator set these limits of the class (the others stay as they
        were)."""

        limits: dict[str, int]

        def apply(self, quota: QuotaClass) -> None:
            quota.limits = {**quota.limits, **self.limits}

    quota_class: str
    limits: dict[str, int]

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Started.apply`."""

    @classmethod
    def start(cls, ctx: Context, at: datetime, name: str) -> QuotaClass:
        return cls._create(cls.Started, id=quota_class_id(name), timestamp=at,
                           **ctx.fields(), quota_class=name)

    def set_limits(self, ctx: Context, at: datetime, limits: dict[str, int]) -> None:
        self.trigger_event(self.LimitsSet, timestamp=at, **ctx.fields(), limits=limits)


__all__ = ["COUNTED", "DEFAULTS", "DEFAULT_CLASS", "INJECTED", "NETWORK", "SERVER_RESOURCES",
           "UNLIMITED", "QuotaClass", "QuotaExceeded", "QuotaSet", "admissible",
           "allowed_count", "check_limits", "check_usage", "quota_class_id", "quota_set_id"]
