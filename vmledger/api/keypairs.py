"""``/os-keypairs``: a user's public keys, as Nova's key pairs API.

- create (``POST``): import ``public_key`` (SSH, or an x509 certificate with ``type``
  from 2.2), or — before 2.92 — have an SSH key pair generated: its ``private_key`` is in
  that response only. 200 at 2.1, 201 from 2.2; ``type`` in bodies from 2.2; an
  administrator may name ``user_id`` from 2.10; ``public_key`` is required from 2.92,
  when names may also hold ``@``. A name taken: 409 ``Key pair 'x' already exists.``;
  a key that does not parse: 400; more than 100 per user: 403.
- list: ``{"keypairs": [{"keypair": {...}}]}`` by name; ``?user_id`` (administrators,
  2.10); ``limit`` and ``marker`` (a name) from 2.35 with ``keypairs_links``.
- show: the key pair with ``user_id``, ``id``, ``created_at`` and the ``deleted`` fields;
  unknown: 404 ``Keypair x not found for user y``.
- delete: 202 at 2.1, 204 from 2.2.

Key pairs are event-sourced (:mod:`vmledger.domain.keypair`): the ledger shows who
imported or deleted which key, and when. A server's ``key_name`` must be one of the
requesting user's key pairs.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response

from vmledger.api import validation as val
from vmledger.api.catalog import MAX_LIMIT, next_link
from vmledger.api.faults import ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.rendering import JSONBody
from vmledger.api.views import usage_time
from vmledger.domain import keypair as keypairs

_NAME = re.compile(r"^(?! )[a-zA-Z0-9. _-]+(?<! )$")
_NAME_V292 = re.compile(r"^(?! )[a-zA-Z0-9. _@-]+(?<! )$")


def _user_id(call: Call, rule: str) -> str | None:
    """``?user_id`` (administrators, from 2.10; ignored before)."""
    if not call.at_least(2, 10):
        return None
    values = call.request.query_params.getlist("user_id")
    user_id = values[0] if values else None
    _only_admins(call, user_id, rule)
    return user_id


def _only_admins(call: Call, user_id: str | None, rule: str) -> None:
    if user_id is not None and user_id != call.principal.user_id and not (
            call.principal.is_admin):
        raise ApiError(403, f"Policy doesn't allow os_compute_api:os-keypairs:{rule} to "
                            "be performed.")


def summary(raw: dict[str, Any], call: Call) -> dict[str, Any]:
    view = {"name": raw["name"], "public_key": raw["public_key"],
            "fingerprint": raw["fingerprint"]}
    if call.at_least(2, 2):
        view["type"] = raw["key_type"]
    return view


def detail(raw: dict[str, Any], call: Call) -> dict[str, Any]:
    view = summary(raw, call)
    view.update({"user_id": raw["owner_user_id"], "deleted": False,
                 "created_at": usage_time(raw["created_at"]), "updated_at": None,
                 "deleted_at": None,
                 # Nova's integer row id: a stable number from the key pair's id
                 "id": int(raw["id"].replace("-", "")[:7], 16)})
    return view


def _parse(call: Call, body: Any) -> tuple[str, str | None, str, str | None]:
    body = val.require_object({} if body is EMPTY else body, None)
    if "keypair" not in body:
        raise val.invalid_field("keypair", body, "'keypair' is a required property")
    val.no_other_keys(body, "keypair", ("keypair",))
    keypair = val.require_object(body["keypair"], "keypair")
    allowed = ["name", "public_key"]
    if call.at_least(2, 2):
        allowed.append("type")
    if call.at_least(2, 10):
        allowed.append("user_id")
    val.no_other_keys(keypair, "keypair", allowed)
    required = ["name", "public_key"] if call.at_least(2, 92) else ["name"]
    val.require_keys(keypair, "keypair", required)
    name = val.string(keypair["name"], "name", min_length=1, max_length=255)
    assert name is not None
    pattern = _NAME_V292 if call.at_least(2, 92) else _NAME
    if not pattern.match(name):
        raise val.invalid_field("name", name, f"{name!r} does not match {pattern.pattern!r}")
    public_key = keypair.get("public_key")
    if public_key is not None:
        public_key = val.string(public_key, "public_key", max_length=65535)
    key_type = keypair.get("type", keypairs.SSH)
    if key_type not in keypairs.KEY_TYPES:
        raise val.invalid_field("type", key_type,
                                f"{key_type!r} is not one of {list(keypairs.KEY_TYPES)}")
    user_id = val.string(keypair.get("user_id"), "user_id", min_length=1, max_length=255,
                         nullable=True)
    _only_admins(call, user_id, "create")
    return name, public_key, key_type, user_id


def _create(call: Call, name: str, public_key: str | None, key_type: str,
            user_id: str | None) -> tuple[dict[str, Any], str | None]:
    ctx = call.context()
    if public_key is not None:
        return call.engine.import_keypair(name, public_key, key_type=key_type,
                                          user_id=user_id, ctx=ctx), None
    if key_type != keypairs.SSH:
        raise ApiError(400, "Generating x509 key pairs is not supported: import a "
                            "certificate with public_key")
    return call.engine.generate_keypair(name, user_id=user_id, ctx=ctx)


async def create_keypair(call: Call) -> Response:
    name, public_key, key_type, user_id = _parse(call, await read_json(call.request))
    raw, private_key = await call.run(_create, call, name, public_key, key_type, user_id)
    view = summary(raw, call)
    view["user_id"] = raw["owner_user_id"]
    if private_key is not None:
        view["private_key"] = private_key
    return JSONBody({"keypair": view}, status_code=201 if call.at_least(2, 2) else 200)


def _list(call: Call) -> tuple[list[dict[str, Any]], int]:
    found = call.engine.list_keypairs(user_id=_user_id(call, "index"), ctx=call.context())
    if not call.at_least(2, 35):
        return found, 0
    query = call.request.query_params
    limit = MAX_LIMIT
    if query.get("limit") is not None:
        limit = min(val.non_negative_int(query["limit"], "limit"), MAX_LIMIT)
    marker = query.get("marker")
    if marker is not None:
        names = [k["name"] for k in found]
        if marker not in names:
            raise ApiError(400, f"Marker {marker} could not be found.")
        found = found[names.index(marker) + 1:]
    return found[:limit], limit


async def list_keypairs(call: Call) -> Response:
    page, size = await call.run(_list, call)
    body: dict[str, Any] = {"keypairs": [{"keypair": summary(k, call)} for k in page]}
    if size:
        links = next_link(call, "os-keypairs", page, size, page[-1]["name"] if page else "")
        if links:
            body["keypairs_links"] = links
    return JSONBody(body)


async def show_keypair(call: Call) -> Response:
    name = call.request.path_params["name"]
    raw = await call.run(lambda: call.engine.get_keypair(
        name, user_id=_user_id(call, "show"), ctx=call.context()))
    return JSONBody({"keypair": detail(raw, call)})


async def delete_keypair(call: Call) -> Response:
    name = call.request.path_params["name"]
    await call.run(lambda: call.engine.delete_keypair(
        name, user_id=_user_id(call, "delete"), ctx=call.context()))
    return Response(status_code=204 if call.at_least(2, 2) else 202)


__all__ = ["create_keypair", "delete_keypair", "list_keypairs", "show_keypair"]
