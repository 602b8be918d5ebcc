"""A job's event log: status changes, epochs, batch progress, the result. Rows in `job_events`
(the database is the record, so a stream can replay and resume by id); when Redis is the
broker each new event is also announced on a pub/sub channel so open streams wake at once,
while on the embedded default they poll the table.

Event types and their data:
  status    {"status": "queued" | "running" | …, "error"?, "result"?, "reason"?}
  epoch     {"epoch": n, "logs": {...}}
  progress  {"epoch": n, "batch": b, "steps": s | null, "logs": {...}}
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.config import get_settings
from app.core.db import on_commit, session_scope
from app.core.errors import FieldError, bad_request
from app.core.redis_clients import WAKE_UP_S, get_redis
from app.tables import Job, JobEvent

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "failed", "cancelled")
MAX_EVENT_ID = 2**63 - 1  # the id column is a 64-bit integer


def parse_last_event_id(header: str | None) -> int:
    """Where a stream resumes: after the id of `Last-Event-ID` (0, from the start, without
    one). Checked before the stream starts: an id the id column cannot hold would otherwise
    fail the first query after the response began, dropping the stream mid-way."""
    if header is None or not header.strip():
        return 0
    value = header.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_EVENT_ID)) \
            or int(value) > MAX_EVENT_ID:
        raise bad_request(
            "Last-Event-ID must be the id of an event this stream sent: an integer from 0 to "
            f"{MAX_EVENT_ID}; leave it out to start from the first event.",
            [FieldError("/header/last-event-id", f"expected an integer 0..{MAX_EVENT_ID}")])
    return int(value)


def record(session: Session, job_id: str, type_: str, data: dict[str, Any]) -> None:
    """Add an event in `session`'s transaction; announced once it commits."""
    event = JobEvent(job_id=job_id, type=type_, data=data)
    session.add(event)
    session.flush()
    on_commit(session, lambda: announce(job_id))


def record_now(job_id: str, type_: str, data: dict[str, Any]) -> None:
    with session_scope() as s:
        record(s, job_id, type_, data)


def since(job_id: str, after: int, limit: int = 500) -> list[JobEvent]:
    with session_scope() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                         .order_by(JobEvent.id).limit(limit)).all()
        s.expunge_all()
        return list(rows)


def is_terminal(event: JobEvent) -> bool:
    return event.type == "status" and event.data.get("status") in TERMINAL


def channel(job_id: str) -> str:
    return f"{get_settings().queue}:job-events:{job_id}"


def announce(job_id: str) -> None:
    """Wake the streams following this job (Redis only); losing a wake-up only delays them
    to their next poll, so a failure here is logged, never raised."""
    redis = get_redis()
    if redis is None:
        return
    try:
        redis.client(WAKE_UP_S).publish(channel(job_id), b"1")
    except Exception as exc:  # noqa: BLE001 - the event is in the database either way
        log.debug("could not announce an event of %s: %s", job_id, exc)


def format_sse(event: JobEvent) -> bytes:
    """One Server-Sent Event: `id`, `event` and a one-line JSON `data`."""
    import json

    data = json.dumps({**event.data, "job_id": event.job_id,
                       "time": event.created_at.isoformat()}, separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.type}\ndata: {data}\n\n".encode()


def replay(job_id: str, after: int) -> Iterator[JobEvent]:
    """Every event after `after`, in pages."""
    while True:
        page = since(job_id, after)
        yield from page
        if len(page) < 500:
            return
        after = page[-1].id


async def follow(job_id: str, after: int, disconnected: Callable[[], Awaitable[bool]], *,
                 poll_s: float = 0.5, keepalive_s: float = 15.0) -> AsyncIterator[bytes]:
    """The job's events after `after` as Server-Sent Events, then live ones until the job has
    ended; `: keep-alive` comments while nothing happens. Redis pub/sub wakes the stream when
    there is something new; without it (embedded default) the table is polled."""
    subscription = await _subscribe(job_id)
    wait_s = 5.0 if subscription is not None else poll_s  # pub/sub wakes us; poll as backstop
    quiet_since = time.monotonic()
    try:
        while True:
            page = await asyncio.to_thread(since, job_id, after)
            for event in page:
                yield format_sse(event)
                after, quiet_since = event.id, time.monotonic()
                if is_terminal(event):
                    return
            if len(page) == 500:
                continue
            if not page and await asyncio.to_thread(_ended, job_id):
                return  # it ended before `after` (or before events were recorded)
            if await disconnected():
                return
            if time.monotonic() - quiet_since >= keepalive_s:
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
            await _wait(subscription, min(wait_s, keepalive_s))
    finally:
        if subscription is not None:
            await subscription.aclose()


def _ended(job_id: str) -> bool:
    with session_scope() as s:
        status = s.scalar(select(Job.status).where(Job.id == job_id))
        return status is None or status.finished


async def _subscribe(job_id: str) -> Any:
    redis = get_redis()
    if redis is None:
        return None
    try:
        pubsub = redis.subscriber().pubsub()
        await pubsub.subscribe(channel(job_id))
        return pubsub
    except Exception as exc:  # noqa: BLE001 - fall back to polling the table
        log.info("live events of %s fall back to polling: %s", job_id, exc)
        return None


async def _wait(subscription: Any, timeout: float) -> None:
    if subscription is None:
        await asyncio.sleep(timeout)
        return
    try:
        await subscription.get_message(ignore_subscribe_messages=True, timeout=timeout)
    except Exception:  # noqa: BLE001 - Redis went away: poll instead
        await asyncio.sleep(timeout)
