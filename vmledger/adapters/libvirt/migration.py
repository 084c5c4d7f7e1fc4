"""Moving libvirt guests between hosts (cold and live migration): not yet implemented
by this driver; every call is refused with 501 and changes nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vmledger.adapters.hypervisor import GuestSpec, HypervisorError, Result
from vmledger.adapters.libvirt.base import DriverBase


def _unsupported(op: str) -> HypervisorError:
    return HypervisorError(f"The libvirt driver cannot {op} yet", rollback=True, code=501)


class MigrationMixin(DriverBase):
    def prepare_migration(self, spec: GuestSpec, *, live: bool) -> Result:
        raise _unsupported("prepare a migration")

    def migrate_disk(self, server_id: str, target: Mapping[str, Any]) -> Result:
        raise _unsupported("migrate a disk")

    def finish_migration(self, spec: GuestSpec, disk: Mapping[str, Any], *,
                         power_on: bool) -> Result:
        raise _unsupported("finish a migration")

    def live_migrate(self, server_id: str, target: Mapping[str, Any], *,
                     block_migration: bool) -> Result:
        raise _unsupported("live migrate")

    def abort_migration(self, server_id: str) -> Result:
        raise _unsupported("abort a migration")

    def force_complete_migration(self, server_id: str) -> Result:
        raise _unsupported("force a migration to complete")

    def finish_live_migration(self, spec: GuestSpec, moved: Mapping[str, Any]) -> Result:
        raise _unsupported("finish a live migration")
