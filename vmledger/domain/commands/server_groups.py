"""Server group commands: create (within the project's ``server_groups`` quota) and
delete, and finding the group a new server joins."""

from __future__ import annotations

import uuid

from eventsourcing.domain import Aggregate

from vmledger.domain import quota as quotas
from vmledger.domain import server_group as groups
from vmledger.domain.commands.base import Deps
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork
from vmledger.domain.errors import BadRequest, Forbidden, NotFound
from vmledger.domain.server import Context


class ServerGroupCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def create(self, ctx: Context, *, name: object, policy: object, rules: object = None
               ) -> CommandResult:
        """A new group in the caller's project; ``details["group_id"]``."""
        checked_name, checked_policy, checked_rules = groups.check_group(name, policy, rules)
        if ctx.project_id is None or ctx.user_id is None:
            raise BadRequest("A server group is created on behalf of a user and a project")
        project_id = ctx.project_id
        details: dict[str, str] = {}

        def decide(uow: UnitOfWork) -> Aggregate:
            limit = self.deps.reads.project_limits(project_id)["server_groups"]
            if limit != quotas.UNLIMITED and self.deps.reads.server_group_count(
                    project_id) >= limit:
                raise Forbidden("Quota exceeded, too many server groups.")
            details.setdefault("group_id", str(self.deps.new_id()))
            return groups.ServerGroup.create(ctx, self.deps.clock.now(),
                                             group_id=uuid.UUID(details["group_id"]),
                                             name=checked_name, policy=checked_policy,
                                             rules=checked_rules)
        return self.deps.pipeline.execute(ctx, decide, what="The server group",
                                          details=details)

    def delete(self, ctx: Context, group_id: str) -> CommandResult:
        """Delete a group (its project's members or an admin); its servers stay."""

        def decide(uow: UnitOfWork) -> Aggregate:
            group = find_group(uow, ctx, group_id)
            if group is None:
                raise NotFound(f"Server group {group_id} could not be found.")
            group.delete(ctx, self.deps.clock.now())
            return group
        return self.deps.pipeline.execute(ctx, decide, what=f"Server group {group_id}")


def find_group(uow: UnitOfWork, ctx: Context, group_id: object) -> groups.ServerGroup | None:
    """The live group, if the caller may see it (its project's, or any for admins)."""
    try:
        gid = uuid.UUID(str(group_id))
    except ValueError:
        return None
    found = uow.get(gid)
    if not isinstance(found, groups.ServerGroup) or found.deleted:
        return None
    if not ctx.is_admin and found.owner_project_id != ctx.project_id:
        return None
    return found


def group_for_create(uow: UnitOfWork, ctx: Context, group_id: str) -> groups.ServerGroup:
    """The group of the caller's own project a new server joins (else 400, as Nova)."""
    group = find_group(uow, ctx, group_id)
    if group is None or group.owner_project_id != ctx.project_id:
        raise BadRequest(f"Instance group {group_id} could not be found.")
    return group
