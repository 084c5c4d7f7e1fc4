"""Quota commands: admitting a request within its project's limits, and setting the
limits of a project or a quota class (administrators)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventsourcing.domain import Aggregate

from vmledger.domain import quota as quotas
from vmledger.domain.commands.base import Deps
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork
from vmledger.domain.errors import BadRequest, Forbidden
from vmledger.domain.server import Context


class QuotaCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def lock(self, project_id: str | None) -> Any:
        """Requests of one project are admitted one at a time in this process (across
        processes the quota set's version serialises them: the loser decides again)."""
        return self.deps.pipeline.lock(f"quota:{project_id or ''}")

    def admit(self, ctx: Context, uow: UnitOfWork, project_id: str, each: Mapping[str, int],
              *, count: int = 1, min_count: int | None = None
              ) -> tuple[int, quotas.QuotaSet | None]:
        """How many of ``count`` requests, each adding ``each`` to the project's usage,
        its quotas admit (as many as fit when that is at least ``min_count``, default
        ``count``; else :class:`~vmledger.domain.quota.QuotaExceeded`), and the project's
        quota set with an ``Admitted`` event recorded, for the caller to save with the
        request's own events (None when no limit applies: nothing to serialise).

        Saving it is what makes the check hold under concurrency: a request admitted
        meanwhile in the same project (in any process) moved the quota set on, so this
        save conflicts and the command is decided again, against a usage that now
        includes the other request's servers."""
        usage = self.deps.reads.project_usage(project_id)
        if usage is None:
            return count, None
        limits = self.deps.reads.project_limits(project_id)
        if all(limits.get(r, quotas.UNLIMITED) == quotas.UNLIMITED
               for r in quotas.SERVER_RESOURCES if each.get(r, 0) > 0):
            return count, None  # the common case: nothing loaded, nothing recorded
        # limited by the default class only: the project's quota set starts here, to
        # serialise its requests all the same
        found = uow.get(quotas.quota_set_id(project_id))
        now = self.deps.clock.now()
        quota = (found if isinstance(found, quotas.QuotaSet)
                 else quotas.QuotaSet.start(ctx, now, project_id))
        used = {r: int(usage.get(r, 0)) for r in quotas.SERVER_RESOURCES}
        admitted = quotas.admissible(limits, used, each, count,
                                     count if min_count is None else min_count)
        quota.admit(ctx, now, {r: n * admitted for r, n in each.items() if n}, used)
        return admitted, quota

    def set_quotas(self, ctx: Context, project_id: str, limits: Mapping[str, Any], *,
                   force: bool = False) -> CommandResult:
        """Set some of a project's limits (administrators): each an integer from -1
        (unlimited); below what the project uses → BadRequest unless ``force``."""
        checked = quotas.check_limits(limits, tuple(quotas.DEFAULTS))
        if not force:
            used = {**(self.deps.reads.project_usage(project_id) or {}), "key_pairs": 0}
            for resource, limit in checked.items():
                if limit != quotas.UNLIMITED and limit < used.get(resource, 0):
                    raise BadRequest(f"Quota limit {limit} for {resource} must be greater "
                                     "than or equal to already used and reserved "
                                     f"{used[resource]}.")
        if not checked:
            return CommandResult("", ctx.request_id, None, accepted=False)
        self._admin(ctx, "os-quota-sets:update")
        return self._change(ctx, project_id, lambda q: q.set_limits(
            ctx, self.deps.clock.now(), checked), start=True)

    def revert_quotas(self, ctx: Context, project_id: str) -> CommandResult:
        """Back to the defaults (nothing is recorded for a project that has them)."""
        self._admin(ctx, "os-quota-sets:update")
        return self._change(ctx, project_id, lambda q: q.revert(ctx, self.deps.clock.now()),
                            start=False)

    def set_quota_class(self, ctx: Context, name: str, limits: Mapping[str, Any]
                        ) -> CommandResult:
        """Set some of a quota class's limits (administrators); the ``default`` class's
        are every project's defaults."""
        checked = quotas.check_limits(limits, tuple(quotas.DEFAULTS))
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise BadRequest("quota_class_name has a minimum character requirement of 1 "
                             "and a maximum of 255.")
        self._admin(ctx, "os-quota-class-sets:update")

        def decide(uow: UnitOfWork) -> Aggregate:
            found = uow.get(quotas.quota_class_id(name))
            quota = (found if isinstance(found, quotas.QuotaClass)
                     else quotas.QuotaClass.start(ctx, self.deps.clock.now(), name))
            quota.set_limits(ctx, self.deps.clock.now(), checked)
            return quota
        return self.deps.pipeline.execute(ctx, decide, what=f"The quota class {name}")

    def _change(self, ctx: Context, project_id: str,
                change: Callable[[quotas.QuotaSet], None], *, start: bool) -> CommandResult:
        def decide(uow: UnitOfWork) -> Aggregate | None:
            found = uow.get(quotas.quota_set_id(project_id))
            if isinstance(found, quotas.QuotaSet):
                quota = found
            elif start:
                quota = quotas.QuotaSet.start(ctx, self.deps.clock.now(), project_id)
            else:
                return None  # the defaults already: nothing to record
            change(quota)
            return quota
        return self.deps.pipeline.execute(ctx, decide, what=f"The quotas of {project_id}")

    @staticmethod
    def _admin(ctx: Context, rule: str) -> None:
        if not ctx.is_admin:
            raise Forbidden(f"Policy doesn't allow os_compute_api:{rule} to be performed.")
