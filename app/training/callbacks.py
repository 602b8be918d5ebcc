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
from app.core.errors import DomainError
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
        self.last_epoch: int | None = None
        self.by_epoch: dict[int, dict[str, float | None]] = {}  # this attempt's epochs
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
        self.last_epoch = epoch
        self.by_epoch[epoch] = self.last
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


def monitor_direction(model: Any, monitor: str, mode: str) -> str:
    """"min" or "max" for `monitor`: `mode` unless it is "auto", else as Keras's own callbacks
    decide it (the metric object's direction; "loss" is minimised), and where Keras cannot
    tell (a multi-output model's "<output>_<metric>" names) the same after the output's
    prefix. A name nothing tells the direction of is a DomainError saying what to pass."""
    from keras.src import ops
    from keras.src.callbacks.monitor_callback import MonitorCallback

    if mode in ("min", "max"):
        return mode
    probe = MonitorCallback(monitor, "auto")
    probe.set_model(model)
    try:
        probe._set_monitor_op()
        return "min" if probe.monitor_op is ops.less else "max"
    except ValueError:
        pass
    name = monitor.removeprefix("val_")
    for output in getattr(model, "output_names", None) or []:
        if name.startswith(f"{output}_"):
            name = name[len(output) + 1:]
            break
    if name == "loss":
        return "min"
    directions = {m._direction for m in _compiled_metrics(model)
                  if m.name == name and getattr(m, "_direction", None) in ("up", "down")}
    if len(directions) == 1:
        return "max" if directions == {"up"} else "min"
    raise DomainError(422, "Direction of the monitored metric unknown",
                      f"Whether '{monitor}' should be maximised or minimised cannot be told "
                      "from its metric; give mode 'max' or 'min' with it.")


def _compiled_metrics(model: Any) -> list[Any]:
    found: list[Any] = []
    for m in getattr(model, "metrics", None) or []:
        found.extend(getattr(m, "metrics", None) or [m])  # CompileMetrics holds the objects
    return found


class KeepBest(keras.callbacks.Callback):  # type: ignore[misc]
    """Keep the weights of the best epoch by `monitor` and put them back when training ends,
    so the saved version is that epoch's model: ModelCheckpoint(save_best_only=True) in
    memory, with its rules (the direction from the metric, a strict improvement, an optional
    `initial_value_threshold` to beat; epochs without the monitored value are skipped)."""

    def __init__(self, monitor: str, mode: str,
                 initial_value_threshold: float | None = None) -> None:
        super().__init__()
        self.monitor = monitor
        self.mode = mode
        self.maximize: bool | None = None  # decided at the first epoch (metrics are built)
        self.best: float | None = initial_value_threshold
        self.best_epoch: int | None = None
        self.best_logs: dict[str, float | None] = {}
        self.seen: set[str] = set()
        self._weights: list[Any] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.seen.update(logs or {})
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        if self.maximize is None:
            self.maximize = monitor_direction(self.model, self.monitor, self.mode) == "max"
        improved = self.best is None or (
            float(value) > self.best if self.maximize else float(value) < self.best)
        if improved:
            self.best, self.best_epoch = float(value), epoch
            self.best_logs = clean_logs(logs)
            self._weights = self.model.get_weights()

    def on_train_end(self, logs: Any = None) -> None:
        if self._weights is not None:
            self.model.set_weights(self._weights)

    def missing(self) -> str | None:
        """Why no epoch was kept, when none was (a warning for the job's attempt)."""
        if self.best_epoch is not None or not self.seen:
            return None
        if self.monitor not in self.seen:
            return (f"keep_best: '{self.monitor}' was in no epoch's logs (they hold "
                    f"{', '.join(sorted(self.seen))}); the last epoch's weights were saved")
        return (f"keep_best: no epoch's '{self.monitor}' beat initial_value_threshold "
                f"{self.best}; the last epoch's weights were saved")
