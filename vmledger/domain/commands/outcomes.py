"""What the workers record: the host agent's steps and findings, and the timer's
requests (auto-confirm, offload, reclaim). Each is a no-op when the server has moved
on, so a repeated or late step never records twice."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from vmledger.domain import lifecycle as lc
from vmledger.domain.commands.base import Deps, load_server
from vmledger.domain.commands.pipeline import CommandResult
from vmledger.domain.server import TIMER, Context, Server


class OutcomeCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    # --- the host agent ---------------------------------------------------------------
    def record(self, server_id: str | uuid.UUID, request_id: str,
               step: Callable[[Server, Context, datetime], None], *,
               loaded: Server | None = None,
               saved: Callable[[Server], None] | None = None) -> CommandResult:
        """Apply one agent step to the action ``request_id``; a no-op when it is stale.

        A step may record several events (the agent gathers the task states, the calls
        written ahead and made, and the outcome of one stretch of work): they are saved
        together, in one transaction.

        Stale means the server has no action in flight any more, or another one (for
        instance a delete or a hard reboot superseded it): the agent's step is then
        dropped, so an outcome is never recorded twice.

        ``loaded``: the server as the agent has just loaded it, unchanged (the first
        attempt starts from a copy instead of reading it again). ``saved``: called with
        the server as this command saved it (not when nothing was recorded), so that
        the agent's next step can start from it in turn.
        """
        ctx = self.deps.store.agent_context(request_id)
        decided: list[Server] = []

        def decide(server: Server) -> Server | None:
            if server.pending_request_id != request_id:
                return None
            step(server, ctx, self.deps.clock.now())
            decided.append(server)
            return server
        result = self._run(ctx, server_id, decide, primed=(loaded,) if loaded else ())
        if saved is not None and result.accepted and decided:
            saved(decided[-1])  # the last attempt's: the one saved
        return result

    def record_drift(self, server_id: str | uuid.UUID, *, host: str, observed: int,
                     power_state: int, call: dict[str, Any] | None) -> CommandResult:
        """Record a power-state sync's finding (skipped if an action started meanwhile)."""
        ctx = self.deps.store.agent_context(self.deps.store.request_id_factory())

        def decide(server: Server) -> Server | None:
            changed = server.observe_drift(ctx, self.deps.clock.now(), host=host,
                                           observed=observed, power_state=power_state,
                                           call=call)
            return server if changed else None
        return self._run(ctx, server_id, decide)

    def record_evacuated_guest_removed(self, server_id: str | uuid.UUID, *, host: str,
                                       call: dict[str, Any] | None) -> CommandResult:
        """Record that ``host``'s agent removed the guest a server left there when it
        was evacuated (skipped unless that evacuation is done)."""
        ctx = self.deps.store.agent_context(self.deps.store.request_id_factory())

        def decide(server: Server) -> Server | None:
            changed = server.evacuated_guest_removed(ctx, self.deps.clock.now(), host=host,
                                                     call=call)
            return server if changed else None
        return self._run(ctx, server_id, decide)

    # --- the timer --------------------------------------------------------------------
    def auto_confirm(self, server_id: str | uuid.UUID, deadline: datetime) -> CommandResult:
        """Confirm a resize whose deadline has passed: idempotent, safe to race.

        Recorded with cause ``timer`` and no user or project, as Nova records its
        periodic confirmations. A resize settled in the meantime (confirmed, reverted,
        deleted, or a newer resize with another deadline) makes this a no-op.
        """
        ctx = self._timer_context()
        if deadline > self.deps.clock.now():
            return CommandResult(str(server_id), ctx.request_id, None, accepted=False)

        def decide(server: Server) -> Server | None:
            if (server.confirm_deadline != deadline or server.vm_state != lc.RESIZED
                    or server.task_state is not None
                    or server.migration_status != "finished"):
                return None
            server.request_action("confirm_resize", ctx, self.deps.clock.now(),
                                  changes={"migration_status": "confirming"})
            return server
        return self._run(ctx, server_id, decide)

    def offload_shelved(self, server_id: str | uuid.UUID) -> CommandResult:
        """Offload a server left shelved, unchanged, for the shelved offload time (Nova's
        ``_poll_shelved_instances``). A no-op when the time is 0 or None, or the server
        has moved on (unshelved, offloaded, deleted, changed since)."""
        wait = self.deps.store.shelved_offload_time
        return self._after_idle(server_id, lc.SHELVED, "shelve_offload",
                                wait if wait is not None else timedelta(0))

    def reclaim(self, server_id: str | uuid.UUID) -> CommandResult:
        """Delete a server left soft-deleted, unchanged, for the reclaim interval (Nova's
        ``_reclaim_queued_deletes``)."""
        return self._after_idle(server_id, lc.SOFT_DELETED, "delete",
                                self.deps.store.reclaim_interval)

    def _after_idle(self, server_id: str | uuid.UUID, vm_state: str, action: str,
                    wait: timedelta) -> CommandResult:
        """Request ``action`` (cause ``timer``) of a server idle in ``vm_state`` and
        unchanged for ``wait``; nothing when ``wait`` is 0 or it is not so (any more)."""
        ctx = self._timer_context()
        if wait <= timedelta(0):
            return CommandResult(str(server_id), ctx.request_id, None, accepted=False)

        def decide(server: Server) -> Server | None:
            if (server.vm_state != vm_state or server.task_state is not None
                    or server.modified_on + wait > self.deps.clock.now()):
                return None
            server.request_action(action, ctx, self.deps.clock.now())
            return server
        return self._run(ctx, server_id, decide)

    def _timer_context(self) -> Context:
        return Context(request_id=self.deps.store.request_id_factory(), user_id=None,
                       project_id=None, cause=TIMER, is_admin=True)

    def _run(self, ctx: Context, server_id: str | uuid.UUID,
             decide: Callable[[Server], Server | None],
             primed: tuple[Server, ...] = ()) -> CommandResult:
        """Run ``decide`` on the server (deleted ones too) through the pipeline."""
        return self.deps.pipeline.execute(
            ctx, lambda uow: decide(load_server(uow, server_id, include_deleted=True)),
            what="The server", subject=str(server_id), primed=primed)
