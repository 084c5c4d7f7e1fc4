"""Usage of servers over a period (Nova's ``os-simple-tenant-usage``), from the servers view.

As Nova's, a server's usage runs from its launch (``launched_at``: set when it was built,
and again by a rebuild, a resize or an unshelve) to its termination (``terminated_at``,
set by a delete) or the end of the period, and is charged at its current flavor. A server
counts when it launched before the period ends and was not terminated by its start;
servers that never launched cost nothing and are left out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def server_usage(doc: dict[str, Any], start: datetime, stop: datetime, now: datetime
                 ) -> dict[str, Any] | None:
    """One server's usage between ``start`` and ``stop`` (aware datetimes), or None when
    it did not run then. Times in the result are naive UTC, as Nova's."""
    launched = doc.get("launched_at")
    terminated = doc.get("terminated_at")
    if not isinstance(launched, datetime) or launched >= stop:
        return None
    if not isinstance(terminated, datetime):
        terminated = None
    if terminated is not None and terminated <= start:
        return None
    begin = max(launched, start)
    end = min(stop, terminated) if terminated is not None else stop
    flavor = doc.get("flavor") or {}
    uptime = (terminated if terminated is not None else now) - launched
    return {
        "instance_id": doc["id"],
        "name": doc.get("name") or "",
        "tenant_id": doc.get("project_id") or "",
        "flavor": flavor.get("name") or "",
        "hours": max((end - begin).total_seconds(), 0.0) / 3600.0,
        "memory_mb": int(flavor.get("ram") or 0),
        "local_gb": int(flavor.get("disk") or 0) + int(flavor.get("ephemeral") or 0),
        "vcpus": int(flavor.get("vcpus") or 0),
        "started_at": _naive_utc(launched),
        "ended_at": _naive_utc(terminated) if terminated is not None else None,
        "state": "terminated" if terminated is not None else str(doc.get("vm_state")),
        "uptime": int(uptime.total_seconds()),
    }


def tenant_usages(usages: list[dict[str, Any]], start: datetime, stop: datetime, *,
                  detailed: bool) -> list[dict[str, Any]]:
    """Per-project totals of server usages (in their order), each with its servers'
    usages when ``detailed``."""
    out: dict[str, dict[str, Any]] = {}
    for info in usages:
        summary = out.get(info["tenant_id"])
        if summary is None:
            summary = out[info["tenant_id"]] = {
                "tenant_id": info["tenant_id"],
                **({"server_usages": []} if detailed else {}),
                "total_local_gb_usage": 0.0, "total_vcpus_usage": 0.0,
                "total_memory_mb_usage": 0.0, "total_hours": 0.0,
                "start": _naive_utc(start), "stop": _naive_utc(stop)}
        hours = info["hours"]
        summary["total_local_gb_usage"] += info["local_gb"] * hours
        summary["total_vcpus_usage"] += info["vcpus"] * hours
        summary["total_memory_mb_usage"] += info["memory_mb"] * hours
        summary["total_hours"] += hours
        if detailed:
            summary["server_usages"].append(info)
    return list(out.values())


__all__ = ["server_usage", "tenant_usages"]
