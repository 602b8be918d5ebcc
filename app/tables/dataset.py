from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.tables.base import Base, new_id, utcnow


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    owner: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(10))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    # The array files' bytes in the store (what the stored-bytes quota counts; an archive or a
    # CSV may take several times its upload's size_bytes).
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    num_rows: Mapped[int] = mapped_column(BigInteger)
    # {array name: {"shape": [...], "dtype": "float32"}}
    arrays: Mapped[dict[str, Any]]
    storage_key: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
