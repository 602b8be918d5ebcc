"""The best epoch a job keeps is the one Keras keeps (PostgreSQL, Redis, a real worker).

Each job is repeated in this process as plain Keras with the same seed, spec and rows; its
`keras.callbacks.ModelCheckpoint(save_best_only=True)` names the epoch the job must keep. The
settings are chosen so that the best epoch is neither the first nor the last, and so that the
worst epoch by the metric differs from the best (a wrong direction keeps another epoch)."""

from __future__ import annotations

import glob
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import upload, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]

EPOCHS = 5


def _spec(name: str, metric: Any, loss: str, activation: str | None, lr: float
          ) -> dict[str, Any]:
    return {"name": name, "inputs": [{"name": "x", "shape": [4]}],
            "layers": [{"type": "Dense", "units": 8, "activation": "relu"},
                       {"type": "Dense", "units": 1, "activation": activation}],
            "compile": {"optimizer": {"class_name": "SGD",
                                      "config": {"learning_rate": lr, "momentum": 0.9}},
                        "loss": loss, "metrics": [metric]}}


R2_SPEC = _spec("best-r2", {"class_name": "R2Score"}, "mean_squared_error", None, 0.08)
F1_SPEC = _spec("best-f1", {"class_name": "F1Score", "config": {"average": "micro",
                                                                "threshold": 0.5}},
                "binary_crossentropy", "sigmoid", 0.3)


@pytest.fixture(scope="module")
def rows(client: Any) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(96, 4)).astype("float32")
    noise = rng.normal(size=96)
    y_reg = (x @ np.array([1, -2, 0.5, 1], dtype="float32") + noise * 0.3)
    y_reg = y_reg.astype("float32")[:, None]
    y_cls = ((x[:, 0] - x[:, 1] + rng.normal(size=96) * 0.8) > 0).astype("float32")[:, None]
    train = upload(client, "best-train", x=x[:64], reg=y_reg[:64], cls=y_cls[:64])
    val = upload(client, "best-val", x=x[64:], reg=y_reg[64:], cls=y_cls[64:])
    return {"x": x, "reg": y_reg, "cls": y_cls, "train": train["id"], "val": val["id"]}


def _keras_run(spec: dict[str, Any], rows: dict[str, Any], target: str, seed: int,
               callbacks: list[Any]) -> dict[str, list[float]]:
    """What the worker runs (docs/specs-and-jobs.md, "Reproducing a fit job"), in this process."""
    import keras

    from app.specs.builder import build_compiled

    keras.utils.set_random_seed(seed)
    model = build_compiled(spec)
    x, y = rows["x"], rows[target]
    history = model.fit(x[:64], y[:64], epochs=EPOCHS, batch_size=16, shuffle=True,
                        validation_data=(x[64:], y[64:]), callbacks=callbacks, verbose=0)
    return dict(history.history)


def _checkpointed(spec: dict[str, Any], rows: dict[str, Any], target: str, seed: int,
                  monitor: str) -> tuple[dict[str, list[float]], int, Any]:
    """History, the epoch ModelCheckpoint(save_best_only=True) kept last, and its model."""
    import keras

    folder = tempfile.mkdtemp()
    history = _keras_run(spec, rows, target, seed, [keras.callbacks.ModelCheckpoint(
        f"{folder}/e{{epoch:02d}}.keras", monitor=monitor, save_best_only=True)])
    last = sorted(glob.glob(f"{folder}/e*.keras"))[-1]
    return history, int(Path(last).stem[1:]) - 1, keras.saving.load_model(last)


def _fit(client: Any, spec: dict[str, Any], rows: dict[str, Any], target: str, seed: int,
         name: str, **options: Any) -> dict[str, Any]:
    spec_id = client.post("/v1/specs", json=spec).json()["id"]
    r = client.post("/v1/jobs", json={
        "type": "fit", "spec_id": spec_id, "dataset_id": rows["train"],
        "validation_dataset_id": rows["val"], "x": "x", "y": target, "epochs": EPOCHS,
        "batch_size": 16, "seed": seed, "model_name": name, **options})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    return job


def _version(client: Any, name: str) -> dict[str, Any]:
    model = client.get(f"/v1/models/{name}").json()
    return dict(model["versions"][0])


