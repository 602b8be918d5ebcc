from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, new_id, utcnow


class Spec(Base):
    __tablename__ = "specs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("spec"))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]]
    keras_config: Mapped[dict[str, Any]]
    summary: Mapped[dict[str, Any]]
    total_params: Mapped[int]
    trainable_params: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
