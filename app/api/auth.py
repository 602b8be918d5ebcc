"""Authentication for every route but the public ones, before routing: a request without a
valid key (or the scope its route needs) is answered here, before its body is read.

A pure-ASGI middleware (inside RequestId, outside the predict fast path), so predict requests
are checked the same way at the cost of a header scan, a stat() and a dict lookup."""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import problems
from app.api.deps import CALLER_STATE, OPEN_CALLER, Caller
from app.auth import ratelimit
from app.auth.access import needed_scopes, open_without_keys, rate_kind
from app.auth.keys import KEYS, touch, unauthorized
from app.core.config import get_settings
from app.core.errors import DomainError

# Answered for anyone: health, the OpenAPI document and its page, and the dashboard's static
# pages (they hold no data; their scripts call the API with the key the user gives them).
PUBLIC = frozenset({"/", "/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready",
                    "/docs", "/openapi.json", "/ui"})
PUBLIC_PREFIXES = ("/ui/",)


def is_public(path: str) -> bool:
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


async def authenticate(method: str, path: str, authorization: str | None,
                       server: tuple[str, int] | None) -> Caller:
    """The caller, from the `Authorization: Bearer` header: 401 without a valid key, 403
    without the scope `path` needs, 429 past the key's rate limit. No database query unless
    the keys changed."""
    settings = get_settings()
    if settings.auth == "off":
        return OPEN_CALLER
    if KEYS.stale():
        await run_in_threadpool(KEYS.load)
    if not KEYS.any_key and open_without_keys(server[0] if server else None):
        return OPEN_CALLER
    if not authorization:
        raise unauthorized("An API key is required: send `Authorization: Bearer <key>`. An "
                           "admin makes one with `keras-jobs keys create --tenant T --name N`.",
                           error=None)
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise unauthorized("Send the API key as `Authorization: Bearer <key>`.")
    info = KEYS.check(raw.strip())
    needed = needed_scopes(method, path)
    if "admin" not in info.scopes and not needed & info.scopes:
        raise DomainError(403, "Forbidden", f"The key '{info.name}' has the scopes "
                          f"{', '.join(sorted(info.scopes))}; {method} {path} needs "
                          f"{' or '.join(sorted(needed))}. Ask an admin for a key with it.",
                          type="/problems/forbidden")
    kind = rate_kind(method, path)
    if kind is not None:
        limit = (settings.rate_limit_predict_per_min if kind == "predict"
                 else settings.rate_limit_writes_per_min)
        ratelimit.hit(info.id, kind, limit)
    if KEYS.due_touch(info.id):
        await run_in_threadpool(touch, info.id)
    return Caller(owner=info.tenant, key_id=info.id, key_name=info.name, scopes=info.scopes)


class Authenticate:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        try:
            caller = await authenticate(scope["method"], scope["path"], authorization,
                                        scope.get("server"))
        except DomainError as exc:
            await problems.domain_problem(exc, scope["path"])(scope, receive, send)
            return
        scope.setdefault("state", {})[CALLER_STATE] = caller
        await self.app(scope, receive, send)


def document_security(openapi: dict[str, Any]) -> dict[str, Any]:
    """The bearer scheme in the OpenAPI document, and on every non-public operation its 401,
    403 and (for writes and predict) 429 answers."""
    openapi.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer",
        "description": "An API key: `keras-jobs keys create` or POST /v1/keys"}
    for path, operations in openapi.get("paths", {}).items():
        if is_public(path):
            continue
        for method, operation in operations.items():
            operation["security"] = [{"bearer": []}]
            statuses = [401, 403]
            if rate_kind(method.upper(), path) is not None:
                statuses.append(429)
            for status, response in problems.responses(*statuses).items():
                operation.setdefault("responses", {}).setdefault(str(status), response)
    return openapi
