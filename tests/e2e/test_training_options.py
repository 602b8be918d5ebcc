"""Fit options end to end (PostgreSQL, Redis, a real worker): the GradientTape reference,
streaming input, callbacks, fine-tuning, weights, multi-input/multi-output mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import SEED_SPEC, assert_problem, two_classes, upload, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def fit(client: Any, spec: dict[str, Any] | str, dataset_id: str, **options: Any
        ) -> dict[str, Any]:
    spec_id = spec if isinstance(spec, str) else client.post("/v1/specs", json=spec).json()["id"]
    body = {"type": "fit", "spec_id": spec_id, "dataset_id": dataset_id, **options}
    if "from_model" in options:
        body.pop("spec_id")
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=240)
    if job["status"] == "failed":
        print("job failed:", job["error"])  # shown when the test then fails
    return job


@pytest.fixture(scope="module")
def classes(client: Any) -> dict[str, Any]:
    x, y = two_classes(seed=11)
    return {"x": x, "y": y, "id": upload(client, "options", x=x, y=y)["id"]}


GD_SPEC = {
    "name": "gradient-descent",
    "inputs": [{"name": "x", "shape": [2]}],
    "layers": [{"type": "Dense", "units": 1,
                "kernel_initializer": {"class_name": "RandomUniform",
                                       "config": {"minval": 0, "maxval": 1}},
                "bias_initializer": "zeros"}],
    "compile": {"optimizer": {"class_name": "SGD", "config": {"learning_rate": 0.1}},
                "loss": "mean_squared_error"},
}


def test_full_batch_sgd_is_the_tutorials_gradient_tape_loop(client: Any,
                                                            classes: dict[str, Any]) -> None:
    """The tutorial's first model: plain gradient descent, W -= lr·dL/dW, b -= lr·dL/db."""
    import keras
    import tensorflow as tf

    x, y = classes["x"], classes["y"]
    job = fit(client, GD_SPEC, classes["id"], epochs=30, batch_size=len(x), shuffle=False,
              seed=42, model_name="gradient-descent")
    assert job["status"] == "succeeded", job

    # The reference: the same initial weights (same seed), then a hand-written loop.
    keras.utils.set_random_seed(42)
    init = keras.initializers.RandomUniform(minval=0, maxval=1)
    layer = keras.layers.Dense(1, kernel_initializer=init, bias_initializer="zeros")
    layer.build((None, 2))
    w = tf.Variable(layer.kernel.numpy())
    b = tf.Variable(layer.bias.numpy())
    inputs, targets = tf.constant(x), tf.constant(y)
    losses = []
    for _step in range(30):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(targets - (tf.matmul(inputs, w) + b)))
        dw, db = tape.gradient(loss, [w, b])
        w.assign_sub(0.1 * dw)
        b.assign_sub(0.1 * db)
        losses.append(float(loss))
    np.testing.assert_allclose(job["history"]["loss"], losses, atol=1e-5, rtol=0)
    assert losses[-1] < losses[0] / 10  # it learned, as in the tutorial

    points = [[0.0, 3.0], [3.0, 0.0], [1.0, 1.0]]
    served = client.post("/v1/models/gradient-descent:predict", json={"instances": points})
    expected = (np.array(points, dtype="float32") @ w.numpy() + b.numpy()).tolist()
    np.testing.assert_allclose(served.json()["predictions"], expected, atol=1e-5)


def test_streaming_input_matches_in_memory(client: Any, classes: dict[str, Any]) -> None:
    """input=stream feeds batches from the memory-mapped .npy files through tf.data; with a
    full batch and no shuffling both paths see the same data, so History is the same."""
    common = {"epochs": 3, "batch_size": len(classes["x"]), "shuffle": False, "seed": 3}
    memory = fit(client, GD_SPEC, classes["id"], input="memory", model_name="mem", **common)
    streamed = fit(client, GD_SPEC, classes["id"], input="stream", model_name="str", **common)
    assert memory["status"] == streamed["status"] == "succeeded", (memory, streamed)
    np.testing.assert_allclose(streamed["history"]["loss"], memory["history"]["loss"],
                               atol=1e-6, rtol=0)
    shuffled = fit(client, SEED_SPEC, classes["id"], input="stream", epochs=5, batch_size=16,
                   validation_split_shuffled=0.3, seed=5,
                   model_name="stream-tutorial")
    assert shuffled["status"] == "succeeded", shuffled
    assert shuffled["history"]["val_binary_accuracy"][-1] >= 0.93


