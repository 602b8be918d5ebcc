"""Keras callback objects from a notebook, as a fit job's `callbacks` list (JSON).

`to_json([keras.callbacks.EarlyStopping(patience=3), ...])` gives
`[{"type": "EarlyStopping", "patience": 3, ...}]`: what the service runs or maps
(docs/specs-and-jobs.md, "Callbacks"). A callback the service cannot run raises KerasJobsError
saying what to use instead, before anything is sent. Dicts pass as they are. Keras is imported
only when an object has to be read."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from keras_jobs.errors import KerasJobsError

# What to use instead of the Keras callbacks the service does not run.
INSTEAD: dict[str, str] = {
    "LambdaCallback": "it runs Python code, which the service never runs; follow the job's "
                      "events (client.attach) or read its History afterwards",
    "TensorBoard": "pass tensorboard=True (and tensorboard_graph=True) as a fit option; "
                   "`keras-jobs tensorboard` serves the event files",
    "ProgbarLogger": "the client shows a progress bar itself (progress=True)",
    "History": "client.fit returns the History",
    "RemoteMonitor": "the service sends nothing out; follow the job's events",
    "SwapEMAWeights": "not run by the service; train without it",
}


def to_json(callbacks: Iterable[Any] | None) -> list[dict[str, Any]]:
    """The job's callbacks list for `callbacks` (Keras objects or dicts)."""
    return [_one(cb, i) for i, cb in enumerate(callbacks or [])]


def _refuse(i: int, name: str, why: str) -> KerasJobsError:
    return KerasJobsError("Callback not available", f"callbacks[{i}] ({name}): {why}",
                          errors=[{"pointer": f"/callbacks/{i}", "detail": why}])


def _monitor(cb: Any) -> dict[str, Any]:
    # MonitorCallback keeps min_delta as given, negated once it knows the direction.
    return {"monitor": cb.monitor, "mode": cb.mode, "min_delta": abs(cb.min_delta)}


def _one(cb: Any, i: int) -> dict[str, Any]:
    if isinstance(cb, dict):
        return dict(cb)
    import keras

    name = type(cb).__name__
    if getattr(keras.callbacks, name, None) is not type(cb):
        raise _refuse(i, name, "a callback class of your own runs Python code, which the "
                      "service never runs; use Keras's EarlyStopping, ReduceLROnPlateau, "
                      "TerminateOnNaN, ModelCheckpoint, LearningRateScheduler (with a "
                      "keras.optimizers.schedules class), CSVLogger or BackupAndRestore, or "
                      "the fit options keep_best and tensorboard")
    if name == "EarlyStopping":
        return {"type": name, **_monitor(cb), "patience": cb.patience, "verbose": cb.verbose,
                "baseline": cb.baseline, "restore_best_weights": cb.restore_best_weights,
                "start_from_epoch": cb.start_from_epoch}
    if name == "ReduceLROnPlateau":
        return {"type": name, **_monitor(cb), "factor": cb.factor, "patience": cb.patience,
                "verbose": cb.verbose, "cooldown": cb.cooldown, "min_lr": cb.min_lr}
    if name in ("TerminateOnNaN", "BackupAndRestore"):
        return {"type": name}  # BackupAndRestore: every job checkpoints and resumes already
    if name == "ModelCheckpoint":
        out = {"type": name, "filepath": os.path.basename(cb.filepath), "monitor": cb.monitor,
               "mode": cb.mode, "save_best_only": cb.save_best_only,
               "save_weights_only": cb.save_weights_only, "verbose": cb.verbose}
        if cb.save_freq != "epoch":
            raise _refuse(i, name, "save_freq must be 'epoch': the job saves one version "
                          "and checkpoints itself every epoch")
        if cb.best is not None:  # the initial_value_threshold it was given
            out["initial_value_threshold"] = float(cb.best)
        return out
    if name == "LearningRateScheduler":
        schedule = cb.schedule
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise _refuse(i, name, "its schedule is a Python function, which the service "
                          "never runs; give it a keras.optimizers.schedules object (e.g. "
                          "ExponentialDecay, PiecewiseConstantDecay, CosineDecay), evaluated "
                          "at the epoch number, or put the schedule in the optimizer's "
                          "learning_rate")
        return {"type": name, "verbose": cb.verbose,
                "schedule": {"class_name": type(schedule).__name__,
                             "config": schedule.get_config()}}
    if name == "CSVLogger":
        return {"type": name, "filename": os.path.basename(cb.filename), "separator": cb.sep,
                "append": cb.append}
    raise _refuse(i, name, INSTEAD.get(name, "not run by the service"))
