"""Predict jobs: `model.predict(x, batch_size=128)` over a whole dataset by a real worker, the
predictions stored as a new dataset; bad submits and cancel.

The models are made with plain Keras in this process and uploaded as `.keras` files; the job's
output is compared with `keras.saving.load_model(file).predict(x, batch_size=128)`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import SEED_SPEC, assert_problem, two_classes, upload, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("keras_first", "worker")]

ROWS = 5000  # more than one chunk (4096 rows), and not a multiple of the batch size


@pytest.fixture(scope="session")
def keras_first() -> None:
    """Keras imported before the API starts (when this module is the first to start it): the
    API's start-up imports TensorFlow in a background thread, and two threads importing it at
    once can deadlock on Python's import locks."""
    import keras  # noqa: F401


@dataclass(frozen=True)
class Uploaded:
    name: str
    path: Path


def _upload_model(client: Any, name: str, model: Any, folder: Path) -> Uploaded:
    path = folder / f"{name}.keras"
    model.save(path)
    r = client.post(f"/v1/models/{name}/versions", files={"file": (path.name, path.read_bytes())})
    assert r.status_code == 201, r.text
    return Uploaded(name, path)


@pytest.fixture(scope="module")
def single(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    """Two inputs → Dense(8, relu) → Dense(1, sigmoid), random weights."""
    import keras

    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    return _upload_model(client, "bp-single", model, tmp_path_factory.mktemp("bp"))


@pytest.fixture(scope="module")
def multi(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Uploaded:
    """Inputs a (3) and b (2); outputs cls (1, sigmoid) and reg (2, linear)."""
    import keras

    keras.utils.set_random_seed(12)
    a = keras.Input(shape=(3,), name="a")
    b = keras.Input(shape=(2,), name="b")
    hidden = keras.layers.Dense(16, activation="tanh")(keras.layers.Concatenate()([a, b]))
    cls = keras.layers.Dense(1, activation="sigmoid", name="cls")(hidden)
    reg = keras.layers.Dense(2, name="reg")(hidden)
    model = keras.Model({"a": a, "b": b}, [cls, reg])
    return _upload_model(client, "bp-multi", model, tmp_path_factory.mktemp("bp"))


def _stored(service_env: dict[str, str], dataset_id: str, array: str) -> np.ndarray:
    path = Path(service_env["KJ_ARTIFACT_ROOT"]) / "datasets" / dataset_id / f"{array}.npy"
    return np.load(path, allow_pickle=False)


def _reference(model: Uploaded, x: Any) -> Any:
    import keras

    return keras.saving.load_model(model.path, compile=False).predict(x, batch_size=128,
                                                                       verbose=0)


def test_predictions_are_a_new_dataset_equal_to_model_predict(
        client: Any, single: Uploaded, service_env: dict[str, str]) -> None:
    x, _ = two_classes(seed=21, n=ROWS // 2)
    source = upload(client, "bp-inputs", x=x)
    r = client.post("/v1/jobs", json={"type": "predict", "model": single.name,
                                      "dataset_id": source["id"], "batch_size": 128})
    assert r.status_code == 202, r.text
    assert r.json()["type"] == "predict" and r.json()["model_version"] == 1
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job

    result = job["result"]
    arrays = {"predictions": {"shape": [ROWS, 1], "dtype": "float32"}}
    assert result["rows"] == ROWS and result["arrays"] == arrays
    assert result["dataset_id"] != source["id"]
    dataset = client.get(f"/v1/datasets/{result['dataset_id']}").json()
    assert dataset["num_rows"] == ROWS and dataset["arrays"] == arrays
    assert dataset["format"] == "npy" and dataset["filename"] == job["id"]
    np.testing.assert_allclose(_stored(service_env, result["dataset_id"], "predictions"),
                               _reference(single, x), atol=1e-5, rtol=0)
    # Recorded in the audit log as the job's doing, like an upload.
    events = client.get("/v1/audit", params={"action": "dataset.create", "limit": 100}).json()
    [made] = [e for e in events["items"] if e["target"] == f"dataset/{result['dataset_id']}"]
    assert made["actor"] == f"job/{job['id']}" and made["detail"]["stored_bytes"] > 0


def test_several_inputs_and_outputs(client: Any, multi: Uploaded,
                                    service_env: dict[str, str]) -> None:
    rng = np.random.default_rng(22)
    fa = rng.normal(size=(ROWS, 3)).astype("float32")
    b1, b2 = rng.normal(size=(2, ROWS)).astype("float32")  # 1-D columns, stacked for input b
    source = upload(client, "bp-multi-inputs", fa=fa, b1=b1, b2=b2)
    r = client.post("/v1/jobs", json={
        "type": "predict", "model": f"{multi.name}/1", "dataset_id": source["id"],
        "x": {"a": "fa", "b": ["b1", "b2"]}, "batch_size": 128, "output_name": "out"})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job

    result = job["result"]
    assert result["arrays"] == {"out.cls": {"shape": [ROWS, 1], "dtype": "float32"},
                                "out.reg": {"shape": [ROWS, 2], "dtype": "float32"}}
    cls, reg = _reference(multi, {"a": fa, "b": np.stack([b1, b2], axis=1)})
    ds = result["dataset_id"]
    np.testing.assert_allclose(_stored(service_env, ds, "out.cls"), cls, atol=1e-5, rtol=0)
    np.testing.assert_allclose(_stored(service_env, ds, "out.reg"), reg, atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def small(client: Any) -> dict[str, Any]:
    x, _ = two_classes(seed=23, n=10)
    return upload(client, "bp-small", x=x)


@pytest.mark.parametrize(("change", "pointer"), [
    ({"x": "nope"}, "/x"),
    ({"x": ["x", "nope"]}, "/x/1"),
    ({"x": []}, "/x"),
    ({"x": {"input": []}}, "/x/input"),
    ({"dataset_id": "ds_missing"}, "/dataset_id"),
    ({"model": "no-such-model"}, "/model"),
    ({"model": "bp-single/99"}, "/model"),
    ({"model": "bad name!"}, "/model"),
    ({"output_name": "1st"}, "/output_name"),
    ({"batch_size": 0}, "/batch_size"),
    ({"y": "x"}, "/y"),  # a predict job takes no targets
])
def test_bad_submit_is_422_and_leaves_nothing(client: Any, single: Uploaded,
                                              small: dict[str, Any], change: dict[str, Any],
                                              pointer: str) -> None:
    before = client.get("/v1/jobs", params={"limit": 1}).json()["total"]
    body = {"type": "predict", "model": single.name, "dataset_id": small["id"], **change}
    assert_problem(client.post("/v1/jobs", json=body), 422, pointer)
    assert client.get("/v1/jobs", params={"limit": 1}).json()["total"] == before


def test_cancel_queued_predict_job_never_starts(client: Any, single: Uploaded) -> None:
    x, y = two_classes(seed=24, n=50)
    source = upload(client, "bp-queued", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    blocker = client.post("/v1/jobs", json={  # keeps the single worker busy
        "type": "fit", "spec_id": spec["id"], "dataset_id": source["id"], "epochs": 2000,
        "batch_size": 4, "model_name": "bp-blocker"}).json()
    queued = client.post("/v1/jobs", json={"type": "predict", "model": single.name,
                                           "dataset_id": source["id"]}).json()
    r = client.post(f"/v1/jobs/{queued['id']}:cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelled", r.text
    client.post(f"/v1/jobs/{blocker['id']}:cancel")
    assert wait_for_job(client, blocker["id"], timeout=60)["status"] == "cancelled"

    # The next job runs, so the worker has seen (and skipped) the cancelled one's message.
    follow = client.post("/v1/jobs", json={"type": "predict", "model": single.name,
                                           "dataset_id": source["id"]}).json()
    assert wait_for_job(client, follow["id"], timeout=120)["status"] == "succeeded"
    job = client.get(f"/v1/jobs/{queued['id']}").json()
    assert job["status"] == "cancelled" and job["started_at"] is None and job["result"] is None


def test_cancel_running_predict_job_records_no_dataset(
        client: Any, single: Uploaded, service_env: dict[str, str]) -> None:
    # 20,000 rows one per batch: seconds of work, so it is still running when the cancel
    # arrives and stops at a batch boundary.
    x = np.random.default_rng(25).normal(size=(20_000, 2)).astype("float32")
    source = upload(client, "bp-long", x=x)
    datasets_before = client.get("/v1/datasets", params={"limit": 1}).json()["total"]
    staging = Path(service_env["KJ_ARTIFACT_ROOT"]) / "tmp"
    job = client.post("/v1/jobs", json={"type": "predict", "model": single.name,
                                        "dataset_id": source["id"], "batch_size": 1}).json()
    wait_for_job(client, job["id"], until=("running",), timeout=120)
    r = client.post(f"/v1/jobs/{job['id']}:cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"], r.text
    done = wait_for_job(client, job["id"], timeout=20)
    assert done["status"] == "cancelled" and done["result"] is None, done
    assert client.get("/v1/datasets", params={"limit": 1}).json()["total"] == datasets_before
    assert not [p for p in staging.glob("*") if p.is_dir()]  # the staging folder is gone
