"""``POST /servers/{id}/action``: each action key's parser (Nova's request schema per
microversion) maps the body to an engine action and its parameters; the handler checks
the server is the caller's, asks the engine, and answers with Nova's status and body.
Which lifecycle row an action key requests is the row's ``api_keys`` in the table."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse, Response

from vmledger.api import idempotency
from vmledger.api import validation as val
from vmledger.api.faults import MALFORMED_BODY, ApiError
from vmledger.api.http import EMPTY, Call, read_json
from vmledger.api.metrics import note_command
from vmledger.api.servers import (
    _allowed,
    _location,
    _new_password,
    owned_server,
    server_groups_of,
)
from vmledger.api.views import rebuild_view
from vmledger.domain import lifecycle as lc
from vmledger.domain.commands import CommandResult
from vmledger.engine import ServerInfo


def _act(call: Call, server_id: str, action: str, params: dict[str, Any]) -> CommandResult:
    key = idempotency.key_of(call)
    if params or key is not None:
        # the server first: a missing or another project's server is a 404 before the
        # parameters are checked or a repeat is answered
        owned_server(call.engine, call.principal, server_id)
    # else the command's own load answers the same 404 (it sees the server as the
    # caller may), so the read models' read before it would only cost a query
    return call.engine.act(server_id, action, ctx=call.context(), idempotency_key=key,
                           **params)


def _rebuild(call: Call, server_id: str, params: dict[str, Any]
             ) -> tuple[CommandResult, ServerInfo]:
    result = _act(call, server_id, "rebuild", params)
    return result, call.engine.get_server(server_id)



# --- actions ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Action:
    """How an action key maps to the engine: its name, parameters and status code."""

    engine_action: str
    params: dict[str, Any]
    status: int = 202
    admin_pass: str | None = None
    rebuild: bool = False
    create_image: bool = False
    #: a read: the answer is the body (``os-getConsoleOutput``)
    console: bool = False
    #: ``admin_pass`` was made here, not given: a repeat cannot tell it again (it was
    #: never recorded), so its answer leaves it out
    generated_pass: bool = False


_REBOOT_TYPES = ["HARD", "Hard", "hard", "SOFT", "Soft", "soft"]
_REBUILD_FIELDS: dict[str, tuple[tuple[int, int], tuple[int, int] | None]] = {
    "imageRef": ((2, 1), None), "name": ((2, 1), None), "metadata": ((2, 1), None),
    "adminPass": ((2, 1), None), "OS-DCF:diskConfig": ((2, 1), None),
    "preserve_ephemeral": ((2, 1), None), "accessIPv4": ((2, 1), None),
    "accessIPv6": ((2, 1), None), "personality": ((2, 1), (2, 56)),
    "description": ((2, 19), None), "key_name": ((2, 54), None),
    "user_data": ((2, 57), None), "trusted_image_certificates": ((2, 63), None),
    "hostname": ((2, 90), None),
}
_REBUILD_UNSUPPORTED = ("accessIPv4", "accessIPv6", "personality", "key_name", "user_data",
                        "trusted_image_certificates", "hostname")


def _parse_reboot(call: Call, value: Any) -> _Action:
    reboot = val.require_object(value, "reboot")
    val.require_keys(reboot, "reboot", ["type"])
    val.no_other_keys(reboot, "reboot", ["type"])
    kind = reboot["type"]
    if kind not in _REBOOT_TYPES:
        raise val.invalid_field("type", kind, f"{kind!r} is not one of {_REBOOT_TYPES}")
    return _Action("reboot", {"type": str(kind).upper()})


def _parse_rebuild(call: Call, value: Any) -> _Action:
    rebuild = val.require_object(value, "rebuild")
    val.require_keys(rebuild, "rebuild", ["imageRef"])
    val.no_other_keys(rebuild, "rebuild", _allowed(call, _REBUILD_FIELDS))
    unsupported = sorted(set(_REBUILD_UNSUPPORTED) & set(rebuild))
    if unsupported:
        raise ApiError(400, "Rebuilding with " + ", ".join(unsupported)
                       + " is not supported by vmledger.")
    params: dict[str, Any] = {"image": val.uuid_string(rebuild["imageRef"], "imageRef")}
    if "name" in rebuild:
        params["name"] = val.server_name(rebuild["name"])
    if "metadata" in rebuild:
        params["metadata"] = val.require_object(rebuild["metadata"], "metadata")
    if "description" in rebuild:
        params["description"] = val.description(rebuild["description"])
    if "preserve_ephemeral" in rebuild:
        val.boolean(rebuild["preserve_ephemeral"], "preserve_ephemeral")
    disk_config = rebuild.get("OS-DCF:diskConfig", "MANUAL")
    if disk_config not in ("AUTO", "MANUAL"):
        raise val.invalid_field("OS-DCF:diskConfig", disk_config,
                                f"{disk_config!r} is not one of ['AUTO', 'MANUAL']")
    admin_pass = rebuild.get("adminPass")
    if admin_pass is not None and not isinstance(admin_pass, str):
        raise val.invalid_field("adminPass", admin_pass,
                                f"{admin_pass!r} is not of type 'string'")
    return _Action("rebuild", params,
                   admin_pass=admin_pass if admin_pass is not None else _new_password(),
                   rebuild=True, generated_pass=admin_pass is None)


def _parse_resize(call: Call, value: Any) -> _Action:
    resize = val.require_object(value, "resize")
    val.require_keys(resize, "resize", ["flavorRef"])
    val.no_other_keys(resize, "resize", ["flavorRef", "OS-DCF:diskConfig"])
    return _Action("resize", {"flavor": val.reference(resize["flavorRef"], "flavorRef")})


def _parse_lock(call: Call, value: Any) -> _Action:
    if value is None or value == {}:
        return _Action("lock", {})
    if not call.at_least(2, 73):
        raise val.invalid_field("lock", value, f"{value!r} is not of type 'null'")
    lock = val.require_object(value, "lock")
    val.no_other_keys(lock, "lock", ["locked_reason"])
    reason = val.string(lock.get("locked_reason"), "locked_reason", min_length=1,
                        max_length=255, nullable=True)
    return _Action("lock", {"reason": reason} if reason is not None else {})


def _parse_unshelve(call: Call, value: Any) -> _Action:
    """``{"unshelve": null}``; from 2.77 ``{"availability_zone": name}`` (for a server
    whose guest was offloaded); from 2.91 also ``{"host": name}`` (administrators) and
    a null availability zone (unpin: there is one zone here, so nothing to do)."""
    if value is None or not call.at_least(2, 77):
        return _Action("unshelve", {})
    unshelve = val.require_object(value, "unshelve")
    allowed = ["availability_zone", "host"] if call.at_least(2, 91) else ["availability_zone"]
    val.no_other_keys(unshelve, "unshelve", allowed)
    params: dict[str, Any] = {}
    if "availability_zone" in unshelve:
        zone = val.string(unshelve["availability_zone"], "availability_zone", min_length=1,
                          max_length=255, nullable=call.at_least(2, 91))
        if zone is not None:
            params["availability_zone"] = zone
    elif not call.at_least(2, 91):
        raise val.invalid_field("unshelve", value,
                                "'availability_zone' is a required property")
    if "host" in unshelve:
        params["host"] = val.string(unshelve["host"], "host", min_length=1, max_length=255)
    return _Action("unshelve", params)


def _parse_rescue(call: Call, value: Any) -> _Action:
    """``{"rescue": null}`` or ``{"rescue": {"adminPass"?, "rescue_image_ref"?}}``: the
    answer is ``{"adminPass": …}`` (the one given, or a new one: returned, never
    recorded; the guest is not told it)."""
    params: dict[str, Any] = {}
    admin_pass = None
    if value is not None:
        rescue = val.require_object(value, "rescue")
        val.no_other_keys(rescue, "rescue", ["adminPass", "rescue_image_ref"])
        admin_pass = val.string(rescue.get("adminPass"), "adminPass", nullable=True)
        if "rescue_image_ref" in rescue:
            params["image"] = val.uuid_string(rescue["rescue_image_ref"], "rescue_image_ref")
    return _Action("rescue", params, status=200,
                   admin_pass=admin_pass if admin_pass is not None else _new_password(),
                   generated_pass=admin_pass is None)


def _parse_evacuate(call: Call, value: Any) -> _Action:
    """Nova's ``evacuate`` body per microversion: ``host`` (optional), ``adminPass``;
    before 2.14 ``onSharedStorage`` (required; there is no shared storage here, so true
    is refused: the disk is always made anew from the image); 2.29 to 2.67 ``force`` (with
    a host: the host need not take servers). From 2.95 the server is left stopped. The
    answer is 200, with ``{"adminPass"}`` before 2.14 (the one given or a new one:
    returned, never recorded; the guest is not told it), else empty."""
    entity = val.require_object(value, "evacuate")
    allowed = ["host", "adminPass"]
    if not call.at_least(2, 14):
        allowed.append("onSharedStorage")
    elif call.at_least(2, 29) and not call.at_least(2, 68):
        allowed.append("force")
    val.no_other_keys(entity, "evacuate", allowed)
    params: dict[str, Any] = {"stop": call.at_least(2, 95)}
    host = val.string(entity.get("host"), "host", min_length=1, max_length=255,
                      nullable=True)
    if host is not None:
        params["host"] = host
    admin_pass = val.string(entity.get("adminPass"), "adminPass", nullable=True)
    if not call.at_least(2, 14):
        val.require_keys(entity, "evacuate", ["onSharedStorage"])
        if val.boolean(entity["onSharedStorage"], "onSharedStorage"):
            if admin_pass is not None:
                raise ApiError(400, "admin password can't be changed on existing disk")
            raise ApiError(400, "Invalid state of instance files on shared storage")
    if "force" in entity and val.boolean(entity["force"], "force"):
        if host is None:
            raise ApiError(400, "Can't force to a non-provided destination")
        params["force"] = True
    return _Action("evacuate", params, status=200,
                   admin_pass=admin_pass if admin_pass is not None else _new_password(),
                   generated_pass=admin_pass is None)


def _parse_migrate(call: Call, value: Any) -> _Action:
    """Nova's ``migrate`` (cold migration, administrators): ``null`` or, from 2.56,
    ``{"host": ...}`` (null: the scheduler picks)."""
    if not call.at_least(2, 56) or value is None:
        val.null_or_empty(value, "migrate")
        return _Action("migrate", {})
    entity = val.require_object(value, "migrate")
    val.no_other_keys(entity, "migrate", ["host"])
    host = val.string(entity.get("host"), "host", min_length=1, max_length=255,
                      nullable=True)
    return _Action("migrate", {} if host is None else {"host": host})


def _parse_live_migrate(call: Call, value: Any) -> _Action:
    """Nova's ``os-migrateLive`` (administrators) per microversion: ``host`` (required,
    nullable: the scheduler picks) and ``block_migration`` (required; a boolean, or
    ``auto`` from 2.25); before 2.25 ``disk_over_commit`` (required, ignored); from 2.30
    to 2.67 ``force`` (with a host: the scheduler is skipped)."""
    entity = val.require_object(value, "os-migrateLive")
    allowed = ["host", "block_migration"]
    if not call.at_least(2, 25):
        allowed.append("disk_over_commit")
    if call.at_least(2, 30) and not call.at_least(2, 68):
        allowed.append("force")
    val.no_other_keys(entity, "os-migrateLive", allowed)
    val.require_keys(entity, "os-migrateLive",
                     ["host", "block_migration"] + (
                         [] if call.at_least(2, 25) else ["disk_over_commit"]))
    host = val.string(entity.get("host"), "host", min_length=1, max_length=255,
                      nullable=True)
    block = entity["block_migration"]
    if not (call.at_least(2, 25) and block == "auto"):
        block = val.boolean(block, "block_migration")
    if "disk_over_commit" in entity:
        val.boolean(entity["disk_over_commit"], "disk_over_commit")
    params: dict[str, Any] = {"block_migration": block}
    if host is not None:
        params["host"] = host
    if "force" in entity and val.boolean(entity["force"], "force"):
        params["force"] = True
    return _Action("live_migrate", params)


def _parse_crash_dump(call: Call, value: Any) -> _Action:
    """``{"trigger_crash_dump": null}``, from 2.17 (before, as Nova: not found)."""
    if not call.at_least(2, 17):
        raise ApiError(404, "The resource could not be found.")
    if value is not None:
        raise val.invalid_field("trigger_crash_dump", value, f"{value!r} is not of type 'null'")
    return _Action("trigger_crash_dump", {})


_LENGTH = re.compile(r"^-?[0-9]+$")


def _parse_console_output(call: Call, value: Any) -> _Action:
    """``{"os-getConsoleOutput": {"length": lines}}``: ``length`` an integer of at least
    -1, as a number or a string of digits, or null (everything); nothing else."""
    body = val.require_object(value, "os-getConsoleOutput")
    val.no_other_keys(body, "os-getConsoleOutput", ["length"])
    length = body.get("length")
    if length is None:
        return _Action("console_output", {}, console=True)
    if isinstance(length, bool) or not isinstance(length, int | str):
        raise val.invalid_field("length", length,
                                f"{length!r} is not of type 'integer', 'string', 'null'")
    if isinstance(length, str):
        if not _LENGTH.match(length):
            raise val.invalid_field("length", length,
                                    f"{length!r} does not match '^-?[0-9]+$'")
        length = int(length)
    if length < -1:
        raise val.invalid_field("length", length, f"{length} is less than the minimum of -1")
    return _Action("console_output", {"length": length}, console=True)


def _console_output(call: Call, server_id: str, params: dict[str, Any]) -> str:
    owned_server(call.engine, call.principal, server_id)
    return call.engine.console_output(server_id, ctx=call.context(), **params)


def _parse_reset_state(call: Call, value: Any) -> _Action:
    reset = val.require_object(value, "os-resetState")
    val.require_keys(reset, "os-resetState", ["state"])
    val.no_other_keys(reset, "os-resetState", ["state"])
    state = reset["state"]
    if state not in (lc.ACTIVE, lc.ERROR):
        raise val.invalid_field("state", state, f"{state!r} is not one of ['active', 'error']")
    return _Action("reset_state", {"state": state})


#: the last microversion that checks the image metadata quota on createImage (Nova's
#: ``MAX_IMAGE_META_PROXY_API_VERSION``)
_IMAGE_META_QUOTA_UNTIL = (2, 38)
#: Nova's default ``metadata_items`` quota
IMAGE_METADATA_QUOTA = 128


def _parse_create_image(call: Call, value: Any) -> _Action:
    """``{"createImage": {"name": …, "metadata"?: {…}}}``: Nova's ``create_image`` schema
    (name 1-255 characters without leading or trailing whitespace; metadata keys of
    ``[a-zA-Z0-9-_:. ]``, string values up to 255 characters)."""
    entity = val.require_object(value, "createImage")
    val.no_other_keys(entity, "createImage", ["name", "metadata"])
    val.require_keys(entity, "createImage", ["name"])
    name = val.server_name(entity["name"])
    metadata = val.metadata(entity.get("metadata", {}))
    return _Action("create_image", {"name": name, "metadata": metadata}, create_image=True)


def _create_image(call: Call, server_id: str, engine_action: str, params: dict[str, Any]
                  ) -> CommandResult:
    """Snapshot (``create_image``) or back up (``create_backup``) the server; the new
    image's id (in the result's details). The request id recorded (the instance
    action) is this call's, or with a repeated Idempotency-Key the first call's."""
    owned_server(call.engine, call.principal, server_id)
    metadata: dict[str, str] = params["metadata"]
    if len(metadata) > IMAGE_METADATA_QUOTA and call.version <= _IMAGE_META_QUOTA_UNTIL:
        raise ApiError(403, "Image metadata limit exceeded")
    if engine_action == "create_backup":
        return call.engine.create_backup(server_id, params["name"],
                                         backup_type=params["backup_type"],
                                         rotation=params["rotation"], metadata=metadata,
                                         ctx=call.context(),
                                         idempotency_key=idempotency.key_of(call))
    return call.engine.create_image(server_id, params["name"], metadata=metadata,
                                    ctx=call.context(),
                                    idempotency_key=idempotency.key_of(call))


_ROTATION = re.compile(r"^[0-9]+$")


def _parse_create_backup(call: Call, value: Any) -> _Action:
    """``{"createBackup": {"name", "backup_type", "rotation", "metadata"?}}``: Nova's
    ``create_backup`` schema (``rotation`` a non-negative integer, or a string of
    digits)."""
    entity = val.require_object(value, "createBackup")
    val.no_other_keys(entity, "createBackup", ["name", "backup_type", "rotation", "metadata"])
    val.require_keys(entity, "createBackup", ["name", "backup_type", "rotation"])
    name = val.server_name(entity["name"])
    backup_type = val.string(entity["backup_type"], "backup_type")
    rotation = entity["rotation"]
    if isinstance(rotation, str) and _ROTATION.match(rotation):
        rotation = int(rotation)
    if isinstance(rotation, bool) or not isinstance(rotation, int):
        raise val.invalid_field("rotation", rotation,
                                f"{rotation!r} is not of type 'integer', 'string'")
    if rotation < 0:
        raise val.invalid_field("rotation", rotation, f"{rotation} is less than the minimum of 0")
    metadata = val.metadata(entity.get("metadata", {}))
    return _Action("create_backup", {"name": name, "backup_type": backup_type,
                                     "rotation": rotation, "metadata": metadata},
                   create_image=True)


def _simple(engine_action: str, status: int = 202) -> Callable[[Call, Any], _Action]:
    def parse(call: Call, value: Any) -> _Action:
        val.null_or_empty(value, engine_action)
        return _Action(engine_action, {}, status=status)
    return parse


ACTION_PARSERS: dict[str, Callable[[Call, Any], _Action]] = {
    "reboot": _parse_reboot,
    "rebuild": _parse_rebuild,
    "resize": _parse_resize,
    "confirmResize": _simple("confirm_resize", status=204),
    "revertResize": _simple("revert_resize"),
    "pause": _simple("pause"),
    "unpause": _simple("unpause"),
    "suspend": _simple("suspend"),
    "resume": _simple("resume"),
    "os-stop": _simple("stop"),
    "os-start": _simple("start"),
    "lock": _parse_lock,
    "unlock": _simple("unlock"),
    "os-resetState": _parse_reset_state,
    "createImage": _parse_create_image,
    "createBackup": _parse_create_backup,
    "shelve": _simple("shelve"),
    "shelveOffload": _simple("shelve_offload"),
    "unshelve": _parse_unshelve,
    "os-getConsoleOutput": _parse_console_output,
    "rescue": _parse_rescue,
    "unrescue": _simple("unrescue"),
    "trigger_crash_dump": _parse_crash_dump,
    "restore": _simple("restore"),
    "forceDelete": _simple("force_delete"),
    "evacuate": _parse_evacuate,
    "migrate": _parse_migrate,
    "os-migrateLive": _parse_live_migrate,
}


async def server_action(call: Call) -> Response:
    server_id = call.request.path_params["server_id"]
    body = await read_json(call.request)
    if body is EMPTY or not isinstance(body, dict) or len(body) != 1:
        raise ApiError(400, MALFORMED_BODY)
    key, value = next(iter(body.items()))
    parser = ACTION_PARSERS.get(key)
    if parser is None:
        raise ApiError(400, f"There is no such action: {key}")
    note_command(call.request, key)  # the command's name in the metrics
    action = parser(call, value)
    if action.rebuild:
        result, info = await call.run(_rebuild, call, server_id, action.params)
        admin_pass = _told_pass(call, action, result)
        groups = await call.run(server_groups_of, call, info.doc)
        viewer = await call.run(call.server_viewer)
        body = {"server": rebuild_view(info.doc, viewer, admin_pass, groups)}
        return JSONResponse(body, status_code=202, headers=_location(call, server_id))
    if action.console:
        output = await call.run(_console_output, call, server_id, action.params)
        return JSONResponse({"output": output}, status_code=200)
    if action.create_image:
        result = await call.run(_create_image, call, server_id, action.engine_action,
                                action.params)
        idempotency.answered(call, result)
        image_id = str(result.details["image_id"])
        if call.at_least(2, 45):
            return JSONResponse({"image_id": image_id}, status_code=202)
        # before 2.45 the new image is in the Location header (Nova's points at Glance;
        # here at the compute images proxy, which serves it up to 2.35); a backup with
        # a rotation of 0 has none (it is deleted once saved)
        if action.params.get("rotation") == 0:
            return Response(status_code=202)
        return Response(status_code=202,
                        headers={"Location": call.viewer.links.versioned("images", image_id)})
    result = await call.run(_act, call, server_id, action.engine_action, action.params)
    admin_pass = _told_pass(call, action, result)
    if action.engine_action == "rescue" or (action.engine_action == "evacuate"
                                            and not call.at_least(2, 14)):
        return JSONResponse({"adminPass": admin_pass} if admin_pass is not None else {},
                            status_code=action.status)
    return Response(status_code=action.status)


def _told_pass(call: Call, action: _Action, result: CommandResult) -> str | None:
    """The password the answer tells: none on a repeat when it was made for the first
    request (as Nova answers without ``enable_instance_password``)."""
    repeat = idempotency.answered(call, result)
    return None if repeat and action.generated_pass else action.admin_pass




__all__ = ["ACTION_PARSERS", "server_action"]
