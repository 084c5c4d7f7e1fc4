"""``GET /servers/{id}/diagnostics``: what the hypervisor knows of a server's guest
(administrators only, as Nova's default policy).

From 2.48 the answer is Nova's standard form (state, driver, hypervisor, num_cpus,
memory_details, cpu_details, nic_details, disk_details…). Before 2.48 Nova answered
whatever the driver said; here a flat form of the same facts, in the libvirt driver's
key style (``cpu0_time``, ``memory``, ``vda_read``…).
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody
from vmledger.api.servers import owned_server


def _legacy(standard: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for cpu in standard["cpu_details"]:
        flat[f"cpu{cpu['id']}_time"] = cpu["time"]
    memory = standard["memory_details"]
    flat["memory"] = (memory["maximum"] or 0) * 1024  # KiB, as libvirt's
    flat["memory-actual"] = (memory["used"] or 0) * 1024
    for index, disk in enumerate(standard["disk_details"]):
        dev = f"vd{chr(ord('a') + index)}"
        flat.update({f"{dev}_read": disk["read_bytes"], f"{dev}_read_req":
                     disk["read_requests"], f"{dev}_write": disk["write_bytes"],
                     f"{dev}_write_req": disk["write_requests"],
                     f"{dev}_errors": disk["errors_count"]})
    return flat


def _read(call: Call, server_id: str) -> dict[str, Any]:
    owned_server(call.engine, call.principal, server_id)
    return call.engine.diagnostics(server_id, ctx=call.context())


async def show_diagnostics(call: Call) -> Response:
    if not call.principal.is_admin:
        raise ApiError(403, "Policy doesn't allow os_compute_api:os-server-diagnostics to "
                            "be performed.")
    standard = await call.run(_read, call, call.request.path_params["server_id"])
    return JSONBody(standard if call.at_least(2, 48) else _legacy(standard))


__all__ = ["show_diagnostics"]
