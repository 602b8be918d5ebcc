"""Every change of a job's state, and nothing else writes `Job.status`.

queued → running (claim, which opens the next attempt) → succeeded | failed | cancelled
(finish); queued → cancelled and running → cancel requested (request_cancel); heartbeat;
running → queued when its worker shuts down (hand_back) or its process died (requeue_dead,
requeue_stale; failed once `max_attempts` attempts died, cancelled if that was asked: also
when the API finds the process of a job it was asked to cancel gone). Each is an UPDATE
guarded by the status and the attempt it expects, so a redelivered or raced message can
never move a job backwards or run it twice, and a process that lost its job can no longer
write to it.

The database is the record, the broker only a doorbell: every send is recorded on the row
(`dispatched_at`, `dispatch_count`) and happens after the transaction commits; a send that
fails leaves the job queued with `dispatched_at` NULL, and the workers' sweep sends it again
(app.jobs.recovery)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from app.auth import quotas
from app.core.broker import PRIORITY_FIRST, PRIORITY_NEW, PRIORITY_RESENT, enqueue_job
from app.core.db import on_commit, session_scope, upsert
from app.core.errors import conflict
from app.core.text import plain_text
from app.jobs import events
from app.tables import Job, JobAttempt, JobEpoch, JobStatus
from app.tables.base import utcnow

log = logging.getLogger(__name__)
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Worker:
    """The process that runs an attempt: `label` is "hostname:pid"; `host_key` says where that
    pid is meaningful (boot id and pid namespace), see app.jobs.recovery."""

    label: str
    host_key: str


def claim(job_id: str, worker: Worker) -> Job | None:
    """queued → running, opening the next attempt (its number is the returned job's
    `attempt`). None when the job is not queued: taken by another message, ended, or running
    in a live process (app.jobs.recovery decides when a running job's process is gone)."""
    now = utcnow()
    with session_scope() as s:
        _check_running_quota(s, job_id)
        moved = s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued)
                          .values(status=JobStatus.running, heartbeat_at=now,
                                  started_at=func.coalesce(Job.started_at, now),
                                  attempt=Job.attempt + 1)).rowcount  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        if job is None or not moved:
            return None
        s.add(JobAttempt(job_id=job_id, number=job.attempt, worker=worker.label,
                         host_key=worker.host_key, started_at=now, epoch_at_start=job.epoch,
                         warnings=[]))
        events.record(s, job_id, "status", {"status": "running"})
        s.expunge(job)
        return job


class TenantBusy(Exception):
    """The job's tenant runs as many jobs as its quota allows: the job stays queued and its
    message is tried again later (worker/tasks.py)."""


def _check_running_quota(s: Session, job_id: str) -> None:
    owner = s.scalar(select(Job.owner).where(Job.id == job_id, Job.status == JobStatus.queued))
    if owner is None:
        return
    if s.get_bind().dialect.name == "postgresql":
        # One claim per tenant at a time, so two workers cannot both take the last slot.
        s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:t))"), {"t": f"kj-run:{owner}"})
    limit = quotas.running_limit(s, owner)
    running = s.scalar(select(func.count()).select_from(Job).where(
        Job.owner == owner, Job.status == JobStatus.running)) or 0
    if running >= limit:
        raise TenantBusy(f"tenant '{owner}' runs {running} jobs (limit {limit}); job {job_id} "
                         "waits")


def _stale(now: datetime, stale_after_s: float) -> ColumnElement[bool]:
    cutoff = now - timedelta(seconds=stale_after_s)
    return or_(Job.heartbeat_at < cutoff,
               and_(Job.heartbeat_at.is_(None), Job.started_at < cutoff))


def _ours(job_id: str, attempt: int) -> ColumnElement[bool]:
    """The job is still running as this attempt: nobody took it over, it has not ended."""
    return and_(Job.id == job_id, Job.status == JobStatus.running, Job.attempt == attempt)


def heartbeat(job_id: str, attempt: int) -> bool:
    """Mark the attempt alive. False once the job is no longer this attempt's (taken as dead
    and given to another, or ended): its process must stop and write nothing more."""
    with session_scope() as s:
        return bool(s.execute(update(Job).where(_ours(job_id, attempt))
                              .values(heartbeat_at=utcnow())).rowcount)  # type: ignore[attr-defined]


def requeue_stale(stale_after_s: float) -> list[str]:
    """Jobs marked running whose process stopped beating (its worker or host died) are treated
    as dead (requeue_dead): queued again to resume from their checkpoint, or failed once they
    have used up their attempts, or cancelled if that was asked. Returns their ids."""
    now = utcnow()
    with session_scope() as s:
        stale = s.execute(select(Job.id, Job.attempt, Job.heartbeat_at)
                          .where(Job.status == JobStatus.running,
                                 _stale(now, stale_after_s))).all()
    done = []
    for job_id, attempt, beat in stale:
        since = f" since {beat:%H:%M:%S} UTC" if beat is not None else ""
        if requeue_dead(job_id, attempt, f"no heartbeat{since} (more than {stale_after_s:g} s): "
                        "its process or host stopped") is not None:
            done.append(job_id)
    return done


