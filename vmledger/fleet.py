"""The fleet: every compute host as the read models and this host's hypervisor show it —
compute services and their states, ``os-hypervisors``, the room left on each host, a
project's usage over time — and :class:`FleetReads`, the commands' read side
(:class:`~vmledger.domain.commands.reads.ReadSide`) over the read models."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from vmledger.adapters.hypervisor import Hypervisor
from vmledger.domain import lifecycle as lc
from vmledger.domain import server_group as groups
from vmledger.domain import status as st
from vmledger.domain.catalog import RESOURCES
from vmledger.domain.clock import Clock
from vmledger.domain.scheduling import AllocationRatios
from vmledger.projections import keypairs as keypair_view
from vmledger.projections.allocations import TABLE as ALLOCATIONS
from vmledger.projections.allocations import host_servers, host_usage
from vmledger.projections.compute_services import service_states
from vmledger.projections.hosts import REPORT_INTERVAL, host_reports, is_up, save_report
from vmledger.projections.migrations import COLUMNS as MIGRATION_COLUMNS
from vmledger.projections.migrations import list_migrations
from vmledger.projections.quotas import class_limits, project_limits
from vmledger.projections.runner import ViewUpdater
from vmledger.projections.server_groups import get_group, list_groups, member_docs
from vmledger.projections.servers import ServersView
from vmledger.projections.store import MarkerNotFound
from vmledger.projections.usage import server_usage

log = logging.getLogger(__name__)

#: a host whose hypervisor never answered (``os-hypervisors`` shows it down)
_UNKNOWN_HOST: dict[str, Any] = {
    "hypervisor_type": "unknown", "hypervisor_version": 0, "vcpus": 0, "memory_mb": 0,
    "local_gb": 0, "disk_available_least": None, "host_ip": "127.0.0.1", "cpu_info": {},
    "uptime": None}


def _alive(service: dict[str, Any]) -> bool:
    """Whether a host's compute service counts as up: heard from, not forced down."""
    return bool(service["up"]) and not service["forced_down"]


