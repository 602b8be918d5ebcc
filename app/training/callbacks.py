"""Keras callbacks a job runs with. Imported only in the worker's child (it imports Keras)."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import keras

from app.core.db import database_unavailable
from app.jobs import events, state

log = logging.getLogger(__name__)
T = TypeVar("T")


def until_db_answers(write: Callable[[], T], budget_s: float) -> T:
    """`write()`, tried again while the database is unreachable (a restart, a frozen network)
    for up to `budget_s`: training pauses instead of failing. Other errors, and an outage
    longer than that, are raised."""
    deadline = time.monotonic() + budget_s
    pause = 0.5
    while True:
        try:
            return write()
        except Exception as exc:
            if not database_unavailable(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("database unavailable (%s); trying again in %.1f s",
                        type(exc).__name__, pause)
        time.sleep(pause)
        pause = min(pause * 2, 5.0)


def clean_logs(logs: dict[str, Any] | None) -> dict[str, float | None]:
    """JSON-safe floats (NaN/inf become None; JSON has no such numbers)."""
    out: dict[str, float | None] = {}
    for key, value in (logs or {}).items():
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


class RecordEpochs(keras.callbacks.Callback):  # type: ignore[misc]
    """Write each epoch's logs to the database as the epoch ends, and the batch progress
    every `progress_s` seconds (the live event stream's progress bar).

    With `attempt`, each write is guarded by it: once the job is no longer this attempt's
    (taken as dead and given to another process), `lost` is set and training stops. An epoch
    for which `cut_short(epoch)` says it was stopped before its end is not recorded (Keras
    still calls on_epoch_end). A database outage pauses training for up to `db_wait_s`."""

    def __init__(self, job_id: str, progress_s: float = 2.0, *, attempt: int | None = None,
                 cut_short: Callable[[int], bool] = lambda _epoch: False,
                 db_wait_s: float = 60.0) -> None:
        super().__init__()
        self.job_id = job_id
        self.progress_s = progress_s
        self.attempt = attempt
        self.cut_short = cut_short
        self.db_wait_s = db_wait_s
        self.lost = False
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
        try:
            events.record_now(self.job_id, "progress", {"epoch": self._epoch,
                                                        "batch": batch + 1, "steps": steps,
                                                        "logs": clean_logs(logs)})
        except Exception as exc:  # noqa: BLE001 - progress is best effort; epochs are not
            log.debug("progress of %s not recorded: %s", self.job_id, exc)
            # Each try may wait out the database's timeouts: not on every batch of an outage.
            self._next_progress = time.monotonic() + max(self.progress_s, 30.0)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.lost or self.cut_short(epoch):
            return
        self.last = clean_logs(logs)
        recorded = until_db_answers(
            lambda: state.record_epoch(self.job_id, epoch, self.last, self.attempt),
            self.db_wait_s)
        if not recorded:
            log.warning("job %s is no longer this process's (attempt %s); stopping",
                        self.job_id, self.attempt)
            self.lost = True
            self.model.stop_training = True


class CancelOnFlag(keras.callbacks.Callback):  # type: ignore[misc]
    """Stop training at the next batch boundary once the event is set (cancel, hand back,
    time limit: the job's watcher says which). `cut_short(epoch)`: that epoch was stopped
    before its end, so it is neither checkpointed nor recorded as finished."""

    def __init__(self, requested: threading.Event) -> None:
        super().__init__()
        self.requested = requested
        self.cancelled = False
        self.stopped_in_epoch: int | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch

    def cut_short(self, epoch: int) -> bool:
        return self.stopped_in_epoch == epoch

    def _check(self) -> None:
        if self.requested.is_set():
            if not self.cancelled:
                self.stopped_in_epoch = self._epoch
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
