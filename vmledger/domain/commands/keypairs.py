"""Key pair commands: import (or generate, then import) a public key under a name, and
delete one; at most the project's ``key_pairs`` quota per user."""

from __future__ import annotations

from eventsourcing.domain import Aggregate

from vmledger.domain import keypair as keypairs
from vmledger.domain import quota as quotas
from vmledger.domain.commands.base import Deps
from vmledger.domain.commands.pipeline import CommandResult, UnitOfWork
from vmledger.domain.commands.validation import check_keypair_name
from vmledger.domain.errors import BadRequest, Forbidden, NotFound
from vmledger.domain.server import Context


def keypair_owner(ctx: Context, user_id: str | None) -> str:
    """Whose key pairs a call is about: the caller's, or (admins only) ``user_id``'s."""
    if user_id is not None and user_id != ctx.user_id:
        if not ctx.is_admin:
            raise Forbidden("Only administrators may manage another user's key pairs")
        return user_id
    if ctx.user_id is None:
        raise BadRequest("Key pairs belong to a user")
    return ctx.user_id


class KeypairCommands:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def import_keypair(self, ctx: Context, *, name: str, public_key: str,
                       key_type: str = keypairs.SSH, user_id: str | None = None
                       ) -> CommandResult:
        """Record a user's public key under ``name`` (the caller's own unless an admin
        names ``user_id``). A name the user already holds: :class:`Conflict`; more than
        the project's ``key_pairs`` quota for the user: :class:`Forbidden`."""
        limit = (self.deps.reads.project_limits(ctx.project_id)["key_pairs"]
                 if ctx.project_id is not None else keypairs.MAX_KEYPAIRS_PER_USER)
        counted = user_id or ctx.user_id
        if counted is not None and limit != quotas.UNLIMITED and self.deps.reads.keypair_count(
                counted) >= limit:
            raise Forbidden("Quota exceeded, too many key pairs.")
        owner = keypair_owner(ctx, user_id)
        check_keypair_name(name)
        if key_type not in keypairs.KEY_TYPES:
            raise BadRequest(f"Key pair type must be one of {', '.join(keypairs.KEY_TYPES)}")
        if not isinstance(public_key, str):
            raise BadRequest(keypairs.INVALID_KEY)
        key_fingerprint = keypairs.fingerprint(public_key, key_type)
        kid = keypairs.keypair_id(owner, name)

        def decide(uow: UnitOfWork) -> Aggregate:
            found = uow.get(kid)
            if found is None:
                return keypairs.Keypair.import_key(
                    ctx=ctx, at=self.deps.clock.now(), user_id=owner, name=name,
                    public_key=public_key, key_type=key_type, key_fingerprint=key_fingerprint)
            assert isinstance(found, keypairs.Keypair)
            found.reimport(ctx, self.deps.clock.now(), public_key=public_key,
                           key_type=key_type, key_fingerprint=key_fingerprint)
            return found
        return self.deps.pipeline.execute(ctx, decide, what=f"Key pair '{name}'",
                                          details={"keypair_id": str(kid), "user_id": owner})

    def delete_keypair(self, ctx: Context, name: str, *, user_id: str | None = None
                       ) -> CommandResult:
        owner = keypair_owner(ctx, user_id)

        def decide(uow: UnitOfWork) -> Aggregate:
            found = uow.get(keypairs.keypair_id(owner, name)) if isinstance(name, str) else None
            if not isinstance(found, keypairs.Keypair) or found.deleted:
                raise NotFound(f"Keypair {name} not found for user {owner}")
            found.delete(ctx, self.deps.clock.now())
            return found
        return self.deps.pipeline.execute(ctx, decide, what=f"Key pair '{name}'")
