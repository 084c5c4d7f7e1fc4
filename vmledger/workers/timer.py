"""The timer loop: confirms resizes whose confirmation deadline has passed, offloads
servers left shelved for the shelved offload time and deletes servers left soft-deleted
for the reclaim interval (each when it is more than 0).

The deadline is data (recorded in the event that put the server into VERIFY_RESIZE),
indexed by the servers view. This loop only asks the view which deadlines are due by
the injected clock and sends the idempotent ``auto_confirm`` command for each: it
survives restarts, and two loops racing confirm once (the loser's command finds the
resize already settled). A manual confirm or revert before the deadline clears it.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from vmledger.domain import lifecycle as lc
from vmledger.domain.commands.outcomes import OutcomeCommands
from vmledger.domain.service import ServerService
from vmledger.projections.runner import ViewUpdater

log = logging.getLogger(__name__)


class Timer:
    def __init__(self, service: ServerService, outcomes: OutcomeCommands, updater: ViewUpdater,
                 batch: int = 100) -> None:
        self.service = service
        self.outcomes = outcomes
        self.updater = updater
        self.batch = batch

    def run_once(self, *, caught_up: bool = False, through: int | None = None) -> int:
        """Confirm every due resize, offload the shelved servers and reclaim the
        soft-deleted ones whose time has come; return how many were recorded.
        ``caught_up``: the caller has just caught the read models up, and nothing was
        recorded since in this thread (the pass's idle agent): not read again.
        ``through``: the log position of the last command recorded since in this thread
        (the pass's busy agent): the read models are brought up to it, which costs
        nothing when that command was folded in its own transaction (the pass's last
        outcome, with every event before it); what other processes recorded after it
        is read by the next pass's catch-up, as after an idle agent."""
        if not caught_up:
            if through is not None:
                self.updater.ensure(through)
            else:
                self.updater.catch_up()
        fired = 0
        now = self.service.clock.now()
        for server_id, deadline in self.updater.view.due_deadlines(now, self.batch):
            result = self.outcomes.auto_confirm(server_id, deadline)
            if result.accepted:
                fired += 1
                log.info("auto-confirmed the resize of %s (deadline %s, %s)", server_id,
                         deadline.isoformat(), result.request_id)
        offload = self.service.shelved_offload_time
        for vm_state, wait, command, what in (
                (lc.SHELVED, offload or timedelta(0), self.outcomes.offload_shelved,
                 "offloading"),
                (lc.SOFT_DELETED, self.service.reclaim_interval, self.outcomes.reclaim,
                 "reclaiming")):
            if wait <= timedelta(0):
                continue
            for server_id in self.updater.view.idle_since(vm_state, now - wait, self.batch):
                result = command(server_id)
                if result.accepted:
                    fired += 1
                    log.info("%s %s, %s for %s (%s)", what, server_id, vm_state, wait,
                             result.request_id)
        if fired:
            self.updater.catch_up()
        return fired
