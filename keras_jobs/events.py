"""A job's live events (`GET /v1/jobs/{id}/events`, Server-Sent Events) as Python objects,
resumed with `Last-Event-ID` when the connection drops, so a flaky network or a restarted
API process costs a reconnect and never a duplicated or missing epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from keras_jobs.errors import KerasJobsError
from keras_jobs.transport import Transport

TERMINAL = ("succeeded", "failed", "cancelled")
# The service sends a keep-alive comment every 15 s: a minute of silence is a dead link.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)


@dataclass
class Event:
    """One event: `type` is status, epoch or progress (see the service's app/jobs/events.py);
    `data` its JSON."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @property
    def terminal(self) -> bool:
        return self.type == "status" and self.data.get("status") in TERMINAL


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Server-Sent Events from the stream's lines (the WHATWG rules this service needs: `id`,
    `event`, multi-line `data`, comments, a blank line ends an event)."""
    kind, last_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                payload = json.loads("\n".join(data))
                yield Event(kind, payload if isinstance(payload, dict) else {"value": payload},
                            last_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue  # keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id" and value.isdigit():
            last_id = int(value)


def follow(transport: Transport, job_id: str, last_event_id: int | None = None, *,
           retries: int = 8, sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """The job's events from the start (or after `last_event_id`) until it has ended.

    A dropped stream (or a 502/503/504 from a restarting service) is reopened with the last
    id seen, waiting longer each time; `retries` failures in a row without an event between
    them end it with a KerasJobsError. A stream that closes cleanly without the final status
    (the service ended it) is reopened too, unless the job has in fact ended."""
    last = last_event_id
    failures = 0
    while True:
        headers = {"Last-Event-ID": str(last)} if last is not None else {}
        try:
            with transport.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                  timeout=STREAM_TIMEOUT) as response:
                for event in parse_sse(response.iter_lines()):
                    if event.id is not None:
                        last = event.id
                    failures = 0
                    yield event
                    if event.terminal:
                        return
            job = transport.json("GET", f"/v1/jobs/{job_id}")
            if job["status"] in TERMINAL:
                return
            reason: str = "the stream ended before the job did"
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        except KerasJobsError as exc:
            if exc.status not in (None, 502, 503, 504):
                raise
            reason = str(exc)
        failures += 1
        if failures > retries:
            raise KerasJobsError("Lost the job's event stream",
                                 f"{job_id}: {reason} ({retries} reconnects failed)")
        sleep(min(0.5 * 2 ** (failures - 1), 10.0))
