"""Which host agents a command gives work, and how a write tells the other processes
(with what else its PostgreSQL notification says: which read models it folded).

A command that leaves a server with an action in flight gives work to the agent of the
host that enacts it now; a lock, a rename or a quota change gives none. This process's
agent is woken only by the commands that give its host work, and on PostgreSQL the
log's notification carries the same hosts, so the other processes' agents are woken
only when they have something to do. Deadlines and other processes' questions about a
host's guests are not announced: the agents' periodic pass finds them.
"""

from __future__ import annotations

from collections.abc import Iterable

from vmledger.domain.server import Server

#: every host's agent (the host that enacts an action is not known yet)
ANY_HOST = "*"
#: the notification payload's prefix; a payload without it (a writer of an earlier
#: release) says nothing about hosts, so every agent looks
PAYLOAD_PREFIX = "agents:"
#: before the read-model layouts the write was folded into, in a payload
FOLDED_INTO = " folded:"


def agent_hosts(aggregates: Iterable[object]) -> frozenset[str]:
    """The hosts whose agent has work once ``aggregates`` are saved: those enacting
    the actions in flight of the servers among them (:data:`ANY_HOST` for an action
    whose host is not known)."""
    return frozenset(a.acting_host or ANY_HOST for a in aggregates
                     if isinstance(a, Server) and a.pending_request_id is not None)


def wakes(hosts: frozenset[str] | None, host: str) -> bool:
    """Whether the agent of ``host`` should look, after a write that gave work to
    ``hosts`` (None: not known)."""
    return hosts is None or host in hosts or ANY_HOST in hosts


def payload(hosts: frozenset[str] | None, *, folded: frozenset[str] = frozenset()
            ) -> str:
    """The notification payload naming ``hosts`` (None: every agent) and the layouts
    of the read models the write was folded into in its own transaction (a follower
    of one of them has nothing to catch up for it). Host and layout names hold no
    comma or space; PostgreSQL takes up to 8,000 bytes, beyond which every agent is
    told to look."""
    text = PAYLOAD_PREFIX + (ANY_HOST if hosts is None else ",".join(sorted(hosts)))
    if len(text) >= 7000:
        text = PAYLOAD_PREFIX + ANY_HOST
    if folded:
        text += FOLDED_INTO + ",".join(sorted(folded))
    return text


def hosts_of(text: str) -> frozenset[str] | None:
    """The hosts a notification payload names (None: it does not say)."""
    if not text.startswith(PAYLOAD_PREFIX):
        return None
    named = text[len(PAYLOAD_PREFIX):].partition(FOLDED_INTO)[0]
    return frozenset(named.split(",")) if named else frozenset()


def folded_into(text: str) -> frozenset[str]:
    """The read-model layouts a notification payload says the write was folded into."""
    if not text.startswith(PAYLOAD_PREFIX):
        return frozenset()
    named = text.partition(FOLDED_INTO)[2]
    return frozenset(named.split(",")) if named else frozenset()
