from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

# A model name, and a reference to one of its versions: 'name' (the latest) or 'name/3'.
# MODEL_NAME and LABEL_NAME are for Python's `re.fullmatch` (with `^...$`, `re.match` would
# take a name ending in "\n"); the *_PATTERN forms are for pydantic, whose (Rust) engine reads
# `$` as the end of the text.
MODEL_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}"
MODEL_NAME_PATTERN = rf"^{MODEL_NAME}$"
MODEL_REF_PATTERN = rf"^{MODEL_NAME}(/[1-9][0-9]*)?$"
MAX_VERSION = 2**31 - 1  # the version column is a 32-bit integer

# A label (e.g. production, canary) starts with a letter, so it never reads as a version.
LABEL_NAME = r"[A-Za-z][A-Za-z0-9_.-]{0,99}"
LABEL_PATTERN = rf"^{LABEL_NAME}$"

# Constrained types (pydantic's, not FastAPI's Path: the worker imports this module too); a route
# that takes one as a path parameter validates and documents it as FastAPI's Path would.
NameParam = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
VersionParam = Annotated[int, Field(ge=1, le=MAX_VERSION)]
LabelParam = Annotated[str, Field(pattern=LABEL_PATTERN)]


class ModelVersionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    version: int
    job_id: str | None
    spec_id: str | None
    metrics: dict[str, Any] = Field(description="the logs of the epoch whose weights this "
                                    "version holds (best_epoch)")
    best_epoch: int | None = Field(None, description="that epoch (0-based): the best one by "
                                   "keep_best / ModelCheckpoint(save_best_only) or "
                                   "EarlyStopping(restore_best_weights), else the last; null "
                                   "for an uploaded file")
    created_at: datetime


class VersionStatus(BaseModel):
    """TensorFlow Serving's model_version_status entry."""

    version: str
    state: str  # AVAILABLE | LOADING | UNAVAILABLE
    status: dict[str, str]  # {"error_code": "OK" | "UNKNOWN", "error_message": ""}


class ModelRead(BaseModel):
    name: str
    latest_version: int
    versions: list[ModelVersionRead]
    labels: dict[str, int]
    model_version_status: list[VersionStatus]


class LabelSet(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # `true` is not version 1

    version: int = Field(ge=1, le=MAX_VERSION)


class LabelRead(BaseModel):
    name: str
    label: str
    version: int


class ModelListItem(BaseModel):
    name: str
    latest_version: int
    versions: int
    updated_at: datetime


class ModelVersionCreated(ModelVersionRead):
    """An uploaded version: no job or spec made it, so it has no metrics."""

    name: str


class ServingSettings(BaseModel):
    """A model's dynamic batching; a null field takes the server's default (KJ_BATCH_*)."""

    # Strict: `true` is not a batch size; NaN/Infinity are refused (the row stores floats).
    model_config = ConfigDict(extra="forbid", from_attributes=True, strict=True,
                              allow_inf_nan=False)

    max_batch_size: int | None = Field(None, ge=1, le=4096, description="Most rows per model "
                                       "call; batches are padded to powers of two up to it.")
    batch_timeout_ms: float | None = Field(None, ge=0, le=1000, description="Longest a batch "
                                           "waits for company (a lone request never waits).")
    max_queued_rows: int | None = Field(None, ge=1, le=1_000_000, description="Rows that may "
                                        "wait; past them, 503 with Retry-After.")
