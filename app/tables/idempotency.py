from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, utcnow


class IdempotencyRecord(Base):
    """The first answer to a create request sent with an Idempotency-Key, replayed to retries
    with the same key (per owner and route) and the same request. `status_code` is null while
    the first request is in progress; the record commits together with what it created."""

    __tablename__ = "idempotency_records"

    owner: Mapped[str] = mapped_column(String(100), primary_key=True)
    route: Mapped[str] = mapped_column(String(100), primary_key=True)  # "POST /v1/jobs"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex
    status_code: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None]
    location: Mapped[str | None] = mapped_column(String(500))
    # Indexed: expired records are found and removed by age.
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
