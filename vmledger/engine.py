"""The composition root and the embedding façade.

:class:`Engine` builds the whole graph from settings — the event store, the servers
view and its updater, the hypervisor driver, the host agent and the timer — and offers
the calls a Python program needs: create and act on servers, read them back (from the
view, after the command is reflected in it), and read a server's event history.

Two ways to drive the agent and the timer: call :meth:`Engine.run_until_idle` (tests,
scripts, deterministic simulations) or :meth:`Engine.run_in_background`
(a long-running service).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from vmledger.adapters.hypervisor import Hypervisor, HypervisorError
from vmledger.adapters.simulator import Simulator
from vmledger.audit.ledger import HistoryPage, Ledger, LedgerEntry
from vmledger.audit.verify import VerifyReport, verify
from vmledger.domain import flavors as flavor_records
from vmledger.domain import keypair as keypairs
from vmledger.domain import lifecycle as lc
from vmledger.domain import quota as quotas
from vmledger.domain import server_group as groups
from vmledger.domain.catalog import RESOURCES, Catalog, Flavor
from vmledger.domain.clock import Clock, SystemClock
from vmledger.domain.errors import (
    BadRequest,
    Conflict,
    FlavorNotFound,
    Forbidden,
    InvalidState,
    NotFound,
    ServerNotFound,
)
from vmledger.domain.server import Context, Server
from vmledger.domain.service import (
    CommandResult,
    ServerService,
    keypair_owner,
    new_request_id,
)
from vmledger.persistence import (
    DEFAULT_URL,
    environment,
    schema_lock,
    servers_view,
)
from vmledger.projections import guest_reads
from vmledger.projections import images as image_view
from vmledger.projections import keypairs as keypair_view
from vmledger.projections.actions import InstanceActions, get_action, list_actions
from vmledger.projections.allocations import Allocations, allocation_of, host_usage
from vmledger.projections.compute_services import ComputeServices, service_states
from vmledger.projections.flavors import FlavorRecords, flavor_access, flavor_overrides
from vmledger.projections.hosts import (
    REPORT_INTERVAL,
    SERVICE_DOWN_TIME,
    delete_report,
    host_reports,
    is_up,
    save_report,
)
from vmledger.projections.hosts import create_table as create_host_reports
from vmledger.projections.images import Images
from vmledger.projections.keypairs import Keypairs
from vmledger.projections.migrations import COLUMNS as MIGRATION_COLUMNS
from vmledger.projections.migrations import Migrations, list_migrations
from vmledger.projections.quotas import QuotaClasses, QuotaSets, class_limits, project_limits
from vmledger.projections.runner import ViewUpdater
from vmledger.projections.server_groups import (
    ServerGroups,
    get_group,
    list_groups,
    member_docs,
)
from vmledger.projections.servers import ColumnFilter, MarkerNotFound, StoredServer
from vmledger.projections.usage import server_usage
from vmledger.workers.agent import HostAgent
from vmledger.workers.timer import Timer

log = logging.getLogger(__name__)
T = TypeVar("T")

#: what Nova removes from console output (control characters but tab and newline)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f]")
#: a host whose hypervisor never answered (``os-hypervisors`` shows it down)
_UNKNOWN_HOST: dict[str, Any] = {
    "hypervisor_type": "unknown", "hypervisor_version": 0, "vcpus": 0, "memory_mb": 0,
    "local_gb": 0, "disk_available_least": None, "host_ip": "127.0.0.1", "cpu_info": {},
    "uptime": None}


@dataclass(frozen=True)
class ServerInfo:
    """A server as the read model shows it."""

    id: str
    name: str
    status: str
    vm_state: str
    task_state: str | None
    power_state: int
    flavor: dict[str, Any]
    image: dict[str, Any]
    #: the host it is placed on; None when no host could take it
    host: str | None
    project_id: str
    user_id: str
    locked: bool
    fault: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    launched_at: datetime | None
    confirm_deadline: datetime | None
    version: int
    doc: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ServerInfo:
        return cls(
            id=doc["id"], name=doc["name"], status=lc.status_of(doc["vm_state"],
                                                                doc["task_state"]),
            vm_state=doc["vm_state"], task_state=doc["task_state"],
            power_state=doc["power_state"], flavor=doc["flavor"], image=doc["image"],
            host=None if doc.get("unplaced") else doc["host"],
            project_id=doc["project_id"], user_id=doc["user_id"],
            locked=doc["locked"], fault=doc.get("fault"), created_at=doc["created_at"],
            updated_at=doc["updated_at"], launched_at=doc.get("launched_at"),
            confirm_deadline=doc.get("confirm_deadline"), version=doc["version"], doc=doc)


_BASE_FIELDS = ("originator_id", "originator_version", "timestamp", "originator_topic",
                "request_id", "user_id", "project_id", "cause")


@dataclass(frozen=True)
class HistoryEntry:
    """One event of a server's history, in readable form."""

    version: int
    timestamp: datetime
    event: str
    request_id: str
    user_id: str | None
    project_id: str | None
    cause: str
    details: dict[str, Any]

    @classmethod
    def from_event(cls, event: Server.Event) -> HistoryEntry:
        details = {k: v for k, v in vars(event).items() if k not in _BASE_FIELDS}
        return cls(version=event.originator_version, timestamp=event.timestamp,
                   event=type(event).__name__, request_id=event.request_id,
                   user_id=event.user_id, project_id=event.project_id, cause=event.cause,
                   details=details)

    def __str__(self) -> str:
        d = self.details
        what = {
            "Requested": lambda: f"create {d.get('name')!r} ({d.get('flavor', {}).get('name')})",
            "ActionRequested": lambda: f"{d.get('action')} → task {d.get('task_state')}",
            "TaskAdvanced": lambda: f"{d.get('action')} → task {d.get('task_state')}",
            "HypervisorCalled": lambda: (
                f"{d.get('driver')}.{d.get('call')} "
                f"{'failed: ' + str(d['error']) if d.get('error') else 'ok'}"
                f" ({d.get('duration_ms')} ms)"),
            "ActionCompleted": lambda: f"{d.get('action')} done → {d.get('vm_state')}",
            "ActionFailed": lambda: (f"{d.get('action')} failed → {d.get('vm_state')}: "
                                     f"{d.get('fault', {}).get('message')}"),
            "LockChanged": lambda: str(d.get("action")),
            "StateReset": lambda: f"reset to {d.get('vm_state')}",
            "DriftObserved": lambda: (
                f"drift: hypervisor power {d.get('observed_power_state')}, "
                f"{d.get('previous_vm_state')} → {d.get('vm_state')} ({d.get('drift_action')})"),
            "Updated": lambda: f"updated {sorted(d.get('changes', {}))}",
        }.get(self.event, lambda: self.event)()
        who = self.user_id or "-"
        return (f"v{self.version:<3} {self.timestamp.isoformat()}  {self.cause:<5} {who:<8} "
                f"{self.event:<16} {what}  [{self.request_id}]")


