"""`GET /metrics`: Prometheus's text format, summed over every API process of this `serve`
(and its embedded worker), plus what is read at scrape time: jobs by status (one `GROUP BY`)
and the broker's queue depth. Either of those that cannot be read is left out of that scrape
(and logged); the scrape itself never fails for it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, select, text

from app.auth.access import OPERATOR_READ, requires
from app.core.broker import priority_keys
from app.core.config import get_settings
from app.core.db import get_engine
from app.core.metrics import exposition
from app.core.redis_clients import SCRAPE_S, get_redis
from app.tables import Job, JobStatus

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)
# A scrape waits at most this long for the database's answer, and for the broker's
# (app.core.redis_clients.SCRAPE_S for Redis).
QUERY_TIMEOUT_S = 2.0


@router.get("/metrics", include_in_schema=False)
@requires(OPERATOR_READ)
def metrics() -> Response:
    """Sync: runs on the thread pool (file reads, a query, a broker round trip). The classic
    text format (0.0.4), which every Prometheus reads, as prometheus_client's own server
    answers a scraper that names no format."""
    return Response(exposition(JobsCollector()), media_type=CONTENT_TYPE_PLAIN_0_0_4)


class JobsCollector:
    """Gauges read at scrape time: `keras_jobs_jobs{status}` and
    `keras_jobs_queue_messages{queue}`."""

    def collect(self) -> Iterator[Metric]:
        counts = job_counts()
        if counts is not None:
            jobs = GaugeMetricFamily("keras_jobs_jobs", "Jobs by status (every status, 0 "
                                     "included).", labels=["status"])
            for status in JobStatus:
                jobs.add_metric([status.value], counts.get(status.value, 0))
            yield jobs
        queue = get_settings().queue
        depth = queue_depth()
        if depth is not None:
            waiting = GaugeMetricFamily("keras_jobs_queue_messages", "Messages waiting in the "
                                        "broker's queue (not yet taken by a worker).",
                                        labels=["queue"])
            waiting.add_metric([queue], depth)
            yield waiting


def job_counts() -> dict[str, int] | None:
    try:
        with get_engine().connect() as conn:
            if conn.dialect.name == "postgresql":  # a sick database must not hold the scrape
                conn.execute(text(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT_S * 1000)}"))
            rows = conn.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    except Exception as exc:  # noqa: BLE001 - see the module's doc
        log.warning("metrics: jobs by status left out: %s", exc)
        return None
    return {JobStatus(status).value: int(n) for status, n in rows}


def queue_depth() -> int | None:
    """Messages waiting in the job queue: LLEN of each of the queue's priority lists (Redis),
    or the visible rows of the embedded SQLAlchemy broker's message table."""
    settings = get_settings()
    redis = get_redis()
    try:
        if redis is not None:
            return _redis_depth(redis.client(SCRAPE_S), settings.queue)
        if settings.embedded_broker:
            return _sqla_depth(settings.resolved_broker_url.removeprefix("sqla+"),
                               settings.queue)
    except Exception as exc:  # noqa: BLE001 - see the module's doc
        log.warning("metrics: queue depth left out: %s", exc)
    return None


def _redis_depth(client: Any, queue: str) -> int:
    with client.pipeline(transaction=False) as pipe:
        for key in priority_keys(queue):
            pipe.llen(key)
        return sum(int(n) for n in pipe.execute())


def _sqla_depth(url: str, queue: str) -> int:
    from sqlalchemy import create_engine

    connect_args: dict[str, Any] = ({"timeout": QUERY_TIMEOUT_S} if url.startswith("sqlite")
                                    else {"connect_timeout": max(2, int(QUERY_TIMEOUT_S))})
    engine = create_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            if not conn.dialect.has_table(conn, "kombu_message"):
                return 0  # nothing was ever sent
            return int(conn.execute(text(
                "SELECT count(*) FROM kombu_message m JOIN kombu_queue q ON q.id = m.queue_id "
                "WHERE q.name = :queue AND m.visible"), {"queue": queue}).scalar_one())
    finally:
        engine.dispose()
