"""The JSON depth middleware on its own: what it reads, what it leaves alone, what it answers."""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest

from app.api.json_depth import JsonDepthLimit

Message = dict[str, Any]


@functools.cache
def _app() -> Any:
    """The app whose route table says which routes read their own bodies."""
    from app.main import create_app

    return create_app()


def _call(path: str, body: bytes, content_type: bytes | None = b"application/json",
          method: str = "POST") -> tuple[list[Message], bytes]:
    """The messages sent back, and the response body: 204 when the wrapped app answered (it
    read the whole body first, split in two chunks as a server may hand it over)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        got = b""
        while (message := await receive())["type"] == "http.request":
            got += message.get("body", b"")
            if not message.get("more_body"):
                break
        assert got == body
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    incoming: list[Message] = [{"type": "http.request", "body": body[:3], "more_body": True},
                               {"type": "http.request", "body": body[3:]}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [(b"content-type", content_type)] if content_type else []
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers,
             "app": _app()}
    asyncio.run(JsonDepthLimit(app, max_depth=4)(scope, receive, send))
    return sent, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_a_body_within_the_bound_reaches_the_app_whole() -> None:
    sent, _ = _call("/v1/specs", b'{"a": [[1]]}')
    assert sent[0]["status"] == 204


def test_a_body_past_the_bound_is_a_400_problem() -> None:
    sent, body = _call("/v1/specs", b'{"a": [[[[[1]]]]]}')
    assert sent[0]["status"] == 400
    assert (b"content-type", b"application/problem+json") in sent[0]["headers"]
    problem = json.loads(body)
    assert problem["errors"] == [{"pointer": "/a/0/0/0", "detail": "nested more than 4 "
                                                                   "levels deep"}]


@pytest.mark.parametrize(("path", "content_type", "method"), [
    ("/v1/models/m:predict", b"application/json", "POST"),  # its own bounded parser
    ("/v2/models/m/infer", b"application/json", "POST"),
    ("/v1/datasets", b"multipart/form-data; boundary=x", "POST"),  # not parsed as JSON
    ("/v1/specs", None, "POST"),
    ("/v1/specs", b"application/json", "GET"),
])
def test_what_it_leaves_alone(path: str, content_type: bytes | None, method: str) -> None:
    sent, _ = _call(path, b"[[[[[[[[]]]]]]]]", content_type, method)
    assert sent[0]["status"] == 204  # passed on, however deep


def test_a_json_suffix_type_is_checked() -> None:
    sent, _ = _call("/v1/specs", b"[[[[[[]]]]]]", b"application/merge-patch+json")
    assert sent[0]["status"] == 400
