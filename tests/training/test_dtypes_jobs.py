"""Dtypes and compile options through the job code: a TextVectorization model trains from
string arrays and is served; a mixed_float16 model trains with Keras's loss scaling (as a
notebook's LossScaleOptimizer or added by compile); jit_compile reaches compile; a bfloat16
model's batch predictions are stored as float32 (not `|V2` records); an evaluate job's
numbers are Keras's, also on string inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.training import batch_predict, runner
from tests.helpers import upload, wait_for_job

TEXTS = np.array([["good movie"], ["bad film"], ["great good fun"], ["awful bad"]] * 16)
LABELS = np.array([[1.0], [0.0], [1.0], [0.0]] * 16, dtype="float32")


def _memmapped(tmp_path: Path, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    for name, values in arrays.items():
        np.save(tmp_path / f"{name}.npy", values)
    return {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in arrays}


def _dense(policy: str) -> Any:
    import keras

    keras.utils.set_random_seed(5)
    return keras.Sequential([keras.Input(shape=(3,)),
                             keras.layers.Dense(8, activation="relu", dtype=policy),
                             keras.layers.Dense(1, dtype=policy)])


def test_bfloat16_batch_predictions_are_stored_as_float32(tmp_path: Path) -> None:
    x = np.random.default_rng(0).normal(size=(50, 3)).astype("float32")
    arrays = _memmapped(tmp_path, x=x)
    model = _dense("mixed_bfloat16")
    out = tmp_path / "out"
    out.mkdir()
    written = batch_predict.predict_job(model, arrays, "x", out, batch_size=16,
                                        output_name="p", check_cancel=lambda: None)
    assert written.arrays == {"p": {"shape": [50, 1], "dtype": "float32"}}
    stored = np.load(out / "p.npy", allow_pickle=False)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, model.predict(x, batch_size=16, verbose=0)
                                  .astype("float32"))
    # Whatever calls the model: a bfloat16 result is never written as `|V2` records.
    again = tmp_path / "again"
    again.mkdir()
    batch_predict.predict_to_files(arrays, "x", lambda rows: model.predict(rows, verbose=0),
                                   again, output_name="p", output_names=[], chunk=16,
                                   check_cancel=lambda: None)
    assert np.load(again / "p.npy", allow_pickle=False).dtype == np.float32


def test_evaluate_rows_equals_keras_evaluate_also_on_strings(tmp_path: Path) -> None:
    import keras
    import tensorflow as tf

    x = np.random.default_rng(1).normal(size=(1000, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    arrays = _memmapped(tmp_path, x=x, y=y, t=TEXTS, label=LABELS)
    model = _dense("float32")
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    want = model.evaluate(x, y, batch_size=64, return_dict=True, verbose=0)
    got = runner.evaluate_rows(model, arrays, "x", "y", 64, [])
    assert got == pytest.approx(want, rel=1e-6)

    text = keras.layers.TextVectorization(max_tokens=20, output_mode="multi_hot")
    text.adapt(TEXTS)
    inp = keras.Input(shape=(1,), dtype="string")
    words = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid")(text(inp)))
    words.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    want = words.evaluate(tf.constant(TEXTS), LABELS, batch_size=8, return_dict=True, verbose=0)
    assert runner.evaluate_rows(words, arrays, "t", "label", 8, []) == pytest.approx(want)


def _fit_history(model: Any, x: np.ndarray, y: np.ndarray) -> list[float]:
    import keras

    keras.utils.set_random_seed(9)
    history = model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    return [float(v) for v in history.history["loss"]]


def test_mixed_float16_keeps_loss_scaling_and_trains_as_keras() -> None:
    import keras
    from keras.saving import serialize_keras_object

    from app.specs.compiler import compile_model

    x = np.random.default_rng(2).normal(size=(64, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    notebook = _dense("mixed_float16")
    notebook.compile(optimizer=keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.01), initial_scale=1024.0, dynamic_growth_steps=10), loss="mse")
    block = {"optimizer": serialize_keras_object(notebook.optimizer), "loss": "mse"}
    assert block["optimizer"]["class_name"] == "LossScaleOptimizer"
    job = _dense("mixed_float16")
    compile_model(job, block)
    assert isinstance(job.optimizer, keras.optimizers.LossScaleOptimizer)
    assert job.optimizer.initial_scale == 1024.0 and job.optimizer.dynamic_growth_steps == 10
    assert _fit_history(job, x, y) == _fit_history(notebook, x, y)

    # Named without the wrapper, compile adds it, as Keras does for mixed_float16.
    plain = _dense("mixed_float16")
    compile_model(plain, {"optimizer": "sgd", "loss": "mse"})
    assert isinstance(plain.optimizer, keras.optimizers.LossScaleOptimizer)


def test_saved_mixed_float16_model_keeps_loss_scaling_when_trained_again(
        tmp_path: Path) -> None:
    """A fit job from a saved version loads it compiled; Keras alone would drop the wrapper."""
    import keras

    from app.specs.compiler import keep_loss_scaling

    keras.mixed_precision.set_global_policy("mixed_float16")  # as in a notebook
    try:
        model = _dense("mixed_float16")
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=True, safe_mode=True)
    assert not isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    keep_loss_scaling(loaded)
    assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
    assert loaded.optimizer.inner_optimizer.get_config()["learning_rate"] == pytest.approx(0.01)
    x = np.random.default_rng(6).normal(size=(64, 3)).astype("float32")
    assert _fit_history(loaded, x, x[:, :1]) == _fit_history(model, x, x[:, :1])


def test_notebook_mixed_float16_model_is_a_valid_spec(client: Any) -> None:
    """What `client.fit` sends for a model compiled under the mixed_float16 policy: its
    optimizer serializes as a LossScaleOptimizer, which used to be refused."""
    import keras

    from keras_jobs.spec import model_spec

    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(4),
                                  keras.layers.Dense(1, dtype="float32")])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        spec = model_spec(model, "half")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert spec["compile"]["optimizer"]["class_name"] == "LossScaleOptimizer"
    r = client.post("/v1/specs", json=spec)
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("jit", [True, False, "auto"])
def test_jit_compile_is_passed_to_compile(jit: Any) -> None:
    from app.specs.compiler import compile_model

    model = _dense("float32")
    compile_model(model, {"optimizer": "sgd", "loss": "mse", "jit_compile": jit})
    reference = _dense("float32")
    reference.compile(optimizer="sgd", loss="mse", jit_compile=jit)
    # As Keras resolved it ("auto" is XLA on a GPU only), in the config the model saves.
    assert model.jit_compile == reference.jit_compile == (jit is True)
    assert model.get_compile_config()["jit_compile"] == reference.get_compile_config()[
        "jit_compile"]
    x = np.random.default_rng(4).normal(size=(32, 3)).astype("float32")
    np.testing.assert_allclose(_fit_history(model, x, x[:, :1]),
                               _fit_history(reference, x, x[:, :1]), rtol=1e-6)


TEXT_SPEC: dict[str, Any] = {
    "name": "words",
    "inputs": [{"name": "text", "shape": [1], "dtype": "string"}],
    "layers": [{"type": "TextVectorization", "max_tokens": 20, "output_mode": "multi_hot",
                "pad_to_max_tokens": True},
               {"type": "Dense", "units": 1, "activation": "sigmoid"}],
    "compile": {"optimizer": {"class_name": "Adam", "config": {"learning_rate": 0.1}},
                "loss": "binary_crossentropy", "metrics": ["accuracy"]},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_text_model_trains_and_serves(client: Any, worker: Any, mode: str) -> None:
    r = client.post("/v1/specs", json=TEXT_SPEC)
    assert r.status_code == 201, r.text
    dataset = upload(client, f"words-{mode}", x=TEXTS, y=LABELS)
    name = f"words-{mode}"
    r = client.post("/v1/jobs", json={
        "type": "fit", "spec_id": r.json()["id"], "dataset_id": dataset["id"], "x": "x",
        "y": "y", "epochs": 3, "batch_size": 8, "seed": 3, "input": mode, "model_name": name})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job.get("error")

    r = client.post(f"/v1/models/{name}:predict", json={"instances": [["good fun"],
                                                                       ["bad movie"]]})
    assert r.status_code == 200, r.text
    good, bad = (p[0] for p in r.json()["predictions"])
    assert good > 0.5 > bad

    r = client.post("/v1/jobs", json={"type": "evaluate", "model": name,
                                      "dataset_id": dataset["id"], "batch_size": 16})
    assert r.status_code == 202, r.text
    evaluated = wait_for_job(client, r.json()["id"])
    assert evaluated["status"] == "succeeded", evaluated.get("error")
    assert evaluated["result"]["accuracy"] == 1.0
