"""vmledger: an event-sourced lifecycle engine for virtual machines.

Embed it with :class:`vmledger.Engine`; serve the OpenStack Compute API with
``vmledger serve``; audit any server's complete history.
"""

from vmledger.adapters.hypervisor import GuestSpec, Hypervisor, HypervisorError, PowerState
from vmledger.adapters.simulator import Simulator
from vmledger.domain.catalog import Catalog, Flavor, Image
from vmledger.domain.clock import FakeClock, SystemClock
from vmledger.domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidState,
    Locked,
    NotFound,
    VmledgerError,
)
from vmledger.engine import AllocationRatios, Engine, HistoryEntry, ServerInfo

__all__ = [
    "AllocationRatios", "BadRequest", "Catalog", "Conflict", "Engine", "FakeClock", "Flavor",
    "Forbidden",
    "GuestSpec", "HistoryEntry", "Hypervisor", "HypervisorError", "Image", "InvalidState",
    "Locked", "NotFound", "PowerState", "ServerInfo", "Simulator", "SystemClock",
    "VmledgerError",
]
__version__ = "0.1.0"
