"""Custom images: snapshots of servers, event-sourced like servers.

Pre-built images come from the catalog's configuration; an image made from a server
(``createImage``) is an aggregate with an owner project, its source server, a status
(queued → saving → active, or error; deleted) and its size and metadata. It is created
in the same transaction as the server's ``createImage`` request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate

from vmledger.domain.errors import Conflict
from vmledger.domain.server import Context, RequestEvent

QUEUED, SAVING, ACTIVE, ERROR, DELETED = "queued", "saving", "active", "error", "deleted"


class CustomImage(Aggregate):
    class Event(RequestEvent):
        pass

    class Queued(Aggregate.Created, Event):
        name: str
        owner_project_id: str | None
        server_id: str
        metadata: dict[str, str]
        min_ram: int
        min_disk: int
        base_image: dict[str, Any]

        def apply(self, image: CustomImage) -> None:
            image.name = self.name
            image.project_id = self.owner_project_id
            image.server_id = self.server_id
            image.metadata = dict(self.metadata)
            image.min_ram = self.min_ram
            image.min_disk = self.min_disk
            image.base_image = dict(self.base_image)
            image.status = QUEUED
            image.size = 0
            image.checksum = None
            image.fault = None

    class Saving(Event):
        def apply(self, image: CustomImage) -> None:
            image.status = SAVING

    class Activated(Event):
        size: int
        checksum: str | None

        def apply(self, image: CustomImage) -> None:
            image.status = ACTIVE
            image.size = self.size
            image.checksum = self.checksum

    class Failed(Event):
        message: str

        def apply(self, image: CustomImage) -> None:
            image.status = ERROR
            image.fault = self.message

    class Deleted(Event):
        def apply(self, image: CustomImage) -> None:
            image.status = DELETED

    name: str
    project_id: str | None
    server_id: str
    metadata: dict[str, str]
    min_ram: int
    min_disk: int
    base_image: dict[str, Any]
    status: str
    size: int
    checksum: str | None
    fault: str | None

    def __init__(self) -> None:
        """Fields are assigned by :meth:`Queued.apply`."""

    @classmethod
    def queue(cls, *, id: UUID, ctx: Context, at: datetime, name: str, server_id: str,
              metadata: dict[str, str], min_ram: int, min_disk: int,
              base_image: dict[str, Any]) -> CustomImage:
        return cls._create(cls.Queued, id=id, timestamp=at, **ctx.fields(), name=name,
                           owner_project_id=ctx.project_id, server_id=server_id,
                           metadata=metadata, min_ram=min_ram, min_disk=min_disk,
                           base_image=base_image)

    def saving(self, ctx: Context, at: datetime) -> None:
        if self.status == QUEUED:
            self.trigger_event(self.Saving, timestamp=at, **ctx.fields())

    def activate(self, ctx: Context, at: datetime, *, size: int, checksum: str | None) -> None:
        if self.status in (QUEUED, SAVING):
            self.trigger_event(self.Activated, timestamp=at, **ctx.fields(), size=size,
                               checksum=checksum)

    def fail(self, ctx: Context, at: datetime, message: str) -> None:
        if self.status in (QUEUED, SAVING):
            self.trigger_event(self.Failed, timestamp=at, **ctx.fields(), message=message)

    def delete(self, ctx: Context, at: datetime) -> None:
        if self.status == DELETED:
            return
        if self.status in (QUEUED, SAVING):
            raise Conflict(f"Image {self.id} is being saved and cannot be deleted yet")
        self.trigger_event(self.Deleted, timestamp=at, **ctx.fields())

    def as_catalog_image(self) -> dict[str, Any]:
        return {"id": str(self.id), "name": self.name, "min_ram": self.min_ram,
                "min_disk": self.min_disk, "size": self.size, "status": self.status,
                "owner": self.project_id, "server_id": self.server_id,
                "metadata": dict(self.metadata), "type": "snapshot"}