class Fleet:
    """The compute hosts: this process's own (``host``, whose ``hypervisor`` is asked
    directly) and every other one whose agent reports to the shared database."""

    def __init__(self, view: ServersView, updater: ViewUpdater, hypervisor: Hypervisor,
                 host: str, own_hosts: Sequence[str], clock: Clock, *,
                 service_down_time: timedelta, allocation_ratios: AllocationRatios) -> None:
        if service_down_time <= timedelta(0):
            raise ValueError("the service down time must be above 0")
        self.view = view
        self.updater = updater
        self.hypervisor = hypervisor
        self.host = host
        self.own_hosts = tuple(own_hosts)
        self.clock = clock
        #: a host not heard from for longer is down (Nova's ``service_down_time``)
        self.service_down_time = service_down_time
        #: how often this process's agent reports its host (Nova's ``report_interval``),
        #: often enough for the down time
        self.report_interval = min(REPORT_INTERVAL, service_down_time / 4)
        #: how far each host's capacity is overcommitted, and the memory kept back
        self.allocation_ratios = allocation_ratios
        self._last_host_info: dict[str, Any] | None = None
        self._reported_at: datetime | None = None

    # --- this host ------------------------------------------------------------------
    def host_info(self) -> dict[str, Any] | None:
        """This host's hypervisor report, asked now (None when it did not answer)."""
        try:
            info = dict(self.hypervisor.host_info())
        except Exception:
            log.warning("the hypervisor did not report its host", exc_info=True)
            return None
        self._last_host_info = info
        return info

    def report_host(self) -> bool:
        """Record this host's hypervisor report (its heartbeat), at most every
        :attr:`report_interval` of the clock; the agent's passes call it. False when the
        hypervisor did not answer (the host then goes down for the other processes)."""
        now = self.clock.now()
        if (self._reported_at is not None
                and timedelta(0) <= now - self._reported_at < self.report_interval):
            return True
        info = self.host_info()
        if info is None:
            return False
        save_report(self.view, self.host, info, now)
        self._reported_at = now
        return True

    # --- every host -----------------------------------------------------------------
    def known_hosts(self) -> list[str]:
        """Every compute host, by name: this process's own, those whose agents have
        reported and those an administrator changed."""
        return [s["host"] for s in self.compute_services()]

    def compute_services(self, reports: dict[str, dict[str, Any]] | None = None
                         ) -> list[dict[str, Any]]:
        """Each host's compute service, by host name: ``host``, ``disabled``,
        ``disabled_reason``, ``forced_down``, ``up`` (this process's own host always;
        another while its agent's last report is recent), ``updated_at`` (the later of
        the last report and the last administrative change, or None)."""
        states = service_states(self.view)
        reports = host_reports(self.view) if reports is None else reports
        now = self.clock.now()
        out = []
        listed = {h for h, s in states.items() if not s.get("deleted")}
        for host in sorted({*self.own_hosts, *reports, *listed}):
            state = states.get(host) or {}
            report = reports.get(host)
            times = [t for t in (state.get("updated_at"),
                                 report["reported_at"] if report else None) if t is not None]
            out.append({"host": host, "disabled": bool(state.get("disabled")),
                        "disabled_reason": state.get("disabled_reason"),
                        "forced_down": bool(state.get("forced_down")),
                        "up": host in self.own_hosts or is_up(
                            report, now, self.service_down_time),
                        "updated_at": max(times) if times else None})
        return out

    def usable_hosts(self) -> list[str]:
        """Hosts whose compute service takes new servers (up, not disabled)."""
        return [s["host"] for s in self.compute_services()
                if _alive(s) and not s["disabled"]]

    def host_is_up(self, host: str) -> bool:
        return any(s["host"] == host and _alive(s) for s in self.compute_services())

    def host_statuses(self) -> dict[str, str]:
        """Each listed host's status as Nova's ``host_status`` (2.16) shows it: ``DOWN``
        when forced down, else ``MAINTENANCE`` when disabled, else ``UP`` while its
        agent reports, else ``UNKNOWN``. A host without a compute service (never
        heard of, or deleted) is not in it: its servers show ``""``."""
        out = {}
        for s in self.compute_services():
            if s["forced_down"]:
                out[s["host"]] = "DOWN"
            elif s["disabled"]:
                out[s["host"]] = "MAINTENANCE"
            else:
                out[s["host"]] = "UP" if s["up"] else "UNKNOWN"
        return out

    def host_room(self, hosts: Sequence[str]) -> dict[str, dict[str, float]]:
        """The room left on each of ``hosts`` for new servers: ``vcpus``, ``ram`` (MB)
        and ``disk`` (GB), each its hypervisor's capacity (its last report; asked now
        for this process's own host) times its allocation ratio (less the reserved
        memory, for RAM), less what the servers on it hold (the allocations read
        model, caught up first: a request decided again after losing a race on a host
        counts what the winner placed there). A host whose capacity is not known is left
        out (not filtered)."""
        self.updater.catch_up()
        reports: dict[str, dict[str, Any]] | None = None
        used = host_usage(self.view, hosts)
        room: dict[str, dict[str, float]] = {}
        for host in hosts:
            if host in self.own_hosts:
                info = self._last_host_info or self.host_info()
            else:
                if reports is None:
                    reports = host_reports(self.view)
                info = (reports.get(host) or {}).get("info")
            capacity = self.allocation_ratios.capacity(info)
            if capacity is None:
                continue
            held = used.get(host) or {}
            room[host] = {r: capacity[r] - held.get(r, 0) for r in RESOURCES}
        return room

    def hypervisors(self, *, with_servers: bool = True) -> list[dict[str, Any]]:
        """Every host's compute node, as Nova's ``os-hypervisors`` shows it: what the
        hypervisor reports of the host (asked now for this process's own host, its
        agent's last report for the others) and what the servers placed on it hold
        (``vcpus_used``, ``memory_mb_used`` — with the reserved memory, as Nova's
        resource tracker counts it —, ``local_gb_used``: the allocations the scheduler
        counts, so a resize holds both flavors until confirmed or reverted;
        ``running_vms``, ``current_workload``); offloaded servers and those no host took
        hold nothing and are not counted. With ``with_servers`` also ``servers``, those
        servers' ids and names (else None): the only part whose cost grows with the
        host's servers. ``state`` is ``down`` when the hypervisor cannot answer, or
        another host's agent has not reported within the service down time (its last
        answer is shown, or zeros)."""
        out: list[dict[str, Any]] = []
        reports = host_reports(self.view)
        # the per-host sums the read models keep: no server is read
        usage = host_usage(self.view)
        for service in self.compute_services(reports):
            host = service["host"]
            report = reports.get(host)
            if host in self.own_hosts:
                info = self.host_info()
                state = "up" if info is not None and not service["forced_down"] else "down"
                info = info or self._last_host_info or (report or {}).get("info")
            else:
                info = (report or {}).get("info")
                state = "up" if _alive(service) else "down"
            info = info or _UNKNOWN_HOST
            held = usage.get(host) or {}
            vcpus = held.get("vcpus", 0)
            # as Nova's resource tracker: the reserved memory counts as used
            memory = held.get("ram", 0) + self.allocation_ratios.reserved_host_memory_mb
            disk = held.get("disk", 0)
            workload = self.view.workload_on_host(host, lc.BUILDING,
                                                  sorted(st.IO_WORKLOAD_TASKS), lc.VM_STATES,
                                                  ALLOCATIONS)
            free_disk = int(info["local_gb"]) - disk
            least = info.get("disk_available_least")
            out.append({
                **info, "host": host, "hypervisor_hostname": host, "state": state,
                "status": "disabled" if service["disabled"] else "enabled",
                "disabled_reason": service["disabled_reason"], "vcpus_used": vcpus,
                "memory_mb_used": memory,
                "local_gb_used": disk, "free_ram_mb": int(info["memory_mb"]) - memory,
                "free_disk_gb": free_disk, "running_vms": held.get("servers", 0),
                "current_workload": workload,
                "disk_available_least": free_disk if least is None else int(least),
                "servers": host_servers(self.view, host, self.view.table)
                if with_servers else None})
        return out

    def migrations(self, *, server_id: str | None = None, status: str | None = None,
                   host: str | None = None, since: datetime | None = None,
                   before: datetime | None = None, newest_first: bool = False,
                   limit: int | None = None, marker: str | None = None,
                   where: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Nova's migration records, as rows of the migrations view (see
        :meth:`vmledger.Engine.migrations`)."""
        equal = dict(where or {})
        if server_id is not None:
            equal["server_id"] = str(server_id)
        if status is not None:
            equal["status"] = status
        unknown = set(equal) - set(MIGRATION_COLUMNS)
        if unknown:
            raise TypeError(f"no migration column {sorted(unknown)[0]!r}")
        return list_migrations(self.view, equal=equal, host=host, since=since, before=before,
                               newest_first=newest_first, limit=limit, marker=marker)

    def usage(self, start: datetime, stop: datetime, *, project_id: str | None = None,
              limit: int | None = None, marker: str | None = None) -> list[dict[str, Any]]:
        """Nova's simple tenant usage (see :meth:`vmledger.Engine.usage`)."""
        after: tuple[str, str] | None = None
        if marker is not None:
            found = self.view.get(str(marker))
            if found is None:
                raise MarkerNotFound(marker)
            after = (str(found.get("project_id")), str(found["id"]))
        now = self.clock.now()
        out: list[dict[str, Any]] = []
        chunk = 500
        while limit is None or len(out) < limit:
            rows = self.view.alive_between(start, stop, project_id=project_id, after=after,
                                           limit=chunk)
            for row in rows:
                doc = row.doc
                after = (str(doc.get("project_id")), row.id)
                info = server_usage(doc, start, stop, now)
                if info is not None:
                    out.append(info)
                    if limit is not None and len(out) >= limit:
                        break
            if len(rows) < chunk:
                break
        return out


