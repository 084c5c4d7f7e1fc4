"""JSON bodies, and a cache of each server's rendered JSON.

A server document is a pure function of the stored document (fixed by the server's id
and version) and of who it is rendered for (microversion, admin-ness, link base and
project): :class:`RenderCache` keeps the rendered bytes under that key, so a list page
renders and encodes only the servers that changed since it was last served, and joins
the others' bytes. Nothing is ever stale: a new version is a new key; old keys leave
first-in first-out once the cache is full: of entries (``capacity``) or of bytes
(``max_bytes``, the rendered bytes and about :data:`ENTRY_OVERHEAD` for each entry's
key and bookkeeping), whichever comes first. Beside them it keeps what else a version
of a server gives (:meth:`RenderCache.facts`: a show's owner and group), so a server
shown again at the same version is not decoded again.

Bodies are encoded with msgspec (compact UTF-8, as Starlette's ``JSONResponse``
writes them, several times faster).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from starlette.responses import Response

from vmledger.api.views import Viewer
from vmledger.projections.server_queries import StoredServer

#: rendered servers kept per app at most
DEFAULT_CAPACITY = 20_000
#: and their bytes at most (servers render to about 2 kB each: some 4,000 of them, four
#: full pages of the largest list; a fleet of 1,000 servers never fills it)
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
#: versions whose facts (:meth:`RenderCache.facts`) are kept at most, per app: shows are
#: of few servers at a time, and an entry takes a few hundred bytes (about 1.5 MB)
FACTS_KEPT = 4096
#: what an entry costs beside its rendered bytes: the key (a tuple of the id, a version
#: and a number), the dictionary's slot and the bytes object's header
ENTRY_OVERHEAD = 200

_ENCODER = msgspec.json.Encoder()


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON (UTF-8)."""
    return _ENCODER.encode(value)


class JSONBody(Response):
    """A JSON response encoded with msgspec."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):  # already encoded
            return content
        return dumps(content)


Renderer = Callable[[dict[str, Any], Viewer], dict[str, Any]]
F = TypeVar("F")


class RenderCache:
    """Rendered server JSON by (id, version, renderer and viewer); bounded, thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        #: the bytes the entries take (rendered bytes plus :data:`ENTRY_OVERHEAD` each)
        self.bytes = 0
        self._entries: dict[tuple[str, int, int], bytes] = {}
        #: each distinct (renderer, viewer) gets a small number, so an entry's key is a
        #: cheap (id, version, number) to hash and compare
        self._slots: dict[tuple[Renderer, Viewer], int] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        #: what else a version of a server is known to give (:meth:`facts`), by id and
        #: version, up to :data:`FACTS_KEPT` (and ``capacity``)
        self._facts: dict[tuple[str, int], Any] = {}

    def renderer(self, viewer: Viewer, render: Renderer) -> Rendering:
        """Renders servers for ``viewer`` (one request)."""
        slot = self._slots.get((render, viewer))
        if slot is None:
            with self._lock:
                if len(self._slots) > 4 * max(self.capacity, 1):
                    self._slots.clear()
                    self._entries.clear()
                    self.bytes = 0
                slot = self._slots.setdefault((render, viewer), len(self._slots))
        return Rendering(self, slot, viewer, render)

    def render(self, row: StoredServer, viewer: Viewer, render: Renderer) -> bytes:
        """One server's rendered JSON."""
        return self.renderer(viewer, render)(row)

    def facts(self, row: StoredServer, derive: Callable[[dict[str, Any]], F]) -> F:
        """``derive(row.doc)``, kept by the row's id and version (a version's document
        never changes): a server shown again at the same version is not decoded again.
        One ``derive`` per cache."""
        key = (row.id, row.version)
        found: F | None = self._facts.get(key)
        if found is None:
            found = derive(row.doc)
            kept = min(self.capacity, FACTS_KEPT)
            if kept > 0:
                with self._lock:
                    if len(self._facts) >= kept:  # the oldest first
                        self._facts.pop(next(iter(self._facts)), None)
                    self._facts[key] = found
        return found

    def __len__(self) -> int:
        return len(self._entries)


class Rendering:
    """One request's renderer: each server's JSON from the cache, else rendered (and
    kept, when the cache has room)."""

    def __init__(self, cache: RenderCache, slot: int, viewer: Viewer, render: Renderer
                 ) -> None:
        self.cache = cache
        self.slot = slot
        self.viewer = viewer
        self.render = render

    def cached(self, row: StoredServer) -> bool:
        return (row.id, row.version, self.slot) in self.cache._entries

    def __call__(self, row: StoredServer) -> bytes:
        cache = self.cache
        entries = cache._entries
        key = (row.id, row.version, self.slot)
        found = entries.get(key)
        if found is not None:
            cache.hits += 1
            return found
        cache.misses += 1
        text = dumps(self.render(row.doc, self.viewer))
        size = len(text) + ENTRY_OVERHEAD
        if cache.capacity > 0 and size <= cache.max_bytes:
            with cache._lock:
                while entries and (len(entries) >= cache.capacity
                                   or cache.bytes + size > cache.max_bytes):
                    # the oldest entry first (dicts keep insertion order)
                    old = entries.pop(next(iter(entries)))
                    cache.bytes -= len(old) + ENTRY_OVERHEAD
                if key not in entries:
                    cache.bytes += size
                entries[key] = text
        return text


def join_list(name: str, items: list[bytes], extra: dict[str, Any] | None = None) -> bytes:
    """``{"<name>": [items...], **extra}`` from already encoded items."""
    body = b'{"' + name.encode() + b'":[' + b",".join(items) + b"]"
    for key, value in (extra or {}).items():
        body += b"," + dumps(key) + b":" + dumps(value)
    return body + b"}"
