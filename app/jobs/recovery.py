"""Nothing lost, nothing run twice: finding jobs whose process or message is gone.

The database says what must happen; the broker only rings the bell. Each worker's parent
process sweeps at start and every KJ_SWEEP_S (worker/celery_app.py):

1. Running jobs whose process is gone. On the sweeper's own host (same boot and pid namespace)
   a dead pid is certain at once; elsewhere the job's heartbeat, silent for KJ_STALE_AFTER_S,
   says so. Such a job is queued again at the head of the queue and resumes from its
   checkpoint, or fails once `max_attempts` attempts have died (state.requeue_dead).
2. Queued jobs whose message is gone: the broker restarted empty, a worker took the message
   and died (Redis gives it back only after the visibility timeout, the SQLAlchemy transport
   never), or a task failed before it claimed the job. Where the broker can be looked into,
   a job is sent again, ahead of new jobs, once the broker holds no message of it at all
   (neither waiting in the queue nor taken) and its last send is older than LOST_AFTER_S
   (time for a send to land), or once its message was taken by a consumer longer than
   KJ_REDISPATCH_AFTER_S ago (a live worker may hold one that long). A message waiting in
   the queue, however long, is not lost (for a job that had started, only one at the head
   counts). Where the broker cannot be looked into, a job whose last send is older than
   KJ_REDISPATCH_AFTER_S is sent again, and the wait doubles with every send. A duplicate
   is harmless: the claim is a guarded UPDATE, so a message for a job that is not queued is
   skipped.
3. Folders of ended jobs: checkpoints and staging folders a killed process left behind.

A worker that receives a message for a job still marked running does step 1 for that job
(take_over_if_dead) before it gives up on it, so a job whose child was killed resumes as soon
as its message comes back.

A cancel of a running job is carried out by its worker; should that worker be gone, no sweep
may come either (every worker dead). So the API watches such a job (watch_cancel) and ends it
as cancelled once step 1 would call its process dead.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import or_, select

from app.core.broker import PRIORITY_FIRST, PRIORITY_STEPS, WaitingMessages, waiting_messages
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.storage import ArtifactStore
from app.jobs import state
from app.tables import Job, JobAttempt, JobStatus
from app.tables.base import utcnow

log = logging.getLogger(__name__)
# With no way to look into the broker, a queued job is sent again after redispatch_after_s,
# then twice that, ... at most this many doublings.
MAX_BACKOFF_DOUBLINGS = 5
# A job whose message the broker does not hold at all is lost once its last send is older
# than this: the send is recorded before it is made (after the commit), and kombu's Redis
# transport moves a message it takes from the queue to `unacked` in two steps.
LOST_AFTER_S = 5.0


@lru_cache
def host_key() -> str:
    """What makes a pid meaningful: the kernel's boot id and this process's pid namespace
    (containers on one host share the boot id but not the namespace). Empty where /proc does
    not say (then only heartbeats tell a dead process)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return ""


def this_process() -> state.Worker:
    return state.Worker(label=f"{socket.gethostname()}:{os.getpid()}", host_key=host_key())


