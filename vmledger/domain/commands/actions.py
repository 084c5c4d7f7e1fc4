"""The lifecycle's actions on a server (``reboot``, ``resize``, ``evacuate``…), each a
handler: it checks its parameters and returns the decision the pipeline runs.

:data:`HANDLERS` is keyed by the names :meth:`ActionCommands.act` takes: the lifecycle
table's rows, and the few request names that choose between rows (``reboot`` by its
type, ``delete`` soft or not, ``shelve`` with or without offload, ``evacuate`` stopped
or not). Placing handlers (resize, evacuate, unshelve) run under the scheduler's lock,
admitting ones (resize) under the project's quota lock too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain import server_group as groups
from vmledger.domain.catalog import Flavor
from vmledger.domain.commands.base import Deps, load_server
from vmledger.domain.commands.images import ImageCommands
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork, idempotency
from vmledger.domain.commands.quotas import QuotaCommands
from vmledger.domain.commands.servers import image_fits
from vmledger.domain.commands.validation import (
    NAME_MAX,
    UNLIMITED_ITEMS,
    check_description,
    check_metadata,
    check_metadata_count,
    check_name,
    no_parameters,
)
from vmledger.domain.errors import BadRequest, Conflict, Forbidden, ImageNotFound, NotFound
from vmledger.domain.scheduling import flavor_need
from vmledger.domain.server import Context, Server

Decision = Callable[[UnitOfWork], Server | None]


@dataclass(frozen=True)
class Request:
    """One action request as a handler sees it."""

    ctx: Context
    server_id: str
    params: dict[str, Any]
    #: what the decision adds to the result (``details["image_id"]``…)
    details: dict[str, Any]


@dataclass(frozen=True)
class Handler:
    build: Callable[[ActionCommands, Request], Decision]
    #: it places the server on a host (serialised with other placements)
    places: bool = False
    #: it may grow the project's usage (serialised with the project's other requests)
    admits: bool = False


class ActionCommands:
    def __init__(self, deps: Deps, quotas: QuotaCommands, images: ImageCommands) -> None:
        self.deps = deps
        self.quotas = quotas
        self.images = images

    def act(self, ctx: Context, server_id: str | uuid.UUID, action: str, *,
            idempotency_key: str | None = None, **params: Any) -> CommandResult:
        """Request a lifecycle action by name (``pause``, ``reboot``, ``resize``…)."""
        handler = HANDLERS.get(action)
        if handler is None:
            raise BadRequest(f"There is no such action: {action}")
        key = idempotency(idempotency_key, action, {"server": str(server_id), **params})
        request = Request(ctx, str(server_id), dict(params), {})
        decide = handler.build(self, request)
        serialise = []
        if handler.places:
            serialise.append(self.deps.scheduler.lock())
        if handler.admits:
            serialise.append(self.quotas.lock(ctx.project_id))
        return self.deps.pipeline.execute(ctx, decide, what="The server",
                                          subject=str(server_id), key=key,
                                          details=request.details, serialise=serialise)

    def steer_migration(self, ctx: Context, server_id: str | uuid.UUID, request_id: str,
                        steer: str, *, statuses: frozenset[str]) -> CommandResult:
        """Ask the live migration ``request_id`` of a server to ``abort`` or to
        ``force_complete`` (administrators): it must be the server's live migration in
        flight, in one of ``statuses`` (the microversion says which), else a 400 as
        Nova's; asked again, nothing more is recorded."""
        if steer not in ("abort", "force_complete"):
            raise BadRequest(f"Unknown migration action {steer}")

        def decide(uow: UnitOfWork) -> Server | None:
            server = load_server(uow, server_id, ctx)
            if not ctx.is_admin:
                raise Forbidden("Policy doesn't allow os_compute_api:servers:migrations:"
                                f"{'delete' if steer == 'abort' else 'force_complete'}"
                                " to be performed.")
            pending = server.pending or {}
            if (server.pending_action != "live_migrate"
                    or server.pending_request_id != request_id):
                raise BadRequest(f"The migration of instance {server.id} is not in"
                                 " progress: it cannot be "
                                 f"{'aborted' if steer == 'abort' else 'forced to complete'}.")
            status = server.migration_status
            if status not in statuses:
                raise BadRequest(f"Migration state of instance {server.id} is {status}."
                                 f" Cannot {steer} while the migration is in this state.")
            if pending.get("steer") == steer:
                return None
            server.steer_migration(ctx, self.now(), steer)
            return server
        return self.deps.pipeline.execute(ctx, decide, what="The server",
                                          subject=str(server_id), key=None, details={})

    def now(self) -> datetime:
        return self.deps.clock.now()

    def load(self, uow: UnitOfWork, request: Request) -> Server:
        return load_server(uow, request.server_id, request.ctx)


