"""What every part of the façade shares: the built graph, the caller's context, and
read-your-writes (a command returns once the read models reflect it)."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from vmledger.adapters.hypervisor import Hypervisor
from vmledger.audit.ledger import Ledger
from vmledger.bootstrap import Graph
from vmledger.domain import lifecycle as lc
from vmledger.domain.catalog import Flavor
from vmledger.domain.clock import Clock
from vmledger.domain.commands import CommandResult, Commands
from vmledger.domain.errors import ServerNotFound
from vmledger.domain.server import Context
from vmledger.domain.service import ServerService
from vmledger.domain.wakeups import wakes
from vmledger.fleet import Fleet
from vmledger.projections.flavors import flavor_access
from vmledger.projections.runner import ViewUpdater
from vmledger.projections.servers import ServersView
from vmledger.workers.agent import HostAgent
from vmledger.workers.timer import Timer


class EngineBase:
    """The parts of the graph the façade delegates to (see :mod:`vmledger.bootstrap`)."""

    url: str
    graph: Graph
    clock: Clock
    #: the event store (every aggregate, and the lifecycle settings)
    service: ServerService
    commands: Commands
    view: ServersView
    updater: ViewUpdater
    fleet: Fleet
    hypervisor: Hypervisor
    host: str
    agent: HostAgent
    timer: Timer
    ledger: Ledger
    _wake: threading.Event
    #: the background pass's thread, and what its commands left to do, by server
    _passing: int | None
    _left: dict[str, bool]

    def _attach(self, graph: Graph) -> None:
        self.graph = graph
        self.service = graph.store
        self.clock = graph.store.clock
        self.commands = graph.commands
        self.view = graph.view
        self.updater = graph.updater
        self.fleet = graph.fleet
        self.hypervisor = graph.hypervisor
        self.host = graph.fleet.host
        self.agent = graph.agent
        self.timer = graph.timer
        self.ledger = graph.ledger

    # --- contexts ---------------------------------------------------------------------
    def context(self, *, user_id: str = "admin", project_id: str = "admin",
                is_admin: bool = True, request_id: str | None = None) -> Context:
        """Who is asking. The default is an administrator of the project ``admin``.

        Without ``request_id`` the context can be reused: every call made with it gets a
        fresh request id. With one, every call records that id (as the HTTP API does).
        """
        return self.service.context(user_id=user_id, project_id=project_id,
                                    is_admin=is_admin, request_id=request_id,
                                    pinned=bool(request_id))

    def _ctx(self, ctx: Context | None) -> Context:
        if ctx is None:
            return self.context()
        if ctx.pinned:
            return ctx
        return dataclasses.replace(ctx, request_id=self.service.request_id_factory())

    # --- read-your-writes -------------------------------------------------------------
    def _done(self, result: CommandResult) -> CommandResult:
        self.updater.ensure(result.position)
        return result

    def _nudge_for(self, result: CommandResult) -> None:
        """Wake the agent if the command saved gave this host work. The background
        pass's own commands note it instead, by server: the pass runs again at once
        only if the last of them left one of its servers with work here (an action it
        began and completed woke nothing)."""
        gives = wakes(result.agent_hosts, self.host)
        if threading.get_ident() == self._passing:
            self._left[result.server_id] = gives
        elif gives:
            self._nudge()

    def _nudge(self) -> None:
        """Wake the agent and the timer (a command was saved). Set already, it is left
        as it is: the background pass clears it before it starts, so a pass that has
        not cleared it yet sees the command (setting it takes its condition's lock and
        notifies, on every command, for nothing)."""
        if not self._wake.is_set():
            self._wake.set()

    def may_use_flavor(self, flavor: Flavor, ctx: Context) -> bool:
        """Public flavors for everyone; private ones for administrators and the projects
        given access."""
        return (flavor.is_public or ctx.is_admin
                or ctx.project_id in flavor_access(self.view).get(flavor.id, []))

    def _visible(self, server_id: str, ctx: Context | None, include_deleted: bool
                 ) -> dict[str, Any]:
        doc = self.view.get(str(server_id))
        if doc is None or (doc.get("vm_state") == lc.DELETED and not include_deleted) or (
                ctx is not None and not ctx.is_admin and doc["project_id"] != ctx.project_id):
            raise ServerNotFound(str(server_id))
        return doc
