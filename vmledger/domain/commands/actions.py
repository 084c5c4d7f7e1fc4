"""The lifecycle's actions on a server (``reboot``, ``resize``, ``evacuate``…), each a
handler: it checks its parameters and returns the decision the pipeline runs.

:data:`HANDLERS` is keyed by the names :meth:`ActionCommands.act` takes: the lifecycle
table's rows, and the few request names that choose between rows (``reboot`` by its
type, ``delete`` soft or not, ``shelve`` with or without offload, ``evacuate`` stopped
or not). Placing handlers (resize, evacuate, unshelve) run under the scheduler's lock,
admitting ones (resize) under the project's quota lock too. The handlers of the actions
that move a server between hosts are in :mod:`~vmledger.domain.commands.moves`.
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
from vmledger.domain.commands import moves
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
from vmledger.domain.errors import BadRequest, Conflict, Forbidden, ImageNotFound
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
    "resize": Handler(moves.resize, places=True, admits=True),
    "migrate": Handler(moves.migrate, places=True),
    "live_migrate": Handler(moves.live_migrate, places=True),
    "evacuate": Handler(moves.evacuate, places=True),
    "confirm_resize": Handler(moves.migration("confirm_resize", "confirming")),
    "revert_resize": Handler(moves.migration("revert_resize", "reverting")),
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
