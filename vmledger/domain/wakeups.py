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
#: a payload's first section, when it names the aggregates written and their newest
#: versions (``id@version,…``; ``*``: too many to name). A reader of an earlier release
#: takes such a payload as one that says nothing: every agent looks, every view catches
#: up
SERVERS_PREFIX = "written:"
#: at most this many characters name the aggregates written (beyond: ``*``)
WRITTEN_LIMIT = 3000


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


def payload(hosts: frozenset[str] | None, *, folded: frozenset[str] = frozenset(),
            written: dict[str, int] | None = None) -> str:
    """The notification payload naming ``hosts`` (None: every agent) and the layouts
    of the read models the write was folded into in its own transaction (a follower
    of one of them has nothing to catch up for it); first, when ``written`` is given,
    the aggregates written and their newest versions (so that another process's cached
    copies of older ones are read again before a command decides on them). Host and
    layout names hold no comma or space; PostgreSQL takes up to 8,000 bytes, beyond
    which every agent is told to look, and the aggregates are not named (``*``)."""
    text = PAYLOAD_PREFIX + (ANY_HOST if hosts is None else ",".join(sorted(hosts)))
    if len(text) >= 4000:
        text = PAYLOAD_PREFIX + ANY_HOST
    if folded:
        text += FOLDED_INTO + ",".join(sorted(folded))
    if written is not None:
        named = ",".join(f"{key}@{version}" for key, version in written.items())
        text = SERVERS_PREFIX + (named if len(named) <= WRITTEN_LIMIT else ANY_HOST) + \
            " " + text
    return text


def written_of(text: str) -> dict[str, int] | None:
    """The aggregates a notification payload says were written, with their newest
    versions (None: it does not say, or there were too many to name)."""
    if not text.startswith(SERVERS_PREFIX):
        return None
    named = text[len(SERVERS_PREFIX):].partition(" ")[0]
    if named == ANY_HOST:
        return None
    found: dict[str, int] = {}
    for item in named.split(",") if named else ():
        key, _, version = item.rpartition("@")
        try:
            found[key] = int(version)
        except ValueError:
            return None
    return found


def _rest(text: str) -> str:
    """The payload after its ``written:`` section, if any."""
    if text.startswith(SERVERS_PREFIX):
        return text.partition(" ")[2]
    return text


def hosts_of(text: str) -> frozenset[str] | None:
    """The hosts a notification payload names (None: it does not say)."""
    text = _rest(text)
    if not text.startswith(PAYLOAD_PREFIX):
        return None
    named = text[len(PAYLOAD_PREFIX):].partition(FOLDED_INTO)[0]
    return frozenset(named.split(",")) if named else frozenset()


def folded_into(text: str) -> frozenset[str]:
    """The read-model layouts a notification payload says the write was folded into."""
    text = _rest(text)
    if not text.startswith(PAYLOAD_PREFIX):
        return frozenset()
    named = text.partition(FOLDED_INTO)[2]
    return frozenset(named.split(",")) if named else frozenset()
