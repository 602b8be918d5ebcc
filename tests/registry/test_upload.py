"""POST /v1/models/{name}/versions: a `.keras` file made with plain Keras becomes the next
version; anything else is refused with problem+json and leaves no row and no file behind."""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import (
    assert_problem,
    two_classes,
    upload,
    wait_for_job,
)


@dataclass(frozen=True)
class Trained:
    path: Path
    x: np.ndarray
    y: np.ndarray
    predictions: np.ndarray
    evaluation: dict[str, float]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A Dense(1) on 2 inputs built, compiled, trained and saved in this process."""
    import keras

    x, y = two_classes(seed=7, n=200)
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.1),
                  loss="mean_squared_error", metrics=["binary_accuracy"], jit_compile=False)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "m.keras"
    model.save(path)
    evaluation = model.evaluate(x, y, batch_size=128, return_dict=True, verbose=0)
    return Trained(path, x, y, model.predict(x[:20], verbose=0),
                   {k: float(v) for k, v in evaluation.items()})


def _post(client: Any, name: str, filename: str, payload: bytes) -> Any:
    return client.post(f"/v1/models/{name}/versions", files={"file": (filename, payload)})


def test_upload_serves_same_predictions_and_versions_count_up(
        client: Any, trained: Trained, service_env: dict[str, str]) -> None:
    r = _post(client, "uploaded", "m.keras", trained.path.read_bytes())
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "uploaded" and body["version"] == 1
    assert body["metrics"] == {} and body["job_id"] is None and body["spec_id"] is None
    assert body["created_at"]
    assert r.headers["location"] == "/v1/models/uploaded/versions/1"
    stored = Path(service_env["KJ_ARTIFACT_ROOT"]) / "models" / "local" / "uploaded" / "1"
    assert sorted(p.name for p in stored.iterdir()) == ["model.keras"]

    x = trained.x[:20]
    r = client.post("/v1/models/uploaded/versions/1:predict", json={"instances": x.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], trained.predictions, atol=1e-5, rtol=0)

    r = _post(client, "uploaded", "again.keras", trained.path.read_bytes())
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2
    assert r.headers["location"] == "/v1/models/uploaded/versions/2"
    model = client.get("/v1/models/uploaded").json()
    assert model["latest_version"] == 2 and [v["version"] for v in model["versions"]] == [2, 1]


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_evaluate_job_on_uploaded_version(client: Any, trained: Trained) -> None:
    r = _post(client, "uploaded-eval", "m.keras", trained.path.read_bytes())
    assert r.status_code == 201, r.text
    dataset = upload(client, "uploaded-eval", x=trained.x, y=trained.y)
    r = client.post("/v1/jobs", json={"type": "evaluate", "model": "uploaded-eval/1",
                                      "dataset_id": dataset["id"], "batch_size": 128})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert set(job["result"]) == {"loss", "binary_accuracy"}, job["result"]
    for key, value in trained.evaluation.items():
        assert job["result"][key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_uploaded_version_is_a_starting_point_for_fine_tuning(client: Any,
                                                               trained: Trained) -> None:
    assert _post(client, "uploaded-ft", "m.keras", trained.path.read_bytes()).status_code == 201
    dataset = upload(client, "uploaded-ft", x=trained.x, y=trained.y)
    r = client.post("/v1/jobs", json={"type": "fit", "from_model": "uploaded-ft",
                                      "dataset_id": dataset["id"], "initial_epoch": 2,
                                      "epochs": 3, "seed": 1})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"], timeout=120)
    assert job["status"] == "succeeded", job
    assert job["model_name"] == "uploaded-ft" and job["model_version"] == 2
    assert len(job["history"]["loss"]) == 1


def test_loss_and_metric_given_as_functions(client: Any, tmp_path: Path) -> None:
    """compile(loss=keras.losses.mean_squared_error) saves the loss as a built-in function."""
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=keras.losses.mean_squared_error,
                  metrics=[keras.metrics.binary_accuracy], jit_compile=False)
    model.save(tmp_path / "fn.keras")
    r = _post(client, "function-loss", "fn.keras", (tmp_path / "fn.keras").read_bytes())
    assert r.status_code == 201, r.text


# --- refusals -----------------------------------------------------------------------------

def _rewrite(keras_file: Path, edit: Callable[[dict[str, Any]], None] | None,
             drop: tuple[str, ...] = ()) -> bytes:
    """A copy of a real `.keras` zip with its config.json edited and some entries left out."""
    buf = io.BytesIO()
    with zipfile.ZipFile(keras_file) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            data = src.read(info)
            if info.filename == "config.json" and edit is not None:
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            dst.writestr(info.filename, data)
    return buf.getvalue()


LAMBDA = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
          "config": {"name": "evil", "function": {
              "class_name": "__lambda__",
              "config": {"code": "4wEAAAAAAAAA", "defaults": None, "closure": None}}}}


def _insert_lambda(config: dict[str, Any]) -> None:
    config["config"]["layers"].append(LAMBDA)


def _module_os(config: dict[str, Any]) -> None:
    config["config"]["layers"][1]["module"] = "os"


def _compile_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(config: dict[str, Any]) -> None:
        config["compile_config"][key] = value
    return edit


def _h5_file(tmp_path: Path) -> bytes:
    import keras

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    path = tmp_path / "m.h5"
    model.save(path)  # Keras 3.15 still writes legacy HDF5 when asked
    return path.read_bytes()


def _zip(**entries: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    return buf.getvalue()


CONFIG = "/file/config.json"
REFUSALS = [
    pytest.param(lambda t, tmp: ("m.h5", _h5_file(tmp)), 422, "/file", id="real-h5"),
    pytest.param(lambda t, tmp: ("m.keras", _h5_file(tmp)), 422, "/file",
                 id="hdf5-magic-as-keras"),
    pytest.param(lambda t, tmp: ("m.hdf5", t.path.read_bytes()), 422, "/file", id="hdf5-suffix"),
    pytest.param(lambda t, tmp: ("m.keras", _zip(**{"metadata.json": b"{}"})), 422, "/file",
                 id="zip-without-config"),
    pytest.param(lambda t, tmp: ("m.keras", os.urandom(4096)), 422, "/file", id="random-bytes"),
    pytest.param(lambda t, tmp: ("m.keras", b""), 422, "/file", id="empty"),
    pytest.param(lambda t, tmp: ("m.keras", _zip(**{"config.json": b"{not json"})), 422, CONFIG,
                 id="config-not-json"),
    pytest.param(lambda t, tmp: ("m.keras", _rewrite(t.path, _insert_lambda)), 422,
                 f"{CONFIG}/config/layers/2", id="lambda-layer"),
    pytest.param(lambda t, tmp: ("m.keras", _rewrite(t.path, _module_os)), 422,
                 f"{CONFIG}/config/layers/1/module", id="module-os"),
    pytest.param(lambda t, tmp: ("m.keras", _rewrite(t.path, None, drop=("model.weights.h5",))),
                 422, "/file", id="keras-cannot-load"),
    pytest.param(lambda t, tmp: ("m.keras",
                                 _rewrite(t.path, _compile_key("jit_compile", "always"))),
                 422, f"{CONFIG}/compile_config/jit_compile", id="compile-jit"),
    pytest.param(lambda t, tmp: ("m.keras", _rewrite(t.path, _compile_key("run_eagerly", True))),
                 422, f"{CONFIG}/compile_config/run_eagerly", id="compile-run-eagerly"),
    pytest.param(lambda t, tmp: ("m.keras", _rewrite(t.path, _compile_key("loss", "nope_loss"))),
                 422, f"{CONFIG}/compile_config/loss", id="compile-unknown-loss"),
    pytest.param(lambda t, tmp: ("m.keras", _rewrite(t.path, _compile_key("optimizer", {
        "module": "keras.optimizers", "class_name": "LossScaleOptimizer", "config": {}}))),
                 422, f"{CONFIG}/compile_config/optimizer", id="compile-denied-optimizer"),
]


@pytest.mark.parametrize(("make", "status", "pointer"), REFUSALS)
def test_refused_upload_leaves_nothing(client: Any, unchanged: None, trained: Trained,
                                       tmp_path: Path, make: Any, status: int,
                                       pointer: str | None) -> None:
    filename, payload = make(trained, tmp_path)
    body = assert_problem(_post(client, "refused", filename, payload), status)
    if filename.endswith((".h5", ".hdf5")) or payload.startswith(b"\x89HDF"):
        assert ".keras" in body["detail"] and "HDF5" in body["detail"]
    if pointer is not None:
        pointers = [e["pointer"] for e in body.get("errors", [])]
        assert any(p == pointer or p.startswith(pointer + "/") for p in pointers), body
    assert_problem(client.get("/v1/models/refused"), 404)


def test_invalid_name_and_missing_file(client: Any, unchanged: None, trained: Trained) -> None:
    assert_problem(_post(client, "bad name!", "m.keras", trained.path.read_bytes()), 422,
                   "/path/name")
    assert_problem(client.post("/v1/models/fine/versions", data={"x": "1"},
                               files={"other": ("m.keras", b"PK")}), 422, "/file")
    assert_problem(client.post("/v1/models/fine/versions", data={"x": "1"}), 415)


def test_too_large(client: Any, unchanged: None, trained: Trained) -> None:
    quotas = "/v1/tenants/local/quotas"  # the largest upload is the tenant's quota
    assert client.put(quotas, json={"max_upload_bytes": 1024}).status_code == 200
    try:
        assert_problem(_post(client, "big", "m.keras", trained.path.read_bytes()), 413, "/file")
    finally:
        assert client.put(quotas, json={}).status_code == 200


def test_uncompiled_model_is_accepted(client: Any, tmp_path: Path) -> None:
    """No compile_config: servable, nothing to check (an evaluate job would need one)."""
    import keras

    inputs = {"a": keras.Input(shape=(1,), name="a"), "b": keras.Input(shape=(1,), name="b")}
    out = keras.layers.Dense(1, name="out")(keras.layers.Concatenate()(list(inputs.values())))
    path = tmp_path / "u.keras"
    keras.Model(inputs, out).save(path)
    assert not json.loads(zipfile.ZipFile(path).read("config.json")).get("compile_config")
    r = _post(client, "uncompiled", "u.keras", path.read_bytes())
    assert r.status_code == 201, r.text
    meta = client.get("/v1/models/uncompiled/metadata").json()
    assert sorted(i["name"] for i in meta["inputs"]) == ["a", "b"]
