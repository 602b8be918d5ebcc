"""Authentication for every route but the public ones, before routing: a request without a
valid key (or the scope its route needs) is answered here, before its body is read.

A pure-ASGI middleware (inside RequestId, before routing), so predict requests are checked
the same way at the cost of a header scan, a stat() and two dict lookups. What a
request needs comes from the route it matches (app.api.route_access), and a path holding a
control character is a 400 before any of it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import problems
from app.api.deps import CALLER_STATE, OPEN_CALLER, Caller
from app.api.route_access import CONTROL, access_of, found_route
from app.auth import ratelimit
from app.auth.access import Access, open_without_keys
from app.auth.keys import key_table, touch, unauthorized
from app.core.config import get_settings
from app.core.errors import DomainError, FieldError, bad_request

# Answered for anyone: health, the OpenAPI document and its page, and the dashboard's static
# pages (they hold no data; their scripts call the API with the key the user gives them).
PUBLIC = frozenset({"/", "/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready",
                    "/docs", "/openapi.json", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


async def authenticate(method: str, path: str, access: Access, authorization: str | None,
                       server: tuple[str, int] | None) -> Caller:
    """The caller, from the `Authorization: Bearer` header: 401 without a valid key, 403
    without the scope the request's route needs (`access`), 429 past the key's rate limit. No
    database query unless the keys changed."""
    settings = get_settings()
    if settings.auth == "off":
        return OPEN_CALLER
    keys = key_table()
    if keys.stale():
        await run_in_threadpool(keys.load)
    if not keys.any_key and open_without_keys(server[0] if server else None):
        return OPEN_CALLER
    if not authorization:
        raise unauthorized("An API key is required: send `Authorization: Bearer <key>`. An "
                           "admin makes one with `keras-jobs keys create --tenant T --name N`.",
                           error=None)
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise unauthorized("Send the API key as `Authorization: Bearer <key>`.")
    info = keys.check(raw.strip())
    if not access.allows(info.scopes):
        raise DomainError(403, "Forbidden", f"The key '{info.name}' has the scopes "
                          f"{', '.join(sorted(info.scopes))}; {method} {path} needs "
                          f"{' or '.join(sorted(access.scopes))}. Ask an admin for a key "
                          "with it.", type="/problems/forbidden")
    kind = access.rate
    if kind is not None:
        limit = (settings.rate_limit_predict_per_min if kind == "predict"
                 else settings.rate_limit_writes_per_min)
        ratelimit.hit(info.id, kind, limit)
    if keys.due_touch(info.id):
        await run_in_threadpool(touch, info.id)
    return Caller(owner=info.tenant, key_id=info.id, key_name=info.name, scopes=info.scopes)


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if CONTROL.search(path):
            await problems.domain_problem(_control_character(path), quote(path))(
                scope, receive, send)
            return
        if is_public(path):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = await authenticate(scope["method"], path, found_route(scope).access,
                                        authorization, scope.get("server"))
        except DomainError as exc:
            await problems.domain_problem(exc, scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE] = caller
        await self.app(scope, receive, send)


def _control_character(path: str) -> DomainError:
    at = CONTROL.search(path)
    where = at.start() if at else 0
    return bad_request("The request path holds a control character, which no route or name "
                       "accepts; send the path without it (a trailing %0A, %0D or %00 is one).",
                       [FieldError("/path", f"{path[where]!r} at character {where}")])


def document_security(openapi: dict[str, Any], routes: Iterable[Any]) -> dict[str, Any]:
    """The bearer scheme in the OpenAPI document, and on every non-public operation its 400 (a
    control character in the path), 401, 403 and (for writes and predict) 429 answers, and the
    scopes it needs (`x-scopes`)."""
    needs = {(getattr(r, "path", None), m): access_of(r, m)
             for r in routes for m in getattr(r, "methods", None) or ()}
    openapi.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `keras-jobs keys create` or POST /v1/keys"}
    for path, operations in openapi.get("paths", {}).items():
        if is_public(path):
            continue
        for method, operation in operations.items():
            operation["security"] = [{"bearer": []}]
            access = needs.get((path, method.upper()))
            statuses = [400, 401, 403]  # 400: a path holding a control character
            if access is not None:
                operation["x-scopes"] = sorted(access.scopes)
                if access.rate is not None:
                    statuses.append(429)
            for status, response in problems.responses(*statuses).items():
                operation.setdefault("responses", {}).setdefault(str(status), response)
    return openapi
