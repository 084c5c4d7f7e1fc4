"""Flavors administrators make and change (Nova's ``os-flavor-manage`` and extra specs),
event-sourced like servers.

A flavor record is an aggregate whose id is derived from the flavor id, so two creates
of one id race on one aggregate and the loser gets a conflict. Records override the
catalog's configured flavors by id: changing a configured flavor's extra specs or
description first adopts it (``Created`` with its configured fields), deleting one
records the deletion. Servers keep the copy of the flavor they were built with, so a
deleted or changed flavor changes no server.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from vmledger.domain.catalog import Flavor
from vmledger.domain.errors import BadRequest, Conflict, NotFound
from vmledger.domain.server import Context, RequestEvent

_NAMESPACE = uuid.UUID("2d7c5b1e-9f3a-4c8d-b6e2-7a1f0c9d8e53")
_FLAVOR_ID = re.compile(r"^(?! )[a-zA-Z0-9. _-]+(?<! )$")
_SPEC_KEY = re.compile(r"^[a-zA-Z0-9-_:. /]{1,255}$")


def flavor_record_id(flavor_id: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, flavor_id)


def _invalid(field: str, value: object, reason: str) -> BadRequest:
    return BadRequest(f"Invalid input for field/attribute {field}. Value: {value}. {reason}")


def _count(fields: dict[str, Any], key: str, minimum: int, default: int | None = None) -> int:
    value = fields.get(key, default)
    if value is None:
        raise _invalid("flavor", fields, f"'{key}' is a required property")
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not minimum <= number <= 0x7FFFFFFF:
        raise _invalid(key, value, f"{value!r} is not an integer from {minimum} to "
                                   "2147483647")
    return number


def check_flavor(fields: dict[str, Any], new_id: str) -> Flavor:
    """A new flavor from Nova's create body (``name``, ``id``, ``ram``, ``vcpus``,
    ``disk``, ``OS-FLV-EXT-DATA:ephemeral``, ``swap``, ``rxtx_factor``,
    ``os-flavor-access:is_public``, ``description``); an ``id`` missing, null or
    ``auto`` is ``new_id``."""
    name = fields.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
        raise _invalid("name", name, "a name of 1 to 255 characters, without leading or "
                                     "trailing spaces, is required")
    flavor_id = fields.get("id")
    if flavor_id is None or flavor_id == "auto":
        flavor_id = new_id
    if isinstance(flavor_id, int) and not isinstance(flavor_id, bool):
        flavor_id = str(flavor_id)
    if not isinstance(flavor_id, str) or not 1 <= len(flavor_id) <= 255 or not (
            _FLAVOR_ID.match(flavor_id)):
        raise _invalid("id", flavor_id, "an id of letters, digits, '.', ' ', '_' and '-' "
                                        "is required")
    rxtx = fields.get("rxtx_factor", 1.0)
    try:
        factor = float(rxtx) if not isinstance(rxtx, bool) else -1.0
    except (TypeError, ValueError):
        factor = -1.0
    if not 0 < factor <= 3.40282e38:
        raise _invalid("rxtx_factor", rxtx, f"{rxtx!r} is not a number above 0")
    public = fields.get("os-flavor-access:is_public", True)
    if isinstance(public, str) and public.strip().lower() in ("true", "false", "1", "0",
                                                              "yes", "no", "on", "off"):
        public = public.strip().lower() in ("true", "1", "yes", "on")
    if not isinstance(public, bool):
        raise _invalid("os-flavor-access:is_public", public,
                       f"{public!r} is not of type 'boolean'")
    description = fields.get("description")
    if description is not None and (not isinstance(description, str)
                                    or len(description) > 65535):
        raise _invalid("description", description, "a text of at most 65535 characters "
                                                   "or null is required")
    return Flavor(id=flavor_id, name=name, vcpus=_count(fields, "vcpus", 1),
                  ram=_count(fields, "ram", 1), disk=_count(fields, "disk", 0),
                  ephemeral=_count(fields, "OS-FLV-EXT-DATA:ephemeral", 0, 0),
                  swap=_count(fields, "swap", 0, 0), is_public=public,
                  description=description, rxtx_factor=factor)


def check_extra_specs(specs: object) -> dict[str, str]:
    """Nova's extra specs: keys of ``[a-zA-Z0-9-_:. /]`` (1-255), values strings (numbers
    and booleans are kept as text) of at most 255 characters."""
    if not isinstance(specs, dict):
        raise _invalid("extra_specs", specs, f"{specs!r} is not of type 'object'")
    checked: dict[str, str] = {}
    for key, value in specs.items():
        if not isinstance(key, str) or not _SPEC_KEY.match(key):
            raise _invalid("extra_specs", specs, f"{key!r} is not a valid extra spec key")
        if isinstance(value, int | float | str):  # booleans too: Nova keeps "True"
            text = str(value)
        else:
            raise _invalid(key, value, f"{value!r} is not of type 'string', 'number', "
                                       "'boolean'")
        if len(text) > 255:
            raise _invalid(key, value, "the value is longer than 255 characters")
        checked[key] = text
    return checked


class FlavorRecord(Aggregate):
    class Event(RequestEvent):
        pass

    class Created(Aggregate.Created, Event):
        """A new flavor, or a configured one adopted before its first change."""

        flavor: dict[str, Any]
        adopted: bool

        def apply(self, record: FlavorRecord) -> None:
            record.flavor = dict(self.flavor)
            record.deleted = False
            record.access = []

    class ExtraSpecsSet(Event):
        extra_specs: dict[str, str]

        def apply(self, record: FlavorRecord) -> None:
            specs = {**record.flavor.get("extra_specs", {}), **self.extra_specs}
            record.flavor = {**record.flavor, "extra_specs": specs}

    class ExtraSpecDeleted(Event):
        key: str

        def apply(self, record: FlavorRecord) -> None:
            specs = dict(record.flavor.get("extra_specs", {}))
            specs.pop(self.key, None)
            record.flavor = {**record.flavor, "extra_specs": specs}

    class DescriptionChanged(Event):
        description: str | None

        def apply(self, record: FlavorRecord) -> None:
            record.flavor = {**record.flavor, "description": self.description}

    class AccessAdded(Event):
        """A project may use this private flavor."""

        tenant: str

        def apply(self, record: FlavorRecord) -> None:
            record.access = [*getattr(record, "access", []), self.tenant]

    class AccessRemoved(Event):
        tenant: str

        def apply(self, record: FlavorRecord) -> None:
            record.access = [p for p in getattr(record, "access", []) if p != self.tenant]

    class Deleted(Event):
        def apply(self, record: FlavorRecord) -> None:
            record.deleted = True

    flavor: dict[str, Any]
    deleted: bool
    #: the projects that may use the flavor when it is private (Nova's flavor access)
    access: list[str]

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Created.apply`."""

    @classmethod
    def make(cls, ctx: Context, at: datetime, flavor: Flavor, *, adopted: bool = False
             ) -> FlavorRecord:
        return cls._create(cls.Created, id=flavor_record_id(flavor.id), timestamp=at,
                           **ctx.fields(), flavor=flavor.as_dict(), adopted=adopted)

    def set_extra_specs(self, ctx: Context, at: datetime, specs: dict[str, str]) -> None:
        self.trigger_event(self.ExtraSpecsSet, timestamp=at, **ctx.fields(),
                           extra_specs=specs)

    def delete_extra_spec(self, ctx: Context, at: datetime, key: str) -> None:
        self.trigger_event(self.ExtraSpecDeleted, timestamp=at, **ctx.fields(), key=key)

    def change_description(self, ctx: Context, at: datetime, description: str | None
                           ) -> None:
        self.trigger_event(self.DescriptionChanged, timestamp=at, **ctx.fields(),
                           description=description)

    def add_access(self, ctx: Context, at: datetime, tenant: str) -> None:
        if self.flavor.get("is_public", True):
            raise Conflict("Can not add access to a public flavor.")
        if tenant in self.access:
            raise Conflict(f"Flavor access already exists for flavor {self.flavor['id']} "
                           f"and project {tenant} combination.")
        self.trigger_event(self.AccessAdded, timestamp=at, **ctx.fields(), tenant=tenant)

    def remove_access(self, ctx: Context, at: datetime, tenant: str) -> None:
        if tenant not in self.access:
            raise NotFound(f"Flavor access not found for {self.flavor['id']} / {tenant} "
                           "combination.")
        self.trigger_event(self.AccessRemoved, timestamp=at, **ctx.fields(), tenant=tenant)

    def delete(self, ctx: Context, at: datetime) -> None:
        self.trigger_event(self.Deleted, timestamp=at, **ctx.fields())


__all__ = ["FlavorRecord", "check_extra_specs", "check_flavor", "flavor_record_id"]
