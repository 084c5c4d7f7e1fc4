"""Image commands: snapshots and backups of servers (and the shelve, which saves one),
deleting a custom image, and the agent's steps on an image; finding a usable image."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from eventsourcing.domain import Aggregate

from vmledger.domain import image as image_states
from vmledger.domain import lifecycle as lc
from vmledger.domain.catalog import Image
from vmledger.domain.commands.base import Deps, load_server
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork, idempotency
from vmledger.domain.commands.validation import check_metadata, check_name
from vmledger.domain.errors import BadRequest, ImageNotFound, NotFound
from vmledger.domain.image import CustomImage
from vmledger.domain.server import Context, Server


class ImageCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    # --- reading --------------------------------------------------------------------
    def image_for(self, ref: str, ctx: Context, uow: UnitOfWork | None = None
                  ) -> tuple[Image, dict[str, Any]]:
        """A usable image by id or name: pre-built, or a custom image the caller may see.

        Returns the image and the reference a server records (a custom image's reference
        names the server it is a snapshot of).
        """
        try:
            image = self.deps.catalog.image(ref)
        except ImageNotFound:
            try:
                custom = self.get_image(ref, ctx, uow)
            except NotFound:
                raise ImageNotFound(str(ref)) from None
            image = Image(id=str(custom.id), name=custom.name, min_ram=custom.min_ram,
                          min_disk=custom.min_disk, size=custom.size, status=custom.status)
            if image.status != "active":
                raise BadRequest(f"Image {image.id} is not active.") from None
            return image, {"id": image.id, "name": image.name,
                           "snapshot_of": custom.server_id}
        if image.status != "active":
            raise BadRequest(f"Image {image.id} is not active.")
        return image, {"id": image.id, "name": image.name}

    def get_image(self, ref: str | uuid.UUID, ctx: Context | None = None,
                  uow: UnitOfWork | None = None) -> CustomImage:
        """A custom image (not deleted) its owner project or an admin may see (else 404)."""
        missing = NotFound(f"Image {ref} could not be found.")
        try:
            image_id = uuid.UUID(str(ref))
        except ValueError:
            raise missing from None
        image = (uow or self.deps.pipeline.unit_of_work()).get(image_id)
        if not isinstance(image, CustomImage) or image.status == image_states.DELETED or (
                ctx is not None and not ctx.is_admin and image.project_id != ctx.project_id):
            raise missing
        return image

    # --- commands -------------------------------------------------------------------
    def create_image(self, ctx: Context, server_id: str | uuid.UUID, *, name: str,
                     metadata: dict[str, str] | None = None,
                     idempotency_key: str | None = None) -> CommandResult:
        """Snapshot a server into a new custom image (Nova's ``createImage``).

        The image (queued) and the server's request are saved in one transaction; the
        host agent takes the snapshot, then activates the image.
        """
        check_name(name)
        meta = check_metadata(metadata, quota=False)
        return self.snapshot(ctx, server_id, "create_image", name, meta, {},
                             idempotency_key=idempotency_key, operation="createImage",
                             payload={"name": name, "metadata": meta})

    def create_backup(self, ctx: Context, server_id: str | uuid.UUID, *, name: str,
                      backup_type: str, rotation: int,
                      metadata: dict[str, str] | None = None,
                      idempotency_key: str | None = None) -> CommandResult:
        """Back a server up (Nova's ``createBackup``): a snapshot image with the
        properties ``image_type: backup`` and ``backup_type``; once it is saved the host
        agent deletes this server's older backups of that type beyond the newest
        ``rotation`` (0: the new one too, as Nova)."""
        check_name(name)
        if not isinstance(backup_type, str):  # "" is one (the openstack CLI's default)
            raise BadRequest("Invalid input for field/attribute backup_type.")
        if isinstance(rotation, bool) or not isinstance(rotation, int) or rotation < 0:
            raise BadRequest("Invalid input for field/attribute rotation.")
        meta = check_metadata(metadata, quota=False)
        properties = {**meta, "image_type": "backup", "backup_type": backup_type}
        return self.snapshot(
            ctx, server_id, "create_backup", name, properties,
            {"backup_type": backup_type, "rotation": rotation},
            idempotency_key=idempotency_key, operation="createBackup",
            payload={"name": name, "backup_type": backup_type, "rotation": rotation,
                     "metadata": meta})

    def snapshot(self, ctx: Context, server_id: str | uuid.UUID, action: str,
                 name: str | Callable[[Server], str], metadata: dict[str, str],
                 params: dict[str, Any], *, idempotency_key: str | None, operation: str,
                 payload: dict[str, Any]) -> CommandResult:
        """Queue a custom image of the server and request ``action`` to save it, in
        one transaction (``result.details["image_id"]``)."""
        details: dict[str, Any] = {}
        decide = self.snapshot_decision(ctx, str(server_id), action, name, metadata, params,
                                        details)
        return self.deps.pipeline.execute(
            ctx, decide, what="The server", subject=str(server_id), details=details,
            key=idempotency(idempotency_key, operation,
                            {"server": str(server_id), **payload}))

    def snapshot_decision(self, ctx: Context, server_id: str, action: str,
                          name: str | Callable[[Server], str], metadata: dict[str, str],
                          params: dict[str, Any], details: dict[str, Any]
                          ) -> Callable[[UnitOfWork], Server]:
        """The decision of a snapshot (``create_image``, ``create_backup``, a shelve):
        ``name`` may be derived from the server as loaded in its transaction; the new
        image's id goes into ``details["image_id"]``."""
        deps = self.deps

        def decide(uow: UnitOfWork) -> Server:
            server = load_server(uow, server_id, ctx)
            lc.check(action, server.subject, is_admin=ctx.is_admin)
            image_id = deps.new_id()
            details["image_id"] = str(image_id)
            image_name = name(server) if callable(name) else name
            uow.add(CustomImage.queue(
                id=image_id, ctx=ctx, at=deps.clock.now(), name=image_name,
                server_id=str(server.id), metadata=metadata, min_ram=0,
                min_disk=int(server.flavor.get("disk") or 0), base_image=dict(server.image)))
            server.request_action(action, ctx, deps.clock.now(),
                                  params={"image_id": str(image_id), "name": image_name,
                                          **params})
            return server
        return decide

    def delete_image(self, ctx: Context, image_id: str) -> CommandResult:
        """Delete a custom image (its owner project or an admin; others: not found)."""
        details: dict[str, Any] = {}

        def decide(uow: UnitOfWork) -> Aggregate:
            image = self.get_image(image_id, ctx, uow)
            image.delete(ctx, self.deps.clock.now())
            details["image_id"] = str(image.id)
            return image
        return self.deps.pipeline.execute(ctx, decide, what=f"Image {image_id}",
                                          details=details)

    def record_image(self, image_id: str, request_id: str,
                     step: Callable[[CustomImage, Context, datetime], None]) -> bool:
        """Apply one agent step to a custom image (saving, activated, failed); whether
        anything was recorded."""
        ctx = self.deps.store.agent_context(request_id)

        def decide(uow: UnitOfWork) -> Aggregate:
            image = self.get_image(image_id, uow=uow)
            step(image, ctx, self.deps.clock.now())
            return image
        return self.deps.pipeline.execute(ctx, decide, what=f"Image {image_id}").accepted