# --- the handlers --------------------------------------------------------------------
def _simple(action: str) -> Handler:
    def build(commands: ActionCommands, request: Request) -> Decision:
        no_parameters(action, request.params)

        def decide(uow: UnitOfWork) -> Server:
            server = commands.load(uow, request)
            server.request_action(action, request.ctx, commands.now())
            return server
        return decide
    return Handler(build)


def _reboot(kind: str | None = None) -> Handler:
    def build(commands: ActionCommands, request: Request) -> Decision:
        params = dict(request.params)
        chosen = str(kind or params.pop("type", "SOFT")).upper()
        params.pop("type", None)
        if chosen not in ("SOFT", "HARD") or params:
            raise BadRequest(f"Invalid input for field/attribute type. Value: {chosen}. "
                             "'SOFT' or 'HARD' expected.")
        action = "reboot_hard" if chosen == "HARD" else "reboot_soft"

        def decide(uow: UnitOfWork) -> Server:
            server = commands.load(uow, request)
            server.request_action(action, request.ctx, commands.now(),
                                  params={"type": chosen})
            return server
        return decide
    return Handler(build)


def _resize(commands: ActionCommands, request: Request) -> Decision:
    """A new flavor: on the server's own host when it has room for both flavors (and
    ``allow_resize_to_same_host``, the default), else on another host the scheduler
    picks, where the server then moves as in a cold migration."""
    params = dict(request.params)
    ref = params.pop("flavor", None)
    if ref is None or params:
        raise BadRequest("Resize requires a flavor (flavorRef) and nothing else")
    ctx, deps = request.ctx, commands.deps

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        lc.check("resize", server.subject, is_admin=ctx.is_admin)
        new = deps.catalog.flavor(ref)
        if new.id == server.flavor.get("id"):
            raise BadRequest("When resizing, instances must change flavor!")
        same = deps.store.allow_resize_to_same_host
        others = [h for h in deps.reads.usable_hosts() if h != server.host]
        # its own host holds both flavors while it waits for confirm or revert
        placement = deps.scheduler.place(
            ctx, uow, [str(server.id)], flavor_need(new),
            [server.host, *others] if same else others,
            prefer=server.host if same else None)
        if not placement.placed:
            # Nova's scheduler: no host for the new flavor. The server is left as it
            # was, the action failed.
            server.request_action("resize", ctx, commands.now(),
                                  params={"flavor": new.as_dict()},
                                  changes={"migration_status": "pre-migrating"})
            server.fail(ctx, commands.now(), power_state=server.power_state,
                        rollback=True, message=groups.NO_VALID_HOST, code=500)
            return server
        growth = {"cores": new.vcpus - int(server.flavor.get("vcpus") or 0),
                  "ram": new.ram - int(server.flavor.get("ram") or 0)}
        growth = {r: n for r, n in growth.items() if n > 0}
        if growth and server.project_id is not None:
            _, quota = commands.quotas.admit(ctx, uow, server.project_id, growth)
            if quota is not None:
                uow.add(quota)
        dest = placement.hosts[0]
        moving: dict[str, Any] = {} if dest == server.host else {
            "source_host": server.host, "dest_host": dest}
        server.request_action("resize", ctx, commands.now(),
                              params={"flavor": new.as_dict(), **moving},
                              changes={"migration_status": "pre-migrating",
                                       **({"migration_dest": dest} if moving else {})})
        uow.add(*placement.claims)
        return server
    return decide


