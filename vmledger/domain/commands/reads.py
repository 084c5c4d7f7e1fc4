"""What the commands read of the read models, as one small protocol.

Commands decide on their aggregates, which they load from the event store; a few rules
also need what only the read models know (a host's room, a project's usage, how many key
pairs a user has). The composition root passes an implementation over the read models
(:class:`vmledger.fleet.FleetReads`); :class:`StandaloneReads` answers for a store used
on its own (one host of unknown capacity, no quotas enforced), as the unit tests do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from vmledger.domain import quota as quotas


class ReadSide(Protocol):
    """The read models' answers a command may need, each current as of the call (an
    implementation catches up with the log first where a race would otherwise let a
    request miss what another just recorded)."""

    def usable_hosts(self) -> Sequence[str]:
        """Hosts whose compute service takes new servers (up, not disabled)."""
        ...

    def known_hosts(self) -> Sequence[str]:
        """Every compute host by name."""
        ...

    def host_is_up(self, host: str) -> bool:
        """Whether the host's compute service is up (reporting, not forced down)."""
        ...

    def host_room(self, hosts: Sequence[str]) -> Mapping[str, Mapping[str, float]]:
        """The room left on each host (``vcpus``, ``ram`` MB, ``disk`` GB); a host left
        out has no known capacity and is not filtered."""
        ...

    def host_in_use(self, host: str) -> str | None:
        """Why the host's compute service cannot be deleted now (servers or migrations
        in progress on it), or None."""
        ...

    def project_usage(self, project_id: str) -> Mapping[str, int] | None:
        """The project's counted usage (``instances``, ``cores``, ``ram``) including every
        request admitted before; None: quotas are not enforced."""
        ...

    def project_limits(self, project_id: str) -> Mapping[str, int]:
        """The project's limits (its own over the ``default`` class's over the built-in
        defaults)."""
        ...

    def group_member_hosts(self, group_id: str) -> list[str]:
        """The hosts of a server group's placed members, one entry per member."""
        ...

    def server_group_count(self, project_id: str) -> int:
        """How many server groups the project has."""
        ...

    def keypair_count(self, user_id: str) -> int:
        """How many key pairs the user has."""
        ...


class StandaloneReads:
    """The answers for an event store used without read models: ``hosts`` are every
    host, up and of unknown capacity; no quota is enforced."""

    def __init__(self, hosts: Sequence[str] = ("compute-1",)) -> None:
        self.hosts = tuple(hosts)

    def usable_hosts(self) -> Sequence[str]:
        return self.hosts

    def known_hosts(self) -> Sequence[str]:
        return self.hosts

    def host_is_up(self, host: str) -> bool:
        return host in self.hosts

    def host_room(self, hosts: Sequence[str]) -> Mapping[str, Mapping[str, float]]:
        return {}

    def host_in_use(self, host: str) -> str | None:
        return None

    def project_usage(self, project_id: str) -> Mapping[str, int] | None:
        return None

    def project_limits(self, project_id: str) -> Mapping[str, int]:
        return dict(quotas.DEFAULTS)

    def group_member_hosts(self, group_id: str) -> list[str]:
        return []

    def server_group_count(self, project_id: str) -> int:
        return 0

    def keypair_count(self, user_id: str) -> int:
        return 0