def test_same_seed_deterministic_runs_are_identical(client: Any, classes: dict[str, Any]
                                                    ) -> None:
    spec_id = client.post("/v1/specs", json=SEED_SPEC).json()["id"]
    opts = {"epochs": 3, "batch_size": 32, "validation_split_shuffled": 0.2, "seed": 9,
            "deterministic": True}
    first = fit(client, spec_id, classes["id"], model_name="det", **opts)
    second = fit(client, spec_id, classes["id"], model_name="det", **opts)
    assert first["history"] == second["history"]
    other = fit(client, spec_id, classes["id"], model_name="det", **{**opts, "seed": 10})
    assert other["history"] != first["history"]


def test_early_stopping_and_keep_best(client: Any, classes: dict[str, Any]) -> None:
    spec = {**SEED_SPEC, "compile": {**SEED_SPEC["compile"], "optimizer": {
        "class_name": "SGD", "config": {"learning_rate": 0.05, "momentum": 0.9}}}}
    job = fit(client, spec, classes["id"], epochs=50, batch_size=16, validation_split_shuffled=0.3,
              seed=1, model_name="early",
              callbacks=[{"type": "EarlyStopping", "monitor": "val_loss", "patience": 1,
                          "restore_best_weights": True}],
              keep_best={"monitor": "val_binary_accuracy"})
    assert job["status"] == "succeeded", job
    epochs_run = len(job["history"]["loss"])
    assert epochs_run < 50
    val_acc = job["history"]["val_binary_accuracy"]
    best = int(np.argmax(val_acc))
    assert job["result"]["best_epoch"] == best
    assert job["result"]["metrics"]["val_binary_accuracy"] == pytest.approx(val_acc[best])
    assert_problem(client.post("/v1/jobs", json={
        "type": "fit", "spec_id": job["spec_id"], "dataset_id": classes["id"],
        "callbacks": [{"type": "LambdaCallback"}]}), 422, "/callbacks/0/type")
    assert_problem(client.post("/v1/jobs", json={
        "type": "fit", "spec_id": job["spec_id"], "dataset_id": classes["id"],
        "callbacks": [{"type": "EarlyStopping", "patienc": 2}]}), 422, "/callbacks/0/patienc")


def test_reduce_lr_on_plateau_and_validation_freq(client: Any, classes: dict[str, Any]) -> None:
    job = fit(client, SEED_SPEC, classes["id"], epochs=4, batch_size=64,
              validation_split_shuffled=0.3,
              validation_freq=2, seed=2, model_name="plateau",
              callbacks=[{"type": "ReduceLROnPlateau", "monitor": "loss", "patience": 1,
                          "factor": 0.5}])
    assert job["status"] == "succeeded", job
    # Validation ran after epochs 2 and 4 only; the other epochs have no val_* values.
    assert [v is None for v in job["history"]["val_loss"]] == [True, False, True, False]


def test_nan_loss_fails_the_job_with_the_reason(client: Any, classes: dict[str, Any]) -> None:
    spec = {**SEED_SPEC, "compile": {**SEED_SPEC["compile"], "optimizer": {
        "class_name": "SGD", "config": {"learning_rate": 1e30}}}}
    job = fit(client, spec, classes["id"], epochs=5, batch_size=16, seed=1, model_name="nan")
    assert job["status"] == "failed", job
    assert "NaN" in job["error"] and "TerminateOnNaN" in job["error"]
    assert client.get("/v1/models/nan").status_code == 404


def test_fine_tune_from_a_saved_version(client: Any, classes: dict[str, Any]) -> None:
    first = fit(client, SEED_SPEC, classes["id"], epochs=2, batch_size=64, seed=1,
                model_name="tuned")
    assert first["status"] == "succeeded", first
    tuned = fit(client, SEED_SPEC, classes["id"], from_model="tuned/1", initial_epoch=2,
                epochs=4, batch_size=64, seed=1)
    assert tuned["status"] == "succeeded", tuned
    assert tuned["model_name"] == "tuned" and tuned["model_version"] == 2
    assert len(tuned["history"]["loss"]) == 2  # epochs 2 and 3
    assert tuned["history"]["loss"][0] < first["history"]["loss"][0]  # starts trained
    assert_problem(client.post("/v1/jobs", json={
        "type": "fit", "from_model": "tuned", "spec_id": first["spec_id"],
        "dataset_id": classes["id"]}), 422, "/spec_id")
    assert_problem(client.post("/v1/jobs", json={
        "type": "fit", "from_model": "tuned/9", "dataset_id": classes["id"]}), 422,
        "/from_model")


