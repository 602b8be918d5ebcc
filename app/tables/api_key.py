from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, utcnow


class ApiKey(Base):
    """An API key: only its keyed hash is stored; the key itself is shown once, at creation.
    `id` is the key's public part (`kj_<id>_<secret>`), so a request finds its row by primary key
    and compares hashes in constant time."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    tenant: Mapped[str] = mapped_column(String(100), index=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(100))
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
