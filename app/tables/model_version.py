from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, new_id, utcnow


class ModelVersion(Base):
    """A saved `.keras` model: version n of a named model."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("owner", "name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("mv"))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), default=None)
    spec_id: Mapped[str | None] = mapped_column(ForeignKey("specs.id"), default=None)
    artifact_key: Mapped[str] = mapped_column(String(300))
    # The logs of the epoch whose weights the version holds (`best_epoch`, 0-based: the
    # best by keep_best or EarlyStopping(restore_best_weights), else the last); null when no
    # fit job made it (an upload).
    metrics: Mapped[dict[str, Any]]
    best_epoch: Mapped[int | None] = mapped_column(Integer, default=None)
    # The artifact's bytes on disk, counted against the tenant's stored-bytes quota.
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
