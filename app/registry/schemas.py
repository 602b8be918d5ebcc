from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    job_id: str | None
    spec_id: str | None
    metrics: dict[str, Any]
    created_at: datetime


class ModelRead(BaseModel):
    name: str
    latest_version: int
    versions: list[ModelVersionRead]


class ModelListItem(BaseModel):
    name: str
    latest_version: int
    versions: int
    updated_at: datetime


class ModelVersionCreated(ModelVersionRead):
    """An uploaded version: no job or spec made it, so it has no metrics."""

    name: str
