from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, utcnow


class JobAttempt(Base):
    """One run of a job by one process: opened when a worker claims the job, closed with the
    reason it ended. A job that keeps dying ends failed after its `max_attempts`."""

    __tablename__ = "job_attempts"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    # "hostname:pid" of the process that ran it.
    worker: Mapped[str] = mapped_column(String(300))
    # Where that pid means something (boot id and pid namespace): a worker that shares it can
    # tell at once that the process is gone, instead of waiting for its heartbeat to go stale.
    host_key: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    # succeeded | failed | cancelled (the job ended), handed_back (its worker shut down),
    # died (its process stopped); None while it runs.
    outcome: Mapped[str | None] = mapped_column(String(20), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    # The job's finished epochs when this attempt began, and the epoch its training began at
    # (from a checkpoint, or the first): a resume that repeats finished epochs shows as
    # resumed_from_epoch < epoch_at_start.
    epoch_at_start: Mapped[int] = mapped_column(Integer, default=0)
    resumed_from_epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    # What went wrong without ending the attempt (e.g. an unreadable checkpoint discarded).
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
