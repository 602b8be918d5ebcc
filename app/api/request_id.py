"""`X-Request-ID`: taken from the request (when it is a sane token) or made up, put where the
log formatter finds it (app.core.logs.request_id) for everything the request runs, and sent
back in the response's headers.

A pure-ASGI middleware, outermost, so every request carries an id, whatever answers it; it
costs a header scan, a token and a context variable, about a microsecond or two per request."""

from __future__ import annotations

import os
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import request_id

HEADER = b"x-request-id"
# What a caller may choose: it ends up in log lines, so no spaces, quotes or control bytes.
_SANE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = b""
        for name, value in scope["headers"]:
            if name == HEADER:
                raw = value
                break
        if not _SANE.fullmatch(raw):
            raw = os.urandom(8).hex().encode()
        token = request_id.set(raw.decode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (HEADER, raw)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)
