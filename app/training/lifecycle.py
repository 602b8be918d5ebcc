"""A job's state changes, each a short transaction guarded by the status it expects, so a
redelivered or raced message can never move a job backwards or run it twice."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.core.db import session_scope
from app.models import Job, JobEpoch, JobStatus
from app.models.base import utcnow


def claim(job_id: str, redelivered: bool, stale_after_s: float) -> Job | None:
    """queued → running. A redelivered message (its worker died mid-job) may take over a job
    still marked running, but only once that job's heartbeat has gone stale: a live process
    keeps it fresh, so a job never runs twice at once."""
    now = utcnow()
    with session_scope() as s:
        moved = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
                          .values(status=JobStatus.running, started_at=now, heartbeat_at=now)
                          ).rowcount  # type: ignore[attr-defined]
        if not moved and redelivered:
            moved = s.execute(update(Job).where(Job.id == job_id,
                                                Job.status == JobStatus.running,
                                                _stale(now, stale_after_s))
                              .values(heartbeat_at=now)).rowcount  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        if job is None or not moved:
            return None
        s.expunge(job)
        return job


def _stale(now: datetime, stale_after_s: float) -> ColumnElement[bool]:
    cutoff = now - timedelta(seconds=stale_after_s)
    return or_(Job.heartbeat_at < cutoff,
               and_(Job.heartbeat_at.is_(None), Job.started_at < cutoff))


def heartbeat(job_id: str) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.running)
                  .values(heartbeat_at=utcnow()))


def requeue_stale(stale_after_s: float) -> list[str]:
    """Jobs marked running whose process stopped beating (its worker or host died) go back to
    queued and are enqueued again; they resume from their checkpoint. Returns their ids.
    One whose cancel was requested is simply cancelled."""
    now = utcnow()
    with session_scope() as s:
        s.execute(update(Job).where(Job.status == JobStatus.running, Job.cancel_requested,
                                    _stale(now, stale_after_s))
                  .values(status=JobStatus.cancelled, finished_at=now,
                          error="cancelled; its worker had stopped"))
        ids = list(s.scalars(select(Job.id).where(Job.status == JobStatus.running,
                                                  _stale(now, stale_after_s))))
        requeued = [job_id for job_id in ids if s.execute(
            update(Job).where(Job.id == job_id, Job.status == JobStatus.running,
                              _stale(now, stale_after_s))
            .values(status=JobStatus.queued)).rowcount]  # type: ignore[attr-defined]
    from app.core.broker import enqueue_job

    for job_id in requeued:
        enqueue_job(job_id)
    return requeued


def record_epoch(job_id: str, epoch: int, logs: dict[str, float | None]) -> None:
    """Upsert the (job, epoch) row and move the job's epoch counter."""
    with session_scope() as s:
        _upsert_epoch(s, job_id, epoch, logs)
        s.execute(update(Job).where(Job.id == job_id).values(epoch=epoch + 1))


def _upsert_epoch(s: Session, job_id: str, epoch: int, logs: dict[str, float | None]) -> None:
    values = {"job_id": job_id, "epoch": epoch, "logs": logs, "created_at": utcnow()}
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(JobEpoch).values(**values)
    s.execute(stmt.on_conflict_do_update(index_elements=["job_id", "epoch"],
                                         set_={"logs": stmt.excluded.logs,
                                               "created_at": stmt.excluded.created_at}))


def cancel_requested(job_id: str) -> bool:
    with session_scope() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(job_id: str, status: JobStatus, *, result: dict[str, Any] | None = None,
           error: str | None = None, session: Session | None = None, **extra: Any) -> bool:
    """running → a final status. Returns False when the job was no longer running."""
    values = {"status": status, "finished_at": utcnow(), "result": result, "error": error, **extra}
    stmt = update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(**values)
    if session is not None:
        return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]
    with session_scope() as s:
        return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