def test_sample_weight_and_class_weight(client: Any) -> None:
    x, y = two_classes(seed=12, n=200)
    ds = upload(client, "weights", x=x, y=y, zero=np.zeros(len(x), dtype="float32"),
                one=np.ones(len(x), dtype="float32"))
    spec_id = client.post("/v1/specs", json=SEED_SPEC).json()["id"]
    zero = fit(client, spec_id, ds["id"], epochs=1, sample_weight="zero", seed=1,
               model_name="sw")
    assert zero["status"] == "succeeded", zero
    assert zero["history"]["loss"] == [0.0]  # every sample weighs nothing
    plain = fit(client, spec_id, ds["id"], epochs=1, sample_weight="one", seed=1,
                model_name="sw")
    heavy = fit(client, spec_id, ds["id"], epochs=1, class_weight={"0": 1.0, "1": 10.0},
                seed=1, model_name="sw")
    assert heavy["status"] == "succeeded", heavy
    assert heavy["history"]["loss"][0] > plain["history"]["loss"][0]


def test_multi_input_multi_output_mapping(client: Any) -> None:
    rng = np.random.default_rng(0)
    xa = rng.normal(size=(256, 8)).astype("float32")
    xb = rng.normal(size=(256, 4)).astype("float32")
    y_cls = (xa[:, 0] + xb[:, 0] > 0).astype("float32")
    y_reg = (xa.sum(axis=1) - xb.sum(axis=1)).astype("float32")
    ds = upload(client, "two-heads", xa=xa, xb=xb, label=y_cls, target=y_reg)
    spec = {
        "name": "two-heads",
        "inputs": [{"name": "a", "shape": [8]}, {"name": "b", "shape": [4]}],
        "layers": [
            {"name": "ta", "type": "Dense", "units": 16, "activation": "relu", "inputs": ["a"]},
            {"name": "tb", "type": "Dense", "units": 16, "activation": "relu", "inputs": ["b"]},
            {"name": "cat", "type": "Concatenate", "inputs": ["ta", "tb"]},
            {"name": "cls", "type": "Dense", "units": 1, "activation": "sigmoid",
             "inputs": ["cat"]},
            {"name": "reg", "type": "Dense", "units": 1, "inputs": ["cat"]}],
        "outputs": ["cls", "reg"],
        "compile": {"optimizer": "adam",
                    "loss": {"cls": "binary_crossentropy", "reg": "mse"},
                    "loss_weights": {"cls": 1.0, "reg": 0.5},
                    "metrics": {"cls": ["binary_accuracy"], "reg": ["mae"]}},
    }
    job = fit(client, spec, ds["id"], x={"a": "xa", "b": "xb"},
              y={"cls": "label", "reg": "target"}, epochs=2, batch_size=32,
              validation_split_shuffled=0.25, seed=1, model_name="two-heads")
    assert job["status"] == "succeeded", job
    assert {"loss", "cls_loss", "reg_loss", "cls_binary_accuracy", "reg_mae",
            "val_cls_binary_accuracy"} <= set(job["history"])
    r = client.post("/v1/models/two-heads:predict",
                    json={"instances": [{"a": xa[0].tolist(), "b": xb[0].tolist()}]})
    assert r.status_code == 200, r.text
    assert set(r.json()["predictions"][0]) == {"cls", "reg"}
    r = client.post("/v1/models/two-heads:predict",
                    json={"inputs": {"a": xa[:3].tolist(), "b": xb[:3].tolist()}})
    assert np.array(r.json()["outputs"]["reg"]).shape == (3, 1)


def test_normalization_adapts_on_the_jobs_training_rows(client: Any,
                                                        service_env: dict[str, str]) -> None:
    import keras

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 3)) * [1, 10, 100] + [5, -5, 50]).astype("float32")
    y = (x[:, 0] > 5).astype("float32")
    ds = upload(client, "normalize", x=x, y=y)
    spec = {"name": "normalized", "inputs": [{"name": "x", "shape": [3]}],
            "layers": [{"type": "Normalization"}, {"type": "Dense", "units": 1,
                                                     "activation": "sigmoid"}],
            "compile": {"optimizer": "adam", "loss": "binary_crossentropy"}}
    job = fit(client, spec, ds["id"], epochs=1, seed=1, model_name="normalized")
    assert job["status"] == "succeeded", job
    saved = next((Path(service_env["KJ_ARTIFACT_ROOT"]) / "models").rglob(
        "normalized/1/model.keras"))
    model = keras.saving.load_model(saved, compile=False)
    norm = model.layers[0]
    np.testing.assert_allclose(np.ravel(norm.mean), x.mean(axis=0), rtol=1e-3)


@pytest.mark.parametrize("mode", ["memory", "stream"])
def test_steps_per_epoch(client: Any, mode: str) -> None:
    x, y = two_classes(seed=13, n=50)  # 100 rows: 2 batches of 50 per pass
    ds = upload(client, f"steps-{mode}", x=x, y=y)
    job = fit(client, SEED_SPEC, ds["id"], epochs=3, batch_size=50, steps_per_epoch=3,
              input=mode, seed=1, model_name=f"steps-{mode}")
    assert job["status"] == "succeeded", job
    assert len(job["history"]["loss"]) == 3
