"""On the request path, each wait for the database's answer (a statement, a commit) gives up
after KJ_DB_REQUEST_WAIT_S: a database that froze mid-request, or a lock held too long, is a
503 within seconds rather than after KJ_DB_STATEMENT_TIMEOUT_S, which is for the workers and
migrations. It bounds waits, not the request: an upload's file work between its statements
does not count.

A pure-ASGI middleware around everything that reads the database (authentication too); the
bound is a context variable, which the request's threads inherit."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import get_settings
from app.core.db import waits_at_most


class BoundedDatabaseWaits:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with waits_at_most(get_settings().db_request_wait_s):
            await self.app(scope, receive, send)