def _served(client: Any, name: str, x: np.ndarray) -> np.ndarray:
    r = client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["predictions"], dtype="float32")


CASES = [  # (spec, target array, monitor, seed, how the job asks for the best epoch)
    pytest.param(R2_SPEC, "reg", "val_r2_score", 1, "keep_best", id="r2_score"),
    pytest.param(F1_SPEC, "cls", "val_f1_score", 3, "keep_best", id="f1_score"),
    pytest.param(R2_SPEC, "reg", "val_loss", 1, "keep_best", id="val_loss"),
    pytest.param(R2_SPEC, "reg", "val_r2_score", 4, "ModelCheckpoint",
                 id="model_checkpoint_r2_score"),
]


@pytest.mark.parametrize(("spec", "target", "monitor", "seed", "how"), CASES)
def test_keeps_the_epoch_model_checkpoint_keeps(client: Any, rows: dict[str, Any],
                                                spec: dict[str, Any], target: str,
                                                monitor: str, seed: int, how: str) -> None:
    history, best, kept = _checkpointed(spec, rows, target, seed, monitor)
    assert 0 < best < EPOCHS - 1  # a wrong pick cannot be the first or last epoch by chance
    values = history[monitor]
    assert best != (int(np.argmin(values)) if "loss" not in monitor else int(np.argmax(values)))

    name = f"best-{how.lower()}-{monitor.replace('_', '-')}-{seed}"
    rule: dict[str, Any] = (
        {"keep_best": {"monitor": monitor}} if how == "keep_best" else
        {"callbacks": [{"type": "ModelCheckpoint", "filepath": "best.keras",
                        "monitor": monitor, "save_best_only": True}]})
    job = _fit(client, spec, rows, target, seed, name, **rule)
    np.testing.assert_allclose(job["history"][monitor], values, rtol=0, atol=1e-5)
    assert job["result"]["best_epoch"] == best
    version = _version(client, name)
    assert version["best_epoch"] == best
    assert version["metrics"][monitor] == pytest.approx(values[best], abs=1e-5)
    assert version["metrics"]["loss"] == pytest.approx(history["loss"][best], abs=1e-5)
    x = rows["x"][64:72]
    np.testing.assert_allclose(_served(client, name, x), kept.predict(x, verbose=0),
                               rtol=0, atol=1e-5)


def test_restore_best_weights_records_the_restored_epoch(client: Any,
                                                         rows: dict[str, Any]) -> None:
    """EarlyStopping(restore_best_weights=True): the version's weights are the best epoch's,
    and so are its metrics and best_epoch (they were the last epoch's)."""
    import keras

    stop = {"monitor": "val_loss", "patience": 2, "restore_best_weights": True}
    history = _keras_run(R2_SPEC, rows, "reg", 1, [keras.callbacks.EarlyStopping(**stop)])
    best = int(np.argmin(history["val_loss"]))
    assert best != len(history["val_loss"]) - 1

    job = _fit(client, R2_SPEC, rows, "reg", 1, "best-restored",
               callbacks=[{"type": "EarlyStopping", **stop}])
    assert len(job["history"]["loss"]) == len(history["loss"])
    version = _version(client, "best-restored")
    assert version["best_epoch"] == job["result"]["best_epoch"] == best
    for key in ("loss", "val_loss", "r2_score", "val_r2_score"):
        assert version["metrics"][key] == pytest.approx(history[key][best], abs=1e-5), key


def test_a_monitor_no_epoch_had_is_a_warning(client: Any, rows: dict[str, Any]) -> None:
    """keep_best on a name that is in no epoch's logs (a typo): the last epoch is saved, and
    the job's attempt says why."""
    job = _fit(client, R2_SPEC, rows, "reg", 1, "best-typo", keep_best={"monitor": "val_r2"})
    (attempt,) = job["attempts"]
    assert any("'val_r2' was in no epoch's logs" in w and "val_r2_score" in w
               for w in attempt["warnings"]), attempt
    assert job["result"]["best_epoch"] == EPOCHS - 1
    assert _version(client, "best-typo")["best_epoch"] == EPOCHS - 1
