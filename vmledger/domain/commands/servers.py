"""Server commands outside the lifecycle's actions: create (one or many servers in one
request), update, metadata and tags."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain import network
from vmledger.domain import quota as quotas
from vmledger.domain import server_group as groups
from vmledger.domain.catalog import Flavor, Image
from vmledger.domain.commands.base import Deps, load_server
from vmledger.domain.commands.images import ImageCommands
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork, idempotency
from vmledger.domain.commands.quotas import QuotaCommands
from vmledger.domain.commands.server_groups import group_for_create
from vmledger.domain.commands.validation import (
    MAX_TAGS,
    UNLIMITED_ITEMS,
    check_description,
    check_metadata,
    check_metadata_count,
    check_name,
    check_tag,
)
from vmledger.domain.errors import BadRequest, Forbidden, NotFound
from vmledger.domain.scheduling import GroupPolicy, flavor_need
from vmledger.domain.server import Context, Server

#: servers one create request may ask for (Nova bounds it by quota)
MAX_SERVERS_PER_REQUEST = 100
#: the one availability zone every host is in (Nova's default ``default_availability_zone``)
ZONE = "nova"


def addresses(server_id: uuid.UUID) -> dict[str, Any]:
    """A stable fixed address and MAC for a server (the simulated network)."""
    return {network.NETWORK_NAME: [{"addr": network.fixed_ip(server_id), "version": 4,
                                    "OS-EXT-IPS:type": "fixed",
                                    "OS-EXT-IPS-MAC:mac_addr": network.mac_address(server_id)}]}


def image_fits(flavor: Flavor, image: Image) -> None:
    if flavor.ram < image.min_ram:
        raise BadRequest("Flavor's memory is too small for requested image.")
    if flavor.disk and flavor.disk < image.min_disk:
        raise BadRequest("Flavor's disk is too small for requested image.")


class ServerCommands:
    def __init__(self, deps: Deps, quotas: QuotaCommands, images: ImageCommands) -> None:
        self.deps = deps
        self.quotas = quotas
        self.images = images

    def create(self, ctx: Context, *, name: str, flavor: str | int, image: str,
               metadata: dict[str, str] | None = None, description: str | None = None,
               key_name: str | None = None, availability_zone: str | None = None,
               attributes: dict[str, Any] | None = None, idempotency_key: str | None = None,
               count: int = 1, min_count: int | None = None,
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
        :class:`~vmledger.domain.quota.QuotaExceeded`.
        """
        deps = self.deps
        check_name(name)
        if isinstance(count, bool) or not isinstance(count, int) or not (
                1 <= count <= MAX_SERVERS_PER_REQUEST):
            raise BadRequest(f"A request creates 1 to {MAX_SERVERS_PER_REQUEST} servers, "
                             f"not {count!r}")
        meta = check_metadata(metadata, limit=deps.metadata_limit(ctx.project_id))
        desc = check_description(description)
        if availability_zone is not None and availability_zone != ZONE:
            raise BadRequest("The requested availability zone is not available")
        chosen_flavor = deps.catalog.flavor(flavor)
        chosen_image, image_ref = self.images.image_for(image, ctx)
        image_fits(chosen_flavor, chosen_image)
        if ctx.project_id is None or ctx.user_id is None:
            raise BadRequest("A server is created on behalf of a user and a project")
        if min_count is not None and (isinstance(min_count, bool) or not isinstance(
                min_count, int) or not 1 <= min_count <= count):
            raise BadRequest(f"min_count must be 1 to {count}, not {min_count!r}")
        project_id = ctx.project_id
        each = {"instances": 1, "cores": chosen_flavor.vcpus, "ram": chosen_flavor.ram}
        if server_group:  # checked before anything is decided (400)
            server_group = str(group_for_create(deps.pipeline.unit_of_work(), ctx,
                                                server_group).id)
        payload: dict[str, Any] = {
            "name": name, "flavor": chosen_flavor.id, "image": chosen_image.id,
            "metadata": meta, "description": desc, "key_name": key_name,
            "availability_zone": availability_zone, "attributes": attributes}
        if count > 1:
            payload["count"] = count
        if server_group:
            payload["server_group"] = str(server_group)
        need = flavor_need(chosen_flavor)
        details: dict[str, Any] = {}

        def request(sid: uuid.UUID, index: int, total: int, host: str | None,
                    group: groups.ServerGroup | None) -> Server:
            attrs = dict(attributes or {})
            own_name = name if total == 1 else f"{name}-{index}"
            if total > 1 and attrs.get("hostname"):
                attrs["hostname"] = f"{attrs['hostname']}-{index}"
            if group is not None:
                attrs["server_group"] = str(group.id)
            server = Server.request(
                id=sid, ctx=ctx, at=deps.clock.now(), name=own_name,
                flavor=chosen_flavor.as_dict(), image=image_ref,
                host=host or deps.store.hosts[0], metadata=meta, description=desc,
                key_name=key_name, availability_zone=availability_zone or ZONE,
                addresses=addresses(sid), attributes=attrs)
            if host is None:  # the scheduler's answer: the server fails in ERROR
                server.fail(ctx, deps.clock.now(), power_state=0, rollback=False,
                            message=groups.NO_VALID_HOST, code=500, unplaced=True)
            return server

        def decide(uow: UnitOfWork) -> Server:
            total, quota = self.quotas.admit(ctx, uow, project_id, each, count=count,
                                             min_count=min_count)
            group: groups.ServerGroup | None = None
            policy: GroupPolicy | None = None
            if server_group:
                group = group_for_create(uow, ctx, server_group)  # fresh
                members = deps.reads.group_member_hosts(str(group.id))
                limit = deps.reads.project_limits(project_id)["server_group_members"]
                if limit != quotas.UNLIMITED and len(members) + total > limit:
                    raise Forbidden("Quota exceeded, too many servers in group")
                policy = GroupPolicy(group.policy, group.rules, members)
            ids = [deps.new_id() for _ in range(total)]
            placement = deps.scheduler.place(
                ctx, uow, [str(i) for i in ids], need, deps.reads.usable_hosts(),
                group=policy)
            made = [request(sid, index, total, host, group)
                    for index, (sid, host) in enumerate(zip(ids, placement.hosts,
                                                            strict=True), start=1)]
            uow.add(*made[1:], *placement.claims)
            details.clear()
            if total > 1:
                details["server_ids"] = [str(s.id) for s in made]
            if group is not None:  # recorded on the group too: racing placements conflict
                group.place_members(ctx, deps.clock.now(), {
                    str(s.id): (None if s.vm_state == lc.ERROR else s.host) for s in made})
                uow.add(group)
            if quota is not None:
                uow.add(quota)
            return made[0]

        return deps.pipeline.execute(
            ctx, decide, what="A host or quota this request needs", details=details,
            key=idempotency(idempotency_key, "create", payload),
            serialise=[deps.scheduler.lock(), self.quotas.lock(project_id)])

    def update(self, ctx: Context, server_id: str | uuid.UUID, *, name: str | None = None,
               description: object = ...) -> CommandResult:
        changes: dict[str, Any] = {}
        if name is not None:
            changes["name"] = check_name(name)
        if description is not ...:
            changes["description"] = check_description(description)

        def decide(uow: UnitOfWork) -> Server:
            server = load_server(uow, server_id, ctx)
            if changes:
                server.update(ctx, self.deps.clock.now(), changes)
            return server
        return self._run(ctx, server_id, decide)

    def set_metadata(self, ctx: Context, server_id: str | uuid.UUID, items: dict[str, str],
                     *, replace: bool = False) -> CommandResult:
        """Merge ``items`` into the server's metadata, or (``replace``) make them all of
        it. At most the project's ``metadata_items`` in all (Forbidden, as Nova)."""
        checked = check_metadata(items, limit=UNLIMITED_ITEMS)

        def decide(uow: UnitOfWork) -> Server:
            server = load_server(uow, server_id, ctx)
            merged = checked if replace else {**server.metadata, **checked}
            check_metadata_count(merged, limit=self.deps.metadata_limit(server.project_id))
            server.change_metadata(ctx, self.deps.clock.now(), merged)
            return server
        return self._run(ctx, server_id, decide)

    def delete_metadata(self, ctx: Context, server_id: str | uuid.UUID, key: str
                        ) -> CommandResult:
        """Remove one metadata item (NotFound when the server has no such key)."""

        def decide(uow: UnitOfWork) -> Server:
            server = load_server(uow, server_id, ctx)
            if key not in server.metadata:
                lc.check("delete_metadata", server.subject, is_admin=ctx.is_admin)
                raise NotFound("Metadata item was not found")
            server.change_metadata(ctx, self.deps.clock.now(),
                                   {k: v for k, v in server.metadata.items() if k != key},
                                   action="delete_metadata")
            return server
        return self._run(ctx, server_id, decide)

    def change_tags(self, ctx: Context, server_id: str | uuid.UUID, action: str, *,
                    tag: str | None = None, tags: Sequence[str] | None = None
                    ) -> CommandResult:
        """``update_tag`` (add ``tag``), ``update_tags`` (replace with ``tags``),
        ``delete_tag`` (remove ``tag``: NotFound when absent) or ``delete_tags``. The
        result's ``details["created"]`` says whether ``update_tag`` added the tag."""
        if action not in ("update_tag", "update_tags", "delete_tag", "delete_tags"):
            raise BadRequest(f"There is no such tag operation: {action}")
        wanted = [check_tag(t) for t in (tags or [])]
        one = check_tag(tag) if action in ("update_tag", "delete_tag") else None
        details: dict[str, Any] = {}

        def decide(uow: UnitOfWork) -> Server:
            server = load_server(uow, server_id, ctx)
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
            server.change_tags(ctx, self.deps.clock.now(), new, action=action)
            return server
        return self._run(ctx, server_id, decide, details=details)

    def _run(self, ctx: Context, server_id: str | uuid.UUID, decide: Any,
             details: dict[str, Any] | None = None) -> CommandResult:
        return self.deps.pipeline.execute(ctx, decide, what="The server",
                                          subject=str(server_id), details=details)
