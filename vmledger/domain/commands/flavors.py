"""Flavor commands (administrators): create, delete, extra specs, description and access.
A configured flavor is adopted into a record on its first change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eventsourcing.domain import Aggregate

from vmledger.domain import flavors as flavor_records
from vmledger.domain.commands.base import Deps
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork
from vmledger.domain.errors import Conflict, Forbidden, NotFound
from vmledger.domain.server import Context

Change = Callable[[flavor_records.FlavorRecord], None]


class FlavorCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def create(self, ctx: Context, fields: dict[str, Any]) -> CommandResult:
        """A new flavor from Nova's create body; ``details["flavor_id"]``. A taken id or
        name is a :class:`Conflict`."""
        _admin(ctx, "os-flavor-manage:create")
        flavor = flavor_records.check_flavor(fields, str(self.deps.new_id()))
        taken = self.deps.catalog.flavors()
        if any(f.id == flavor.id for f in taken):
            raise Conflict(f"Flavor with ID {flavor.id} already exists.")
        if any(f.name == flavor.name for f in taken):
            raise Conflict(f"Flavor with name {flavor.name} already exists.")

        def decide(uow: UnitOfWork) -> Aggregate:
            if uow.get(flavor_records.flavor_record_id(flavor.id)) is not None:
                # deleted before, or made meanwhile: Nova's ids are not reused either
                raise Conflict(f"Flavor with ID {flavor.id} already exists.")
            return flavor_records.FlavorRecord.make(ctx, self.deps.clock.now(), flavor)
        return self.deps.pipeline.execute(ctx, decide, what=f"Flavor {flavor.id}",
                                          details={"flavor_id": flavor.id})

    def delete(self, ctx: Context, flavor_id: str) -> CommandResult:
        """Delete a flavor (servers built with it keep their copy)."""
        return self.change(ctx, flavor_id, "os-flavor-manage:delete",
                           lambda r: r.delete(ctx, self.deps.clock.now()))

    def set_extra_specs(self, ctx: Context, flavor_id: str, specs: dict[str, Any]
                        ) -> CommandResult:
        """Add or replace extra specs; ``details["extra_specs"]``: them as stored (text
        values)."""
        checked = flavor_records.check_extra_specs(specs)
        return self.change(ctx, flavor_id, "os-flavor-extra-specs:create",
                           lambda r: r.set_extra_specs(ctx, self.deps.clock.now(), checked),
                           details={"extra_specs": checked})

    def delete_extra_spec(self, ctx: Context, flavor_id: str, key: str) -> CommandResult:
        _admin(ctx, "os-flavor-extra-specs:delete")

        def change(record: flavor_records.FlavorRecord) -> None:
            if key not in (record.flavor.get("extra_specs") or {}):
                raise NotFound(f"Flavor {flavor_id} has no extra specs with key {key}.")
            record.delete_extra_spec(ctx, self.deps.clock.now(), key)
        return self.change(ctx, flavor_id, "os-flavor-extra-specs:delete", change)

    def change_description(self, ctx: Context, flavor_id: str, description: str | None
                           ) -> CommandResult:
        return self.change(ctx, flavor_id, "os-flavor-manage:update",
                           lambda r: r.change_description(ctx, self.deps.clock.now(),
                                                          description))

    def add_access(self, ctx: Context, flavor_id: str, project_id: str) -> CommandResult:
        return self.change(ctx, flavor_id, "os-flavor-access:add_tenant_access",
                           lambda r: r.add_access(ctx, self.deps.clock.now(), project_id))

    def remove_access(self, ctx: Context, flavor_id: str, project_id: str) -> CommandResult:
        return self.change(ctx, flavor_id, "os-flavor-access:remove_tenant_access",
                           lambda r: r.remove_access(ctx, self.deps.clock.now(), project_id))

    def change(self, ctx: Context, flavor_id: str, rule: str, change: Change, *,
               details: dict[str, Any] | None = None) -> CommandResult:
        """Apply ``change`` to a flavor's record (adopting a configured flavor first)."""
        _admin(ctx, rule)
        flavor_id = str(flavor_id)

        def decide(uow: UnitOfWork) -> Aggregate:
            found = uow.get(flavor_records.flavor_record_id(flavor_id))
            if isinstance(found, flavor_records.FlavorRecord) and not found.deleted:
                record = found
            else:
                configured = self.deps.catalog.configured_flavor(flavor_id)
                if found is not None or configured is None:
                    raise NotFound(f"Flavor {flavor_id} could not be found.")
                record = flavor_records.FlavorRecord.make(ctx, self.deps.clock.now(),
                                                          configured, adopted=True)
            change(record)
            return record
        return self.deps.pipeline.execute(ctx, decide, what=f"Flavor {flavor_id}",
                                          details=details)


def _admin(ctx: Context, rule: str) -> None:
    if not ctx.is_admin:
        raise Forbidden(f"Policy doesn't allow os_compute_api:{rule} to be performed.")
