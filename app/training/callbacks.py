"""Keras callbacks a job runs with. Imported only in the worker's child (it imports Keras)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import keras

from app.jobs import events, state


def clean_logs(logs: dict[str, Any] | None) -> dict[str, float | None]:
    """JSON-safe floats (NaN/inf become None; JSON has no such numbers)."""
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


class RecordEpochs(keras.callbacks.Callback):  # type: ignore[misc]
    """Write each epoch's logs to the database as the epoch ends, and the batch progress
    every `progress_s` seconds (the live event stream's progress bar)."""

    def __init__(self, job_id: str, progress_s: float = 2.0) -> None:
        super().__init__()
        self.job_id = job_id
        self.progress_s = progress_s
        self.last: dict[str, float | None] = {}
        self._epoch = 0
        self._next_progress = time.monotonic() + progress_s

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if now < self._next_progress:
            return
        self._next_progress = now + self.progress_s
        steps = (self.params or {}).get("steps")
        events.record_now(self.job_id, "progress", {"epoch": self._epoch, "batch": batch + 1,
                                                    "steps": steps, "logs": clean_logs(logs)})

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.last = clean_logs(logs)
        state.record_epoch(self.job_id, epoch, self.last)


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


class StopOnNaN(keras.callbacks.Callback):  # type: ignore[misc]
    """TerminateOnNaN that remembers where it fired, so the job can fail with that reason."""

    def __init__(self) -> None:
        super().__init__()
        self.where: str | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.where = f"epoch {self._epoch}, batch {batch}"
            self.model.stop_training = True


class KeepBest(keras.callbacks.Callback):  # type: ignore[misc]
    """Keep the weights of the best epoch by `monitor` and put them back when training ends,
    so the saved version is that epoch's model (ModelCheckpoint(save_best_only) in memory)."""

    def __init__(self, monitor: str, mode: str) -> None:
        super().__init__()
        self.monitor = monitor
        if mode == "auto":
            mode = "max" if any(k in monitor for k in ("acc", "auc", "precision", "recall")) \
                else "min"
        self.maximize = mode == "max"
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_logs: dict[str, float | None] = {}
        self._weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        improved = self.best is None or (
            float(value) > self.best if self.maximize else float(value) < self.best)
        if improved:
            self.best, self.best_epoch = float(value), epoch
            self.best_logs = clean_logs(logs)
            self._weights = self.model.get_weights()

    def on_train_end(self, logs: Any = None) -> None:
        if self._weights is not None:
            self.model.set_weights(self._weights)
