"""The façade's resources beside servers: images, key pairs, flavors, server groups and
quotas."""

from __future__ import annotations

from typing import Any

from vmledger.domain import keypair as keypairs
from vmledger.domain.catalog import Flavor
from vmledger.domain.commands import CommandResult
from vmledger.domain.commands.keypairs import keypair_owner
from vmledger.domain.errors import NotFound
from vmledger.domain.server import Context
from vmledger.engine.base import EngineBase
from vmledger.projections import images as image_view
from vmledger.projections import keypairs as keypair_view
from vmledger.projections.flavors import flavor_access
from vmledger.projections.quotas import class_limits
from vmledger.projections.server_groups import get_group, list_groups, member_docs


class ResourceFacade(EngineBase):
    # --- images -------------------------------------------------------------------------
    def list_images(self, *, ctx: Context | None = None) -> list[dict[str, Any]]:
        """Pre-built images, then the custom images the caller may see (as dicts)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        prebuilt = [{**i.as_dict(), "type": "image", "owner": None, "server_id": None,
                     "metadata": dict(i.properties)} for i in self.service.catalog.images()]
        custom = [{**d, "type": "snapshot", "owner": d.get("project_id")}
                  for d in image_view.list_images(self.view, project)]
        return prebuilt + custom

    def get_image(self, image_id: str, *, ctx: Context | None = None) -> dict[str, Any]:
        """One image by id (pre-built or custom, if the caller may see it)."""
        for image in self.service.catalog.images():
            if image.id == image_id:
                return {**image.as_dict(), "type": "image", "owner": None, "server_id": None,
                        "metadata": dict(image.properties)}
        doc = image_view.get_image(self.view, image_id)
        if doc is None or doc.get("status") == "deleted" or (
                ctx is not None and not ctx.is_admin and doc.get("project_id") != ctx.project_id):
            raise NotFound(f"Image {image_id} could not be found.")
        return {**doc, "type": "snapshot", "owner": doc.get("project_id")}

    def delete_image(self, image_id: str, *, ctx: Context | None = None) -> CommandResult:
        """Delete a custom image (owner project or admin; anyone else: not found)."""
        return self._done(self.commands.images.delete_image(self._ctx(ctx), image_id))

    # --- key pairs ----------------------------------------------------------------------
    def import_keypair(self, name: str, public_key: str, *, key_type: str = keypairs.SSH,
                       user_id: str | None = None, ctx: Context | None = None
                       ) -> dict[str, Any]:
        """Record a public key under ``name`` for the caller (or, for an admin,
        ``user_id``); returns the key pair. At most the project's ``key_pairs`` quota
        per user (Forbidden)."""
        ctx = self._ctx(ctx)
        result = self._done(self.commands.keypairs.import_keypair(
            ctx, name=name, public_key=public_key, key_type=key_type, user_id=user_id))
        return self.get_keypair(name, user_id=result.details["user_id"], ctx=ctx)

    def generate_keypair(self, name: str, *, user_id: str | None = None,
                         ctx: Context | None = None) -> tuple[dict[str, Any], str]:
        """A new SSH key pair: its public key recorded as :meth:`import_keypair` does,
        its private key returned (and recorded nowhere)."""
        public_key, private_key = keypairs.generate_ssh_key(f"Generated-by-vmledger:{name}")
        return self.import_keypair(name, public_key, user_id=user_id, ctx=ctx), private_key

    def delete_keypair(self, name: str, *, user_id: str | None = None,
                       ctx: Context | None = None) -> CommandResult:
        return self._done(self.commands.keypairs.delete_keypair(self._ctx(ctx), name,
                                                                user_id=user_id))

    def list_keypairs(self, *, user_id: str | None = None, ctx: Context | None = None
                      ) -> list[dict[str, Any]]:
        """A user's key pairs by name (the caller's, or for an admin ``user_id``'s)."""
        return keypair_view.list_keypairs(self.view, keypair_owner(self._ctx(ctx), user_id))

    def get_keypair(self, name: str, *, user_id: str | None = None,
                    ctx: Context | None = None) -> dict[str, Any]:
        owner = keypair_owner(self._ctx(ctx), user_id)
        found = keypair_view.get_keypair(self.view, owner, name)
        if found is None:
            raise NotFound(f"Keypair {name} not found for user {owner}")
        return found

    # --- flavors ------------------------------------------------------------------------
    def create_flavor(self, fields: dict[str, Any], *, ctx: Context | None = None) -> Flavor:
        """A new flavor from Nova's create body (see :mod:`vmledger.domain.flavors`)."""
        result = self._done(self.commands.flavors.create(self._ctx(ctx), dict(fields)))
        return self.service.catalog.flavor(result.details["flavor_id"])

    def delete_flavor(self, flavor_id: str, *, ctx: Context | None = None) -> None:
        """Delete a flavor (servers built with it keep their copy)."""
        self._done(self.commands.flavors.delete(self._ctx(ctx), str(flavor_id)))

    def set_flavor_extra_specs(self, flavor_id: str, specs: dict[str, Any], *,
                               ctx: Context | None = None) -> dict[str, str]:
        """Add or replace extra specs; returns them as stored (text values)."""
        result = self._done(self.commands.flavors.set_extra_specs(self._ctx(ctx),
                                                                  str(flavor_id), specs))
        return dict(result.details["extra_specs"])

    def delete_flavor_extra_spec(self, flavor_id: str, key: str, *,
                                 ctx: Context | None = None) -> None:
        self._done(self.commands.flavors.delete_extra_spec(self._ctx(ctx), str(flavor_id),
                                                           key))

    def update_flavor_description(self, flavor_id: str, description: str | None, *,
                                  ctx: Context | None = None) -> Flavor:
        self._done(self.commands.flavors.change_description(self._ctx(ctx), str(flavor_id),
                                                            description))
        return self.flavor_for_admin(flavor_id)

    def flavor_access(self, flavor_id: str) -> list[str]:
        """The projects that may use a private flavor."""
        self.flavor_for_admin(flavor_id)
        return flavor_access(self.view).get(flavor_id, [])

    def add_flavor_access(self, flavor_id: str, project_id: str, *,
                          ctx: Context | None = None) -> list[str]:
        self._done(self.commands.flavors.add_access(self._ctx(ctx), str(flavor_id),
                                                    project_id))
        return self.flavor_access(flavor_id)

    def remove_flavor_access(self, flavor_id: str, project_id: str, *,
                             ctx: Context | None = None) -> list[str]:
        self._done(self.commands.flavors.remove_access(self._ctx(ctx), str(flavor_id),
                                                       project_id))
        return self.flavor_access(flavor_id)

    def flavor_for_admin(self, flavor_id: str) -> Flavor:
        """A flavor by id, disabled or private ones too; NotFound otherwise."""
        found = next((f for f in self.service.catalog.flavors() if f.id == flavor_id), None)
        if found is None:
            raise NotFound(f"Flavor {flavor_id} could not be found.")
        return found

    # --- server groups ------------------------------------------------------------------
    def _group_view(self, group: dict[str, Any]) -> dict[str, Any]:
        members = member_docs(self.view, group["owner_project_id"], group["id"])
        return {**group, "members": [str(d["id"]) for d in members]}

    def server_group(self, group_id: str, *, ctx: Context | None = None) -> dict[str, Any]:
        """A group (``id``, ``name``, ``policy``, ``rules``, ``owner_project_id``,
        ``owner_user_id``, ``members``): its project's, or any for an admin; else
        NotFound."""
        ctx = self._ctx(ctx)
        group = get_group(self.view, str(group_id))
        if group is None or not (ctx.is_admin or group["owner_project_id"] == ctx.project_id):
            raise NotFound(f"Server group {group_id} could not be found.")
        return self._group_view(group)

    def server_groups(self, *, ctx: Context | None = None, all_projects: bool = False
                      ) -> list[dict[str, Any]]:
        """The caller's project's groups (an admin's ``all_projects``: every project's)."""
        ctx = self._ctx(ctx)
        project = None if (all_projects and ctx.is_admin) else ctx.project_id
        return [self._group_view(g) for g in list_groups(self.view, project)]

    def create_server_group(self, name: str, policy: str, rules: dict[str, Any] | None = None,
                            *, ctx: Context | None = None) -> dict[str, Any]:
        """A new group in the caller's project, within its ``server_groups`` quota."""
        ctx = self._ctx(ctx)
        result = self._done(self.commands.groups.create(ctx, name=name, policy=policy,
                                                        rules=rules))
        return self.server_group(result.details["group_id"], ctx=ctx)

    def delete_server_group(self, group_id: str, *, ctx: Context | None = None) -> None:
        """Delete a group (its members stay, without a group)."""
        self._done(self.commands.groups.delete(self._ctx(ctx), str(group_id)))

    # --- quotas -------------------------------------------------------------------------
    def quota_limits(self, project_id: str) -> dict[str, int]:
        """The project's limits: the defaults (the ``default`` quota class's), overlaid
        with what an administrator set for the project."""
        return dict(self.graph.reads.project_limits(project_id))

    def quota_class(self, name: str) -> dict[str, int]:
        """A quota class's limits (the ``default`` class's are every project's
        defaults; any other name shows the built-in defaults until it is set)."""
        return class_limits(self.view, name)

    def set_quota_class(self, name: str, limits: dict[str, Any], *,
                        ctx: Context | None = None) -> dict[str, int]:
        """Set some of a quota class's limits (administrators): each an integer from -1
        (unlimited). Returns the class's limits."""
        self._done(self.commands.quotas.set_quota_class(self._ctx(ctx), name, limits))
        return self.quota_class(name)

    def quota_usage(self, project_id: str) -> dict[str, int]:
        """What the project uses of its counted limits (key pairs are counted per user:
        0 here, as Nova shows a project's)."""
        return {**self.view.project_usage(project_id), "key_pairs": 0}

    def set_quotas(self, project_id: str, limits: dict[str, Any], *, force: bool = False,
                   ctx: Context | None = None) -> dict[str, int]:
        """Set some of a project's limits (administrators): each an integer from -1
        (unlimited); below what the project uses → BadRequest unless ``force``. Returns
        the project's limits."""
        self._done(self.commands.quotas.set_quotas(self._ctx(ctx), project_id, limits,
                                                   force=force))
        return self.quota_limits(project_id)

    def revert_quotas(self, project_id: str, *, ctx: Context | None = None) -> None:
        """The project's limits back to the defaults (administrators)."""
        self._done(self.commands.quotas.revert_quotas(self._ctx(ctx), project_id))
