"""The Celery app both doors share: the API only sends task names, the worker runs them."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from app.core.config import Settings, get_settings

RUN_JOB_TASK = "keras_jobs.run_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    # Redis redelivers an unacked message after visibility_timeout; it must outlast the longest
    # job. (The embedded SQLAlchemy transport hands its options to create_engine instead.)
    transport = ({} if settings.embedded_broker
                 else {"visibility_timeout": settings.visibility_timeout_s})
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # job state lives in the database
        "task_default_queue": settings.queue,
        # A job is acked only when it ends, and redelivered if its process dies (jobs are
        # idempotent: guarded status updates, epoch upserts, checkpoints keyed by job id).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # One job per child: TensorFlow keeps (GPU) memory until its process exits.
        "worker_max_tasks_per_child": 1,
        # A fresh child imports TensorFlow in worker_process_init; give it time to do so.
        "worker_proc_alive_timeout": 180.0,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
    }


@lru_cache
def get_celery() -> Celery:
    app = Celery("keras_jobs")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_job(job_id: str) -> None:
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=get_settings().queue)


def check_broker() -> None:
    """Raise if the broker cannot be reached (used by /readyz)."""
    with get_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
