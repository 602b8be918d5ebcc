from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.models import JobStatus, JobType

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
ARRAY_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$"

# Which dataset arrays feed the model: one array, several 1-D/2-D arrays stacked as columns
# (e.g. CSV columns), or a mapping from model input/output name to either of those.
ArrayName = Annotated[str, Field(pattern=ARRAY_NAME_PATTERN)]
ArraySelector = ArrayName | list[ArrayName] | dict[str, ArrayName | list[ArrayName]]


class FitJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["fit"]
    spec_id: str
    dataset_id: str
    x: ArraySelector = "x"
    y: ArraySelector = "y"
    epochs: int = Field(1, ge=1, le=100_000)
    batch_size: int = Field(32, ge=1, le=1_000_000)
    validation_split: float | None = Field(None, gt=0, lt=1)
    validation_dataset_id: str | None = None
    shuffle: bool = True
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    model_name: str | None = Field(None, pattern=MODEL_NAME_PATTERN,
                                   description="Saved as the next version of this model; "
                                   "defaults to the spec's name.")


class EvaluateJobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["evaluate"]
    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/[1-9][0-9]*)?$",
                       description="'name' (latest version) or 'name/3'")
    dataset_id: str
    x: ArraySelector = "x"
    y: ArraySelector = "y"
    batch_size: int = Field(32, ge=1, le=1_000_000)


JobCreate = Annotated[FitJobCreate | EvaluateJobCreate, Field(discriminator="type")]


class JobRead(BaseModel):
    id: str
    type: JobType
    status: JobStatus
    epoch: int
    epochs: int
    history: dict[str, list[float | None]]
    result: dict[str, Any] | None
    error: str | None
    model_name: str | None
    model_version: int | None
    spec_id: str | None
    dataset_id: str | None
    params: dict[str, Any]
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    url: str
