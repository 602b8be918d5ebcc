from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
