"""What every command module is built with (:class:`Deps`), and loading a server in a
unit of work."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from vmledger.domain import quota as quotas
from vmledger.domain.catalog import Catalog
from vmledger.domain.clock import Clock
from vmledger.domain.commands.pipeline import Pipeline, UnitOfWork
from vmledger.domain.commands.reads import ReadSide
from vmledger.domain.scheduling import Scheduler
from vmledger.domain.server import Context, Server
from vmledger.domain.service import ServerService, server_uuid, visible


@dataclass
class Deps:
    """The store, the pipeline, the read side and the scheduler a command module uses."""

    store: ServerService
    pipeline: Pipeline
    reads: ReadSide
    scheduler: Scheduler

    @property
    def clock(self) -> Clock:
        return self.store.clock

    @property
    def catalog(self) -> Catalog:
        return self.store.catalog

    @property
    def new_id(self) -> Callable[[], uuid.UUID]:
        return self.store.id_factory

    def metadata_limit(self, project_id: str | None) -> int:
        """A project's ``metadata_items`` quota (-1: unlimited)."""
        if project_id is None:
            return quotas.DEFAULTS["metadata_items"]
        return self.reads.project_limits(project_id)["metadata_items"]


def load_server(uow: UnitOfWork, server_id: str | uuid.UUID, ctx: Context | None = None,
                *, include_deleted: bool = False) -> Server:
    """The server as the caller may see it (another project's, or a deleted one unless
    ``include_deleted``, is not found)."""
    return visible(uow.get(server_uuid(server_id)), str(server_id), ctx, include_deleted)