def _destination(commands: ActionCommands, request: Request, uow: UnitOfWork,
                 server: Server, host: str | None, *, force: bool, live: bool
                 ) -> tuple[str, list[Any]]:
    """Where a migration of ``server`` goes, as Nova's API and conductor check it: the
    ``host`` asked for (it must exist and be up; not the server's own) or, without one
    or unless ``force``, the host the scheduler picks among those taking servers; and the
    claims that make the choice hold. Refusals are 400s with Nova's messages."""
    deps, ctx = commands.deps, request.ctx
    if host is not None:
        if host not in deps.reads.known_hosts():
            raise BadRequest(f"Compute host {host} could not be found.")
        if host == server.host:
            raise BadRequest(
                f"Unable to migrate instance ({server.id}) to current host ({host})."
                if live else "Cannot migrate to the host where the server exists.")
        if not deps.reads.host_is_up(host):
            raise BadRequest(f"Compute service of {host} is unavailable at this time.")
    if not deps.reads.host_is_up(server.host):
        raise BadRequest(f"Compute service of {server.host} is unavailable at this time.")
    candidates = ([host] if force and host is not None else
                  [h for h in deps.reads.usable_hosts()
                   if h != server.host and (host is None or h == host)])
    placement = deps.scheduler.place(ctx, uow, [str(server.id)], flavor_need(server.flavor),
                                     candidates, force=host if force else None)
    chosen = placement.hosts[0]
    if chosen is None:
        raise BadRequest(f"{groups.NO_VALID_HOST}. There are not enough hosts available"
                         f" for the {'live' if live else 'cold'} migration of"
                         f" {server.id}.")
    return chosen, placement.claims


def _migrate(commands: ActionCommands, request: Request) -> Decision:
    """Nova's cold migration (administrators): a resize to the same flavor on another
    host — ``host`` (2.56) or the scheduler's pick —, confirmed or reverted as one."""
    params = dict(request.params)
    host = params.pop("host", None)
    if params:
        raise BadRequest(f"Action migrate takes no parameters: {', '.join(sorted(params))}")
    if host is not None and (not isinstance(host, str) or not host):
        raise BadRequest("Invalid input for field/attribute host.")
    ctx = request.ctx

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-migrate-server:migrate"
                            " to be performed.")
        lc.check("migrate", server.subject, is_admin=ctx.is_admin)
        dest, claims = _destination(commands, request, uow, server, host, force=False,
                                    live=False)
        server.request_action("migrate", ctx, commands.now(),
                              params={"flavor": server.flavor, "source_host": server.host,
                                      "dest_host": dest},
                              changes={"migration_status": "pre-migrating",
                                       "migration_dest": dest})
        uow.add(*claims)
        return server
    return decide


def _live_migrate(commands: ActionCommands, request: Request) -> Decision:
    """Nova's live migration (administrators): ``host`` or the scheduler's pick,
    ``block_migration`` (true, false or ``auto``), ``force`` (skip the scheduler for the
    host given). The server stays ACTIVE (or PAUSED), status MIGRATING, until it runs on
    its new host; its migration record (``live-migration``) goes ``queued``,
    ``preparing``, ``running``, then ``completed``, ``failed`` or ``cancelled``."""
    params = dict(request.params)
    host = params.pop("host", None)
    block = params.pop("block_migration", "auto")
    force = params.pop("force", False)
    params.pop("disk_over_commit", None)  # accepted before 2.25, ignored (as Nova)
    if params:
        raise BadRequest("Action os-migrateLive takes no parameters: "
                         f"{', '.join(sorted(params))}")
    if block not in (True, False, "auto"):
        raise BadRequest(f"Invalid input for field/attribute block_migration. Value: {block}.")
    if host is not None and (not isinstance(host, str) or not host):
        raise BadRequest("Invalid input for field/attribute host.")
    if not isinstance(force, bool):
        raise BadRequest(f"Invalid input for field/attribute force. Value: {force}.")
    ctx = request.ctx

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-migrate-server:"
                            "migrate_live to be performed.")
        lc.check("live_migrate", server.subject, is_admin=ctx.is_admin)
        dest, claims = _destination(commands, request, uow, server, host,
                                    force=force and host is not None, live=True)
        server.request_action("live_migrate", ctx, commands.now(),
                              params={"source_host": server.host, "dest_host": dest,
                                      "block_migration": block, "force": force},
                              changes={"migration_status": "queued", "migration_dest": dest})
        uow.add(*claims)
        return server
    return decide


