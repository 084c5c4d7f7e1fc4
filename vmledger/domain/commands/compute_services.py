"""Compute service commands (administrators): disable or enable a host's service, force
it down, or delete it (refused while servers or migrations in progress are on it, and
for the hosts this process's agent serves)."""

from __future__ import annotations

from collections.abc import Callable

from eventsourcing.domain import Aggregate

from vmledger.domain import compute_service as compute_services
from vmledger.domain.commands.base import Deps
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork
from vmledger.domain.errors import Conflict, Forbidden, NotFound
from vmledger.domain.server import Context

Change = Callable[[compute_services.ComputeService], None]


class ComputeServiceCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def change(self, ctx: Context, host: str, *, disabled: bool | None = None,
               reason: str | None = None, forced_down: bool | None = None) -> CommandResult:
        """Disable or enable a host's compute service, or force it down."""

        def change(record: compute_services.ComputeService) -> None:
            if disabled is not None:
                record.set_status(ctx, self.deps.clock.now(), disabled=disabled,
                                  reason=reason)
            if forced_down is not None:
                record.set_forced_down(ctx, self.deps.clock.now(), forced_down)
        return self._record(ctx, host, "update", change)

    def delete(self, ctx: Context, host: str) -> CommandResult:
        """Delete a host's compute service (Nova's ``DELETE /os-services``): its settings
        are dropped and it is listed no more, until its agent reports again. Refused
        (:class:`Conflict`) for this process's own host and while servers or migrations
        in progress are on it."""

        def delete(record: compute_services.ComputeService) -> None:
            if host in self.deps.store.hosts:
                raise Conflict("Unable to delete the compute service of the host this "
                               "process runs the agent of.")
            reason = self.deps.reads.host_in_use(host)
            if reason is not None:
                raise Conflict(reason)
            record.delete(ctx, self.deps.clock.now())
        return self._record(ctx, host, "delete", delete)

    def _record(self, ctx: Context, host: str, rule: str, change: Change) -> CommandResult:
        """Change a known host's service record (made on its first change), as an
        administrator allowed by Nova's ``os-services:<rule>`` policy."""
        if not ctx.is_admin:
            raise Forbidden(f"Policy doesn't allow os_compute_api:os-services:{rule} to be "
                            "performed.")
        if host not in self.deps.reads.known_hosts():
            raise NotFound(f"Compute host {host} could not be found.")

        def decide(uow: UnitOfWork) -> Aggregate:
            found = uow.get(compute_services.service_record_id(host))
            record = (found if isinstance(found, compute_services.ComputeService)
                      else compute_services.ComputeService.register(
                          ctx, self.deps.clock.now(), host))
            change(record)
            return record
        return self.deps.pipeline.execute(ctx, decide, what=f"The service of {host}")
