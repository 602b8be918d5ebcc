"""Refuse request bodies that are too large (413, past KJ_MAX_JSON_BODY_BYTES) or JSON nested
too deep (400), before FastAPI reads them.

FastAPI reads a JSON body with `json.loads` in its route handler (fastapi/routing.py), before
any dependency runs, and the recursive code behind it fails near 1,000 levels: `json.loads`
with RecursionError (which FastAPI answers with a bare 400 "There was an error parsing the
body"), pydantic's serialiser and the spec checker a few hundred levels earlier, as 500s. This
pure-ASGI middleware reads the body of a JSON request first, and answers a body nested deeper
than MAX_DEPTH with a 400 problem naming where; other bodies are handed on unchanged.

The routes that read and bound their bodies themselves say so (`@reads_own_body`, or
`@serving`, which implies it) and are passed through untouched, found as the router finds
them (app.api.route_access: a label or a model named `infer` or `versions` is no such route):
predict and the Open Inference Protocol's infer (the hot path, bounded by
KJ_PREDICT_MAX_BODY_BYTES and parsed by app/predict/codec.py after their rows are counted),
:classify and :regress (refused before their bodies are read), and the multipart uploads
(bounded by the tenant's largest upload as they are written to disk).
Bodies FastAPI would not parse as JSON (no content type) are only counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem
from app.api.route_access import found_route
from app.core.config import get_settings
from app.core.json_limits import MAX_DEPTH, too_deep

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The attribute `reads_own_body` sets on a route's endpoint.
OWN_BODY_ATTR = "__kj_own_body__"
F = TypeVar("F", bound=Callable[..., Any])


def reads_own_body(endpoint: F) -> F:
    """Declares, under the route's decorator, that it bounds and parses its body itself."""
    setattr(endpoint, OWN_BODY_ATTR, True)
    return endpoint


def has_own_body_reader(scope: Scope) -> bool:
    """Whether the route this request goes to bounds and parses its body itself (and so skips
    this middleware)."""
    return getattr(found_route(scope).endpoint, OWN_BODY_ATTR, False) is True


def _is_json(scope: Scope) -> bool:
    """Whether FastAPI would parse this request's body as JSON: a media type of
    application/json or application/*+json (parameters and case aside)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            media: bytes = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or (
                media.startswith(b"application/") and media.endswith(b"+json"))
    return False


class JsonDepthLimit:
    """Answers 400 to a JSON body nested deeper than `max_depth` (see the module's doc)."""

    def __init__(self, app: ASGIApp, max_depth: int = MAX_DEPTH) -> None:
        self.app = app
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in BODY_METHODS
                or has_own_body_reader(scope)):
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_json_body_bytes
        messages = None if _declared(scope) > limit else await _read_body(receive, limit)
        if messages is None:
            response = problem(413, "Request body too large", f"A request body here may hold "
                               f"at most {limit} bytes (KJ_MAX_JSON_BODY_BYTES).", scope["path"],
                               type_="/problems/too-large", extra={"limit": limit})
            await response(scope, receive, send)
            return
        body = b"".join(m.get("body", b"") for m in messages)
        where = too_deep(body, self.max_depth) if _is_json(scope) else None
        if where is not None:
            response = problem(
                400, "Body nested too deep", f"The JSON body is nested more than "
                f"{self.max_depth} levels deep; no request needs that many.", scope["path"],
                type_="/problems/bad-request",
                errors=[{"pointer": where, "detail": f"nested more than {self.max_depth} "
                         "levels deep"}])
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(messages, receive), send)


def _declared(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


async def _read_body(receive: Receive, limit: int) -> list[Message] | None:
    """The request's messages up to its last body chunk (or a disconnect); None as soon as the
    body passes `limit` bytes (the rest is never read)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            return None
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()  # after the body: wait for a disconnect, as the server would

    return replay
