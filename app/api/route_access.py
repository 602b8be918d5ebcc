"""The route a request matches, found in the app's one route table as Starlette's router finds
it, and what that route needs (app.auth.access). Authentication, the JSON body checks and the
serving routes' dispatch (app.api.serving_route) all ask here, so none decides from how a path
is spelled.

The table is FastAPI's own list of effective routes (`iter_route_contexts`: every included
router's routes with their prefixes, in the order the router tries them); the first whose path
pattern matches the whole path and whose methods hold the request's is the one FastAPI calls.
The answer is remembered per (method, path), so a predict client calling the same model pays a
dict lookup, and a path no one called before a scan of compiled patterns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path
from starlette.types import Scope

from app.auth.access import Access, declared_access, default_access

# Decoded paths holding a control character are refused before anything looks at them: `$` in
# a regex matches before a final "\n", and a name or log line holding one is never meant.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Where the match is kept in the ASGI scope for the middlewares after the first.
FOUND_STATE = "kj_route"
# Distinct (method, path) answers remembered; past it the memory starts over.
MAX_REMEMBERED = 4096


@dataclass(frozen=True)
class Found:
    """The route a request matches (`path` None: none does, or only for another method) with
    its endpoint and path parameters, and what the request needs."""

    path: str | None
    endpoint: Any
    access: Access
    params: dict[str, Any] = field(default_factory=dict)
    route: Any = None  # the route object (an included router's route is its original)


def access_of(route: Any, method: str) -> Access:
    """What `route` declares (on its endpoint), else the default for `method`."""
    return declared_access(getattr(route, "endpoint", None)) or default_access(method)


@dataclass(frozen=True)
class _Entry:
    path: str
    pattern: re.Pattern[str]
    convertors: dict[str, Any]
    methods: frozenset[str] | None  # None: every method (a mount)
    endpoint: Any
    route: Any


class RouteTable:
    def __init__(self, routes: list[Any]) -> None:
        self._entries: list[_Entry] = []
        for context in iter_route_contexts(routes):
            path = context.path_format
            if path is None:
                continue
            pattern, _, convertors = compile_path(path)
            methods = context.methods
            self._entries.append(_Entry(path, pattern, convertors,
                                        None if methods is None else frozenset(methods),
                                        context.endpoint, context.original_route))
        self._remembered: dict[tuple[str, str, str], Found] = {}

    def paths(self) -> list[tuple[str, frozenset[str] | None, Any]]:
        """(path, methods, endpoint) of every route, in the order they are tried."""
        return [(e.path, e.methods, e.endpoint) for e in self._entries]

    def find(self, scope: Scope) -> Found:
        key = (scope["method"], scope.get("root_path", ""), scope["path"])
        found = self._remembered.get(key)
        if found is None:
            found = self._match(scope)
            if len(self._remembered) >= MAX_REMEMBERED:
                self._remembered = {}
            self._remembered[key] = found
        return found

    def _match(self, scope: Scope) -> Found:
        method: str = scope["method"]
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        for entry in self._entries:
            if entry.methods is not None and method not in entry.methods:
                continue
            match = entry.pattern.fullmatch(path)
            if match is not None:  # the first full match is the one the router calls
                params = {k: entry.convertors[k].convert(v) for k, v in match.groupdict().items()}
                return Found(entry.path, entry.endpoint,
                             declared_access(entry.endpoint) or default_access(method), params,
                             entry.route)
        return Found(None, None, default_access(method))


def route_table(app: Any) -> RouteTable:
    """The app's table, built on first use (the routes are all added by then)."""
    table: RouteTable | None = getattr(app.state, "kj_route_table", None)
    if table is None:
        table = RouteTable(list(app.routes))
        app.state.kj_route_table = table
    return table


def found_route(scope: Scope) -> Found:
    """The request's route: found once per request, kept in the scope for the next asker."""
    found: Found | None = scope.get(FOUND_STATE)
    if found is None:
        found = route_table(scope["app"]).find(scope)
        scope[FOUND_STATE] = found
    return found
