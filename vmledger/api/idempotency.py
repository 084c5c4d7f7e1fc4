"""The ``Idempotency-Key`` header: a ``POST`` that creates servers, requests a server
action or makes an image acts once per key, however often it is sent.

The key goes to the command with what the request asked for; the command pipeline
records the first result under the key (in the ledger, in the command's own
transaction), answers a repeat with it, and refuses the key with a different request
(``409 conflictingRequest``). A repeat is answered as the first request was: the same
servers or image, the same status and body, and the first request's id in
``x-openstack-request-id`` / ``x-compute-request-id``, with ``Idempotency-Replayed:
true``. Keys are per project. Nova has no such header; EC2's ``ClientToken`` does this.
"""

from __future__ import annotations

import hashlib

from vmledger.api.http import REQUEST_ID_HEADERS, Call, header
from vmledger.domain.commands import CommandResult

#: the request header carrying the key
HEADER = "Idempotency-Key"
_NAME = HEADER.lower().encode("latin-1")
#: the response header set on a repeat answered from the first request's result
REPLAYED_HEADER = "Idempotency-Replayed"


def key_of(call: Call) -> str | None:
    """The request's key (None: none sent). Its length is checked by the command
    (1 to 255 characters, else 400)."""
    return header(call.request, _NAME)


def derived(call: Call, key: str, label: str) -> str:
    """A value made from the key (per project) instead of at random, so that a
    repeat asks for exactly what the first request asked for (a reservation id)."""
    scope = f"{call.principal.project_id}:{key}:{label}"
    return hashlib.sha256(scope.encode("utf-8", "surrogatepass")).hexdigest()


def answered(call: Call, result: CommandResult) -> bool:
    """Note whether ``result`` is a repeat's (an earlier request's result, returned
    for the same key): the response then carries the first request's id. True for a
    repeat."""
    if result.request_id == call.request_id or not result.request_id:
        return False
    state = call.request.scope.setdefault("state", {})
    state["response_headers"] = {**{name: result.request_id for name in REQUEST_ID_HEADERS},
                                 REPLAYED_HEADER: "true"}
    return True


__all__ = ["HEADER", "REPLAYED_HEADER", "answered", "derived", "key_of"]
