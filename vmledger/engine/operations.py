"""The façade's operator side: hosts and their compute services, ``os-hypervisors``,
migrations and usage (delegated to :class:`vmledger.fleet.Fleet`), steering a live
migration in progress (abort, force-complete), and the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from vmledger.audit.ledger import HistoryPage, LedgerEntry
from vmledger.audit.verify import VerifyReport, verify
from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import CommandResult
from vmledger.domain.errors import BadRequest, Forbidden, InvalidState, NotFound
from vmledger.domain.server import Context, Server
from vmledger.engine.base import EngineBase
from vmledger.engine.records import HistoryEntry
from vmledger.projections.hosts import delete_report

#: the statuses of a live migration in progress (Nova's list: its records are shown by
#: ``/servers/{id}/migrations`` while they have one)
LIVE_IN_PROGRESS = ("queued", "preparing", "running", "post-migrating")
#: the statuses an abort is accepted in; ``queued`` and ``preparing`` too when asked
#: with ``queued`` (Nova from microversion 2.65)
_ABORTABLE = frozenset({"running"})
_ABORTABLE_QUEUED = frozenset({"queued", "preparing", "running"})


class OperationsFacade(EngineBase):
    # --- hosts --------------------------------------------------------------------------
    def hypervisors(self, *, with_servers: bool = True) -> list[dict[str, Any]]:
        """Every host's compute node, as Nova's ``os-hypervisors`` shows it (see
        :meth:`vmledger.fleet.Fleet.hypervisors`; ``servers`` only ``with_servers``)."""
        return self.fleet.hypervisors(with_servers=with_servers)

    def known_hosts(self) -> list[str]:
        """Every compute host, by name."""
        return self.fleet.known_hosts()

    def compute_services(self, reports: dict[str, dict[str, Any]] | None = None
                         ) -> list[dict[str, Any]]:
        """Each host's compute service (see :meth:`vmledger.fleet.Fleet.compute_services`)."""
        return self.fleet.compute_services(reports)

    def host_statuses(self) -> dict[str, str]:
        """Each listed host's ``host_status`` (2.16): DOWN, MAINTENANCE, UP or UNKNOWN."""
        return self.fleet.host_statuses()

    def host_room(self, hosts: Sequence[str]) -> dict[str, dict[str, float]]:
        """The room left on each of ``hosts`` for new servers (``vcpus``, ``ram`` MB,
        ``disk`` GB); a host of unknown capacity is left out."""
        return self.fleet.host_room(hosts)

    def report_host(self) -> bool:
        """Record this host's hypervisor report (its heartbeat), at most every report
        interval; False when the hypervisor did not answer."""
        return self.fleet.report_host()

    @property
    def service_down_time(self) -> Any:
        return self.fleet.service_down_time

    @property
    def report_interval(self) -> Any:
        return self.fleet.report_interval

    @property
    def allocation_ratios(self) -> Any:
        return self.fleet.allocation_ratios

    def set_compute_service(self, host: str, *, disabled: bool | None = None,
                            reason: str | None = None, forced_down: bool | None = None,
                            ctx: Context | None = None) -> dict[str, Any]:
        """Disable (with a reason) or enable a host's service, or force it down
        (administrators); a disabled or forced-down host takes no new servers."""
        self._done(self.commands.compute_services.change(
            self._ctx(ctx), host, disabled=disabled, reason=reason, forced_down=forced_down))
        return next(s for s in self.compute_services() if s["host"] == host)

    def delete_compute_service(self, host: str, *, ctx: Context | None = None) -> None:
        """Delete a host's compute service (administrators; Nova's ``DELETE
        /os-services``): refused (:class:`Conflict`) while servers or migrations in
        progress are on it, and for this engine's own host; the host is listed no more
        until its agent reports again."""
        self._done(self.commands.compute_services.delete(self._ctx(ctx), host))
        delete_report(self.view, host)

    def migrations(self, *, server_id: str | None = None, status: str | None = None,
                   host: str | None = None, since: datetime | None = None,
                   before: datetime | None = None, newest_first: bool = False,
                   limit: int | None = None, marker: str | None = None,
                   where: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Nova's migration records (one per resize, cold or live migration and
        evacuation), as rows of the
        migrations view: ``id``, ``uuid``, ``server_id``, ``status``, hosts, flavor
        numbers, who asked, ``created_at`` / ``updated_at`` (UTC text). Filters: the
        server, the status, a host (source or destination), ``updated_at`` bounds and
        ``where``, other columns' values (``migration_type``, ``source_compute``,
        ``user_id``…). Oldest first, or ``newest_first`` with ``limit`` and ``marker`` (a
        record's UUID; an unknown one raises
        :class:`~vmledger.projections.store.MarkerNotFound`)."""
        return self.fleet.migrations(server_id=server_id, status=status, host=host,
                                     since=since, before=before, newest_first=newest_first,
                                     limit=limit, marker=marker, where=where)

    def live_migrations(self, server_id: str, *, ctx: Context | None = None
                        ) -> list[dict[str, Any]]:
        """A server's live migrations in progress (Nova's ``GET
        /servers/{id}/migrations``: at most one), as :meth:`migrations` rows, oldest
        first; an unknown server (or another project's) raises
        :class:`~vmledger.domain.errors.ServerNotFound`."""
        self._visible(server_id, ctx, include_deleted=False)
        self.updater.catch_up()  # the agents of other processes move the status on
        return [row for row in self.migrations(server_id=str(server_id),
                                               where={"migration_type": "live-migration"})
                if row["status"] in LIVE_IN_PROGRESS]

    def abort_migration(self, server_id: str, migration_id: int | str, *,
                        queued: bool = True, ctx: Context | None = None) -> CommandResult:
        """Abort the live migration ``migration_id`` (the record's number) of a server
        (administrators): it must be running, or with ``queued`` (Nova from 2.65)
        queued or preparing too. The source host's agent stops the copy; the server stays
        on its host and the record ends ``cancelled``. Refusals as Nova's: the server
        not migrating (:class:`~vmledger.domain.errors.InvalidState`), no such record
        of this server (:class:`~vmledger.domain.errors.NotFound`), the record in another
        state (:class:`~vmledger.domain.errors.BadRequest`)."""
        return self._steer(server_id, migration_id, "abort", ctx=ctx,
                           statuses=_ABORTABLE_QUEUED if queued else _ABORTABLE)

    def force_complete_migration(self, server_id: str, migration_id: int | str, *,
                                 ctx: Context | None = None) -> CommandResult:
        """Ask the running live migration ``migration_id`` of an ACTIVE server to finish
        now (administrators; the hypervisor pauses the guest for the last copy). Refusals
        as :meth:`abort_migration`, but a record not found is a
        :class:`~vmledger.domain.errors.BadRequest` (as Nova's)."""
        return self._steer(server_id, migration_id, "force_complete", ctx=ctx,
                           statuses=_ABORTABLE)

    def _steer(self, server_id: str, migration_id: int | str, steer: str, *,
               statuses: frozenset[str], ctx: Context | None) -> CommandResult:
        """Nova's checks in its order — the policy, the server, its state, the record
        and its status — with Nova's messages; the command checks them again against
        the server's own state when it is saved."""
        ctx = self._ctx(ctx)
        abort = steer == "abort"
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:servers:migrations:"
                            f"{'delete' if abort else 'force_complete'} to be performed.")
        self.updater.catch_up()  # the agents of other processes move the status on
        doc = self._visible(server_id, ctx, include_deleted=False)
        sid = str(doc["id"])
        method = "abort live migration" if abort else "force_complete"
        if doc.get("task_state") != lc.MIGRATING:
            raise InvalidState(method, sid, "task_state", doc.get("task_state"))
        if not abort and doc.get("vm_state") != lc.ACTIVE:
            raise InvalidState(method, sid, "vm_state", doc.get("vm_state"))
        row = next((r for r in self.migrations(server_id=sid)
                    if str(r["id"]) == str(migration_id)), None)
        if row is None:
            missing = f"Migration {migration_id} not found for instance {sid}"
            raise NotFound(missing) if abort else BadRequest(missing)
        if row["status"] not in statuses:
            raise BadRequest(
                f"Migration {migration_id} state of instance {sid} is {row['status']}."
                f" Cannot {'abort live migration' if abort else 'force complete'} while"
                " the migration is in this state.")
        return self._done(self.commands.actions.steer_migration(
            ctx, sid, str(row["request_id"]), steer, statuses=statuses))

    def usage(self, start: datetime, stop: datetime, *, project_id: str | None = None,
              limit: int | None = None, marker: str | None = None) -> list[dict[str, Any]]:
        """Nova's simple tenant usage: each server that ran between ``start`` and ``stop``
        (aware datetimes; see :mod:`vmledger.projections.usage`), deleted ones included,
        by project then id: ``instance_id``, ``hours``, the flavor's size, ``started_at``,
        ``ended_at``, ``state``, ``uptime``. ``limit`` and ``marker`` (a server id; an
        unknown one raises :class:`~vmledger.projections.store.MarkerNotFound`) page."""
        return self.fleet.usage(start, stop, project_id=project_id, limit=limit,
                                marker=marker)

    # --- the ledger (audit) -------------------------------------------------------------
    def history_page(self, server_id: str, *, after: int = 0, limit: int = 100) -> HistoryPage:
        """A page of a server's events with their log positions (``after`` = a version)."""
        return self.ledger.history(server_id, after=after, limit=limit)

    def server_as_of(self, server_id: str, *, at: datetime | None = None,
                     version: int | None = None) -> Server:
        """A server's full state as of a time or a version, from the log (deleted too)."""
        return self.ledger.as_of(server_id, at=at, version=version)

    def causal_chain(self, request_id: str) -> list[LedgerEntry]:
        """Everything one request caused: the call, the agent's steps, the hypervisor's
        answers and the outcome, in log order."""
        return self.ledger.causal_chain(request_id)

    def explain(self, server_id: str) -> list[str]:
        """Why the server is in its current status, in plain words."""
        return self.ledger.explain(server_id)

    def verify(self, **kwargs: Any) -> VerifyReport:
        """Check the tamper-evidence chain over the whole log (names the first break)."""
        return verify(self.service, **kwargs)

    def history(self, server_id: str) -> list[HistoryEntry]:
        """Every event of a server (deleted ones too), oldest first."""
        return [HistoryEntry.from_event(e) for e in self.service.history(server_id)]
