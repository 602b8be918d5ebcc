from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path
from pydantic import BaseModel, ConfigDict

# A model name, and a reference to one of its versions: 'name' (the latest) or 'name/3'.
_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
MODEL_NAME_PATTERN = rf"^{_NAME}$"
MODEL_REF_PATTERN = rf"^{_NAME}(/[1-9][0-9]*)?$"
MAX_VERSION = 2**31 - 1  # the version column is a 32-bit integer

NameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]
VersionParam = Annotated[int, Path(ge=1, le=MAX_VERSION)]


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
