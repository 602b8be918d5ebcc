"""The predict handlers' metrics hook: requests by model, protocol and status code, and their
latency, observed once per request however its route was reached (app/api/serving_route.py).

Cost: a clock read on each side, a dict lookup for the label set's children (prometheus's own
`labels()` takes a lock and builds keys; the children are kept here instead), one counter
increment and one histogram observation: a few microseconds in all.

A model name comes from the URL, so errors for names never served by this process are counted
under `model=""`: a client trying random names must not make a time series per guess."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import wraps
from typing import Any, Protocol, TypeVar

from app.core.errors import DomainError
from app.core.metrics import PREDICT_REQUESTS, PREDICT_SECONDS
from app.predict.service import Ref


class Answer(Protocol):
    """What a handler returns (an HTTP response: this module needs only its status)."""

    @property
    def status_code(self) -> int: ...


A = TypeVar("A", bound=Answer)
Handler = Callable[[AsyncIterator[bytes], Mapping[str, str], Ref], Awaitable[A]]
_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_served: set[str] = set()


def observe(model: str, protocol: str, code: int, seconds: float) -> None:
    if code < 400:
        if model not in _served:
            _served.add(model)
    elif model not in _served:
        model = ""
    key = (model, protocol, code)
    pair = _children.get(key)
    if pair is None:
        pair = _children.setdefault(key, (PREDICT_REQUESTS.labels(model, protocol, str(code)),
                                          PREDICT_SECONDS.labels(model, protocol)))
    pair[0].inc()
    pair[1].observe(seconds)


def observed(protocol: str) -> Callable[[Handler[A]], Handler[A]]:
    """Decorates a predict handler `(body stream, headers, ref) -> Response`."""

    def decorate(handler: Handler[A]) -> Handler[A]:
        @wraps(handler)
        async def timed(stream: AsyncIterator[bytes], headers: Mapping[str, str],
                        ref: Ref) -> A:
            start = time.perf_counter()
            code = 500  # anything but a DomainError becomes a 500
            try:
                response = await handler(stream, headers, ref)
                code = response.status_code
                return response
            except DomainError as exc:
                code = exc.status
                raise
            finally:
                observe(ref.name, protocol, code, time.perf_counter() - start)

        return timed

    return decorate