def _evacuate(commands: ActionCommands, request: Request) -> Decision:
    """Nova's ``evacuate`` (administrators): the server's host is down, so it is
    rebuilt from its image on another one — ``host`` if given (it must exist and take
    servers, unless ``force``), else the one the scheduler picks — by that host's agent;
    ``stop`` (2.95) leaves it stopped there. With no host to go to it fails at once:
    ERROR with Nova's ``No valid host was found``. Its migration record
    (``evacuation``) is ``accepted``, then ``done`` or ``failed``."""
    params = dict(request.params)
    host = params.pop("host", None)
    stop = bool(params.pop("stop", False))
    force = bool(params.pop("force", False))
    if params:
        raise BadRequest(f"Action evacuate takes no parameters: {', '.join(sorted(params))}")
    if force and host is None:
        raise BadRequest("Can't force to a non-provided destination")
    action = "evacuate_stopped" if stop else "evacuate"
    ctx, deps = request.ctx, commands.deps

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        # Nova's order: the server (404), the policy, the host, then the state
        if lc.ACTIONS[action].admin_only and not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-evacuate to be "
                            "performed.")
        if host is not None and host not in deps.reads.known_hosts():
            raise NotFound(f"Compute host {host} not found.")
        if host is not None and host == server.host:
            raise BadRequest("The target host can't be the same one.")
        lc.check(action, server.subject, is_admin=ctx.is_admin)
        if deps.reads.host_is_up(server.host):
            raise BadRequest(f"Compute service of {server.host} is still in use.")
        candidates = ([host] if force else  # forced: the host, whether it takes servers
                      [h for h in deps.reads.usable_hosts()
                       if h != server.host and (host is None or h == host)])
        placement = deps.scheduler.place(ctx, uow, [str(server.id)],
                                         flavor_need(server.flavor), candidates,
                                         force=host if force else None)
        chosen = placement.hosts[0]
        changes: dict[str, Any] = {"migration_status": "accepted"}
        if chosen is not None:
            changes["host"] = chosen
            uow.add(*placement.claims)
        server.request_action(action, ctx, commands.now(),
                              params={"source_host": server.host}, changes=changes)
        if chosen is None:  # Nova's conductor: the scheduler found no host
            server.fail(ctx, commands.now(), power_state=0, rollback=False,
                        message=groups.NO_VALID_HOST, code=500)
        return server
    return decide


def _migration(action: str, status: str) -> Handler:
    def build(commands: ActionCommands, request: Request) -> Decision:
        params = dict(request.params)
        deadline = params.pop("deadline", None)
        if params:
            raise BadRequest(f"Action {action} takes no parameters")

        def decide(uow: UnitOfWork) -> Server | None:
            server = commands.load(uow, request)
            if deadline is not None and server.confirm_deadline != deadline:
                return None  # a stale timer: the resize it was for is already settled
            server.request_action(action, request.ctx, commands.now(),
                                  changes={"migration_status": status})
            return server
        return decide
    return Handler(build)


def _rebuild(commands: ActionCommands, request: Request) -> Decision:
    params = dict(request.params)
    ref = params.pop("image", None)
    if not ref:
        raise BadRequest("Rebuild requires an image (imageRef)")
    changes: dict[str, Any] = {}
    if "name" in params:
        changes["name"] = check_name(params.pop("name"))
    if "metadata" in params:
        changes["metadata"] = check_metadata(params.pop("metadata"), limit=UNLIMITED_ITEMS)
    if "description" in params:
        changes["description"] = check_description(params.pop("description"))
    if params:
        raise BadRequest(f"Unknown rebuild parameters: {', '.join(sorted(params))}")
    ctx, deps = request.ctx, commands.deps

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        lc.check("rebuild", server.subject, is_admin=ctx.is_admin)
        if "metadata" in changes:
            check_metadata_count(changes["metadata"],
                                 limit=deps.metadata_limit(server.project_id))
        try:
            image, image_ref = commands.images.image_for(str(ref), ctx, uow)
        except ImageNotFound:
            raise BadRequest("Cannot find image for rebuild") from None
        image_fits(Flavor(**server.flavor), image)
        server.request_action("rebuild", ctx, commands.now(), params={"image": image_ref},
                              changes={**changes, "image": image_ref})
        return server
    return decide


