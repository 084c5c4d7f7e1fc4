"""The façade's servers: create, the lifecycle's actions, updates, metadata and tags,
and reading servers back from the read models (after a command is reflected in them).

The per-action methods without parameters of their own (``pause``, ``stop``,
``confirm_resize``…) are derived from the lifecycle table: every row with a command
handler and no method written here gets one (see :func:`_derive_action_methods`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import CommandResult
from vmledger.domain.commands.actions import HANDLERS
from vmledger.domain.errors import FlavorNotFound, NotFound
from vmledger.domain.server import Context
from vmledger.engine.base import EngineBase
from vmledger.engine.records import ServerInfo
from vmledger.projections.actions import get_action, list_actions
from vmledger.projections.server_filters import ColumnFilter
from vmledger.projections.server_queries import StoredServer


class ServerFacade(EngineBase):
    # --- create -------------------------------------------------------------------------
    def create_server(self, name: str, flavor: str | int, image: str, *,
                      ctx: Context | None = None, idempotency_key: str | None = None,
                      **options: Any) -> ServerInfo:
        """Ask for a server (flavor and image by id or name); it starts in BUILD."""
        return self.create_servers(name, flavor, image, ctx=ctx,
                                   idempotency_key=idempotency_key, **options)[0]

    def create_servers(self, name: str, flavor: str | int, image: str, *, count: int = 1,
                       min_count: int | None = None, ctx: Context | None = None,
                       idempotency_key: str | None = None, **options: Any
                       ) -> list[ServerInfo]:
        """Ask for ``count`` servers in one request (named ``NAME-1`` … when more than
        one, as Nova names them); all or none are created. Within the project's quotas
        (instances, cores, RAM): as many as fit when that is at least ``min_count``
        (default ``count``), else :class:`~vmledger.domain.quota.QuotaExceeded`."""
        return self.request_servers(name, flavor, image, count=count, min_count=min_count,
                                    ctx=ctx, idempotency_key=idempotency_key, **options)[1]

    def request_servers(self, name: str, flavor: str | int, image: str, *, count: int = 1,
                        min_count: int | None = None, ctx: Context | None = None,
                        idempotency_key: str | None = None, **options: Any
                        ) -> tuple[CommandResult, list[ServerInfo]]:
        """:meth:`create_servers`, with the command's result (whose ``request_id`` is
        the first request's when an ``idempotency_key`` repeats one)."""
        ctx = self._ctx(ctx)
        self._check_flavor_access(flavor, ctx)
        result = self._done(self.commands.servers.create(
            ctx, name=name, flavor=flavor, image=image, idempotency_key=idempotency_key,
            count=count, min_count=min_count, **options))
        ids = result.details.get("server_ids") or [result.server_id]
        return result, [self.get_server(server_id, ctx=ctx) for server_id in ids]

    def _check_flavor_access(self, flavor: Any, ctx: Context) -> None:
        """A private flavor the caller may not use is not found (as Nova)."""
        try:
            chosen = self.service.catalog.flavor(flavor)
        except FlavorNotFound:
            return  # the command says so
        if not self.may_use_flavor(chosen, ctx):
            raise FlavorNotFound(str(flavor))

    # --- actions ------------------------------------------------------------------------
    def act(self, server_id: str, action: str, *, ctx: Context | None = None,
            idempotency_key: str | None = None, **params: Any) -> CommandResult:
        """Request any action of the lifecycle table by name, with its parameters."""
        ctx = self._ctx(ctx)
        if action == "resize":
            self._check_flavor_access(params.get("flavor", ""), ctx)
        return self._done(self.commands.actions.act(ctx, server_id, action,
                                                    idempotency_key=idempotency_key,
                                                    **params))

    def reboot(self, server_id: str, *, hard: bool = False, **kw: Any) -> CommandResult:
        return self.act(server_id, "reboot", type="HARD" if hard else "SOFT", **kw)

    def rebuild(self, server_id: str, image: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "rebuild", image=image, **kw)

    def resize(self, server_id: str, flavor: str | int, **kw: Any) -> CommandResult:
        return self.act(server_id, "resize", flavor=flavor, **kw)

    def lock(self, server_id: str, reason: str | None = None, **kw: Any) -> CommandResult:
        return self.act(server_id, "lock", reason=reason, **kw)

    def reset_state(self, server_id: str, state: str = lc.ACTIVE, **kw: Any) -> CommandResult:
        return self.act(server_id, "reset_state", state=state, **kw)

    def rescue(self, server_id: str, *, image: str | None = None, **kw: Any) -> CommandResult:
        """Boot a rescue image (``image``, by default the server's own) with the
        server's disk attached as the second; ``unrescue`` boots its own disk again."""
        params: dict[str, Any] = {"image": image} if image else {}
        return self.act(server_id, "rescue", **params, **kw)

    def force_delete(self, server_id: str, **kw: Any) -> CommandResult:
        """Delete now, soft delete or not."""
        return self.act(server_id, "force_delete", **kw)

    def shelve(self, server_id: str, **kw: Any) -> CommandResult:
        """Power off and save the disk as ``<name>-shelved``
        (``result.details["image_id"]``); the guest is then offloaded as the engine's
        ``shelved_offload_time`` says (at once by default, as Nova)."""
        return self.act(server_id, "shelve", **kw)

    def unshelve(self, server_id: str, *, availability_zone: str | None = None,
                 host: str | None = None, **kw: Any) -> CommandResult:
        params: dict[str, Any] = {k: v for k, v in (("availability_zone", availability_zone),
                                                    ("host", host)) if v is not None}
        return self.act(server_id, "unshelve", **params, **kw)

    def evacuate(self, server_id: str, *, host: str | None = None, stop: bool = False,
                 **kw: Any) -> CommandResult:
        """Rebuild a server whose host is down on another host (administrators): ``host``
        or the scheduler's choice; ``stop`` leaves it stopped there (Nova 2.95). The
        host it left removes the old guest when its agent is back."""
        params: dict[str, Any] = {"stop": stop}
        if host is not None:
            params["host"] = host
        return self.act(server_id, "evacuate", **params, **kw)

    def create_image(self, server_id: str, name: str, *, metadata: dict[str, str] | None = None,
                     ctx: Context | None = None, idempotency_key: str | None = None
                     ) -> CommandResult:
        """Snapshot a server into a custom image; ``result.details["image_id"]`` names it."""
        return self._done(self.commands.images.create_image(
            self._ctx(ctx), server_id, name=name, metadata=metadata,
            idempotency_key=idempotency_key))

    def create_backup(self, server_id: str, name: str, *, backup_type: str, rotation: int,
                      metadata: dict[str, str] | None = None, ctx: Context | None = None,
                      idempotency_key: str | None = None) -> CommandResult:
        """Back a server up into a custom image (``result.details["image_id"]``) and
        keep only its newest ``rotation`` backups of ``backup_type``."""
        return self._done(self.commands.images.create_backup(
            self._ctx(ctx), server_id, name=name, backup_type=backup_type, rotation=rotation,
            metadata=metadata, idempotency_key=idempotency_key))

    # --- updates --------------------------------------------------------------------------
    def update_server(self, server_id: str, *, ctx: Context | None = None,
                      **changes: Any) -> ServerInfo:
        ctx = self._ctx(ctx)
        self._done(self.commands.servers.update(ctx, server_id, **changes))
        return self.get_server(server_id, ctx=ctx)

    def set_metadata(self, server_id: str, items: dict[str, str], *, replace: bool = False,
                     ctx: Context | None = None) -> dict[str, str]:
        """Merge (or ``replace`` with) metadata items; returns the server's metadata."""
        ctx = self._ctx(ctx)
        self._done(self.commands.servers.set_metadata(ctx, server_id, items, replace=replace))
        return dict(self.get_server(server_id, ctx=ctx).doc.get("metadata") or {})

    def delete_metadata(self, server_id: str, key: str, *, ctx: Context | None = None
                        ) -> None:
        self._done(self.commands.servers.delete_metadata(self._ctx(ctx), server_id, key))

    def change_tags(self, server_id: str, action: str, *, tag: str | None = None,
                    tags: list[str] | None = None, ctx: Context | None = None
                    ) -> tuple[list[str], bool]:
        """Add (``update_tag``), replace (``update_tags``) or delete (``delete_tag``,
        ``delete_tags``) tags; returns the tags and whether ``update_tag`` added one."""
        ctx = self._ctx(ctx)
        result = self._done(self.commands.servers.change_tags(ctx, server_id, action,
                                                              tag=tag, tags=tags))
        doc = self.get_server(server_id, ctx=ctx).doc
        return list((doc.get("attributes") or {}).get("tags") or []), bool(
            result.details.get("created"))

    # --- reading --------------------------------------------------------------------------
    def get_server(self, server_id: str, *, ctx: Context | None = None) -> ServerInfo:
        """A server from the view; another project's or a deleted one is not found."""
        return ServerInfo.from_doc(self._visible(server_id, ctx, include_deleted=False))

    def list_servers(self, *, ctx: Context | None = None, include_deleted: bool = False
                     ) -> list[ServerInfo]:
        """Servers, newest first: the caller's project's, or every project's for admins."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return [ServerInfo.from_doc(d)
                for d in self.view.servers(project_id=project, include_deleted=include_deleted)]

    def iter_server_docs(self, *, ctx: Context | None = None, include_deleted: bool = False
                         ) -> Iterator[dict[str, Any]]:
        """The view's server documents, newest first, decoded lazily (list pages)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return self.view.iter_servers(project_id=project, include_deleted=include_deleted)

    def server_rows(self, *, ctx: Context | None = None, deleted: str = "exclude",
                    after: str | None = None, limit: int | None = None, docs: bool = True,
                    columns: ColumnFilter | None = None) -> list[StoredServer]:
        """The view's servers as stored (documents undecoded until used), newest first:
        a list page. ``deleted``: ``"exclude"``, ``"only"`` or ``"both"``; ``after``: a
        marker (``KeyError`` when it is not in the same scope); without ``docs``, ids
        and versions only (:meth:`fill_server_docs` reads the documents later)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return self.view.rows(project_id=project, deleted=deleted, after=after, limit=limit,
                              docs=docs, columns=columns)

    def server_sort_columns(self, *, ctx: Context | None = None, deleted: str = "exclude"
                            ) -> list[dict[str, Any]]:
        """The servers in scope as their view columns, newest first (list sorting)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return self.view.sort_columns(project_id=project, deleted=deleted)

    def fill_server_docs(self, rows: Sequence[StoredServer]) -> None:
        """Read the documents of rows :meth:`server_rows` gave without them."""
        self.view.fill(rows)

    def servers_in_flight(self) -> Iterator[tuple[str, str]]:
        self.updater.catch_up()
        yield from self.view.in_flight()

    def instance_actions(self, server_id: str, *, ctx: Context | None = None,
                         include_deleted: bool = True) -> list[dict[str, Any]]:
        """Nova's instance actions of a server, newest first, each with its events."""
        self._visible(server_id, ctx, include_deleted)
        return list_actions(self.view, str(server_id))

    def instance_action(self, server_id: str, request_id: str, *,
                        ctx: Context | None = None, include_deleted: bool = True
                        ) -> dict[str, Any]:
        self._visible(server_id, ctx, include_deleted)
        action = get_action(self.view, str(server_id), request_id)
        if action is None:
            raise NotFound(f"Action {request_id} not found")
        return action

    # --- the guest ------------------------------------------------------------------------
    def console_output(self, server_id: str, *, length: int | None = None,
                       ctx: Context | None = None) -> str:
        """What the server's guest wrote to its serial console (Nova's
        ``os-getConsoleOutput``): with ``length``, its last lines as Nova cuts them
        (0: nothing; -1 or None: all). Control characters but tab and newline are
        removed. A server not on a host (scheduling, offloaded, never placed) or on a
        host that is down is 409 ``Instance <id> is not ready``; one being deleted 409;
        a guest without a console log 404. A guest on another host is read by that
        host's agent."""
        return self.graph.guests.console_output(
            self._visible(server_id, ctx, include_deleted=False), length)

    def diagnostics(self, server_id: str, *, ctx: Context | None = None) -> dict[str, Any]:
        """What the hypervisor knows of the server's guest, in Nova's standard form (2.48)
        (the same conditions as :meth:`console_output`; an unknown guest is 404)."""
        return self.graph.guests.diagnostics(self._visible(server_id, ctx,
                                                           include_deleted=False))

    @property
    def guest_read_timeout(self) -> float:
        """How long a read of a guest on another host waits for that host's agent (s)."""
        return self.graph.guests.timeout

    @guest_read_timeout.setter
    def guest_read_timeout(self, seconds: float) -> None:
        self.graph.guests.timeout = seconds


def _action_method(name: str) -> Any:
    def method(self: ServerFacade, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, name, **kw)
    method.__name__ = method.__qualname__ = name
    method.__doc__ = lc.ACTIONS[name].doc or f"Request ``{name}`` (see the lifecycle table)."
    return method


def _derive_action_methods() -> None:
    """A method per lifecycle row that has a command handler and no method above."""
    for name in lc.ACTIONS:
        if name in HANDLERS and not hasattr(ServerFacade, name):
            setattr(ServerFacade, name, _action_method(name))


_derive_action_methods()
