"""Helpers to build engines on each backend for the tests."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from vmledger import AllocationRatios, Engine, FakeClock, Simulator


def counter_ids(seed: int = 0) -> Callable[[], uuid.UUID]:
    """Deterministic server ids."""
    counter = itertools.count(1)
    return lambda: uuid.UUID(int=(seed << 64) + next(counter), version=4)


def counter_request_ids(prefix: str = "req") -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}-{uuid.UUID(int=next(counter), version=4)}"


def make_engine(url: str, *, clock: FakeClock | None = None, seed: int = 0,
                confirm_window: timedelta = timedelta(hours=24),
                hypervisor: Any = None, ids: Callable[[], uuid.UUID] | None = None,
                request_ids: Callable[[], str] | None = None,
                host: str = "compute-1",
                allocation_ratios: AllocationRatios | None = None) -> Engine:
    """An engine with a fake clock and deterministic ids (pass shared id factories to
    keep ids unique across restarts of the same database)."""
    return Engine(url, clock=clock or FakeClock(), hypervisor=hypervisor or Simulator(seed=seed),
                  confirm_window=confirm_window, seed=seed, host=host,
                  id_factory=ids or counter_ids(seed),
                  request_id_factory=request_ids or counter_request_ids(f"req{seed}"),
                  allocation_ratios=allocation_ratios)


def create_elsewhere(url: str, name: str, *, flavor: str = "1",
                     image: str = "cirros-0.6.2-x86_64") -> str:
    """Create a server as another process would: its own event store on the same
    database, with no read models of its own (this process's read models learn of it
    only by catching up with the log). Returns its id."""
    from vmledger.domain.commands import Commands
    from vmledger.domain.service import ServerService
    from vmledger.persistence import environment

    store = ServerService(environment(url))
    try:
        return Commands.build(store).servers.create(
            store.context(), name=name, flavor=flavor, image=image).server_id
    finally:
        store.close()
