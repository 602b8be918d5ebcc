from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, utcnow


class AuditEvent(Base):
    """Who did what: one row per create, delete, cancel, label move and key change, written in
    the same transaction as the change itself."""

    __tablename__ = "audit_events"

    # BigInteger on PostgreSQL, INTEGER on SQLite (only INTEGER PRIMARY KEY autoincrements there).
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(300))
    request_id: Mapped[str | None] = mapped_column(String(100), default=None)
    detail: Mapped[dict[str, Any]]
