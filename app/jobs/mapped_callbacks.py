"""The service's equivalents of Keras callbacks that name files or take Python functions
(app.jobs.callback_specs maps them). Imports Keras: imported only when a job is built."""

from __future__ import annotations

import logging
import math
from typing import Any

import keras

log = logging.getLogger("keras_jobs.csv")


def schedule_by_epoch(schedule: Any, verbose: int = 0) -> Any:
    """keras.callbacks.LearningRateScheduler setting the learning rate to `schedule(epoch)` at
    each epoch's start, as a notebook's `LearningRateScheduler(lambda e: float(s(e)))` does."""

    def rate(epoch: int, _lr: float) -> float:
        return float(keras.ops.convert_to_numpy(schedule(epoch)))

    return keras.callbacks.LearningRateScheduler(rate, verbose=verbose)


class EpochsAsCsv(keras.callbacks.Callback):  # type: ignore[misc]
    """CSVLogger into the job's log: a header, then `epoch,<metric>,...` per epoch (Keras's
    CSVLogger columns: the epoch, then the logs' keys sorted; "NA" for a missing value)."""

    def __init__(self, separator: str = ",") -> None:
        super().__init__()
        self.separator = separator
        self.keys: list[str] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            log.info("csv %s", self.separator.join(["epoch", *self.keys]))
        cells = [str(epoch)]
        for key in self.keys:
            value = logs.get(key)
            cells.append("NA" if value is None or not math.isfinite(float(value))
                         else repr(float(value)))
        log.info("csv %s", self.separator.join(cells))
