"""Requests per key per minute (predict; writes): fixed one-minute windows, counted in Redis
when Redis is the broker, so every API process shares the count; else in this process.

With Redis, a process does not ask Redis for every request: it takes a lease of up to
limit/LEASE_FRACTION requests (INCRBY) and spends it locally, so a busy predict key costs one
round trip per lease, and the processes together never let more than the limit through in a
window (a lease is cut to what is left under the limit).

A refused request takes nothing: the count only holds requests let through (or leased), so the
`current` of a 429 is what the key used this minute, never more than the limit. Once a window
is full it stays full, so a process refuses the rest of it without asking Redis again."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from app.core.errors import DomainError
from app.core.redis_clients import ON_REQUEST_PATH_S, REDIS
from app.core.state import AppState, Part, current

log = logging.getLogger(__name__)
WINDOW_S = 60


class LocalCounter:
    def __init__(self) -> None:
        self._counts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()

    def take(self, key: str, window: int, limit: int) -> tuple[bool, int]:
        """Count one request if the window has room: (let through, requests counted)."""
        with self._lock:
            if len(self._counts) > 10_000:  # drop old windows
                self._counts = {k: v for k, v in self._counts.items() if k[1] >= window}
            count = self._counts.get((key, window), 0)
            if count >= limit:
                return False, count
            self._counts[(key, window)] = count + 1
            return True, count + 1


LEASE_FRACTION = 100
LEASE_MAX = 1000
# A lease of at most ARGV[1] requests, cut to what is left under the limit ARGV[2]; nothing is
# counted when nothing is left. Returns {requests counted in the window, requests granted}.
LEASE_SCRIPT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local grant = math.min(tonumber(ARGV[1]), tonumber(ARGV[2]) - used)
if grant <= 0 then return {used, 0} end
used = redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {used, grant}
"""


class Leases:
    def __init__(self) -> None:
        self._left: dict[str, tuple[int, int]] = {}  # key -> (window, requests left)
        self._full: dict[str, tuple[int, int]] = {}  # key -> (window, requests counted)
        self._lock = threading.Lock()

    def full(self, key: str, window: int) -> int | None:
        """The window's count if Redis said it was full (it stays so until the window ends)."""
        w, used = self._full.get(key, (-1, 0))
        return used if w == window else None

    def mark_full(self, key: str, window: int, used: int) -> None:
        with self._lock:
            if len(self._full) > 10_000:
                self._full = {k: v for k, v in self._full.items() if v[0] >= window}
            self._full[key] = (window, used)

    def take(self, key: str, window: int) -> bool:
        with self._lock:
            w, left = self._left.get(key, (window, 0))
            if w != window or left <= 0:
                return False
            self._left[key] = (window, left - 1)
            return True

    def put(self, key: str, window: int, left: int) -> None:
        with self._lock:
            if len(self._left) > 10_000:
                self._left = {k: v for k, v in self._left.items() if v[0] >= window}
            self._left[key] = (window, left)


def _refused(kind: str, count: int, limit: int, window: int, now: float) -> DomainError:
    retry = max(1, int((window + 1) * WINDOW_S - now) + 1)
    return DomainError(429, "Rate limit exceeded",
                       f"This key made {count} {kind} requests this minute (limit "
                       f"{limit} per minute); retry in {retry} s.",
                       type="/problems/rate-limit", extra={"limit": limit, "current": count},
                       headers={"Retry-After": str(retry)})


class RateLimiter:
    """The counts of one state: in its Redis (a client that does not wait on the request's
    path) with this process's leases, or in this process alone."""

    def __init__(self, client: Any | None) -> None:
        self.client = client
        self.local = LocalCounter()
        self.leases = Leases()

    def hit(self, key_id: str, kind: str, limit_per_min: int) -> None:
        """Count one request of `kind` by key `key_id`; 429 with Retry-After past the limit."""
        if limit_per_min <= 0:
            return
        now = time.time()
        window = int(now // WINDOW_S)
        key = f"{kind}:{key_id}"
        if self.client is None:
            allowed, count = self.local.take(key, window, limit_per_min)
            if not allowed:
                raise _refused(kind, count, limit_per_min, window, now)
            return
        if self.leases.take(key, window):
            return
        used = self.leases.full(key, window)
        if used is not None:
            raise _refused(kind, used, limit_per_min, window, now)
        self._lease(key, kind, window, limit_per_min, now)

    def _lease(self, key: str, kind: str, window: int, limit_per_min: int, now: float) -> None:
        assert self.client is not None
        size = max(1, min(LEASE_MAX, limit_per_min // LEASE_FRACTION))
        try:
            used, granted = (int(v) for v in self.client.eval(
                LEASE_SCRIPT, 1, f"kj:rate:{key}:{window}", size, limit_per_min, WINDOW_S * 2))
        except Exception as exc:  # noqa: BLE001 - a limit is not worth failing requests over
            log.warning("rate limit not counted (Redis: %s: %s)", type(exc).__name__, exc)
            return
        if granted <= 0:
            self.leases.mark_full(key, window, used)
            raise _refused(kind, used, limit_per_min, window, now)
        self.leases.put(key, window, granted - 1)  # this request takes one


def _limiter(state: AppState) -> RateLimiter:
    redis = state.get(REDIS)
    return RateLimiter(redis.client(ON_REQUEST_PATH_S) if redis is not None else None)


RATE_LIMITER: Part[RateLimiter] = Part("rate limiter", _limiter)


def limiter() -> RateLimiter:
    return current().get(RATE_LIMITER)


def hit(key_id: str, kind: str, limit_per_min: int) -> None:
    """Count one request of `kind` by key `key_id` (RateLimiter.hit)."""
    limiter().hit(key_id, kind, limit_per_min)
