from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, utcnow


class ModelServing(Base):
    """A model's own batching settings (null: the server's default)."""

    __tablename__ = "model_serving"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    max_batch_size: Mapped[int | None] = mapped_column(Integer, default=None)
    batch_timeout_ms: Mapped[float | None] = mapped_column(Float, default=None)
    max_queued_rows: Mapped[int | None] = mapped_column(Integer, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