class FleetReads:
    """The commands' read side over the read models (see
    :class:`~vmledger.domain.commands.reads.ReadSide`)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.view = fleet.view
        self.updater = fleet.updater

    def usable_hosts(self) -> Sequence[str]:
        return self.fleet.usable_hosts()

    def known_hosts(self) -> Sequence[str]:
        return self.fleet.known_hosts()

    def host_is_up(self, host: str) -> bool:
        return self.fleet.host_is_up(host)

    def host_room(self, hosts: Sequence[str]) -> Mapping[str, Mapping[str, float]]:
        return self.fleet.host_room(hosts)

    def host_in_use(self, host: str) -> str | None:
        if self.view.any_on_host(host):
            return ("Unable to delete compute service that is hosting instances. Migrate "
                    "or delete the instances first.")
        if any(m["status"] not in st.MIGRATION_SETTLED
               for m in list_migrations(self.view, host=host)):
            return ("Unable to delete compute service that has in-progress migrations. "
                    "Complete the migrations or delete the instances first.")
        return None

    def project_usage(self, project_id: str) -> Mapping[str, int]:
        """Caught up first, so every request admitted before (by any process) counts."""
        self.updater.catch_up()
        return self.view.project_usage(project_id)

    def project_limits(self, project_id: str) -> dict[str, int]:
        return {**class_limits(self.view), **project_limits(self.view, project_id)}

    def group_member_hosts(self, group_id: str) -> list[str]:
        """Caught up first, so members placed by any process before are counted."""
        self.updater.catch_up()
        group = get_group(self.view, group_id)
        if group is None:
            return []
        return [str(d.get("host")) for d in member_docs(self.view, group["owner_project_id"],
                                                        group_id)
                if (d.get("fault") or {}).get("message") != groups.NO_VALID_HOST]

    def server_group_count(self, project_id: str) -> int:
        return len(list_groups(self.view, project_id))

    def keypair_count(self, user_id: str) -> int:
        return len(keypair_view.list_keypairs(self.view, user_id))
