from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

SPEC_EXAMPLE: dict[str, Any] = {
    "name": "seed-linear",
    "inputs": [{"name": "x", "shape": [2]}],
    "layers": [{"type": "Dense", "units": 1}],
    "compile": {
        "optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.1}},
        "loss": "mean_squared_error",
        "metrics": ["binary_accuracy"],
    },
}


class SpecRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    spec: dict[str, Any]
    keras_config: dict[str, Any]
    summary: dict[str, Any]
    total_params: int
    trainable_params: int
    created_at: datetime


class SpecListItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    total_params: int
    trainable_params: int
    created_at: datetime