def requeue_dead(job_id: str, attempt: int, reason: str, *, dispatch: bool = True
                 ) -> JobStatus | None:
    """running (as `attempt`) → queued, because that attempt's process is gone. The attempt is
    closed as `died` with `reason`; once `max_attempts` attempts have died the job fails with
    their reasons instead, and a job whose cancel was requested is cancelled. `dispatch`: send
    it again at the head of the queue (a worker that will claim it at once passes False; the
    sweep sends it should that worker not get that far). Returns the new status, or None when
    the job was no longer running as `attempt` (another sweeper or message got there first)."""
    now = utcnow()
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.running or job.attempt != attempt:
            return None
        died = list(s.scalars(select(JobAttempt).where(
            JobAttempt.job_id == job_id, JobAttempt.outcome == "died",
            JobAttempt.number != attempt).order_by(JobAttempt.number)))
        status, error = JobStatus.queued, None
        values: dict[str, Any] = {"heartbeat_at": None}
        if job.cancel_requested:
            status, error = JobStatus.cancelled, "cancelled; its worker had stopped"
        elif len(died) + 1 >= _max_attempts(job.params):
            status = JobStatus.failed
            reasons = [f"attempt {a.number} ({a.worker}): {a.reason}" for a in died]
            reasons.append(f"attempt {attempt} ({_attempt_worker(s, job_id, attempt)}): "
                           f"{reason}")
            error = (f"gave up after {len(reasons)} attempts whose process died "
                     f"(max_attempts): " + "; ".join(reasons))
        if status.finished:
            values = {"finished_at": now, "error": error}
        moved = s.execute(update(Job).where(_ours(job_id, attempt))
                          .values(status=status, **values)).rowcount  # type: ignore[attr-defined]
        if not moved:
            return None
        _close_attempt(s, job_id, attempt, "died", reason)
        if status.finished:
            events.record(s, job_id, "status", {"status": status.value, "result": None,
                                                "error": error})
        else:
            events.record(s, job_id, "status", {"status": "queued",
                                                "reason": f"{reason}; resuming"})
            if dispatch:
                _dispatch_after_commit(s, job_id, PRIORITY_FIRST)
            else:
                _undispatched(s, job_id)
    log.warning("job %s attempt %d died (%s): now %s", job_id, attempt, reason, status.value)
    return status


def hand_back(job_id: str, attempt: int, reason: str) -> bool:
    """running → queued because its worker is shutting down (a deploy, a scale-down): the
    attempt is closed as `handed_back` (it does not count against max_attempts) and the job
    is sent again at the head of the queue, to resume from the checkpoint just written. A job
    whose cancel was requested meanwhile is cancelled instead. False if it was no longer
    this attempt's."""
    with session_scope() as s:
        moved = s.execute(update(Job).where(_ours(job_id, attempt),
                                            Job.cancel_requested.is_(False))
                          .values(status=JobStatus.queued, heartbeat_at=None)
                          ).rowcount  # type: ignore[attr-defined]
        if moved:
            _close_attempt(s, job_id, attempt, "handed_back", reason)
            events.record(s, job_id, "status", {"status": "queued", "reason": reason})
            _dispatch_after_commit(s, job_id, PRIORITY_FIRST)
            return True
    return finish(job_id, JobStatus.cancelled, error="cancelled by request", attempt=attempt)


def note_attempt(job_id: str, attempt: int, *, warning: str | None = None,
                 resumed_from_epoch: int | None = None) -> None:
    """Add a warning to an attempt (something went wrong without ending it, e.g. a checkpoint
    that could not be read), or record the epoch its training began at."""
    with session_scope() as s:
        row = s.get(JobAttempt, (job_id, attempt))
        if row is None:
            return
        if warning is not None:
            row.warnings = [*(row.warnings or []), warning]
        if resumed_from_epoch is not None:
            row.resumed_from_epoch = resumed_from_epoch


def _close_attempt(s: Session, job_id: str, number: int | None, outcome: str,
                   reason: str | None) -> None:
    """End attempt `number` (None: the job's current one) with `outcome` and `reason`."""
    which = (number if number is not None
             else select(Job.attempt).where(Job.id == job_id).scalar_subquery())
    s.execute(update(JobAttempt).where(JobAttempt.job_id == job_id, JobAttempt.number == which,
                                       JobAttempt.ended_at.is_(None))
              .values(ended_at=utcnow(), outcome=outcome, reason=reason))


def _attempt_worker(s: Session, job_id: str, number: int) -> str:
    row = s.get(JobAttempt, (job_id, number))
    return row.worker if row is not None else "?"


