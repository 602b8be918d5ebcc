"""The direction of a monitored metric, and the callbacks a notebook uses, mapped or refused
with what to use instead (in process: Keras, no service)."""

from __future__ import annotations

import glob
import tempfile
from typing import Any

import keras
import numpy as np
import pytest

from app.core.errors import DomainError
from app.jobs import callback_specs
from app.jobs.mapped_callbacks import EpochsAsCsv
from app.training.callbacks import KeepBest, monitor_direction


def _model(metrics: list[Any], outputs: int = 1) -> keras.Model:
    inp = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    outs = [keras.layers.Dense(1, activation="sigmoid", name=f"out{i}")(hidden)
            for i in range(outputs)]
    model = keras.Model(inp, outs[0] if outputs == 1 else outs)
    model.compile(keras.optimizers.SGD(0.3, momentum=0.9), "binary_crossentropy",
                  metrics=metrics if outputs == 1 else [metrics] * outputs)
    return model


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(96, 4)).astype("float32")
    y = ((x[:, 0] - x[:, 1] + rng.normal(size=96)) > 0).astype("float32")[:, None]
    return x, y


def _trained(metrics: list[Any], outputs: int = 1, epochs: int = 1,
             callbacks: list[Any] | None = None, seed: int = 0) -> tuple[keras.Model, Any]:
    keras.utils.set_random_seed(seed)
    model = _model(metrics, outputs)
    x, y = _data()
    history = model.fit(x, [y] * outputs if outputs > 1 else y, epochs=epochs, batch_size=16,
                        validation_split=0.25, verbose=0, callbacks=callbacks or [])
    return model, history


@pytest.mark.parametrize(("metric", "monitor", "direction"), [
    (keras.metrics.R2Score(), "val_r2_score", "max"),
    (keras.metrics.F1Score(average="micro", threshold=0.5), "val_f1_score", "max"),
    (keras.metrics.BinaryIoU(target_class_ids=[1]), "val_binary_io_u", "max"),
    (keras.metrics.MeanAbsoluteError(), "mean_absolute_error", "min"),
    ("binary_accuracy", "val_binary_accuracy", "max"),
    (keras.metrics.BinaryCrossentropy(), "val_binary_crossentropy", "min"),
    (keras.metrics.R2Score(), "val_loss", "min"),
])
def test_direction_comes_from_the_metric(metric: Any, monitor: str, direction: str) -> None:
    model, history = _trained([metric])
    assert monitor in history.history
    assert monitor_direction(model, monitor, "auto") == direction
    assert monitor_direction(model, monitor, "min") == "min"  # an explicit mode wins


def test_direction_of_a_multi_output_models_metrics() -> None:
    """Keras's own callbacks cannot tell these ("out0_r2_score"); the metric can."""
    model, history = _trained([keras.metrics.R2Score(), "binary_accuracy"], outputs=2)
    assert monitor_direction(model, "val_out1_r2_score", "auto") == "max"
    assert monitor_direction(model, "out0_binary_accuracy", "auto") == "max"
    assert monitor_direction(model, "val_out0_loss", "auto") == "min"
    with pytest.raises(DomainError, match="mode 'max' or 'min'"):
        monitor_direction(model, "val_something_else", "auto")


@pytest.mark.parametrize(("metric", "monitor"), [
    (keras.metrics.R2Score(), "val_r2_score"),
    (keras.metrics.F1Score(average="micro", threshold=0.5), "val_f1_score"),
    (keras.metrics.AUC(), "val_auc"),
    (keras.metrics.R2Score(), "val_loss"),
])
def test_keep_best_keeps_model_checkpoints_epoch(metric: Any, monitor: str) -> None:
    folder = tempfile.mkdtemp()
    checkpoint = keras.callbacks.ModelCheckpoint(f"{folder}/e{{epoch:02d}}.keras",
                                                 monitor=monitor, save_best_only=True)
    _, history = _trained([metric], epochs=6, callbacks=[checkpoint], seed=2)
    kept = int(sorted(glob.glob(f"{folder}/e*.keras"))[-1][-8:-6]) - 1
    keep_best = KeepBest(monitor, "auto")
    model, again = _trained([metric.__class__.from_config(metric.get_config())], epochs=6,
                            callbacks=[keep_best], seed=2)
    assert again.history[monitor] == history.history[monitor]
    assert keep_best.best_epoch == kept
    assert keep_best.best_logs[monitor] == pytest.approx(history.history[monitor][kept])


