"""``/os-aggregates``: host aggregates (administrators). vmledger has none and cannot make
any (each engine is one host in the one zone, ``nova``), so the list is empty and any
aggregate is not found; clients that list them (``openstack hypervisor show``) work.
"""

from __future__ import annotations

from starlette.responses import Response

from vmledger.api.faults import ApiError
from vmledger.api.http import Call
from vmledger.api.rendering import JSONBody


def _admin(call: Call, rule: str) -> None:
    if not call.principal.is_admin:
        raise ApiError(403, f"Policy doesn't allow os_compute_api:os-aggregates:{rule} to "
                            "be performed.")


async def list_aggregates(call: Call) -> Response:
    _admin(call, "index")
    return JSONBody({"aggregates": []})


async def show_aggregate(call: Call) -> Response:
    _admin(call, "show")
    aggregate_id = call.request.path_params["aggregate_id"]
    raise ApiError(404, f"Aggregate {aggregate_id} could not be found.")


__all__ = ["list_aggregates", "show_aggregate"]
