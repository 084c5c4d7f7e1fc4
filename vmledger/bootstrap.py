"""The composition root: builds the whole object graph from settings, in one place.

The event store, the read models and their updater, the command modules (reading the
read models through :class:`~vmledger.fleet.FleetReads`), the hypervisor driver, the
fleet, the host agent, the timer and the ledger. :class:`vmledger.Engine` is a thin
façade over what :func:`build` returns.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from vmledger.adapters.hypervisor import Hypervisor
from vmledger.adapters.simulator import Simulator
from vmledger.audit.ledger import Ledger
from vmledger.domain.catalog import Catalog
from vmledger.domain.clock import Clock, SystemClock
from vmledger.domain.commands import Commands
from vmledger.domain.scheduling import AllocationRatios
from vmledger.domain.service import ServerService, StoreRepository, new_request_id
from vmledger.fleet import Fleet, FleetReads
from vmledger.guests import Guests
from vmledger.persistence import environment, schema_lock, servers_view
from vmledger.projections import guest_reads
from vmledger.projections.actions import InstanceActions
from vmledger.projections.allocations import Allocations
from vmledger.projections.compute_services import ComputeServices
from vmledger.projections.flavors import FlavorRecords, flavor_overrides
from vmledger.projections.hosts import SERVICE_DOWN_TIME
from vmledger.projections.hosts import create_table as create_host_reports
from vmledger.projections.images import Images
from vmledger.projections.keypairs import Keypairs
from vmledger.projections.layouts import conflicts, open_layouts
from vmledger.projections.migrations import Migrations
from vmledger.projections.moves import MovingServers
from vmledger.projections.name_grams import NameGrams
from vmledger.projections.project_usage import ProjectUsage
from vmledger.projections.quotas import QuotaClasses, QuotaSets
from vmledger.projections.runner import ViewUpdater
from vmledger.projections.server_groups import ServerGroups
from vmledger.projections.servers import ServersView
from vmledger.workers.agent import HostAgent
from vmledger.workers.timer import Timer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """Everything :func:`build` needs besides the database URL (see
    :class:`vmledger.Engine` for each)."""

    clock: Clock | None = None
    hypervisor: Hypervisor | None = None
    host: str = "compute-1"
    confirm_window: timedelta = timedelta(hours=24)
    catalog: Catalog | None = None
    seed: int | None = None
    id_factory: Callable[[], uuid.UUID] | None = None
    request_id_factory: Callable[[], str] | None = None
    stopwatch: Callable[[], float] = time.perf_counter
    shelved_offload_time: timedelta | None = timedelta(0)
    reclaim_interval: timedelta = timedelta(0)
    service_down_time: timedelta = SERVICE_DOWN_TIME
    allocation_ratios: AllocationRatios | None = None
    allow_resize_to_same_host: bool = True
    #: False: this process runs no host agent (an API process alone), so it has no
    #: compute host of its own — every host is one whose agent reports
    agent: bool = True


@dataclass
class Graph:
    """The built parts."""

    store: ServerService
    view: ServersView
    updater: ViewUpdater
    commands: Commands
    hypervisor: Hypervisor
    fleet: Fleet
    reads: FleetReads
    guests: Guests
    agent: HostAgent
    timer: Timer
    ledger: Ledger


def build(url: str, settings: Settings) -> Graph:
    """The graph over the database at ``url``; the read models caught up."""
    if settings.confirm_window < timedelta(0):
        raise ValueError("the confirm window cannot be negative (0 disables it)")
    clock = settings.clock or SystemClock()
    env = environment(url)
    with schema_lock(env):  # processes starting together create the tables in turn
        store = ServerService(
            env, clock=clock, catalog=settings.catalog, hosts=(settings.host,),
            confirm_window=settings.confirm_window,
            id_factory=settings.id_factory or uuid.uuid4,
            request_id_factory=settings.request_id_factory or new_request_id,
            shelved_offload_time=settings.shelved_offload_time,
            reclaim_interval=settings.reclaim_interval,
            allow_resize_to_same_host=settings.allow_resize_to_same_host)
        view = servers_view(
            store.recorder.datastore,  # type: ignore[attr-defined]
            extensions=[InstanceActions(), Images(), Keypairs(), Migrations(),
                        QuotaSets(), QuotaClasses(), ServerGroups(), FlavorRecords(),
                        ComputeServices(), Allocations(), ProjectUsage(), MovingServers(),
                        NameGrams()])
        # which layout of the read models serves (an older one while this release's is
        # folded beside it)
        open_layouts(view)
        create_host_reports(view)
        guest_reads.create_table(view)
    updater = ViewUpdater(store, view)
    # this process's commands fold their events in their own transaction
    updater.attach(store.recorder)
    if isinstance(store.repository, StoreRepository) and store.repository.latest is not None:
        # a command decides on a cached server known to be the newest without reading
        # the log: the folds (this process's commands', the follower's catch-ups of the
        # other processes' writes) say which versions they met, and on PostgreSQL the
        # other processes' notifications name what they wrote while the follower
        # listens (vmledger.projections.following)
        view.noticed = store.repository.notice
    if view.serving != view.target:
        problems = conflicts(view, view.serving)
        if problems:
            # this release cannot write the serving layout's tables meanwhile: its own
            # layout is folded (beside them) before it serves, as a new database's is
            log.warning("the read models' layout %s cannot serve this release (%s); "
                        "folding %s before serving", view.serving.name,
                        "; ".join(problems), view.target.name)
            updater.upgrade(drop=False)
    store.catalog.overrides = lambda: flavor_overrides(view)
    hypervisor = settings.hypervisor or Simulator(seed=settings.seed or 0)
    own_hosts = store.hosts if settings.agent else ()
    fleet = Fleet(view, updater, hypervisor, settings.host, own_hosts, clock,
                  service_down_time=settings.service_down_time,
                  allocation_ratios=settings.allocation_ratios or AllocationRatios())
    reads = FleetReads(fleet)
    commands = Commands.build(store, reads, seed=settings.seed)
    agent = HostAgent(store, commands, updater, hypervisor, settings.host,
                      stopwatch=settings.stopwatch)
    graph = Graph(store=store, view=view, updater=updater, commands=commands,
                  hypervisor=hypervisor, fleet=fleet, reads=reads,
                  guests=Guests(view, hypervisor, settings.host if settings.agent else None,
                                fleet), agent=agent,
                  timer=Timer(store, commands.outcomes, updater), ledger=Ledger(store))
    updater.catch_up()
    return graph
