"""A host's claims: each placement of servers on a host whose room is limited, recorded
in the same transaction as the request that places them.

Which hosts have room is read from the allocations read model when a request is
decided. Two requests deciding at the same moment (from two projects, or two API
processes) would both see the host's last room free and both take it. Recording the
placement on the host's own aggregate serialises them: the second save conflicts on
its version, and the request is decided again against the room that now counts the
first (Nova's placement does the same with its resource providers' generations).

The events say what was placed and what room the decision saw; they change no state the
read models use (the allocations follow the servers' own events).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime

from eventsourcing.domain import Aggregate

from vmledger.domain.server import Context, RequestEvent

_NAMESPACE = uuid.UUID("3c5a7e91-2d4b-4f6a-8b1c-9e0d7f2a4b6c")


def host_claims_id(host: str) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, host)


class HostClaims(Aggregate):
    class Event(RequestEvent):
        pass

    class Started(Aggregate.Created, Event):
        """The first placement on the host."""

        host: str

        def apply(self, claims: HostClaims) -> None:
            claims.host = self.host

    class Claimed(Event):
        """Servers placed on the host: what each takes of it (``vcpus``, ``ram`` MB,
        ``disk`` GB), and the room the decision saw."""

        servers: dict[str, dict[str, int]]
        room: dict[str, float]

        def apply(self, claims: HostClaims) -> None:
            pass

    host: str

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Started.apply`."""

    @classmethod
    def start(cls, ctx: Context, at: datetime, host: str) -> HostClaims:
        return cls._create(cls.Started, id=host_claims_id(host), timestamp=at,
                           **ctx.fields(), host=host)

    def claim(self, ctx: Context, at: datetime, servers: Mapping[str, Mapping[str, int]],
              room: Mapping[str, float]) -> None:
        self.trigger_event(self.Claimed, timestamp=at, **ctx.fields(),
                           servers={s: dict(n) for s, n in servers.items()},
                           room=dict(room))


__all__ = ["HostClaims", "host_claims_id"]
