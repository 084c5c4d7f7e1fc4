"""Server groups (Nova's ``os-server-groups``): placement policies for sets of servers.

A group is an aggregate of its own (``Created``, ``Deleted``) holding a name, one policy
and its rules. Membership is not recorded on the group: a server created into a group
says so in its own ``Requested`` event (``attributes["server_group"]``), and the read
models derive each group's members from the servers that are not deleted — so deleting a
server leaves its group, as in Nova.

Placement honours the policy over the service's hosts: ``affinity`` puts members on the
members' host; ``anti-affinity`` on a host with fewer than ``max_server_per_host``
members (default 1), and when no host has room the server fails to schedule (ERROR,
``No valid host was found``), as Nova's scheduler answers; the ``soft-`` policies
prefer the same but never fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from vmledger.domain.errors import BadRequest
from vmledger.domain.server import Context, RequestEvent

AFFINITY = "affinity"
ANTI_AFFINITY = "anti-affinity"
SOFT_AFFINITY = "soft-affinity"
SOFT_ANTI_AFFINITY = "soft-anti-affinity"
POLICIES = (AFFINITY, ANTI_AFFINITY, SOFT_AFFINITY, SOFT_ANTI_AFFINITY)
NO_VALID_HOST = "No valid host was found. There are not enough hosts available."


def check_group(name: object, policy: object, rules: object) -> tuple[str, str, dict[str, int]]:
    """A group's name, policy and rules, validated as Nova's schema does."""
    if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
        raise BadRequest(f"Invalid input for field/attribute name. Value: {name}. "
                         "A name of 1 to 255 characters, without leading or trailing "
                         "spaces, is required")
    if policy not in POLICIES:
        raise BadRequest(f"Invalid input for field/attribute policy. Value: {policy}. "
                         f"{policy!r} is not one of {list(POLICIES)}")
    assert isinstance(policy, str)
    if rules is None:
        rules = {}
    if not isinstance(rules, dict):
        raise BadRequest(f"Invalid input for field/attribute rules. Value: {rules}. "
                         f"{rules!r} is not of type 'object'")
    if rules and policy != ANTI_AFFINITY:
        raise BadRequest("Only anti-affinity policy supports rules.")
    checked: dict[str, int] = {}
    for key, value in rules.items():
        if key != "max_server_per_host":
            raise BadRequest("Invalid input for field/attribute rules. Additional "
                             f"properties are not allowed ('{key}' was unexpected)")
        number = int(value) if isinstance(value, str) and value.isdigit() else value
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise BadRequest("Invalid input for field/attribute max_server_per_host. "
                             f"Value: {value}. It must be a positive integer")
        checked[key] = number
    return name, policy, checked


def place(policy: str, rules: Mapping[str, int], member_hosts: Sequence[str],
          hosts: Sequence[str], preferred: str) -> str | None:
    """The host a new member goes to (``preferred`` when the policy leaves a choice), or
    None when the policy cannot be met (hard anti-affinity with every host full)."""
    counts = {h: member_hosts.count(h) for h in hosts}
    if policy in (AFFINITY, SOFT_AFFINITY):
        used = [h for h in hosts if counts[h]]
        return used[0] if used else preferred
    room = int(rules.get("max_server_per_host", 1))
    free = sorted(hosts, key=lambda h: (counts[h], h != preferred))
    if policy == ANTI_AFFINITY:
        fitting = [h for h in free if counts[h] < room]
        return fitting[0] if fitting else None
    return free[0]  # soft anti-affinity: the emptiest host


class ServerGroup(Aggregate):
    class Event(RequestEvent):
        pass

    class Created(Aggregate.Created, Event):
        name: str
        policy: str
        rules: dict[str, Any]
        owner_project_id: str
        owner_user_id: str

        def apply(self, group: ServerGroup) -> None:
            group.name = self.name
            group.policy = self.policy
            group.rules = dict(self.rules)
            group.owner_project_id = self.owner_project_id
            group.owner_user_id = self.owner_user_id
            group.deleted = False

    class Deleted(Event):
        def apply(self, group: ServerGroup) -> None:
            group.deleted = True

    class MembersPlaced(Event):
        """The servers of one create request joined the group, on these hosts (server
        id → host; None where no host could take it). Each also names the group in its
        own ``Requested`` event; this one is recorded in the same transaction so that
        two requests placing members at once cannot both decide against the same
        members: the second's save conflicts on the group's version, and it is placed
        again, seeing the first's."""

        members: dict[str, str | None]

        def apply(self, group: ServerGroup) -> None:
            pass

    name: str
    policy: str
    rules: dict[str, Any]
    owner_project_id: str
    owner_user_id: str
    deleted: bool

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Created.apply`."""

    @classmethod
    def create(cls, ctx: Context, at: datetime, *, group_id: uuid.UUID, name: str,
               policy: str, rules: dict[str, int]) -> ServerGroup:
        return cls._create(cls.Created, id=group_id, timestamp=at, **ctx.fields(),
                           name=name, policy=policy, rules=rules,
                           owner_project_id=ctx.project_id or "",
                           owner_user_id=ctx.user_id or "")

    def delete(self, ctx: Context, at: datetime) -> None:
        self.trigger_event(self.Deleted, timestamp=at, **ctx.fields())

    def place_members(self, ctx: Context, at: datetime, members: dict[str, str | None]
                      ) -> None:
        self.trigger_event(self.MembersPlaced, timestamp=at, **ctx.fields(),
                           members=dict(members))


__all__ = ["AFFINITY", "ANTI_AFFINITY", "NO_VALID_HOST", "POLICIES", "SOFT_AFFINITY",
           "SOFT_ANTI_AFFINITY", "ServerGroup", "check_group", "place"]