def test_keep_best_says_when_its_monitor_never_came() -> None:
    keep_best = KeepBest("val_r2", "auto")
    _trained(["binary_accuracy"], epochs=2, callbacks=[keep_best])
    assert keep_best.best_epoch is None
    assert "'val_r2' was in no epoch's logs" in (keep_best.missing() or "")


# --- the callbacks list --------------------------------------------------------------------

SCHEDULE = {"class_name": "ExponentialDecay",
            "config": {"initial_learning_rate": 0.2, "decay_steps": 1, "decay_rate": 0.5}}


def test_learning_rate_scheduler_with_a_built_in_schedule() -> None:
    """Evaluated at the epoch number, as Keras's LearningRateScheduler evaluates a schedule."""
    (scheduler,) = callback_specs.build([{"type": "LearningRateScheduler",
                                          "schedule": SCHEDULE}])
    assert isinstance(scheduler, keras.callbacks.LearningRateScheduler)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 1, 0.5)
    notebook = keras.callbacks.LearningRateScheduler(lambda epoch: float(schedule(epoch)))
    _, expected = _trained(["binary_accuracy"], epochs=3, callbacks=[notebook])
    _, mapped = _trained(["binary_accuracy"], epochs=3, callbacks=[scheduler])
    assert mapped.history == expected.history
    np.testing.assert_allclose(mapped.history["learning_rate"], [0.2, 0.1, 0.05], rtol=1e-6)


def test_csv_logger_writes_to_the_jobs_log(caplog: pytest.LogCaptureFixture) -> None:
    (logger,) = callback_specs.build([{"type": "CSVLogger", "filename": "training.log",
                                       "separator": ";", "append": True}])
    assert isinstance(logger, EpochsAsCsv)
    with caplog.at_level("INFO", logger="keras_jobs.csv"):
        _trained(["binary_accuracy"], epochs=2, callbacks=[logger])
    lines = [r.getMessage() for r in caplog.records if r.name == "keras_jobs.csv"]
    assert lines[0] == "csv epoch;binary_accuracy;loss;val_binary_accuracy;val_loss"
    assert [line.split(";")[0] for line in lines[1:]] == ["csv 0", "csv 1"]


def test_model_checkpoint_and_backup_and_restore_are_accepted() -> None:
    specs = [{"type": "ModelCheckpoint", "filepath": "/etc/passwd", "monitor": "val_auc",
              "mode": "max", "save_best_only": True, "initial_value_threshold": 0.5},
             {"type": "BackupAndRestore", "backup_dir": "/tmp/backup"}]
    assert callback_specs.build(specs) == []  # the service does both itself
    assert callback_specs.keep_best_of(specs, None) == {
        "monitor": "val_auc", "mode": "max", "initial_value_threshold": 0.5}
    assert callback_specs.keep_best_of([specs[0]], {"monitor": "val_loss"}) == {
        "monitor": "val_loss"}
    plain = [{"type": "ModelCheckpoint", "filepath": "last.keras"}]
    assert callback_specs.build(plain) == [] and callback_specs.keep_best_of(plain, None) is None


