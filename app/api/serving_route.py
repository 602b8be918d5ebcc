"""The serving protocols' hot routes (`:predict`, `/infer`): declared and documented like any
other route, and answered by their endpoint called straight from the route.

Profiled at 64 connections, FastAPI's dependency solving and response handling took as much
CPU as everything else of a one-row request. A `ServingRoute` whose endpoint is marked
`@serving` therefore calls that endpoint itself, with the path parameters checked by the
route's own FastAPI fields (remembered per value, so a client calling the same model pays a
dict lookup), the caller app.api.auth.Authenticate found, and the Request. A request whose
parameters those fields refuse goes to FastAPI's own handler, which answers its usual 422, and
so does every request while dependency overrides are set (tests). Errors the endpoint raises
are answered by the app's exception handlers, as for any route.

Finding the route cost as much again: FastAPI's router tries every included router's routes in
turn, and the matching router's twice. `FoundServingRoute`, first in the app's routes, hands a
request straight to the ServingRoute that the route table (app.api.route_access, the same table
and order the router uses, already asked by authentication) found for it.

A `@serving` endpoint may take only its path parameters, the caller (`CallerDep`) and the
Request (checked when the route is built), and returns a Response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from app.api.deps import CALLER_STATE, get_caller
from app.api.json_depth import reads_own_body
from app.api.route_access import found_route

# The attribute `serving` sets on an endpoint.
SERVING_ATTR = "__kj_serving__"
# Where FoundServingRoute keeps, in the scope, the arguments it found the endpoint's.
ARGUMENTS_STATE = "kj_serving_arguments"
# Distinct parameter values remembered per route; past it the memory starts over.
MAX_REMEMBERED = 4096
F = TypeVar("F", bound=Callable[..., Any])
Arguments = dict[str, Any]


def serving(endpoint: F) -> F:
    """Marks an endpoint to be called straight from its ServingRoute (see the module's doc);
    it reads and bounds its own body, so the JSON body checks leave it alone."""
    setattr(endpoint, SERVING_ATTR, True)
    return reads_own_body(endpoint)


class ServingRoute(APIRoute):
    """An APIRoute that calls a `@serving` endpoint itself; any other endpoint is routed as by
    APIRoute."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.direct = getattr(endpoint, SERVING_ATTR, False) is True
        if not self.direct:
            return
        d = self.dependant
        callers = [c.name for c in d.dependencies if c.call is get_caller and c.name]
        if (d.query_params or d.header_params or d.cookie_params or d.body_params
                or len(d.dependencies) != 1 or not callers or d.request_param_name is None):
            raise TypeError(f"{path}: a @serving endpoint takes only its path parameters, the "
                            "caller (CallerDep) and the Request")
        self._caller_arg = callers[0]
        self._request_arg = d.request_param_name
        self._methods = frozenset(self.methods or ())
        self._checked: dict[tuple[Any, ...], Arguments | None] = {}

    def arguments(self, scope: Scope, params: dict[str, Any]) -> Arguments | None:
        """The endpoint's arguments but the Request, when it answers this request itself;
        None when FastAPI's handler does."""
        if not self.direct or scope["method"] not in self._methods \
                or scope["app"].dependency_overrides:
            return None
        caller = scope.get("state", {}).get(CALLER_STATE)
        values = self._path_values(params)
        if caller is None or values is None:
            return None
        values[self._caller_arg] = caller
        return values

    async def answer(self, arguments: Arguments, scope: Scope, receive: Receive,
                     send: Send) -> None:
        arguments[self._request_arg] = Request(scope, receive, send)
        response = await self.endpoint(**arguments)
        await response(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        arguments = self.arguments(scope, scope["path_params"])
        if arguments is None:
            await super().handle(scope, receive, send)
        else:
            await self.answer(arguments, scope, receive, send)

    def _path_values(self, params: dict[str, Any]) -> Arguments | None:
        """The endpoint's path arguments, as FastAPI's handler would pass them; None when its
        fields refuse one (that handler then answers 422)."""
        key = tuple(params.values())
        try:
            values = self._checked[key]
        except KeyError:
            checked, errors = request_params_to_args(self.dependant.path_params, params)
            values = None if errors else checked
            if len(self._checked) >= MAX_REMEMBERED:
                self._checked = {}
            self._checked[key] = values
        return None if values is None else dict(values)


class FoundServingRoute(BaseRoute):
    """First in the app's routes: matches the requests the route table routes to a
    ServingRoute that answers them itself, and hands them to it (see the module's doc). Any
    other request goes on to the router's own scan."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] != "http":
            return Match.NONE, {}
        found = found_route(scope)
        route = found.route
        if not isinstance(route, ServingRoute):
            return Match.NONE, {}
        arguments = route.arguments(scope, found.params)
        if arguments is None:
            return Match.NONE, {}
        return Match.FULL, {"endpoint": route.endpoint, "path_params": dict(found.params),
                            "route": route, ARGUMENTS_STATE: arguments}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: ServingRoute = scope["route"]
        await route.answer(scope.pop(ARGUMENTS_STATE), scope, receive, send)


def find_serving_routes_first(app: FastAPI) -> None:
    """Puts FoundServingRoute first in `app`'s routes (after every router is included)."""
    app.router.routes.insert(0, FoundServingRoute())
