"""What the broker holds for a queue, as the workers' sweep sees it, and which message a worker
takes first: on Redis a recovered job's (priority 0) before new ones; on the embedded
SQLAlchemy broker, which has no priorities, the first sent. kombu's own consumer takes the
messages, as a worker's would; no worker process is needed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.state import fresh
from tests.conftest import REDIS_URL


@pytest.fixture
def broker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path) -> Iterator[str]:
    """Settings for a private queue on the given broker ("redis" or "sqla")."""
    url = REDIS_URL if request.param == "redis" else f"sqla+sqlite:///{tmp_path / 'broker.db'}"
    queue = f"kj-dispatch-{secrets.token_hex(4)}"
    monkeypatch.setenv("KJ_BROKER_URL", url)
    monkeypatch.setenv("KJ_QUEUE", queue)
    monkeypatch.setenv("KJ_HOME", str(tmp_path))
    with fresh():
        yield request.param
    if request.param == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = client.keys(f"{queue}*")
        if keys:
            client.delete(*keys)
    monkeypatch.undo()


def _take(conn: Any) -> Any:
    from app.core.config import get_settings

    return conn.SimpleQueue(get_settings().queue).get(block=True, timeout=10)


@pytest.mark.parametrize("broker", ["redis", "sqla"], indirect=True)
def test_waiting_held_and_which_comes_first(broker: str) -> None:
    from app.core.broker import (
        PRIORITY_FIRST,
        PRIORITY_NEW,
        enqueue_job,
        get_celery,
        job_of,
        waiting_messages,
    )

    enqueue_job("job_new", priority=PRIORITY_NEW, dispatch=1)
    enqueue_job("job_recovered", priority=PRIORITY_FIRST, dispatch=3)
    seen = waiting_messages()
    assert seen is not None and not seen.held
    assert seen.waiting == ({"job_new": 6, "job_recovered": 0} if broker == "redis"
                            else {"job_new": 0, "job_recovered": 0})
    with get_celery().connection_for_read() as conn:
        message = _take(conn)
        first = job_of({"headers": message.headers})
        # Redis: priority 0 first. The SQLAlchemy transport: in the order sent.
        assert first == ("job_recovered" if broker == "redis" else "job_new")
        assert message.headers["id"] == ("job_recovered.3" if broker == "redis" else "job_new.1")
        seen = waiting_messages()
        assert seen is not None and first in seen.held and first not in seen.waiting
        message.ack()
    seen = waiting_messages()
    assert seen is not None and len(seen.waiting) == 1
    # Redis forgets an acked message; kombu's SQLAlchemy transport keeps every taken row
    # (invisible), so there "held" says only when it was taken: the sweep asks the job's
    # status first, and a queued job's message taken longer ago than the bound counts as lost.
    assert set(seen.held) == (set() if broker == "redis" else {first})


def test_job_of_reads_old_messages_by_their_arguments() -> None:
    from app.core.broker import RUN_JOB_TASK, job_of

    old = {"headers": {"task": RUN_JOB_TASK, "id": "4f2d-uuid", "argsrepr": "['job_abc']"}}
    assert job_of(old) == "job_abc"
    assert job_of({"headers": {"task": "other", "id": "job_x.1"}}) is None


def test_which_queued_jobs_count_as_lost() -> None:
    """The sweep's rule: no message at all, or none waiting (a started job: none at the head)
    and none taken by a consumer within the bound."""
    from datetime import UTC, datetime, timedelta

    from app.core.broker import WaitingMessages
    from app.jobs.recovery import _lost

    now, bound = datetime.now(UTC), timedelta(seconds=60)
    old = now - 2 * bound
    seen = WaitingMessages(waiting={"job_new": 6, "job_head": 0},
                           held={"job_taken": now - bound / 2, "job_dead": old})
    assert _lost("job_x", 1, None, False, seen, now, bound)  # its send failed
    assert not _lost("job_new", 1, old, False, seen, now, bound)  # waiting, however long
    assert _lost("job_new", 2, old, True, seen, now, bound)  # started: must be at the head
    assert not _lost("job_head", 2, old, True, seen, now, bound)
    assert not _lost("job_taken", 1, old, False, seen, now, bound)  # a live worker may claim it
    assert _lost("job_dead", 1, old, False, seen, now, bound)  # its holder is long gone
    # No way to look into the broker: wait twice as long after each send.
    assert _lost("job_x", 1, old, False, None, now, bound)
    assert not _lost("job_x", 2, old, False, None, now, bound)
    assert _lost("job_x", 2, now - 3 * bound, False, None, now, bound)
