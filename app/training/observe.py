"""Callbacks a fit job gets for being watched from outside: epoch durations for Prometheus,
and, with the job option `tensorboard`, TensorBoard event files in the artifact store.
Imported only in the worker's child (it imports Keras). Neither touches the random state, so
the job's numbers stay those of plain Keras (docs/specs-and-jobs.md, "Reproducing a fit job")."""

from __future__ import annotations

import time
from typing import Any

import keras

from app.core.metrics import EPOCH_SECONDS
from app.core.storage import ArtifactStore
from app.jobs.schemas import FitJobParams


class EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
    """Observes each epoch's wall time (validation included) into
    keras_jobs_epoch_duration_seconds."""

    def __init__(self) -> None:
        super().__init__()
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        EPOCH_SECONDS.observe(time.perf_counter() - self._start)


def fit_callbacks(job_id: str, p: FitJobParams, store: ArtifactStore) -> list[Any]:
    """Appended after the job's own callbacks (runner._fit)."""
    callbacks: list[Any] = [EpochTimer()]
    if p.tensorboard:
        # Scalars once per epoch only: per-batch summaries, histograms and the profiler each
        # slow training down, and the graph only when asked for.
        callbacks.append(keras.callbacks.TensorBoard(
            log_dir=str(store.path(store.tensorboard_key(job_id))), histogram_freq=0,
            write_graph=p.tensorboard_graph, write_images=False, update_freq="epoch",
            profile_batch=0))
    return callbacks
