"""The checkpoint writer: whole checkpoints only, the previous one kept, an unreadable one
discarded with a warning, a mid-epoch checkpoint on hand back (in-process Keras, no worker)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.helpers import two_classes


def _model() -> Any:
    import keras

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(4),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    return model


def _fit(model: Any, callback: Any, epochs: int, batch_size: int = 50) -> Any:
    x, y = two_classes(n=100)
    return model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                     callbacks=[callback])


def _writer(folder: Path, warnings: list[str] | None = None, **kwargs: Any) -> Any:
    from app.training.checkpoints import SafeBackupAndRestore

    sink = warnings if warnings is not None else []
    return SafeBackupAndRestore(folder, on_warning=sink.append, **kwargs)


def test_each_epoch_is_a_whole_checkpoint_and_the_last_two_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    model = _model()
    _fit(model, _writer(folder), epochs=3)
    assert sorted(p.name for p in folder.iterdir()) == ["e000002-b000000", "e000003-b000000"]
    meta = json.loads((folder / "e000003-b000000" / "meta.json").read_text())
    assert meta["epoch"] == 3 and meta["batch"] == 0 and "loss" in meta["last_logs"]

    resumed = _model()
    writer = _writer(folder)
    history = _fit(resumed, writer, epochs=5)
    assert writer.restored.epoch == 3
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only


def test_unreadable_checkpoint_is_discarded_and_the_previous_one_used(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    _fit(_model(), _writer(folder), epochs=3)
    newest = folder / "e000003-b000000" / "weights.weights.h5"
    newest.write_bytes(newest.read_bytes()[:100])  # what a kill mid-write used to leave
    (folder / ".tmp-deadbeef").mkdir()  # a write that never reached its rename
    warnings: list[str] = []
    writer = _writer(folder, warnings)
    history = _fit(_model(), writer, epochs=4)
    assert writer.restored.epoch == 2 and writer.restored.last_logs is not None
    assert len(history.history["loss"]) == 2
    assert len(warnings) == 1 and "e000003-b000000" in warnings[0], warnings
    assert not (folder / ".tmp-deadbeef").exists()


def test_nothing_readable_starts_from_scratch_with_untouched_weights(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    _fit(_model(), _writer(folder), epochs=2)
    for ckpt in folder.iterdir():
        weights = ckpt / "weights.weights.h5"
        weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    fresh = _model()
    before = [w.copy() for w in fresh.get_weights()]
    warnings: list[str] = []
    writer = _writer(folder, warnings)
    writer.set_model(fresh)
    writer.on_train_begin()
    assert writer.restored is None and len(warnings) == 2
    for a, b in zip(before, fresh.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_hand_back_writes_a_mid_epoch_checkpoint_and_stops(tmp_path: Path) -> None:
    import keras

    folder = tmp_path / "ckpt"
    batches: list[int] = []

    class Count(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            batches.append(batch)

    counter = Count()
    writer = _writer(folder, hand_back_now=lambda: len(batches) >= 7)
    model = _model()
    x, y = two_classes(n=100)  # 200 rows, batch 50: 4 batches per epoch
    model.fit(x, y, epochs=5, batch_size=50, verbose=0, callbacks=[counter, writer])
    assert writer.saved_mid_epoch == "e000001-b000003"
    assert sorted(p.name for p in folder.iterdir()) == ["e000001-b000000", "e000001-b000003"]
    weights = model.get_weights()
    resumed = _model()
    again = _writer(folder)
    again.set_model(resumed)
    again.on_train_begin()
    assert (again.restored.epoch, again.restored.batch) == (1, 3)
    for a, b in zip(weights, resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b)
