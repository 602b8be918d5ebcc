"""The Celery app both doors share: the API only sends task names, the worker runs them.

The broker is a doorbell, not the record: a job's row says it is queued, a message tells a
worker to look. `waiting_messages` lets the workers' sweep see whether a queued job still has a
message, so a lost one is sent again (app.jobs.recovery) without flooding the queue."""

from __future__ import annotations

import ast
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import Celery

from app.core.config import Settings, get_settings
from app.core.redis_clients import SWEEP_S, broker_redis_url, get_redis
from app.core.state import AppState, Part, current

RUN_JOB_TASK = "keras_jobs.run_job"
log = logging.getLogger(__name__)

# Message priorities, in the Redis transport's sense: kombu keeps one list per step of
# PRIORITY_STEPS and its BRPOP names them in that order, so the LOWEST number is taken first
# (RabbitMQ is the other way round; it is not supported here). Recovered jobs go before every
# new one: first those that had started (requeued after their process died, handed back on
# shutdown: they have a checkpoint and a caller already waiting on progress), then those whose
# message was lost before they started (re-sent by the sweep: after a broker restart that is
# every waiting job, which must not bury the first kind). The embedded SQLAlchemy transport
# has no priorities: it takes messages in the order they were sent, so there a recovered job
# waits behind the jobs already queued.
PRIORITY_STEPS = [0, 3, 6, 9]
PRIORITY_FIRST = 0
PRIORITY_RESENT = 3
PRIORITY_NEW = 6
# kombu's Redis key for a priority step other than 0 is f"{queue}{SEP}{step}".
REDIS_PRIORITY_SEP = "\x06\x16"


def celery_config(settings: Settings) -> dict[str, Any]:
    # Redis redelivers an unacked message after visibility_timeout; it must outlast the longest
    # job. (The embedded SQLAlchemy transport hands its options to create_engine instead.)
    transport = ({} if broker_redis_url(settings) is None
                 else {"visibility_timeout": settings.visibility_timeout_s,
                       "priority_steps": PRIORITY_STEPS,
                       # Across several queues, the highest priority first (one queue here).
                       "queue_order_strategy": "priority"})
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # job state lives in the database
        "task_default_queue": settings.queue,
        "task_default_priority": PRIORITY_NEW,
        # A job is acked only when it ends, and redelivered if its process dies (jobs are
        # idempotent: guarded status updates, epoch upserts, checkpoints keyed by job id).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # One job per child: TensorFlow keeps (GPU) memory until its process exits.
        "worker_max_tasks_per_child": 1,
        # A child's init lists the devices (starting CUDA on a GPU machine takes seconds).
        "worker_proc_alive_timeout": 180.0,
        # A broker restart must not stop the jobs that are training: the database, not the
        # message, says who runs a job (a copy that comes back later finds it taken or ended).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_hijack_root_logger": False,
    }


def _celery(state: AppState) -> Celery:
    app = Celery("keras_jobs")
    app.conf.update(celery_config(state.settings))
    return app


CELERY: Part[Celery] = Part("Celery app", _celery, close=Celery.close)


def get_celery() -> Celery:
    """The current state's Celery app (the worker's is worker.celery_app.app)."""
    return current().get(CELERY)


def priority_keys(queue: str) -> list[str]:
    """kombu's Redis lists of `queue`, one per priority step, in PRIORITY_STEPS order."""
    return [queue if step == 0 else f"{queue}{REDIS_PRIORITY_SEP}{step}"
            for step in PRIORITY_STEPS]


def task_id(job_id: str, dispatch: int) -> str:
    """A message's task id names its job, so the queue can be searched without decoding."""
    return f"{job_id}.{dispatch}"


def enqueue_job(job_id: str, *, priority: int = PRIORITY_NEW, dispatch: int = 0) -> None:
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().queue,
                           priority=priority, task_id=task_id(job_id, dispatch))


def check_broker() -> None:
    """Raise if the broker cannot be reached (used by /readyz)."""
    with get_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


@dataclass
class WaitingMessages:
    """The jobs that have a message in the broker: `waiting` in the queue (job id → the best
    priority among its messages; 0 where the broker has no priorities), and `held` by a
    consumer that took it without acking yet (job id → when it was taken)."""

    waiting: dict[str, int] = field(default_factory=dict)
    held: dict[str, datetime] = field(default_factory=dict)

    def wait(self, job_id: str, priority: int) -> None:
        self.waiting[job_id] = min(priority, self.waiting.get(job_id, priority))


