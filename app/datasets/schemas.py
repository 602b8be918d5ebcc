from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    filename: str
    format: str
    sha256: str
    size_bytes: int
    stored_bytes: int = Field(description="the arrays' bytes in the store (what the "
                              "stored-bytes quota counts)")
    num_rows: int
    arrays: dict[str, Any]
    created_at: datetime
