"""What the worker tells the outside: the job a log line belongs to, how long jobs took, and a
Prometheus endpoint in the parent process.

Tasks run in the pool's children (one job per child). Around each one the child sets the
job id for the log formatter (app.core.logs) and, once the job has ended, observes its duration
into keras_jobs_job_duration_seconds; epochs are observed by the job's own callback
(app.training.observe). The children write into PROMETHEUS_MULTIPROC_DIR; the parent's HTTP
server (`keras-jobs worker --metrics-port`) adds every child's values up at each scrape."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery.signals import task_postrun, task_prerun

from app.core.logs import set_job_id

log = logging.getLogger(__name__)
_started: dict[str, datetime] = {}


@task_prerun.connect  # type: ignore[untyped-decorator]
def _job_starts(task_id: str = "", args: Any = None, **_kwargs: Any) -> None:
    job_id = _job_of(args)
    if job_id is not None:
        set_job_id(job_id)
        _started[task_id] = datetime.now(UTC)


@task_postrun.connect  # type: ignore[untyped-decorator]
def _job_ran(task_id: str = "", args: Any = None, **_kwargs: Any) -> None:
    since = _started.pop(task_id, None)
    job_id = _job_of(args)
    try:
        if job_id is not None and since is not None:
            observe_job_end(job_id, since)
    finally:
        set_job_id(None)


def _job_of(args: Any) -> str | None:
    return str(args[0]) if args else None


def observe_job_end(job_id: str, since: datetime) -> None:
    """If the job ended while this task ran (not skipped, not handed back, not left to the
    sweep), observe its duration from first start to end. Best effort: one query."""
    from app.core.db import session_scope
    from app.core.metrics import JOB_SECONDS
    from app.tables import Job

    try:
        with session_scope() as s:
            job = s.get(Job, job_id)
            if job is None or not job.status.finished or job.finished_at is None \
                    or job.started_at is None or job.finished_at < since:
                return
            JOB_SECONDS.labels(job.type.value, job.status.value).observe(
                (job.finished_at - job.started_at).total_seconds())
    except Exception as exc:  # noqa: BLE001 - metrics must never fail a job
        log.info("duration of job %s not observed: %s", job_id, exc)


def start_metrics_server(port: int, host: str, path: Path) -> None:
    """The worker parent's /metrics: the sum over the multiprocess folder `path`. A daemon
    thread; the pool's children never serve it."""
    from prometheus_client import CollectorRegistry, start_http_server

    from app.core.metrics import Aggregated

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Aggregated(path))
    start_http_server(port, addr=host, registry=registry)
    log.info("worker metrics on http://%s:%d/metrics", host, port)
