"""The aggregate cache, bounded in bytes as well as in entries.

The event store keeps recently loaded aggregates so that a load fast-forwards from the
cached version instead of replaying (eventsourcing's ``LRUCache``). A server aggregate
weighs about 7 kB in memory; an entry bound alone (10,000) lets the cache of a
long-running process grow with the fleet to about 70 MB before it stops, where a fleet
of 1,000 servers never passes 7 MB. :class:`SizedLRUCache` also stops at a number of
bytes (each aggregate's size estimated once, when it enters the cache), evicting the
least recently used first.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from eventsourcing.application import LRUCache

K = TypeVar("K")
V = TypeVar("V")

#: the cache's default bound in bytes (estimated, see :func:`approximate_size`)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: the most objects :func:`approximate_size` visits (a bound on its own cost)
SIZE_VISITS = 4000


#: types holding nothing else (counted each time they are met: cheaper than a lookup)
_LEAVES = frozenset({str, bytes, int, float, bool, type(None)})


def approximate_size(value: Any, visits: int = SIZE_VISITS) -> int:
    """The bytes ``value`` and what it holds take: ``sys.getsizeof`` summed over the
    containers, instance dictionaries and slots reachable from it, each container
    counted once (a shared string or number as often as it is met), classes not at
    all; at most ``visits`` objects visited (what is beyond them is not counted)."""
    seen: set[int] = set()
    stack = [value]
    total = 0
    while stack and visits > 0:
        visits -= 1
        item = stack.pop()
        if type(item) in _LEAVES:
            total += sys.getsizeof(item)
            continue
        if id(item) in seen or isinstance(item, type):
            continue
        seen.add(id(item))
        total += sys.getsizeof(item)
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)
        else:
            attributes = getattr(item, "__dict__", None)
            if isinstance(attributes, dict):
                stack.append(attributes)
            for name in getattr(type(item), "__slots__", ()):
                found = getattr(item, name, None)
                if found is not None:
                    stack.append(found)
    return total


class SizedLRUCache(LRUCache[K, V]):
    """eventsourcing's LRU cache of aggregates, also bounded in (estimated) bytes:
    ``maxsize`` entries and ``max_bytes`` at most."""

    def __init__(self, maxsize: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 sizeof: Callable[[Any], int] = approximate_size) -> None:
        self.max_bytes = max_bytes
        self.sizeof = sizeof
        self._sizes: dict[Any, int] = {}
        self._bytes_lock = threading.Lock()
        #: the estimated bytes of the entries held
        self.bytes = 0
        super().__init__(maxsize=maxsize)

    def clear(self) -> None:
        super().clear()
        with self._bytes_lock:
            self._sizes = {}
            self.bytes = 0

    def get(self, key: K, *, evict: bool = False) -> V:
        value = super().get(key, evict=evict)
        if evict:
            self._forget(key)
        return value

    def put(self, key: K, value: V | None) -> Any | None:
        # the size is estimated when an aggregate enters (a load that missed), not when
        # a cached one is put back: aggregates keep about their size as they change
        known = key in self._sizes
        size = 0 if known else self.sizeof(value)
        result = super().put(key, value)
        evicted_key = result[0] if result else None
        if evicted_key is not None:
            self._forget(evicted_key)
        if not known:
            with self._bytes_lock:
                self.bytes += size - self._sizes.get(key, 0)
                self._sizes[key] = size
        while self.bytes > self.max_bytes and len(self.cache) > 1:
            with self.lock:
                oldest = self.root[self.NEXT][self.KEY]
            if oldest is None or oldest == key:
                break
            try:
                self.get(oldest, evict=True)
            except KeyError:  # another thread evicted it meanwhile
                self._forget(oldest)
        return result

    def _forget(self, key: Any) -> None:
        with self._bytes_lock:
            self.bytes -= self._sizes.pop(key, 0)