def _delete(force: bool) -> Handler:
    """A delete: soft (the table's ``soft_delete`` row) when the reclaim interval is above
    0 and the server was launched and is not soft-deleted already, as Nova; else, and for
    ``forceDelete`` (``force``), the real one."""

    def build(commands: ActionCommands, request: Request) -> Decision:
        if request.params:
            raise BadRequest("Delete takes no parameters")
        ctx, interval = request.ctx, commands.deps.store.reclaim_interval

        def decide(uow: UnitOfWork) -> Server | None:
            server = commands.load(uow, request)
            if server.task_state == lc.DELETING:
                lc.check("delete", server.subject, is_admin=ctx.is_admin)  # lock still 409
                return None  # Nova ignores a repeated delete
            soft = (not force and interval > timedelta(0)
                    and server.launched_at is not None
                    and server.vm_state != lc.SOFT_DELETED)
            server.request_action("soft_delete" if soft else "delete", ctx, commands.now(),
                                  changes={"confirm_deadline": None})
            return server
        return decide
    return Handler(build)


def _lock(commands: ActionCommands, request: Request) -> Decision:
    params = dict(request.params)
    reason = params.pop("reason", None)
    if params or (reason is not None and (not isinstance(reason, str)
                                          or not 1 <= len(reason) <= NAME_MAX)):
        raise BadRequest("Invalid input for field/attribute locked_reason.")

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        server.lock(request.ctx, commands.now(), reason)
        return server
    return decide


def _unlock(commands: ActionCommands, request: Request) -> Decision:
    if request.params:
        raise BadRequest("Unlock takes no parameters")

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        server.unlock(request.ctx, commands.now())
        return server
    return decide


def _reset_state(commands: ActionCommands, request: Request) -> Decision:
    params = dict(request.params)
    state = params.pop("state", None)
    if state not in (lc.ACTIVE, lc.ERROR) or params:
        raise BadRequest(f"Invalid input for field/attribute state. Value: {state}. "
                         "'active' or 'error' expected.")

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        server.reset_state(request.ctx, commands.now(), str(state))
        return server
    return decide


def _rescue(commands: ActionCommands, request: Request) -> Decision:
    """``image``: the rescue image (id or name, one the caller may use); by default the
    image the server was built from (as Nova without a configured one)."""
    params = dict(request.params)
    ref = params.pop("image", None)
    no_parameters("rescue", params)
    ctx = request.ctx

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
        lc.check("rescue", server.subject, is_admin=ctx.is_admin)  # before the image
        image = commands.images.image_for(
            str(ref if ref is not None else server.image["id"]), ctx, uow)[1]
        server.request_action("rescue", ctx, commands.now(),
                              params={"image_id": image["id"],
                                      "image_name": image.get("name")})
        return server
    return decide