@pytest.mark.parametrize(("spec", "pointer", "instead"), [
    ({"type": "LambdaCallback"}, "/callbacks/0/type", "events"),
    ({"type": "TensorBoard", "log_dir": "/tmp"}, "/callbacks/0/type", "\"tensorboard\": true"),
    ({"type": "MyCallback"}, "/callbacks/0/type", "never runs"),
    ({"type": "LearningRateScheduler", "schedule": "my_function"}, "/callbacks/0/schedule",
     "ExponentialDecay"),
    ({"type": "LearningRateScheduler", "schedule": {"class_name": "Lambda"}},
     "/callbacks/0/schedule/class_name", "learning-rate schedule"),
    ({"type": "ModelCheckpoint", "save_freq": 10}, "/callbacks/0/save_freq", "every epoch"),
    ({"type": "ModelCheckpoint", "sav_best_only": True}, "/callbacks/0/sav_best_only",
     "did you mean 'save_best_only'"),
    ({"type": "CSVLogger", "separator": ";;"}, "/callbacks/0/separator", "one character"),
])
def test_refusals_say_what_to_do_instead(spec: dict[str, Any], pointer: str,
                                         instead: str) -> None:
    with pytest.raises(DomainError) as info:
        callback_specs.build([spec])
    assert info.value.status == 422
    assert [e.pointer for e in info.value.errors] == [pointer]
    assert instead in info.value.errors[0].detail


def test_model_checkpoint_may_not_contradict_keep_best() -> None:
    spec = {"type": "ModelCheckpoint", "monitor": "val_auc", "save_best_only": True}
    with pytest.raises(DomainError) as info:
        callback_specs.build([spec], keep_best={"monitor": "val_loss", "mode": "auto"})
    assert info.value.errors[0].pointer == "/callbacks/0/monitor"
    with pytest.raises(DomainError, match="One best epoch"):
        callback_specs.build([spec, spec])


# --- keras_jobs.callbacks: a notebook's callback objects as the job's list --------------------

def test_notebook_callback_objects_become_the_jobs_list() -> None:
    from keras_jobs.callbacks import to_json

    schedule = keras.optimizers.schedules.ExponentialDecay(0.2, 1, 0.5)
    objects = [
        keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=2,
                                      min_delta=0.01, restore_best_weights=True),
        keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=1, min_lr=1e-5),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint("/home/me/best.keras", monitor="val_auc",
                                        save_best_only=True, initial_value_threshold=0.6),
        keras.callbacks.LearningRateScheduler(schedule),
        keras.callbacks.CSVLogger("/home/me/training.csv", separator=";"),
        keras.callbacks.BackupAndRestore("/home/me/backup"),
        {"type": "TerminateOnNaN"},
    ]
    specs = to_json(objects)
    assert specs[0] == {"type": "EarlyStopping", "monitor": "val_auc", "mode": "max",
                        "min_delta": 0.01, "patience": 2, "verbose": 0, "baseline": None,
                        "restore_best_weights": True, "start_from_epoch": 0}
    assert specs[3]["filepath"] == "best.keras" and specs[3]["initial_value_threshold"] == 0.6
    assert specs[4]["schedule"]["class_name"] == "ExponentialDecay"
    assert specs[5] == {"type": "CSVLogger", "filename": "training.csv", "separator": ";",
                        "append": False}
    built = callback_specs.build(specs)  # what the service accepts at submit
    assert [type(cb).__name__ for cb in built] == [
        "EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN", "LearningRateScheduler",
        "EpochsAsCsv", "TerminateOnNaN"]
    assert callback_specs.keep_best_of(specs, None) == {
        "monitor": "val_auc", "mode": "auto", "initial_value_threshold": 0.6}


class _MyCallback(keras.callbacks.Callback):  # type: ignore[misc]
    pass


@pytest.mark.parametrize(("callback", "instead"), [
    (keras.callbacks.LearningRateScheduler(lambda epoch: 0.1), "keras.optimizers.schedules"),
    (keras.callbacks.LambdaCallback(on_epoch_end=print), "client.attach"),
    (keras.callbacks.TensorBoard(), "tensorboard=True"),
    (_MyCallback(), "of your own"),
    (keras.callbacks.ModelCheckpoint("m.keras", save_freq=5), "save_freq"),
])
def test_notebook_callbacks_the_service_cannot_run(callback: Any, instead: str) -> None:
    from keras_jobs.callbacks import to_json
    from keras_jobs.errors import KerasJobsError

    with pytest.raises(KerasJobsError) as info:
        to_json([keras.callbacks.TerminateOnNaN(), callback])
    assert info.value.pointers == ["/callbacks/1"]
    assert instead in str(info.value)
