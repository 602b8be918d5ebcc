from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Enum, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, new_id, utcnow


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class JobType(enum.StrEnum):
    fit = "fit"
    evaluate = "evaluate"
    predict = "predict"


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    type: Mapped[JobType] = mapped_column(Enum(JobType, native_enum=False, length=20))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=20), index=True, default=JobStatus.queued
    )
    # The validated request, as the runner reads it.
    params: Mapped[dict[str, Any]]
    spec_id: Mapped[str | None] = mapped_column(ForeignKey("specs.id"), default=None)
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    model_name: Mapped[str | None] = mapped_column(String(200), default=None)
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # Written every few seconds by the process running the job; a stale one means that
    # process is gone (see app.jobs.state.requeue_stale).
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    # The number of its current (or last) attempt (job_attempts); 0 before the first claim.
    # Every write a running job makes is guarded by it, so a process that lost the job (taken
    # as dead, then run elsewhere) can no longer change it.
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the job's message was last sent to the broker (None: its last send failed) and how
    # many were sent: the broker is only a doorbell, and the workers' sweep sends a queued job
    # again when its message is gone (app.jobs.recovery).
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class JobEpoch(Base):
    """One row per (job, epoch), written with an upsert so a redelivered job never logs twice."""

    __tablename__ = "job_epochs"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    logs: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