def _unshelve(commands: ActionCommands, request: Request) -> Decision:
    """``availability_zone`` (2.77) and ``host`` (2.91, administrators) only for a server
    whose guest was offloaded."""
    params = dict(request.params)
    zone = params.pop("availability_zone", None)
    host = params.pop("host", None)
    no_parameters("unshelve", params)
    ctx, deps = request.ctx, commands.deps
    if host is not None and not ctx.is_admin:
        raise Forbidden("Policy doesn't allow os_compute_api:os-shelve:unshelve_to_host "
                        "to be performed.")
    if host is not None and host not in deps.reads.known_hosts():
        raise BadRequest(f"Compute host {host} could not be found.")

    def decide(uow: UnitOfWork) -> Server:
        server = commands.load(uow, request)
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
            # placed again: the host asked for (administrators; it must have room), else
            # its old host if that still takes servers and has room, else the
            # scheduler's choice
            candidates = [host] if host is not None else list(deps.reads.usable_hosts())
            placement = deps.scheduler.place(
                ctx, uow, [str(server.id)], flavor_need(server.flavor), candidates,
                prefer=server.host if host is None else None)
            chosen = placement.hosts[0]
            if chosen is None:
                no_host = True
            else:
                changes["host"] = chosen
                uow.add(*placement.claims)
        server.request_action("unshelve", ctx, commands.now(), changes=changes,
                              params={"image_id": getattr(server, "shelved_image_id", None)})
        if no_host:  # Nova's conductor: back to SHELVED_OFFLOADED, with the fault
            server.fail(ctx, commands.now(), power_state=0, rollback=True,
                        message=groups.NO_VALID_HOST, code=500)
        return server
    return decide


def _shelve(commands: ActionCommands, request: Request) -> Decision:
    """Shelve a server (Nova's ``shelve``): the host agent powers it off and saves its
    disk as the custom image ``<name>-shelved`` (queued in the same transaction as the
    request); with a shelved offload time of 0 it then removes the guest in the same
    action (the table's ``shelve_and_offload`` row), else the guest stays until the
    timer or a ``shelveOffload`` removes it."""
    no_parameters("shelve", request.params)
    offload = commands.deps.store.shelved_offload_time == timedelta(0)
    return commands.images.snapshot_decision(
        request.ctx, request.server_id, "shelve_and_offload" if offload else "shelve",
        lambda s: f"{s.name}-shelved"[:255], {}, {}, request.details)


#: rows whose request another command module makes, not :meth:`ActionCommands.act`
REQUESTED_ELSEWHERE: dict[str, str] = {
    "create": "ServerCommands.create",
    "create_image": "ImageCommands.create_image",
    "create_backup": "ImageCommands.create_backup",
    "update_metadata": "ServerCommands.set_metadata",
    "delete_metadata": "ServerCommands.delete_metadata",
    **dict.fromkeys(("update_tag", "update_tags", "delete_tag", "delete_tags"),
                    "ServerCommands.change_tags"),
}

#: the handlers of actions with parameters or rules beyond the table's, by row name
_WRITTEN: dict[str, Handler] = {
    "reboot_soft": _reboot("SOFT"),
    "rebuild": Handler(_rebuild),
    "resize": Handler(_resize, places=True, admits=True),
    "migrate": Handler(_migrate, places=True),
    "live_migrate": Handler(_live_migrate, places=True),
    "evacuate": Handler(_evacuate, places=True),
    "confirm_resize": _migration("confirm_resize", "confirming"),
    "revert_resize": _migration("revert_resize", "reverting"),
    "delete": _delete(force=False),
    "lock": Handler(_lock),
    "unlock": Handler(_unlock),
    "reset_state": Handler(_reset_state),
    "unshelve": Handler(_unshelve, places=True),
    "rescue": Handler(_rescue),
    "shelve": Handler(_shelve),
}


def _handlers() -> dict[str, Handler]:
    """Every name :meth:`ActionCommands.act` takes: each row of the table that is not a
    variant of another nor requested elsewhere — its written handler, or the one of an
    action without parameters (the table's guard, its first task state) —, the variants
    a request names directly, and the request names that choose between rows."""
    unknown = (set(_WRITTEN) | set(REQUESTED_ELSEWHERE)) - set(lc.ACTIONS)
    if unknown:
        raise LookupError(f"handlers for actions the table does not have: {sorted(unknown)}")
    handlers = {name: _WRITTEN.get(name) or _simple(name)
                for name, row in lc.ACTIONS.items()
                if row.variant_of is None and name not in REQUESTED_ELSEWHERE}
    return {**handlers,
            "reboot": _reboot(),  # SOFT or HARD by its ``type``
            "reboot_hard": _reboot("HARD"),
            "force_delete": _delete(force=True)}  # never soft


HANDLERS: dict[str, Handler] = _handlers()