def process_gone(worker: str, key: str) -> bool:
    """Whether the process that ran an attempt is certainly gone: only answerable on the host
    (and pid namespace) it ran in; anywhere else, False (ask its heartbeat)."""
    if not key or key != host_key():
        return False
    try:
        pid = int(worker.rpartition(":")[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # exists, someone else's
    try:  # a zombie has exited; only its parent has not collected it yet
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def take_over_if_dead(job_id: str, stale_after_s: float) -> bool:
    """For a worker holding a message for a job marked running: if that job's process is
    gone, requeue it (without sending another message) so this worker can claim it now.
    Returns whether it did."""
    running = _running_attempt(job_id, stale_after_s)
    if running is None:
        return False
    attempt, reason = running
    if reason is None:
        return False
    return state.requeue_dead(job_id, attempt, reason, dispatch=False) == JobStatus.queued


def _running_attempt(job_id: str, stale_after_s: float,
                     *where: Any) -> tuple[int, str | None] | None:
    """The running attempt of `job_id` (when it matches `where` too) and why its process is
    dead (None: alive); None when the job is not running."""
    with session_scope() as s:
        row = s.execute(select(Job.attempt, Job.heartbeat_at, JobAttempt.worker,
                               JobAttempt.host_key)
                        .join(JobAttempt, (JobAttempt.job_id == Job.id)
                              & (JobAttempt.number == Job.attempt), isouter=True)
                        .where(Job.id == job_id, Job.status == JobStatus.running,
                               *where)).first()
    if row is None:
        return None
    attempt, beat, worker, key = row
    return attempt, _why_dead(worker, key, beat, utcnow(), stale_after_s)


def _why_dead(worker: str | None, key: str | None, beat: datetime | None, now: datetime,
              stale_after_s: float) -> str | None:
    if worker is not None and process_gone(worker, key or ""):
        return f"its process {worker} is gone"
    if beat is None or beat < now - timedelta(seconds=stale_after_s):
        since = f" since {beat:%H:%M:%S} UTC" if beat is not None else ""
        return f"no heartbeat{since} (more than {stale_after_s:g} s): its process or host stopped"
    return None


def end_cancelled_if_dead(job_id: str, stale_after_s: float) -> bool:
    """A running job whose cancel was requested and whose process is gone (as in step 1) is
    cancelled now (requeue_dead ends such a job as cancelled). Returns whether the job is no
    longer running."""
    running = _running_attempt(job_id, stale_after_s, Job.cancel_requested.is_(True))
    if running is None:
        return True
    attempt, reason = running
    if reason is None:
        return False
    return state.requeue_dead(job_id, attempt, reason, dispatch=False) is not None


_watched: set[str] = set()
_watched_lock = threading.Lock()


def watch_cancel(job_id: str) -> None:
    """After a cancel request for a running job (in the API, once it has committed): check
    now, then every few seconds, whether its process is gone, and if so end it as cancelled;
    until the job has ended, or its worker has had the cancel grace and a heartbeat bound to
    end it (a live worker does)."""
    with _watched_lock:
        if job_id in _watched:
            return
        _watched.add(job_id)
    settings = get_settings()
    threading.Thread(target=_watch_cancel, args=(job_id, settings.stale_after_s,
                                                 settings.cancel_grace_s),
                     name=f"cancel-watch-{job_id}", daemon=True).start()


def _watch_cancel(job_id: str, stale_after_s: float, grace_s: float) -> None:
    every = max(0.5, min(5.0, stale_after_s / 4))
    give_up = time.monotonic() + grace_s + stale_after_s + 2 * every
    try:
        while True:
            try:
                if end_cancelled_if_dead(job_id, stale_after_s):
                    return
            except Exception:  # noqa: BLE001 - a database hiccup: look again next round
                log.warning("could not check cancelled job %s", job_id, exc_info=True)
            if time.monotonic() > give_up:
                return
            time.sleep(every)
    finally:
        with _watched_lock:
            _watched.discard(job_id)


@dataclass
class Swept:
    """What one sweep did, by job id."""

    dead: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    redispatched: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)
    failed: dict[str, Exception] = field(default_factory=dict)  # step name -> what it raised

    def __bool__(self) -> bool:
        return bool(self.dead or self.stale or self.redispatched or self.cleaned)


UNMIGRATED = "the database has no keras-jobs tables"


def failure_line(exc: Exception) -> str:
    """What a sweep step's exception says, in a line; a database nobody migrated said as such
    (a worker started by hand before `keras-jobs migrate` or the first `keras-jobs serve`)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return (f"{UNMIGRATED} ({text}): run `keras-jobs migrate`, or start `keras-jobs serve`, "
                "which migrates it; jobs wait until then")
    return f"{type(exc).__name__}: {text}"


def sweep(settings: Settings, store: ArtifactStore) -> Swept:
    """One round of the workers' sweep (module docstring). Each step runs even if another
    failed (a database or broker hiccup: the next round tries again); what failed is in
    `failed`, for the caller to report."""
    swept = Swept()
    steps: list[tuple[list[str], Callable[[], list[str]]]] = [
        (swept.dead, requeue_dead_here),
        (swept.stale, lambda: state.requeue_stale(settings.stale_after_s)),
        (swept.redispatched, lambda: redispatch_lost(settings.redispatch_after_s)),
        (swept.cleaned, lambda: remove_ended_job_folders(store)),
    ]
    for (found, step), name in zip(steps, STEPS, strict=True):
        try:
            found.extend(step())
        except Exception as exc:  # noqa: BLE001 - one failing step must not stop the others
            swept.failed[name] = exc
    return swept


STEPS = ("dead processes", "stale heartbeats", "lost messages", "ended job folders")


def requeue_dead_here() -> list[str]:
    """Running jobs whose process ran on this host and is gone (a killed child or worker)."""
    key = host_key()
    if not key:
        return []
    with session_scope() as s:
        rows = s.execute(select(Job.id, Job.attempt, JobAttempt.worker)
                         .join(JobAttempt, (JobAttempt.job_id == Job.id)
                               & (JobAttempt.number == Job.attempt))
                         .where(Job.status == JobStatus.running,
                                JobAttempt.host_key == key)).all()
    return [job_id for job_id, attempt, worker in rows
            if process_gone(worker, key)
            and state.requeue_dead(job_id, attempt, f"its process {worker} is gone") is not None]


def redispatch_lost(redispatch_after_s: float) -> list[str]:
    """Send again the queued jobs whose message is gone (module docstring, step 2)."""
    now = utcnow()
    bound = timedelta(seconds=redispatch_after_s)
    sent_before = now - min(bound, timedelta(seconds=LOST_AFTER_S))
    with session_scope() as s:
        rows = s.execute(select(Job.id, Job.dispatch_count, Job.dispatched_at, Job.attempt)
                         .where(Job.status == JobStatus.queued,
                                or_(Job.dispatched_at.is_(None),
                                    Job.dispatched_at < sent_before))
                         .order_by(Job.created_at)).all()
    if not rows:
        return []
    try:
        broker = waiting_messages(taken_within_s=2 * redispatch_after_s)
    except Exception as exc:  # noqa: BLE001 - a broker that cannot be read cannot take a send
        log.info("not re-sending %d queued job(s): the broker is unreachable (%s)", len(rows),
                 exc)
        return []
    sent = [job_id for job_id, count, at, attempt in rows
            if _lost(job_id, count, at, attempt > 0, broker, now, bound)
            and state.redispatch(job_id, count)]
    if sent:
        log.warning("re-sent queued jobs whose message was gone: %s", ", ".join(sent))
    return sent


def _lost(job_id: str, count: int, dispatched_at: datetime | None, started: bool,
          broker: WaitingMessages | None, now: datetime, bound: timedelta) -> bool:
    if dispatched_at is None:
        return True  # its last send failed: no message exists
    if broker is None:  # cannot look: back off, so a long queue gets few copies
        wait = bound * 2 ** min(max(count - 1, 0), MAX_BACKOFF_DOUBLINGS)
        return bool(dispatched_at < now - wait)
    # (Its last send is older than LOST_AFTER_S: the query asked for no newer one.)
    # A job that had started must resume first: a copy waiting at a lower priority (e.g. the
    # message Celery put back when the job's process died) does not count.
    if broker.waiting.get(job_id, PRIORITY_STEPS[-1] + 1) <= (PRIORITY_FIRST if started
                                                              else PRIORITY_STEPS[-1]):
        return False
    taken = broker.held.get(job_id)
    return taken is None or taken < now - bound


def remove_ended_job_folders(store: ArtifactStore) -> list[str]:
    """Checkpoints and staging folders of jobs that have ended (or no longer exist)."""
    checkpoints, staging = store.job_checkpoints(), store.job_staging()
    ids = set(checkpoints) | set(staging)
    if not ids:
        return []
    with session_scope() as s:
        status = dict(s.execute(select(Job.id, Job.status).where(Job.id.in_(ids))).all())
    ended = sorted(i for i in ids if i not in status or JobStatus(status[i]).finished)
    for job_id in ended:
        store.remove_job_folders(job_id)
    return ended


def runtime_used_s(job_id: str) -> float:
    """How long the job's earlier attempts ran (max_runtime_s counts all of them)."""
    with session_scope() as s:
        rows = s.execute(select(JobAttempt.started_at, JobAttempt.ended_at)
                         .where(JobAttempt.job_id == job_id,
                                JobAttempt.ended_at.is_not(None))).all()
    return sum(((end - start).total_seconds() for start, end in rows if end is not None), 0.0)
