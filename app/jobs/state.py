"""Every change of a job's state, and nothing else writes `Job.status`.

queued → running (claim) → succeeded | failed | cancelled (finish); queued → cancelled and
running → cancel requested (request_cancel); heartbeat; running with a stale heartbeat → queued
(requeue_stale). Each is an UPDATE guarded by the status it expects, so a redelivered or raced
message can never move a job backwards or run it twice. Jobs reach the broker only after the
transaction that recorded them commits (enqueue_after_commit)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.core.broker import enqueue_job
from app.core.db import on_commit, session_scope, upsert
from app.core.errors import DomainError, conflict
from app.jobs import events
from app.tables import Job, JobEpoch, JobStatus
from app.tables.base import utcnow


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
        events.record(s, job_id, "status", {"status": "running"})
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
        for job_id in requeued:
            events.record(s, job_id, "status", {"status": "queued",
                                                "reason": "its worker had stopped; resuming"})
    for job_id in requeued:
        enqueue_job(job_id)
    return requeued


def record_epoch(job_id: str, epoch: int, logs: dict[str, float | None]) -> None:
    """Upsert the (job, epoch) row and move the job's epoch counter."""
    with session_scope() as s:
        upsert(s, JobEpoch, {"job_id": job_id, "epoch": epoch, "logs": logs,
                             "created_at": utcnow()}, ["job_id", "epoch"])
        events.record(s, job_id, "epoch", {"epoch": epoch, "logs": logs})
        s.execute(update(Job).where(Job.id == job_id).values(epoch=epoch + 1))


def cancel_requested(job_id: str) -> bool:
    with session_scope() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(job_id: str, status: JobStatus, *, result: dict[str, Any] | None = None,
           error: str | None = None, session: Session | None = None, **extra: Any) -> bool:
    """running → a final status. Returns False when the job was no longer running."""
    values = {"status": status, "finished_at": utcnow(), "result": result, "error": error, **extra}
    stmt = update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(**values)

    def apply(s: Session) -> bool:
        moved = bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]
        if moved:
            events.record(s, job_id, "status", {"status": status.value, "result": result,
                                                "error": error})
        return moved

    if session is not None:
        return apply(session)
    with session_scope() as s:
        return apply(s)



def request_cancel(session: Session, job: Job) -> None:
    """A queued job is cancelled at once (a worker that later gets its message skips it); a
    running one is flagged and stops at its next batch boundary. 409 once it has ended."""
    now = utcnow()
    done = session.execute(
        update(Job).where(Job.id == job.id, Job.status == JobStatus.queued)
        .values(status=JobStatus.cancelled, cancel_requested=True, cancel_requested_at=now,
                finished_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if done:
        events.record(session, job.id, "status", {"status": "cancelled", "result": None,
                                                  "error": None})
    else:
        flagged = session.execute(
            update(Job).where(Job.id == job.id, Job.status == JobStatus.running)
            .values(cancel_requested=True, cancel_requested_at=func.coalesce(
                Job.cancel_requested_at, now))
        ).rowcount  # type: ignore[attr-defined]
        if not flagged:
            session.refresh(job)
            raise conflict(f"Job {job.id} has already ended ({job.status.value}); "
                           "only queued or running jobs can be cancelled.")
        events.record(session, job.id, "status", {"status": "running",
                                                  "reason": "cancel requested"})
    session.refresh(job)


def enqueue_after_commit(session: Session, job_id: str) -> None:
    """Send the job to the broker once `session` has committed its row (never before: a worker
    could look for it too early)."""
    events.record(session, job_id, "status", {"status": "queued"})
    on_commit(session, lambda: _enqueue(job_id))


def _enqueue(job_id: str) -> None:
    """If the broker cannot take the job, it must not sit queued forever: it is marked failed
    and the request that submitted it answers 503."""
    try:
        enqueue_job(job_id)
    except Exception as exc:
        with session_scope() as s:
            if s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
                         .values(status=JobStatus.failed, finished_at=utcnow(),
                                 error=f"could not be queued: {exc}")
                         ).rowcount:  # type: ignore[attr-defined]
                events.record(s, job_id, "status", {"status": "failed", "result": None,
                                                    "error": f"could not be queued: {exc}"})
        raise DomainError(503, "Broker unavailable", f"Job {job_id} could not be queued: the "
                          "broker is unreachable. It was recorded as failed; submit it again "
                          "once the broker is back.", type="/problems/broker-unavailable") from exc
