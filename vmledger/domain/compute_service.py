"""A host's compute service as administrators set it (Nova's ``PUT /os-services``):
disabled (with a reason) or enabled, forced down or not. Event-sourced: the ledger says
who took a host out of service, when and why.

A disabled or forced-down host takes no new servers: creates are placed on the other
hosts, and with none left they fail to schedule (ERROR, ``No valid host was found``),
as Nova's scheduler answers. Servers already there are not touched.

An administrator can also delete a host's service (a host taken out of the cloud, with
no servers left on it): it is no longer listed, until its agent reports again (as
Nova's compute service registers itself again when it starts).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from eventsourcing.domain import Aggregate

from vmledger.domain.server import Context, RequestEvent

_NAMESPACE = uuid.UUID("7e2f9c4a-1b3d-4e5f-8a6b-0c1d2e3f4a5b")


def service_record_id(host: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, host)


class ComputeService(Aggregate):
    class Event(RequestEvent):
        pass

    class Registered(Aggregate.Created, Event):
        """The first administrative change of a host's service."""

        host: str

        def apply(self, service: ComputeService) -> None:
            service.host = self.host
            service.disabled = False
            service.disabled_reason = None
            service.forced_down = False
            service.deleted = False

    class StatusSet(Event):
        disabled: bool
        disabled_reason: str | None

        def apply(self, service: ComputeService) -> None:
            service.disabled = self.disabled
            service.disabled_reason = self.disabled_reason if self.disabled else None
            service.deleted = False

    class ForcedDownSet(Event):
        forced_down: bool

        def apply(self, service: ComputeService) -> None:
            service.forced_down = self.forced_down
            service.deleted = False

    class Deleted(Event):
        """An administrator deleted the host's service (Nova's ``DELETE
        /os-services/{id}``): its settings are gone with it."""

        def apply(self, service: ComputeService) -> None:
            service.deleted = True
            service.disabled = False
            service.disabled_reason = None
            service.forced_down = False

    host: str
    disabled: bool
    disabled_reason: str | None
    forced_down: bool
    deleted: bool

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Registered.apply`."""

    @classmethod
    def register(cls, ctx: Context, at: datetime, host: str) -> ComputeService:
        return cls._create(cls.Registered, id=service_record_id(host), timestamp=at,
                           **ctx.fields(), host=host)

    def set_status(self, ctx: Context, at: datetime, *, disabled: bool,
                   reason: str | None) -> None:
        self.trigger_event(self.StatusSet, timestamp=at, **ctx.fields(), disabled=disabled,
                           disabled_reason=reason)

    def set_forced_down(self, ctx: Context, at: datetime, forced_down: bool) -> None:
        self.trigger_event(self.ForcedDownSet, timestamp=at, **ctx.fields(),
                           forced_down=forced_down)

    def delete(self, ctx: Context, at: datetime) -> None:
        self.trigger_event(self.Deleted, timestamp=at, **ctx.fields())


__all__ = ["ComputeService", "service_record_id"]
