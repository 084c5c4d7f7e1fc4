"""The commands, one module per concept, all run through one pipeline
(:mod:`~vmledger.domain.commands.pipeline`):

- :mod:`~.servers`: create, update, metadata, tags
- :mod:`~.actions`: the lifecycle's actions on a server (reboot, resize, evacuate…)
- :mod:`~.images`: snapshots, backups, image deletion
- :mod:`~.outcomes`: what the host agent and the timer record
- :mod:`~.keypairs`, :mod:`~.flavors`, :mod:`~.quotas`, :mod:`~.server_groups`,
  :mod:`~.compute_services`

:class:`Commands` is the set of them over one store, built by :meth:`Commands.build`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmledger.domain.commands.actions import ActionCommands
from vmledger.domain.commands.base import Deps
from vmledger.domain.commands.compute_services import ComputeServiceCommands
from vmledger.domain.commands.flavors import FlavorCommands
from vmledger.domain.commands.images import ImageCommands
from vmledger.domain.commands.keypairs import KeypairCommands
from vmledger.domain.commands.outcomes import OutcomeCommands
from vmledger.domain.commands.pipeline import CommandResult, Pipeline
from vmledger.domain.commands.quotas import QuotaCommands
from vmledger.domain.commands.reads import ReadSide, StandaloneReads
from vmledger.domain.commands.server_groups import ServerGroupCommands
from vmledger.domain.commands.servers import ServerCommands
from vmledger.domain.scheduling import Scheduler
from vmledger.domain.service import ServerService


@dataclass
class Commands:
    """Every command module over one store."""

    deps: Deps
    servers: ServerCommands
    actions: ActionCommands
    images: ImageCommands
    outcomes: OutcomeCommands
    keypairs: KeypairCommands
    flavors: FlavorCommands
    quotas: QuotaCommands
    groups: ServerGroupCommands
    compute_services: ComputeServiceCommands

    @classmethod
    def build(cls, store: ServerService, reads: ReadSide | None = None, *,
              seed: int | None = None) -> Commands:
        """The command modules over ``store``, reading ``reads`` (default: a store used
        on its own, :class:`StandaloneReads` over its hosts)."""
        reads = reads or StandaloneReads(store.hosts)
        deps = Deps(store=store, pipeline=Pipeline(store, store.clock, seed=seed),
                    reads=reads,
                    scheduler=Scheduler(store, reads, store.clock, own_hosts=store.hosts))
        quotas = QuotaCommands(deps)
        images = ImageCommands(deps)
        return cls(deps=deps, servers=ServerCommands(deps, quotas, images),
                   actions=ActionCommands(deps, quotas, images), images=images,
                   outcomes=OutcomeCommands(deps), keypairs=KeypairCommands(deps),
                   flavors=FlavorCommands(deps), quotas=quotas,
                   groups=ServerGroupCommands(deps),
                   compute_services=ComputeServiceCommands(deps))


__all__ = ["CommandResult", "Commands", "ReadSide", "StandaloneReads"]
