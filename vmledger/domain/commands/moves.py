"""The actions that move a server between hosts, or decide where it runs: ``resize``,
``migrate`` (cold), ``live_migrate``, ``evacuate``, and the confirm or revert of a resize
or cold migration. Each builds the decision :class:`~vmledger.domain.commands.actions.
ActionCommands` runs (see :data:`~vmledger.domain.commands.actions.HANDLERS`); the
placing ones run under the scheduler's lock there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vmledger.domain import lifecycle as lc
from vmledger.domain import server_group as groups
from vmledger.domain.commands.pipeline import UnitOfWork
from vmledger.domain.errors import BadRequest, Forbidden, NotFound
from vmledger.domain.scheduling import flavor_need
from vmledger.domain.server import Server

if TYPE_CHECKING:
    from vmledger.domain.commands.actions import ActionCommands, Decision, Request


def resize(commands: ActionCommands, request: Request) -> Decision:
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


def migrate(commands: ActionCommands, request: Request) -> Decision:
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


def live_migrate(commands: ActionCommands, request: Request) -> Decision:
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


def evacuate(commands: ActionCommands, request: Request) -> Decision:
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


def migration(action: str, status: str) -> Callable[[ActionCommands, Request], Decision]:
    """The confirm or revert of a resize or cold migration (``status``: the migration's
    status it sets); a timer's request carries the deadline it was for."""
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
    return build