def waiting_messages(taken_within_s: float = 24 * 3600) -> WaitingMessages | None:
    """What the broker holds for this queue, or None where it cannot be looked at (then the
    caller falls back to backing off). Messages taken longer ago than `taken_within_s` may be
    left out of `held`."""
    settings = get_settings()
    redis = get_redis()
    if redis is not None:
        return _redis_messages(redis.client(SWEEP_S), settings.queue)
    if settings.embedded_broker:
        return _sqla_messages(settings.resolved_broker_url.removeprefix("sqla+"),
                              settings.queue, taken_within_s)
    return None


def job_of(message: dict[str, Any]) -> str | None:
    """The job id a run_job message is for (from its task id, else its argsrepr)."""
    headers = message.get("headers") or {}
    if headers.get("task") != RUN_JOB_TASK:
        return None
    ident = str(headers.get("id") or "")
    if ident.startswith("job_") and "." in ident:
        return ident.rpartition(".")[0]
    try:  # a message sent before task ids named their job
        args = ast.literal_eval(str(headers.get("argsrepr") or ""))
        return str(args[0]) if args else None
    except (ValueError, SyntaxError, TypeError, IndexError):
        return None


def _redis_messages(client: Any, queue: str) -> WaitingMessages:
    """kombu's Redis layout: a list per priority step, and the messages taken but not acked in
    the hash `unacked` ([message, exchange, routing key]) with the time taken in the sorted
    set `unacked_index` (both shared by every queue of the database)."""
    found = WaitingMessages()
    with client.pipeline(transaction=False) as pipe:
        for key in priority_keys(queue):
            pipe.lrange(key, 0, -1)
        pipe.hgetall("unacked")
        pipe.zrange("unacked_index", 0, -1, withscores=True)
        *lists, unacked, index = pipe.execute()
    for step, items in zip(PRIORITY_STEPS, lists, strict=True):
        for raw in items:
            job_id = _job_of_raw(raw)
            if job_id is not None:
                found.wait(job_id, step)
    taken = {_text(tag): score for tag, score in index}
    for tag, raw in unacked.items():
        try:
            message, _exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        job_id = job_of(message) if routing_key == queue else None
        if job_id is not None:
            when = datetime.fromtimestamp(taken.get(_text(tag), 0.0), UTC)
            found.held[job_id] = max(when, found.held.get(job_id, when))
    return found


def _sqla_messages(url: str, queue: str, taken_within_s: float) -> WaitingMessages:
    """kombu's SQLAlchemy layout: `kombu_message` rows, visible until taken; taking one sets
    visible false and `timestamp` (local time) to now. Taken rows are never deleted, acked or
    not, so `held` only says when a message was taken (the sweep looks at queued jobs only)."""
    from datetime import timedelta

    from sqlalchemy import create_engine, text

    found = WaitingMessages()
    since = datetime.now() - timedelta(seconds=taken_within_s)  # kombu's local, naive time
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT m.payload, m.visible, m.timestamp FROM kombu_message m "
                "JOIN kombu_queue q ON q.id = m.queue_id WHERE q.name = :queue "
                "AND (m.visible OR m.timestamp >= :since)"),
                {"queue": queue, "since": since}).all()
    except Exception as exc:  # noqa: BLE001 - no table yet: nothing was ever sent
        log.debug("no kombu tables to look at: %s", exc)
        return found
    finally:
        engine.dispose()
    for payload, visible, taken_at in rows:
        job_id = _job_of_raw(payload)
        if job_id is None:
            continue
        if visible:
            found.wait(job_id, 0)
        else:
            when = _local_time(taken_at)
            found.held[job_id] = max(when, found.held.get(job_id, when))
    return found


def _local_time(value: Any) -> datetime:
    """kombu writes datetime.now() (local, naive); SQLite hands it back as text."""
    try:
        when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return when.astimezone(UTC)


def _job_of_raw(raw: bytes | str) -> str | None:
    try:
        message = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return job_of(message) if isinstance(message, dict) else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
