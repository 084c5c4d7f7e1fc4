"""Typed refusals raised by commands. Each carries the kind of fault the HTTP layer
maps to a status code (conflict → 409, bad request → 400, not found → 404, forbidden →
403) and Nova's exact message. A refused command writes nothing."""

from __future__ import annotations

from typing import ClassVar


class VmledgerError(Exception):
    """Base class of every refusal vmledger gives a caller."""

    kind: ClassVar[str] = "error"
    code: ClassVar[int] = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(VmledgerError):
    kind = "bad_request"
    code = 400


class Forbidden(VmledgerError):
    kind = "forbidden"
    code = 403


class NotFound(VmledgerError):
    kind = "not_found"
    code = 404


class Conflict(VmledgerError):
    kind = "conflict"
    code = 409


class InvalidState(Conflict):
    """Nova's ``InstanceInvalidState``: the action is not allowed in this state."""

    def __init__(self, action: str, server_id: str, attr: str, state: str | None) -> None:
        super().__init__(
            f"Cannot '{action}' instance {server_id} while it is in {attr} {state}"
        )
        self.action = action
        self.attr = attr
        self.state = state


class Locked(Conflict):
    def __init__(self, server_id: str) -> None:
        super().__init__(f"Instance {server_id} is locked")


class ServerNotFound(NotFound):
    def __init__(self, server_id: str) -> None:
        super().__init__(f"Instance {server_id} could not be found.")


class FlavorNotFound(BadRequest):
    """An unknown flavor in a request body is a 400, as in Nova's create and resize."""

    def __init__(self, flavor_id: str) -> None:
        super().__init__(f"Flavor {flavor_id} could not be found.")


class ImageNotFound(BadRequest):
    def __init__(self, image_id: str) -> None:
        super().__init__(f"Image {image_id} could not be found.")


class IdempotencyConflict(Conflict):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency key {key!r} was already used for a different request"
        )