def _max_attempts(params: dict[str, Any]) -> int:
    try:
        return max(1, int(params.get("max_attempts") or DEFAULT_MAX_ATTEMPTS))
    except (TypeError, ValueError):
        return DEFAULT_MAX_ATTEMPTS


def record_epoch(job_id: str, epoch: int, logs: dict[str, float | None],
                 attempt: int | None = None) -> bool:
    """Upsert the (job, epoch) row and move the job's epoch counter. With `attempt`, only while
    the job still runs as that attempt: False (and nothing written) once it does not."""
    with session_scope() as s:
        where = _ours(job_id, attempt) if attempt is not None else Job.id == job_id
        if not s.execute(update(Job).where(where).values(epoch=epoch + 1)
                         ).rowcount:  # type: ignore[attr-defined]
            return False
        upsert(s, JobEpoch, {"job_id": job_id, "epoch": epoch, "logs": logs,
                             "created_at": utcnow()}, ["job_id", "epoch"])
        events.record(s, job_id, "epoch", {"epoch": epoch, "logs": logs})
        return True


def cancel_requested(job_id: str) -> bool:
    with session_scope() as s:
        return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def finish(job_id: str, status: JobStatus, *, result: dict[str, Any] | None = None,
           error: str | None = None, session: Session | None = None, attempt: int | None = None,
           **extra: Any) -> bool:
    """running (as `attempt`, when given) → a final status; the attempt is closed with it.
    Returns False when the job was no longer running (as that attempt)."""
    error = plain_text(error) if error else error  # Keras writes its messages for a terminal
    values = {"status": status, "finished_at": utcnow(), "result": result, "error": error, **extra}
    where = (_ours(job_id, attempt) if attempt is not None
             else and_(Job.id == job_id, Job.status == JobStatus.running))
    stmt = update(Job).where(where).values(**values)

    def apply(s: Session) -> bool:
        moved = bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]
        if moved:
            _close_attempt(s, job_id, attempt, status.value, error)
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
        # Its worker stops it; should that worker be gone, no sweep may ever come.
        on_commit(session, lambda: _watch_cancel(job.id))
    session.refresh(job)


def _watch_cancel(job_id: str) -> None:
    from app.jobs import recovery  # it builds on this module

    recovery.watch_cancel(job_id)


def enqueue_after_commit(session: Session, job_id: str) -> None:
    """Send the job to the broker once `session` has committed its row (never before: a worker
    could look for it too early). A broker that cannot take it does not fail the request: the
    job stays queued and the workers' sweep sends it once the broker is back."""
    events.record(session, job_id, "status", {"status": "queued"})
    _dispatch_after_commit(session, job_id, PRIORITY_NEW)


def redispatch(job_id: str, seen_count: int) -> bool:
    """Send a queued job whose message was lost again, ahead of new jobs (and first of all if
    it had started: it resumes from a checkpoint). Guarded by the dispatch count the caller
    saw, so of several sweepers that found the same job only one sends it. Returns whether
    this call sent it."""
    with session_scope() as s:
        started = bool(s.scalar(select(Job.attempt).where(Job.id == job_id)))
        return _dispatch_after_commit(s, job_id, PRIORITY_FIRST if started else PRIORITY_RESENT,
                                      seen_count=seen_count)


def _dispatch_after_commit(s: Session, job_id: str, priority: int,
                           seen_count: int | None = None) -> bool:
    """Record a send on the queued row in this transaction, and send once it has committed."""
    s.flush()
    where = [Job.id == job_id, Job.status == JobStatus.queued]
    if seen_count is not None:
        where.append(Job.dispatch_count == seen_count)
    if not s.execute(update(Job).where(*where).values(
            dispatched_at=utcnow(), dispatch_count=Job.dispatch_count + 1)
                     ).rowcount:  # type: ignore[attr-defined]
        return False
    count = s.scalar(select(Job.dispatch_count).where(Job.id == job_id)) or 0
    on_commit(s, lambda: _send(job_id, priority, count))
    return True


def _undispatched(s: Session, job_id: str) -> None:
    """Queued with no message on its way: the next sweep sends one."""
    s.execute(update(Job).where(Job.id == job_id).values(dispatched_at=None))


def _send(job_id: str, priority: int, count: int) -> None:
    """A broker that cannot take the message (down, restarting) is not an error for the caller:
    the row keeps `dispatched_at` NULL and the workers' sweep sends it once it can."""
    try:
        enqueue_job(job_id, priority=priority, dispatch=count)
        return
    except Exception as exc:  # noqa: BLE001 - the database still says queued
        log.warning("job %s stays queued: the broker did not take its message (%s: %s); it is "
                    "sent again once the broker is back", job_id, type(exc).__name__, exc)
    try:
        with session_scope() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.queued,
                                        Job.dispatch_count == count)
                      .values(dispatched_at=None))
    except Exception:  # noqa: BLE001 - then the sweep waits redispatch_after_s instead
        log.warning("could not record that job %s has no message", job_id, exc_info=True)
