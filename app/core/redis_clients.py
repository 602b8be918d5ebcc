"""Every Redis client of the process is made here (Celery's own connections are kombu's).

Redis is used only when it is the broker: then rate limits are counted in it (shared by every
API process), job events wake their streams through its pub/sub, and the sweep and /metrics
read the job queue in it. `broker_redis_url` is the one place that decides whether it is.

One timeout policy: how long a call may wait on Redis (to connect, then for each answer) is
set by what a slow answer costs the one who waits, named below. Clients with the same bound
share one connection pool; asyncio clients are bound to their event loop, so a stream gets its
own (`subscriber`) and closes it with the stream.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from app.core.settings import Settings
from app.core.state import AppState, Part, current

if TYPE_CHECKING:
    import redis
    import redis.asyncio

REDIS_SCHEMES = ("redis://", "rediss://")

# Rate limits are counted on every predict and write request: a Redis slower than this is not
# waited for, and the request goes through uncounted.
ON_REQUEST_PATH_S = 0.25
# Wake-ups of event streams (publish, subscribe): a lost one only delays a stream to its next
# look at the events table.
WAKE_UP_S = 2.0
# A /metrics scrape reading the queue's depth: the scrape answers well within a scraper's own
# timeout (Prometheus: 10 s), the database's query besides.
SCRAPE_S = 2.0
# The workers' sweep reading every message of the queue: in the background, so a long queue
# gets the time it takes.
SWEEP_S = 5.0


def broker_redis_url(settings: Settings) -> str | None:
    """The broker's URL if the broker is Redis, else None (the embedded SQLite broker)."""
    url = settings.resolved_broker_url
    return url if url.startswith(REDIS_SCHEMES) else None


class RedisClients:
    """The clients of one Redis (the broker's), one per timeout of the policy above."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._clients: dict[float, redis.Redis] = {}
        self._lock = threading.Lock()

    def client(self, timeout_s: float) -> redis.Redis:
        """A client whose every wait is bounded by `timeout_s` (one of the names above)."""
        found = self._clients.get(timeout_s)
        if found is None:
            import redis

            with self._lock:
                found = self._clients.get(timeout_s)
                if found is None:
                    found = self._clients[timeout_s] = redis.Redis.from_url(
                        self.url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return found

    def subscriber(self) -> redis.asyncio.Redis:
        """A new asyncio client for one stream's subscription (the caller closes it). Only its
        connect is bounded: a subscription waits for messages as long as it likes."""
        import redis.asyncio

        return redis.asyncio.Redis.from_url(self.url, socket_connect_timeout=WAKE_UP_S)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def _build(state: AppState) -> RedisClients | None:
    url = broker_redis_url(state.settings)
    return RedisClients(url) if url is not None else None


def _close(clients: RedisClients | None) -> None:
    if clients is not None:
        clients.close()


REDIS: Part[RedisClients | None] = Part("Redis clients", _build, _close)


def get_redis() -> RedisClients | None:
    """The current state's Redis clients; None when the broker is not Redis."""
    return current().get(REDIS)
