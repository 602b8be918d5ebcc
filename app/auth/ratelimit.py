"""Requests per key per minute (predict; writes): fixed one-minute windows, counted in Redis
when Redis is the broker, so every API process shares the count; else in this process."""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Any

from app.core.config import get_settings
from app.core.errors import DomainError

log = logging.getLogger(__name__)
WINDOW_S = 60
# A Redis that does not answer this fast does not hold up the request: it is let through.
REDIS_TIMEOUT_S = 0.25


class LocalCounter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def incr(self, key: str, window: int) -> int:
        with self._lock:
            if len(self._counts) > 10_000:  # drop old windows
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0) + 1
            self._counts[(key, window)] = count
            return count


@lru_cache
def _redis() -> Any | None:
    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://")):
        return None
    import redis

    return redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                socket_connect_timeout=REDIS_TIMEOUT_S)


_local = LocalCounter()


def _count(key: str, window: int) -> int:
    client = _redis()
    if client is None:
        return _local.incr(key, window)
    name = f"kj:rate:{key}:{window}"
    try:
        pipe = client.pipeline()
        pipe.incr(name)
        pipe.expire(name, WINDOW_S * 2)
        return int(pipe.execute()[0])
    except Exception as exc:  # noqa: BLE001 - a limit is not worth failing requests over
        log.warning("rate limit not counted (Redis: %s: %s)", type(exc).__name__, exc)
        return 0


def hit(key_id: str, kind: str, limit_per_min: int) -> None:
    """Count one request of `kind` by key `key_id`; 429 with Retry-After past the limit."""
    if limit_per_min <= 0:
        return
    now = time.time()
    window = int(now // WINDOW_S)
    count = _count(f"{kind}:{key_id}", window)
    if count > limit_per_min:
        retry = max(1, int((window + 1) * WINDOW_S - now) + 1)
        raise DomainError(429, "Rate limit exceeded",
                          f"This key made {count} {kind} requests this minute (limit "
                          f"{limit_per_min} per minute); retry in {retry} s.",
                          type="/problems/rate-limit",
                          extra={"limit": limit_per_min, "current": count},
                          headers={"Retry-After": str(retry)})
