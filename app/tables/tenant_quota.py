from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, utcnow


class TenantQuota(Base):
    """An admin's overrides of a tenant's quotas (null: the server's KJ_QUOTA_* default)."""

    __tablename__ = "tenant_quotas"

    tenant: Mapped[str] = mapped_column(String(100), primary_key=True)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    max_upload_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
