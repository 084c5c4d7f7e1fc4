"""Starlette's router, trying only the routes a request's path can match.

Starlette tries every route in order until one matches: about 0.5 µs a route, and the
API has over 200 (each Compute route twice, with and without a project id, then the
Keystone, Glance, Neutron and ledger shims), so a route near the end of the table cost
0.1 to 0.17 ms before its handler ran. :class:`IndexedRouter` files each route under the
path segments its path starts with literally (``/v2.1/servers/{server_id}/action`` under
``v2.1/servers``) and tries, in the table's order, only the routes filed under the
segments a request's path starts with: the first of them that matches in full is the
first in the whole table. When none does (a wrong method, a missing slash, an unknown
path) Starlette's own scan of the whole table decides, so 405s, redirects and 404s are
exactly Starlette's.

Among those it tries only the routes whose path has as many segments as the request's
(``/v2.1/servers/{server_id}/action`` is not tried for ``/v2.1/servers/{id}``, nor the
same path's routes for other methods): a route whose parameters each match within one
segment (Starlette's ``str``, ``int``, ``float`` and ``uuid`` convertors, and those whose
pattern holds no ``.``, ``/``, ``^`` nor escape) matches only paths of its own number
of segments; any other route is tried for every path. A plain route's full match is
kept by method and path (:meth:`IndexedRouter.full_match`), and :class:`~vmledger.api.http.ApiLayer`
asks for it to call an endpoint straight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from starlette._utils import get_route_path
from starlette.convertors import (
    Convertor,
    FloatConvertor,
    IntegerConvertor,
    StringConvertor,
    UUIDConvertor,
)
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import Receive, Scope, Send


@dataclass
class _Node:
    """The routes whose literal path segments end here, and deeper segments."""

    routes: list[int] = field(default_factory=list)
    children: dict[str, _Node] = field(default_factory=dict)
    tried: tuple[BaseRoute, ...] = ()  # this node's and its ancestors', in table order
    #: :attr:`tried` for a path of so many segments, for each count a route has
    by_length: dict[int, tuple[BaseRoute, ...]] = field(default_factory=dict)
    #: :attr:`tried` for a path of any other count (the routes of no fixed count)
    any_length: tuple[BaseRoute, ...] = ()


def literal_segments(route: BaseRoute) -> tuple[str, ...]:
    """The whole path segments ``route``'s path starts with before any parameter (none
    for anything but a plain :class:`Route`: it is tried for every path)."""
    path = getattr(route, "path", None)
    if type(route) is not Route or not isinstance(path, str):
        return ()
    literal, parameter, _rest = path.partition("{")
    segments = literal.split("/")[1:]
    if parameter:  # the last segment is cut by the parameter: not a whole one
        segments = segments[:-1]
    return tuple(segments)


#: full matches kept (see :meth:`IndexedRouter.full_match`); emptied when full (paths are
#: the callers' to choose)
MATCHES_KEPT = 4096

_ONE_SEGMENT = (StringConvertor, IntegerConvertor, FloatConvertor, UUIDConvertor)
#: a pattern that cannot match a ``/``: classes of letters, digits and dashes, repeated
_SEGMENT_PATTERN = re.compile(r"[\w\[\]+*?{},|()-]*")


def _within_segment(convertor: Convertor[object]) -> bool:
    if isinstance(convertor, _ONE_SEGMENT):
        return True
    return _SEGMENT_PATTERN.fullmatch(convertor.regex.replace("\\-", "")) is not None


def segment_count(route: BaseRoute) -> int | None:
    """How many segments every path ``route`` matches has (``/a/{b}``: 3, as
    ``"/a/x".split("/")``), or None: it may match paths of any length."""
    path = getattr(route, "path", None)
    if type(route) is not Route or not isinstance(path, str):
        return None
    if not all(_within_segment(c) for c in route.param_convertors.values()):
        return None
    return len(path.split("/"))


class IndexedRouter(Router):
    """A :class:`Router` that tries only the routes a path can match (see the module)."""

    _indexed: list[BaseRoute] | None = None
    _root: _Node
    #: the full matches of recent (method, path, root path)s: their route and parameters
    _matched: dict[tuple[str, str, str], tuple[Route, dict[str, Any]]]

    def _index(self) -> _Node:
        if self._indexed != self.routes:  # built again when the table changes
            root = _Node()
            for position, route in enumerate(self.routes):
                node = root
                for segment in literal_segments(route):
                    node = node.children.setdefault(segment, _Node())
                node.routes.append(position)
            _fill(root, [], self.routes)
            self._root, self._indexed = root, list(self.routes)
            self._matched = {}
        return self._root

    def full_match(self, scope: Scope) -> tuple[BaseRoute, Scope] | None:
        """The route Starlette's scan would hand ``scope`` to as a full match (the first
        in the table that matches it in full), with its child scope; None when no route
        filed under the path's segments does (Starlette's scan then decides). A plain
        :class:`Route`'s match is kept by method and path (a client polling a server
        asks for the same path again and again), up to :data:`MATCHES_KEPT` of them."""
        node = self._index()
        key = None
        if "path_params" not in scope:  # the parameters come from the path alone
            key = (scope["method"], scope["path"], scope.get("root_path", ""))
            kept = self._matched.get(key)
            if kept is not None:
                route, params = kept
                return route, {"endpoint": route.endpoint, "path_params": dict(params)}
        segments = get_route_path(scope).split("/")
        for segment in segments[1:]:
            child = node.children.get(segment)
            if child is None:
                break
            node = child
        for candidate in node.by_length.get(len(segments), node.any_length):
            match, child_scope = candidate.matches(scope)
            if match is Match.FULL:
                if key is not None and type(candidate) is Route:
                    if len(self._matched) >= MATCHES_KEPT:
                        self._matched.clear()
                    self._matched[key] = (candidate, dict(child_scope["path_params"]))
                return candidate, child_scope
        return None

    def enter(self, scope: Scope, route: BaseRoute, child_scope: Scope) -> None:
        """Hand a full match over as Starlette does (the route and its parameters in
        the scope)."""
        scope.setdefault("router", self)
        scope["route"] = route
        scope.update(child_scope)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            found = self.full_match(scope)
            if found is not None:
                route, child_scope = found
                self.enter(scope, route, child_scope)
                await route.handle(scope, receive, send)
                return
        await super().app(scope, receive, send)


def _fill(node: _Node, above: list[int], routes: list[BaseRoute]) -> None:
    positions = sorted(above + node.routes)
    node.tried = tuple(routes[k] for k in positions)
    counts = [segment_count(route) for route in node.tried]
    node.any_length = tuple(r for r, n in zip(node.tried, counts, strict=True) if n is None)
    node.by_length = {length: tuple(r for r, n in zip(node.tried, counts, strict=True)
                                    if n in (None, length))
                      for length in {n for n in counts if n is not None}}
    for child in node.children.values():
        _fill(child, positions, routes)
