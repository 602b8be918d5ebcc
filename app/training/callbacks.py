"""Keras callbacks a job runs with. Imported only in the worker's child (it imports Keras)."""

from __future__ import annotations

import math
import threading
from typing import Any

import keras

from app.training import lifecycle


def clean_logs(logs: dict[str, Any] | None) -> dict[str, float | None]:
    """JSON-safe floats (NaN/inf become None; JSON has no such numbers)."""
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


class RecordEpochs(keras.callbacks.Callback):  # type: ignore[misc]
    """Write each epoch's logs to the database as the epoch ends."""

    def __init__(self, job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.last: dict[str, float | None] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.last = clean_logs(logs)
        lifecycle.record_epoch(self.job_id, epoch, self.last)


class CancelOnFlag(keras.callbacks.Callback):  # type: ignore[misc]
    """Stop training at the next batch boundary once the cancel event is set."""

    def __init__(self, requested: threading.Event) -> None:
        super().__init__()
        self.requested = requested
        self.cancelled = False

    def _check(self) -> None:
        if self.requested.is_set():
            self.cancelled = True
            self.model.stop_training = True

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._check()

    def on_test_batch_end(self, batch: int, logs: Any = None) -> None:
        self._check()