#: how long a read of a guest on another host (console output, diagnostics) waits for
#: that host's agent, in seconds (its passes run every fraction of a second)
GUEST_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class AllocationRatios:
    """How much of each host's capacity servers may take, as Nova's
    ``cpu_allocation_ratio``, ``ram_allocation_ratio``, ``disk_allocation_ratio`` (its
    initial defaults: 4.0, 1.0, 1.0) and ``reserved_host_memory_mb`` (512): a host takes
    a server only while its flavor fits in (capacity - reserved) * ratio less what the
    host's servers hold. ``float("inf")`` lifts a limit."""

    cpu: float = 4.0
    ram: float = 1.0
    disk: float = 1.0
    reserved_host_memory_mb: int = 512

    def __post_init__(self) -> None:
        for name in ("cpu", "ram", "disk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    value > 0):
                raise ValueError(f"the {name} allocation ratio must be above 0, "
                                 f"not {value!r}")
        reserved = self.reserved_host_memory_mb
        if isinstance(reserved, bool) or not isinstance(reserved, int) or reserved < 0:
            raise ValueError(f"the reserved host memory must be 0 MB or more, "
                             f"not {reserved!r}")

    def capacity(self, info: dict[str, Any] | None) -> dict[str, float] | None:
        """What servers may take of a host reporting ``info`` (its ``vcpus``,
        ``memory_mb``, ``local_gb``); None when it reported none of them. A resource
        reported as 0 (not measured: a disk directory the hypervisor could not read)
        is not limited."""
        if not info or not any(info.get(k) for k in ("vcpus", "memory_mb", "local_gb")):
            return None
        return {"vcpus": _limit(info.get("vcpus"), self.cpu),
                "ram": _limit(info.get("memory_mb"), self.ram,
                              self.reserved_host_memory_mb),
                "disk": _limit(info.get("local_gb"), self.disk)}


def _limit(reported: Any, ratio: float, reserved: int = 0) -> float:
    """(reported - reserved) * ratio; unlimited when nothing was reported (0)."""
    amount = _count(reported)
    if amount == 0:
        return math.inf  # not measured
    return (amount - reserved) * ratio if amount > reserved else 0.0


def _count(value: Any) -> int:
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def _alive(service: dict[str, Any]) -> bool:
    """Whether a host's compute service counts as up: heard from, not forced down."""
    return bool(service["up"]) and not service["forced_down"]


class Engine:
    """vmledger as a library: servers, their lifecycle and their history."""

    def __init__(self, url: str = DEFAULT_URL, *, clock: Clock | None = None,
                 hypervisor: Hypervisor | None = None, host: str = "compute-1",
                 confirm_window: timedelta = timedelta(hours=24),
                 catalog: Catalog | None = None, seed: int | None = None,
                 id_factory: Callable[[], uuid.UUID] | None = None,
                 request_id_factory: Callable[[], str] | None = None,
                 stopwatch: Callable[[], float] = time.perf_counter,
                 shelved_offload_time: timedelta | None = timedelta(0),
                 reclaim_interval: timedelta = timedelta(0),
                 service_down_time: timedelta = SERVICE_DOWN_TIME,
                 allocation_ratios: AllocationRatios | None = None) -> None:
        if confirm_window < timedelta(0):
            raise ValueError("the confirm window cannot be negative (0 disables it)")
        #: how far each host's capacity is overcommitted, and the memory kept back
        self.allocation_ratios = allocation_ratios or AllocationRatios()
        self.url = url
        self.clock: Clock = clock or SystemClock()
        env = environment(url)
        with schema_lock(env):  # processes starting together create the tables in turn
            self.service = ServerService(
                env, clock=self.clock, catalog=catalog, hosts=(host,),
                confirm_window=confirm_window, id_factory=id_factory or uuid.uuid4,
                request_id_factory=request_id_factory or new_request_id, seed=seed,
                shelved_offload_time=shelved_offload_time,
                reclaim_interval=reclaim_interval)
            self.view = servers_view(
                self.service.recorder.datastore,  # type: ignore[attr-defined]
                extensions=[InstanceActions(), Images(), Keypairs(), Migrations(),
                            QuotaSets(), QuotaClasses(), ServerGroups(), FlavorRecords(),
                            ComputeServices(), Allocations()])
            create_host_reports(self.view)
            guest_reads.create_table(self.view)
        self.updater = ViewUpdater(self.service, self.view)
        self.service.group_member_hosts = self._group_member_hosts
        self.service.project_usage = self._project_usage
        self.service.project_limits = self.quota_limits
        self.service.catalog.overrides = lambda: flavor_overrides(self.view)
        self.service.usable_hosts = lambda: [
            s["host"] for s in self.compute_services()
            if _alive(s) and not s["disabled"]]
        self.service.known_hosts = self.known_hosts
        self.service.host_room = self.host_room
        self.service.host_is_up = lambda host: any(
            s["host"] == host and _alive(s) for s in self.compute_services())
        self.service.metadata_limit = lambda project_id: (
            self.quota_limits(project_id)["metadata_items"] if project_id is not None
            else quotas.DEFAULTS["metadata_items"])
        self.ledger = Ledger(self.service)
        self.hypervisor: Hypervisor = hypervisor or Simulator(seed=seed or 0)
        self.host = host
        self._last_host_info: dict[str, Any] | None = None
        self._reported_at: datetime | None = None
        if service_down_time <= timedelta(0):
            raise ValueError("the service down time must be above 0")
        #: a host not heard from for longer is down (Nova's ``service_down_time``)
        self.service_down_time = service_down_time
        #: how long a read of a guest on another host waits for that host's agent (s)
        self.guest_read_timeout = GUEST_READ_TIMEOUT
        #: how often this engine's agent reports its host (Nova's ``report_interval``),
        #: often enough for the down time
        self.report_interval = min(REPORT_INTERVAL, service_down_time / 4)
        self.agent = HostAgent(self.service, self.updater, self.hypervisor, host,
                               stopwatch=stopwatch)
        self.timer = Timer(self.service, self.updater)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._follower: threading.Thread | None = None
        self.updater.catch_up()

    # --- contexts ---------------------------------------------------------------------
    def context(self, *, user_id: str = "admin", project_id: str = "admin",
                is_admin: bool = True, request_id: str | None = None) -> Context:
        """Who is asking. The default is an administrator of the project ``admin``.

        Without ``request_id`` the context can be reused: every call made with it gets a
        fresh request id. With one, every call records that id (as the HTTP API does).
        """
        ctx = self.service.context(user_id=user_id, project_id=project_id,
                                   is_admin=is_admin, request_id=request_id)
        return ctx if request_id else dataclasses.replace(ctx, pinned=False)

    def _ctx(self, ctx: Context | None) -> Context:
        if ctx is None:
            return self.context()
        if ctx.pinned:
            return ctx
        return dataclasses.replace(ctx, request_id=self.service.request_id_factory())

    # --- commands (each returns once the view reflects it) ------------------------------
    def _done(self, result: CommandResult) -> CommandResult:
        self.updater.ensure(result.position)
        self._wake.set()
        return result

    def create_server(self, name: str, flavor: str | int, image: str, *,
                      ctx: Context | None = None, idempotency_key: str | None = None,
                      **options: Any) -> ServerInfo:
        """Ask for a server (flavor and image by id or name); it starts in BUILD."""
        return self.create_servers(name, flavor, image, ctx=ctx,
                                   idempotency_key=idempotency_key, **options)[0]

    def create_servers(self, name: str, flavor: str | int, image: str, *, count: int = 1,
                       min_count: int | None = None, ctx: Context | None = None,
                       idempotency_key: str | None = None, **options: Any
                       ) -> list[ServerInfo]:
        """Ask for ``count`` servers in one request (named ``NAME-1`` … when more than
        one, as Nova names them); all or none are created. Within the project's quotas
        (instances, cores, RAM): as many as fit when that is at least ``min_count``
        (default ``count``), else :class:`~vmledger.domain.quota.QuotaExceeded`."""
        ctx = self._ctx(ctx)
        try:
            chosen = self.service.catalog.flavor(flavor)
        except FlavorNotFound:
            chosen = None  # the command says so
        if chosen is not None and not self.may_use_flavor(chosen, ctx):
            raise FlavorNotFound(str(flavor))
        result = self._done(self.service.create_server(
            ctx, name=name, flavor=flavor, image=image, idempotency_key=idempotency_key,
            count=count, min_count=min_count, **options))
        ids = result.details.get("server_ids") or [result.server_id]
        return [self.get_server(server_id, ctx=ctx) for server_id in ids]

    def act(self, server_id: str, action: str, *, ctx: Context | None = None,
            idempotency_key: str | None = None, **params: Any) -> CommandResult:
        """Request any action of the lifecycle table by name, with its parameters."""
        ctx = self._ctx(ctx)
        if action == "resize":
            try:
                wanted = self.service.catalog.flavor(params.get("flavor", ""))
            except FlavorNotFound:
                wanted = None  # the command says so
            if wanted is not None and not self.may_use_flavor(wanted, ctx):
                raise FlavorNotFound(str(params["flavor"]))
        return self._done(self.service.act(ctx, server_id, action,
                                           idempotency_key=idempotency_key, **params))

    def reboot(self, server_id: str, *, hard: bool = False, **kw: Any) -> CommandResult:
        return self.act(server_id, "reboot", type="HARD" if hard else "SOFT", **kw)

    def rebuild(self, server_id: str, image: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "rebuild", image=image, **kw)

    def resize(self, server_id: str, flavor: str | int, **kw: Any) -> CommandResult:
        return self.act(server_id, "resize", flavor=flavor, **kw)

    def confirm_resize(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "confirm_resize", **kw)

    def revert_resize(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "revert_resize", **kw)

    def pause(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "pause", **kw)

    def unpause(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "unpause", **kw)

    def suspend(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "suspend", **kw)

    def resume(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "resume", **kw)

    def stop(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "stop", **kw)

    def start(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "start", **kw)

    def delete(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "delete", **kw)

    def lock(self, server_id: str, reason: str | None = None, **kw: Any) -> CommandResult:
        return self.act(server_id, "lock", reason=reason, **kw)

    def unlock(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "unlock", **kw)

    def reset_state(self, server_id: str, state: str = lc.ACTIVE, **kw: Any) -> CommandResult:
        return self.act(server_id, "reset_state", state=state, **kw)

    def rescue(self, server_id: str, *, image: str | None = None, **kw: Any) -> CommandResult:
        """Boot a rescue image (``image``, by default the server's own) with the
        server's disk attached as the second; ``unrescue`` boots its own disk again."""
        params: dict[str, Any] = {"image": image} if image else {}
        return self.act(server_id, "rescue", **params, **kw)

    def restore(self, server_id: str, **kw: Any) -> CommandResult:
        """Undo a soft delete (``reclaim_interval`` above 0): powered on, ACTIVE."""
        return self.act(server_id, "restore", **kw)

    def force_delete(self, server_id: str, **kw: Any) -> CommandResult:
        """Delete now, soft delete or not."""
        return self.act(server_id, "force_delete", **kw)

    def trigger_crash_dump(self, server_id: str, **kw: Any) -> CommandResult:
        """An NMI to the guest (its kernel dumps and restarts, if it is set up to)."""
        return self.act(server_id, "trigger_crash_dump", **kw)

    def unrescue(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "unrescue", **kw)

    def shelve(self, server_id: str, **kw: Any) -> CommandResult:
        """Power off and save the disk as ``<name>-shelved``
        (``result.details["image_id"]``); the guest is then offloaded as the engine's
        ``shelved_offload_time`` says (at once by default, as Nova)."""
        return self.act(server_id, "shelve", **kw)

    def shelve_offload(self, server_id: str, **kw: Any) -> CommandResult:
        return self.act(server_id, "shelve_offload", **kw)

    def unshelve(self, server_id: str, *, availability_zone: str | None = None,
                 host: str | None = None, **kw: Any) -> CommandResult:
        params: dict[str, Any] = {k: v for k, v in (("availability_zone", availability_zone),
                                                    ("host", host)) if v is not None}
        return self.act(server_id, "unshelve", **params, **kw)

    def evacuate(self, server_id: str, *, host: str | None = None, stop: bool = False,
                 **kw: Any) -> CommandResult:
        """Rebuild a server whose host is down on another host (administrators): ``host``
        or the scheduler's choice; ``stop`` leaves it stopped there (Nova 2.95). The
        host it left removes the old guest when its agent is back."""
        params: dict[str, Any] = {"stop": stop}
        if host is not None:
            params["host"] = host
        return self.act(server_id, "evacuate", **params, **kw)

    def create_image(self, server_id: str, name: str, *, metadata: dict[str, str] | None = None,
                     ctx: Context | None = None, idempotency_key: str | None = None
                     ) -> CommandResult:
        """Snapshot a server into a custom image; ``result.details["image_id"]`` names it."""
        ctx = self._ctx(ctx)
        return self._done(self.service.create_image(ctx, server_id, name=name,
                                                    metadata=metadata,
                                                    idempotency_key=idempotency_key))

    def create_backup(self, server_id: str, name: str, *, backup_type: str, rotation: int,
                      metadata: dict[str, str] | None = None, ctx: Context | None = None,
                      idempotency_key: str | None = None) -> CommandResult:
        """Back a server up into a custom image (``result.details["image_id"]``) and
        keep only its newest ``rotation`` backups of ``backup_type``."""
        ctx = self._ctx(ctx)
        return self._done(self.service.create_backup(
            ctx, server_id, name=name, backup_type=backup_type, rotation=rotation,
            metadata=metadata, idempotency_key=idempotency_key))

    def delete_image(self, image_id: str, *, ctx: Context | None = None) -> CommandResult:
        """Delete a custom image (owner project or admin; anyone else: not found)."""
        return self._done(self.service.delete_image(self._ctx(ctx), image_id))

    # --- key pairs ------------------------------------------------------------------
    def import_keypair(self, name: str, public_key: str, *, key_type: str = keypairs.SSH,
                       user_id: str | None = None, ctx: Context | None = None
                       ) -> dict[str, Any]:
        """Record a public key under ``name`` for the caller (or, for an admin,
        ``user_id``); returns the key pair. At most the project's ``key_pairs`` quota
        per user (Forbidden)."""
        ctx = self._ctx(ctx)
        owner = user_id or ctx.user_id
        limit = (self.quota_limits(ctx.project_id)["key_pairs"] if ctx.project_id is not None
                 else keypairs.MAX_KEYPAIRS_PER_USER)
        if owner is not None and limit != quotas.UNLIMITED and len(
                keypair_view.list_keypairs(self.view, owner)) >= limit:
            raise Forbidden("Quota exceeded, too many key pairs.")
        result = self._done(self.service.import_keypair(
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
        return self._done(self.service.delete_keypair(self._ctx(ctx), name, user_id=user_id))

    def list_keypairs(self, *, user_id: str | None = None, ctx: Context | None = None
                      ) -> list[dict[str, Any]]:
        """A user's key pairs by name (the caller's, or for an admin ``user_id``'s)."""
        return keypair_view.list_keypairs(self.view, self._keypair_owner(ctx, user_id))

    def get_keypair(self, name: str, *, user_id: str | None = None,
                    ctx: Context | None = None) -> dict[str, Any]:
        owner = self._keypair_owner(ctx, user_id)
        found = keypair_view.get_keypair(self.view, owner, name)
        if found is None:
            raise NotFound(f"Keypair {name} not found for user {owner}")
        return found

    def _keypair_owner(self, ctx: Context | None, user_id: str | None) -> str:
        return keypair_owner(self._ctx(ctx), user_id)

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

    def update_server(self, server_id: str, *, ctx: Context | None = None,
                      **changes: Any) -> ServerInfo:
        ctx = self._ctx(ctx)
        self._done(self.service.update_server(ctx, server_id, **changes))
        return self.get_server(server_id, ctx=ctx)

    def set_metadata(self, server_id: str, items: dict[str, str], *, replace: bool = False,
                     ctx: Context | None = None) -> dict[str, str]:
        """Merge (or ``replace`` with) metadata items; returns the server's metadata."""
        ctx = self._ctx(ctx)
        self._done(self.service.set_metadata(ctx, server_id, items, replace=replace))
        return dict(self.get_server(server_id, ctx=ctx).doc.get("metadata") or {})

    def delete_metadata(self, server_id: str, key: str, *, ctx: Context | None = None
                        ) -> None:
        self._done(self.service.delete_metadata(self._ctx(ctx), server_id, key))

    def change_tags(self, server_id: str, action: str, *, tag: str | None = None,
                    tags: list[str] | None = None, ctx: Context | None = None
                    ) -> tuple[list[str], bool]:
        """Add (``update_tag``), replace (``update_tags``) or delete (``delete_tag``,
        ``delete_tags``) tags; returns the tags and whether ``update_tag`` added one."""
        ctx = self._ctx(ctx)
        result = self._done(self.service.change_tags(ctx, server_id, action, tag=tag,
                                                     tags=tags))
        doc = self.get_server(server_id, ctx=ctx).doc
        return list((doc.get("attributes") or {}).get("tags") or []), bool(
            result.details.get("created"))

    # --- queries --------------------------------------------------------------------------
    def console_output(self, server_id: str, *, length: int | None = None,
                       ctx: Context | None = None) -> str:
        """What the server's guest wrote to its serial console (Nova's
        ``os-getConsoleOutput``): with ``length``, its last lines as Nova cuts them
        (the text split at newlines, the last ``length`` pieces joined; 0: nothing;
        -1 or None: all). Control characters but tab and newline are removed.

        A server not on a host (scheduling, offloaded, never placed) or on a host that
        is down is 409 ``Instance <id> is not ready``; one being deleted 409; a guest
        without a console log 404 (``Guest does not have a console available.``). A
        guest on another host is read by that host's agent (see :meth:`_read_guest`)."""
        text = str(self._read_guest(server_id, ctx, "get_console_output",
                                    "console_output"))
        text = _CONTROL.sub("", text)
        if length is None or length == -1:
            return text
        if length == 0:
            return ""
        return "\n".join(text.split("\n")[-length:])

    def diagnostics(self, server_id: str, *, ctx: Context | None = None) -> dict[str, Any]:
        """What the hypervisor knows of the server's guest, in Nova's standard form (2.48):
        state, driver, num_cpus, memory_details… (the same conditions as
        :meth:`console_output`; an unknown guest is 404)."""
        return dict(self._read_guest(server_id, ctx, "get_diagnostics", "diagnostics"))

    def _read_guest(self, server_id: str, ctx: Context | None, what: str, kind: str
                    ) -> Any:
        """Read the server's guest (``kind``: ``console_output`` or ``diagnostics``):
        409 while it is being deleted, or when it has no host (scheduling, offloaded,
        never placed) or its host is down (``Instance <id> is not ready``); the
        hypervisor's 404 is not found, any other refusal 409. A guest on this engine's
        host is read from its hypervisor; one on another host is asked of that host's
        agent through the database (:mod:`vmledger.projections.guest_reads`, as Nova
        asks the compute host over RPC), waiting up to :attr:`guest_read_timeout`."""
        doc = self._visible(server_id, ctx, include_deleted=False)
        sid = str(doc["id"])
        if doc.get("task_state") == lc.DELETING:
            raise InvalidState(what, sid, "task_state", lc.DELETING)
        host = lc.placed_host(doc)
        if host is None or doc.get("vm_state") == lc.SHELVED_OFFLOADED:  # no guest yet
            raise Conflict(f"Instance {sid} is not ready")
        if host == self.host:
            result = self._guest_read(sid, kind)
        else:
            if not self.service.host_is_up(str(host)):
                raise Conflict(f"Instance {sid} is not ready")
            question = guest_reads.ask(self.view, str(host), sid, kind, datetime.now(UTC))
            answer = guest_reads.wait(self.view, question, self.guest_read_timeout)
            if answer is None:
                raise Conflict(f"The compute host {host} did not answer in time; "
                               "try again.")
            result = answer
        if result["code"] == 200:
            return result["body"]
        if result["code"] == 404:
            raise NotFound(result["message"])
        raise Conflict(result["message"])

    def _guest_read(self, server_id: str, kind: str) -> dict[str, Any]:
        """Read a guest of this engine's hypervisor: ``code`` 200 and ``body``, or the
        refusal's ``code`` (404 or 409) and ``message``."""
        try:
            body: Any = (self.hypervisor.console_output(server_id) if kind == "console_output"
                         else dict(self.hypervisor.diagnostics(server_id)))
        except HypervisorError as e:
            return {"code": 404 if e.code == 404 else 409, "message": e.message}
        return {"code": 200, "body": body}

    def answer_guest_reads(self) -> int:
        """Answer the questions other processes asked of this host's guests (console
        output, diagnostics); drop those their askers gave up on. Returns how many
        were answered."""
        answered = 0
        now = datetime.now(UTC)
        for question, server_id, kind, asked_at in guest_reads.questions(self.view,
                                                                          self.host):
            if now - datetime.fromisoformat(asked_at) > guest_reads.STALE_AFTER:
                guest_reads.drop(self.view, question)
                continue
            try:
                result = self._guest_read(server_id, kind)
            except Exception:  # a bug or a lost connection: the asker gets a refusal
                log.exception("agent %s: reading %s of %s failed", self.host, kind,
                              server_id)
                result = {"code": 409, "message": "The host agent could not read the "
                                                  "guest; try again."}
            guest_reads.answer(self.view, question, result)
            answered += 1
        return answered

    def get_server(self, server_id: str, *, ctx: Context | None = None) -> ServerInfo:
        """A server from the view; another project's or a deleted one is not found."""
        return ServerInfo.from_doc(self._visible(server_id, ctx, include_deleted=False))

    def list_servers(self, *, ctx: Context | None = None, include_deleted: bool = False
                     ) -> list[ServerInfo]:
        """Servers, newest first: the caller's project's, or every project's for admins."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return [ServerInfo.from_doc(d)
                for d in self.view.servers(project_id=project, include_deleted=include_deleted)]

    def iter_server_docs(self, *, ctx: Context | None = None, include_deleted: bool = False
                         ) -> Iterator[dict[str, Any]]:
        """The view's server documents, newest first, decoded lazily (list pages)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return self.view.iter_servers(project_id=project, include_deleted=include_deleted)

    def server_rows(self, *, ctx: Context | None = None, deleted: str = "exclude",
                    after: str | None = None, limit: int | None = None, docs: bool = True,
                    columns: ColumnFilter | None = None) -> list[StoredServer]:
        """The view's servers as stored (documents undecoded until used), newest first:
        a list page. ``deleted``: ``"exclude"``, ``"only"`` or ``"both"``; ``after``: a
        marker (``KeyError`` when it is not in the same scope); without ``docs``, ids
        and versions only (:meth:`fill_server_docs` reads the documents later)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return self.view.rows(project_id=project, deleted=deleted, after=after, limit=limit,
                              docs=docs, columns=columns)

    def server_sort_columns(self, *, ctx: Context | None = None, deleted: str = "exclude"
                            ) -> list[dict[str, Any]]:
        """The servers in scope as their view columns, newest first (list sorting)."""
        project = None if ctx is None or ctx.is_admin else ctx.project_id
        return self.view.sort_columns(project_id=project, deleted=deleted)

    def fill_server_docs(self, rows: Sequence[StoredServer]) -> None:
        """Read the documents of rows :meth:`server_rows` gave without them."""
        self.view.fill(rows)

    def _visible(self, server_id: str, ctx: Context | None, include_deleted: bool
                 ) -> dict[str, Any]:
        doc = self.view.get(str(server_id))
        if doc is None or (doc.get("vm_state") == lc.DELETED and not include_deleted) or (
                ctx is not None and not ctx.is_admin and doc["project_id"] != ctx.project_id):
            raise ServerNotFound(str(server_id))
        return doc

    def instance_actions(self, server_id: str, *, ctx: Context | None = None,
                         include_deleted: bool = True) -> list[dict[str, Any]]:
        """Nova's instance actions of a server, newest first, each with its events."""
        self._visible(server_id, ctx, include_deleted)
        return list_actions(self.view, str(server_id))

    def instance_action(self, server_id: str, request_id: str, *,
                        ctx: Context | None = None, include_deleted: bool = True
                        ) -> dict[str, Any]:
        self._visible(server_id, ctx, include_deleted)
        action = get_action(self.view, str(server_id), request_id)
        if action is None:
            raise NotFound(f"Action {request_id} not found")
        return action

    def hypervisors(self) -> list[dict[str, Any]]:
        """Every host's compute node, as Nova's ``os-hypervisors`` shows it: what the
        hypervisor reports of the host (:meth:`Hypervisor.host_info`: type, version,
        capacity, address, CPU, uptime — asked now for this engine's own host, its
        agent's last report for the others) and what the servers placed on it hold
        (``servers``: id and name; ``vcpus_used``, ``memory_mb_used`` — with the
        reserved memory, as Nova's resource tracker counts it —, ``local_gb_used``: the
        allocations the scheduler counts, so a resize holds both flavors until confirmed
        or reverted; ``running_vms``, ``current_workload``); offloaded servers and those
        no host took hold nothing and are not listed. ``state`` is ``down`` when the
        hypervisor cannot answer, or another host's agent has not reported within the
        service down time (its last answer is shown, or zeros)."""
        out: list[dict[str, Any]] = []
        reports = host_reports(self.view)
        usage = host_usage(self.view)
        for service in self.compute_services(reports):
            host = service["host"]
            report = reports.get(host)
            if host == self.host:
                info = self._host_info()
                state = "up" if info is not None and not service["forced_down"] else "down"
                info = info or self._last_host_info or (report or {}).get("info")
            else:
                info = (report or {}).get("info")
                state = "up" if _alive(service) else "down"
            info = info or _UNKNOWN_HOST
            # the servers holding resources here (not offloaded, nor never placed)
            servers = [d for d in self.view.on_host(host) if allocation_of(d) is not None]
            held = usage.get(host) or {}
            vcpus = held.get("vcpus", 0)
            # as Nova's resource tracker: the reserved memory counts as used
            memory = held.get("ram", 0) + self.allocation_ratios.reserved_host_memory_mb
            disk = held.get("disk", 0)
            workload = sum(1 for doc in servers if doc.get("vm_state") == lc.BUILDING
                           or doc.get("task_state") in lc.IO_WORKLOAD_TASKS)
            free_disk = int(info["local_gb"]) - disk
            least = info.get("disk_available_least")
            out.append({
                **info, "host": host, "hypervisor_hostname": host, "state": state,
                "status": "disabled" if service["disabled"] else "enabled",
                "disabled_reason": service["disabled_reason"], "vcpus_used": vcpus,
                "memory_mb_used": memory,
                "local_gb_used": disk, "free_ram_mb": int(info["memory_mb"]) - memory,
                "free_disk_gb": free_disk, "running_vms": len(servers),
                "current_workload": workload,
                "disk_available_least": free_disk if least is None else int(least),
                "servers": [{"uuid": str(d["id"]), "name": d.get("name") or ""}
                            for d in servers]})
        return out

    def _host_info(self) -> dict[str, Any] | None:
        try:
            info = dict(self.hypervisor.host_info())
        except Exception:
            log.warning("the hypervisor did not report its host", exc_info=True)
            return None
        self._last_host_info = info
        return info

    def migrations(self, *, server_id: str | None = None, status: str | None = None,
                   host: str | None = None, since: datetime | None = None,
                   before: datetime | None = None, newest_first: bool = False,
                   limit: int | None = None, marker: str | None = None,
                   where: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Nova's migration records (one per resize), as rows of the migrations view:
        ``id``, ``uuid``, ``server_id``, ``status``, hosts, flavor numbers, who asked,
        ``created_at`` / ``updated_at`` (UTC text). Filters: the server, the status, a
        host (source or destination), ``updated_at`` bounds and ``where``, other
        columns' values (``migration_type``, ``source_compute``, ``user_id``…). Oldest
        first, or ``newest_first`` with ``limit`` and ``marker`` (a record's UUID; an
        unknown one raises :class:`~vmledger.projections.servers.MarkerNotFound`)."""
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
        """Nova's simple tenant usage: each server that ran between ``start`` and ``stop``
        (aware datetimes; see :mod:`vmledger.projections.usage`), deleted ones included,
        by project then id: ``instance_id``, ``hours``, the flavor's size, ``started_at``,
        ``ended_at``, ``state``, ``uptime``. ``limit`` and ``marker`` (a server id; an
        unknown one raises :class:`~vmledger.projections.servers.MarkerNotFound`) page."""
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

    # --- compute services ------------------------------------------------------------------
    def known_hosts(self) -> list[str]:
        """Every compute host, by name: this engine's own, those whose agents have
        reported (see :mod:`vmledger.projections.hosts`) and those an administrator
        changed."""
        return [s["host"] for s in self.compute_services()]

    def compute_services(self, reports: dict[str, dict[str, Any]] | None = None
                         ) -> list[dict[str, Any]]:
        """Each host's compute service, by host name: ``host``, ``disabled``,
        ``disabled_reason``, ``forced_down``, ``up`` (this engine's own host always;
        another while its agent's last report is recent), ``updated_at`` (the later of
        the last report and the last administrative change, or None)."""
        states = service_states(self.view)
        reports = host_reports(self.view) if reports is None else reports
        now = self.clock.now()
        out = []
        listed = {h for h, s in states.items() if not s.get("deleted")}
        for host in sorted({*self.service.hosts, *reports, *listed}):
            state = states.get(host) or {}
            report = reports.get(host)
            times = [t for t in (state.get("updated_at"),
                                 report["reported_at"] if report else None) if t is not None]
            out.append({"host": host, "disabled": bool(state.get("disabled")),
                        "disabled_reason": state.get("disabled_reason"),
                        "forced_down": bool(state.get("forced_down")),
                        "up": host in self.service.hosts or is_up(
                            report, now, self.service_down_time),
                        "updated_at": max(times) if times else None})
        return out

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
        for this engine's own host) times its allocation ratio (less the reserved
        memory, for RAM), less what the servers on it hold (the allocations read
        model, caught up first: a request decided again after losing a race on a host
        counts what the winner placed there). A host whose capacity is not known is left
        out (not filtered)."""
        self.updater.catch_up()
        reports: dict[str, dict[str, Any]] | None = None
        used = host_usage(self.view, hosts)
        ratios = self.allocation_ratios
        room: dict[str, dict[str, float]] = {}
        for host in hosts:
            if host == self.host:
                info = self._last_host_info or self._host_info()
            else:
                if reports is None:
                    reports = host_reports(self.view)
                info = (reports.get(host) or {}).get("info")
            capacity = ratios.capacity(info)
            if capacity is None:
                continue
            held = used.get(host) or {}
            room[host] = {r: capacity[r] - held.get(r, 0) for r in RESOURCES}
        return room

    def report_host(self) -> bool:
        """Record this host's hypervisor report (its heartbeat), at most every
        :attr:`report_interval` of the engine's clock; the agent's passes call it. False
        when the hypervisor did not answer (the host then goes down for the other
        processes)."""
        now = self.clock.now()
        if (self._reported_at is not None
                and timedelta(0) <= now - self._reported_at < self.report_interval):
            return True
        info = self._host_info()
        if info is None:
            return False
        save_report(self.view, self.host, info, now)
        self._reported_at = now
        return True

    def set_compute_service(self, host: str, *, disabled: bool | None = None,
                            reason: str | None = None, forced_down: bool | None = None,
                            ctx: Context | None = None) -> dict[str, Any]:
        """Disable (with a reason) or enable a host's service, or force it down
        (administrators); a disabled or forced-down host takes no new servers."""
        self._done(self.service.change_compute_service(
            self._ctx(ctx), host, disabled=disabled, reason=reason, forced_down=forced_down))
        return next(s for s in self.compute_services() if s["host"] == host)

    def delete_compute_service(self, host: str, *, ctx: Context | None = None) -> None:
        """Delete a host's compute service (administrators; Nova's ``DELETE
        /os-services``): refused (:class:`Conflict`) while servers or migrations in
        progress are on it, and for this engine's own host; the host is listed no more
        until its agent reports again."""
        ctx = self._ctx(ctx)
        if ctx.is_admin and host in self.known_hosts():
            if host in self.service.hosts:
                raise Conflict("Unable to delete the compute service of the host this "
                               "process runs the agent of.")
            if self.view.on_host(host):
                raise Conflict("Unable to delete compute service that is hosting "
                               "instances. Migrate or delete the instances first.")
            if any(m["status"] not in lc.MIGRATION_SETTLED
                   for m in list_migrations(self.view, host=host)):
                raise Conflict("Unable to delete compute service that has in-progress "
                               "migrations. Complete the migrations or delete the "
                               "instances first.")
        self._done(self.service.delete_compute_service(ctx, host))
        delete_report(self.view, host)

    # --- flavors (administrators) ------------------------------------------------------------
    def create_flavor(self, fields: dict[str, Any], *, ctx: Context | None = None) -> Flavor:
        """A new flavor from Nova's create body (see :mod:`vmledger.domain.flavors`)."""
        result = self._done(self.service.create_flavor(self._ctx(ctx), dict(fields)))
        return self.service.catalog.flavor(result.details["flavor_id"])

    def _flavor_change(self, flavor_id: str, rule: str, ctx: Context | None,
                       change: Callable[[Any], None]) -> None:
        self._done(self.service.change_flavor(self._ctx(ctx), str(flavor_id), rule, change))

    def delete_flavor(self, flavor_id: str, *, ctx: Context | None = None) -> None:
        """Delete a flavor (servers built with it keep their copy)."""
        ctx = self._ctx(ctx)
        self._flavor_change(flavor_id, "os-flavor-manage:delete", ctx,
                            lambda r: r.delete(ctx, self.clock.now()))

    def set_flavor_extra_specs(self, flavor_id: str, specs: dict[str, Any], *,
                               ctx: Context | None = None) -> dict[str, str]:
        """Add or replace extra specs; returns them as stored (text values)."""
        checked = flavor_records.check_extra_specs(specs)
        ctx = self._ctx(ctx)
        self._flavor_change(flavor_id, "os-flavor-extra-specs:create", ctx,
                            lambda r: r.set_extra_specs(ctx, self.clock.now(), checked))
        return checked

    def delete_flavor_extra_spec(self, flavor_id: str, key: str, *,
                                 ctx: Context | None = None) -> None:
        ctx = self._ctx(ctx)
        if not ctx.is_admin:
            raise Forbidden("Policy doesn't allow os_compute_api:os-flavor-extra-specs:delete "
                            "to be performed.")
        if key not in self.flavor_for_admin(flavor_id).extra_specs:
            raise NotFound(f"Flavor {flavor_id} has no extra specs with key {key}.")
        self._flavor_change(flavor_id, "os-flavor-extra-specs:delete", ctx,
                            lambda r: r.delete_extra_spec(ctx, self.clock.now(), key))

    def update_flavor_description(self, flavor_id: str, description: str | None, *,
                                  ctx: Context | None = None) -> Flavor:
        ctx = self._ctx(ctx)
        self._flavor_change(flavor_id, "os-flavor-manage:update", ctx,
                            lambda r: r.change_description(ctx, self.clock.now(),
                                                           description))
        return self.flavor_for_admin(flavor_id)

    def flavor_access(self, flavor_id: str) -> list[str]:
        """The projects that may use a private flavor; public → BadRequest-like refusal
        is the caller's (Nova: 404 for public flavors)."""
        self.flavor_for_admin(flavor_id)
        return flavor_access(self.view).get(flavor_id, [])

    def add_flavor_access(self, flavor_id: str, project_id: str, *,
                          ctx: Context | None = None) -> list[str]:
        ctx = self._ctx(ctx)
        self._flavor_change(flavor_id, "os-flavor-access:add_tenant_access", ctx,
                            lambda r: r.add_access(ctx, self.clock.now(), project_id))
        return self.flavor_access(flavor_id)

    def remove_flavor_access(self, flavor_id: str, project_id: str, *,
                             ctx: Context | None = None) -> list[str]:
        ctx = self._ctx(ctx)
        self._flavor_change(flavor_id, "os-flavor-access:remove_tenant_access", ctx,
                            lambda r: r.remove_access(ctx, self.clock.now(), project_id))
        return self.flavor_access(flavor_id)

    def may_use_flavor(self, flavor: Flavor, ctx: Context) -> bool:
        """Public flavors for everyone; private ones for administrators and the projects
        given access."""
        return (flavor.is_public or ctx.is_admin
                or ctx.project_id in flavor_access(self.view).get(flavor.id, []))

    def flavor_for_admin(self, flavor_id: str) -> Flavor:
        """A flavor by id, disabled or private ones too; NotFound otherwise."""
        found = next((f for f in self.service.catalog.flavors() if f.id == flavor_id), None)
        if found is None:
            raise NotFound(f"Flavor {flavor_id} could not be found.")
        return found

    # --- server groups -----------------------------------------------------------------------
    def _group_member_hosts(self, group_id: str) -> list[str]:
        """The hosts of a group's members, one per member: the view is caught up first,
        so members placed by any process before are counted."""
        self.updater.catch_up()
        group = get_group(self.view, group_id)
        if group is None:
            return []
        return [str(d.get("host")) for d in member_docs(self.view, group["owner_project_id"],
                                                        group_id)
                if (d.get("fault") or {}).get("message") != groups.NO_VALID_HOST]

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
        if ctx.project_id is not None:
            limit = self.quota_limits(ctx.project_id)["server_groups"]
            if limit != quotas.UNLIMITED and len(list_groups(self.view, ctx.project_id)) >= (
                    limit):
                raise Forbidden("Quota exceeded, too many server groups.")
        result = self._done(self.service.create_server_group(ctx, name=name, policy=policy,
                                                             rules=rules))
        return self.server_group(result.details["group_id"], ctx=ctx)

    def delete_server_group(self, group_id: str, *, ctx: Context | None = None) -> None:
        """Delete a group (its members stay, without a group)."""
        self._done(self.service.delete_server_group(self._ctx(ctx), str(group_id)))

    # --- quotas ----------------------------------------------------------------------------
    def quota_limits(self, project_id: str) -> dict[str, int]:
        """The project's limits: the defaults (the ``default`` quota class's), overlaid
        with what an administrator set for the project."""
        return {**class_limits(self.view), **project_limits(self.view, project_id)}

    def quota_class(self, name: str) -> dict[str, int]:
        """A quota class's limits (the ``default`` class's are every project's
        defaults; any other name shows the built-in defaults until it is set)."""
        return class_limits(self.view, name)

    def set_quota_class(self, name: str, limits: dict[str, Any], *,
                        ctx: Context | None = None) -> dict[str, int]:
        """Set some of a quota class's limits (administrators): each an integer from -1
        (unlimited). Returns the class's limits."""
        checked = quotas.check_limits(limits, tuple(quotas.DEFAULTS))
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise BadRequest("quota_class_name has a minimum character requirement of 1 "
                             "and a maximum of 255.")
        self._done(self.service.set_quota_class(self._ctx(ctx), name, checked))
        return self.quota_class(name)

    def _project_usage(self, project_id: str) -> dict[str, int]:
        """The project's usage for admitting a request: the view is caught up first,
        so every request admitted before (by any process) is counted."""
        self.updater.catch_up()
        return self.view.project_usage(project_id)

    def quota_usage(self, project_id: str) -> dict[str, int]:
        """What the project uses of its counted limits (key pairs are counted per user:
        0 here, as Nova shows a project's)."""
        return {**self.view.project_usage(project_id), "key_pairs": 0}

    def set_quotas(self, project_id: str, limits: dict[str, Any], *, force: bool = False,
                   ctx: Context | None = None) -> dict[str, int]:
        """Set some of a project's limits (administrators): each an integer from -1
        (unlimited); below what the project uses → BadRequest unless ``force``. Returns
        the project's limits."""
        ctx = self._ctx(ctx)
        checked = quotas.check_limits(limits, tuple(quotas.DEFAULTS))
        if not force:
            used = self.quota_usage(project_id)
            for resource, limit in checked.items():
                if limit != quotas.UNLIMITED and limit < used.get(resource, 0):
                    raise BadRequest(f"Quota limit {limit} for {resource} must be greater "
                                     "than or equal to already used and reserved "
                                     f"{used[resource]}.")
        if checked:
            self._done(self.service.set_quotas(ctx, project_id, checked))
        return self.quota_limits(project_id)

    def revert_quotas(self, project_id: str, *, ctx: Context | None = None) -> None:
        """The project's limits back to the defaults (administrators)."""
        self._done(self.service.revert_quotas(self._ctx(ctx), project_id))

    # --- the ledger (audit) ---------------------------------------------------------------
    def history_page(self, server_id: str, *, after: int = 0, limit: int = 100) -> HistoryPage:
        """A page of a server's events with their log positions (``after`` = a version)."""
        return self.ledger.history(server_id, after=after, limit=limit)

    def server_as_of(self, server_id: str, *, at: datetime | None = None,
                     version: int | None = None) -> Server:
        """A server's full state as of a time or a version, from the log (deleted too)."""
        return self.ledger.as_of(server_id, at=at, version=version)

    def causal_chain(self, request_id: str) -> list[LedgerEntry]:
        """Everything one request caused: the call, the agent's steps, the hypervisor's
        answers and the outcome, in log order."""
        return self.ledger.causal_chain(request_id)

    def explain(self, server_id: str) -> list[str]:
        """Why the server is in its current status, in plain words."""
        return self.ledger.explain(server_id)

    def verify(self, **kwargs: Any) -> VerifyReport:
        """Check the tamper-evidence chain over the whole log (names the first break)."""
        return verify(self.service, **kwargs)

    def history(self, server_id: str) -> list[HistoryEntry]:
        """Every event of a server (deleted ones too), oldest first."""
        return [HistoryEntry.from_event(e) for e in self.service.history(server_id)]

    # --- driving the agent and the timer ------------------------------------------------
    def run_once(self) -> int:
        """One pass of the host agent and the timer; return how much they did."""
        self.report_host()
        return self.answer_guest_reads() + self.agent.run_once() + self.timer.run_once()

    def run_until_idle(self, max_passes: int = 1000) -> int:
        """Run passes until nothing is in flight and no deadline is due."""
        total = 0
        for _ in range(max_passes):
            did = self.run_once()
            total += did
            if did == 0:
                return total
        raise RuntimeError(f"still busy after {max_passes} passes")

    def sync_power_states(self) -> int:
        """Compare idle servers with the hypervisor now; return how many drifted."""
        return self.agent.sync_power_states()

    def run_in_background(self, interval: float = 0.5, sync_interval: float = 60.0) -> None:
        """Run the agent and the timer in a background thread until :meth:`close`; the
        power-state sync runs every ``sync_interval`` seconds (Nova: 600)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(interval, sync_interval),
                                        name=f"vmledger-agent-{self.host}", daemon=True)
        self._thread.start()
        # the view follows the log (events from other processes too) and wakes the agent
        self._follower = threading.Thread(
            target=self.updater.follow, args=(self._stop, self._wake.set, interval),
            name="vmledger-view-follower", daemon=True)
        self._follower.start()

    def _loop(self, interval: float, sync_interval: float) -> None:
        next_sync = time.monotonic() + sync_interval
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                if time.monotonic() >= next_sync:
                    next_sync = time.monotonic() + sync_interval
                    busy += self.sync_power_states()
            except Exception:
                log.exception("agent pass failed; retrying")
                busy = 0
            if not busy:
                self._wake.wait(interval)
            self._wake.clear()

    def close(self) -> None:
        """Stop the background thread (if any) and close the database connections."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self._follower is not None:
            self._follower.join(timeout=10)
            self._follower = None
        self.service.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def servers_in_flight(self) -> Iterator[tuple[str, str]]:
        self.updater.catch_up()
        yield from self.view.in_flight()
