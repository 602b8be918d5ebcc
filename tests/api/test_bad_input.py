"""Every bad input gets a 4xx problem+json and leaves no row and no file behind."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import (
    SEED_SPEC,
    assert_problem,
    npz_bytes,
    stored_files,
    table_counts,
    two_classes,
    upload,
)


def _zip_with(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(name, payload)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


BAD_UPLOADS = [
    pytest.param("empty.npz", b"", 400, "/file", id="empty-file"),
    pytest.param("notes.txt", b"hello there", 415, None, id="unknown-format"),
    pytest.param("bad.npz", b"PK\x03\x04garbage", 422, "/file", id="corrupt-npz"),
    pytest.param("bad.npy", b"\x93NUMPYgarbage", 422, "/file", id="corrupt-npy"),
    pytest.param("obj.npz", npz_bytes(x=np.array([1, "a", None], dtype=object)), 422, "/file/x",
                 id="object-dtype-npz"),
    pytest.param("obj.npy", _npy(np.array([{"a": 1}], dtype=object)), 422, "/file",
                 id="object-dtype-npy"),
    pytest.param("rows.npz", npz_bytes(x=np.zeros((3, 2)), y=np.zeros(4)), 422, "/file/x",
                 id="row-counts-differ"),
    pytest.param("scalar.npz", npz_bytes(x=np.float32(3)), 422, "/file/x", id="0-d-array"),
    pytest.param("evil.npz", _zip_with("../evil.npy", _npy(np.zeros(3))), 422, None,
                 id="path-in-array-name"),
    pytest.param("t.csv", b"a,b\n1,2\n3,x\n", 422, "/file", id="csv-not-a-number"),
    pytest.param("t.csv", b"a,b\n1,2\n3\n", 422, "/file", id="csv-ragged-row"),
    pytest.param("t.csv", b"a,b\n", 422, "/file", id="csv-no-rows"),
    pytest.param("t.csv", b"a,a\n1,2\n", 422, "/file/columns", id="csv-duplicate-columns"),
    pytest.param("t.csv", b"\xff\xfe\x00\x01", 422, "/file", id="csv-not-utf8"),
]


@pytest.mark.parametrize(("filename", "payload", "status", "pointer"), BAD_UPLOADS)
def test_bad_upload(client: Any, unchanged: None, filename: str, payload: bytes, status: int,
                    pointer: str | None) -> None:
    r = client.post("/v1/datasets", files={"file": (filename, payload)})
    assert_problem(r, status, pointer)


def test_upload_without_file_field(client: Any, unchanged: None) -> None:
    multipart_without_file = {"data": {"name": "x"}, "files": {"other": ("a.npz", b"PK")}}
    assert_problem(client.post("/v1/datasets", **multipart_without_file), 422, "/file")
    assert_problem(client.post("/v1/datasets", data={"name": "x"}), 415)  # not multipart
    assert_problem(client.post("/v1/datasets", json={"file": "x"}), 415)
    assert_problem(client.post("/v1/datasets", files={"file": ("a.npz", b"PK")},
                               data={"name": "n" * 201}), 422, "/name")
    malformed = client.post("/v1/datasets", content=b"--xyz\r\nnot a part",
                            headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert malformed.status_code in (400, 422), malformed.text


def test_csv_upload_and_delete(client: Any, service_env: dict[str, str]) -> None:
    r = client.post("/v1/datasets", files={"file": ("t.csv", b"a,b,label\n1,2.5,0\n3,4,1\n")})
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["format"] == "csv" and ds["num_rows"] == 2
    assert ds["arrays"]["b"] == {"shape": [2], "dtype": "float32"}
    assert ds["arrays"]["label"] == {"shape": [2], "dtype": "int64"}
    folder = Path(service_env["KJ_ARTIFACT_ROOT"]) / "datasets" / ds["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["a.npy", "b.npy", "label.npy"]
    assert client.get(f"/v1/datasets/{ds['id']}").json()["sha256"] == ds["sha256"]
    assert client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    assert not folder.exists()
    assert_problem(client.get(f"/v1/datasets/{ds['id']}"), 404)


BAD_SPECS = [
    pytest.param({**SEED_SPEC, "layers": [{"type": "Dense", "units": 1}, {"type": "Densee",
                                                                         "units": 1}]},
                 "/layers/1/type", id="unknown-layer"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Dense", "units": 4},
                                          {"type": "Dense", "units": "abc"}]},
                 "/layers/1/units", id="bad-argument"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Dense", "units": 1, "colour": "red"}]},
                 "/layers/0/colour", id="unknown-argument"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Conv2D", "filters": 2, "kernel_size": 3}]},
                 "/layers/0", id="shapes-do-not-fit"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Lambda", "function": "lambda x: x"}]},
                 "/layers/0/type", id="lambda"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "TFSMLayer", "filepath": "/tmp/x"}]},
                 "/layers/0/type", id="tfsmlayer"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Dense", "units": 1, "kernel_initializer": {
        "module": "os", "class_name": "RandomUniform", "config": {}}}]},
                 "/layers/0/kernel_initializer/module", id="module-key"),
    pytest.param({**SEED_SPEC, "compile": {**SEED_SPEC["compile"], "optimizer": "adamm"}},
                 "/compile/optimizer", id="unknown-optimizer"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Dense", "units": 1, "kernel_initializer": {
        "class_name": "RandomUniform", "config": {}, "registered_name": "evil>Init"}}]},
                 "/layers/0/kernel_initializer/registered_name", id="registered-name"),
    pytest.param({**SEED_SPEC, "layers": [{"type": "Dense", "units": 1, "activation": {
        "class_name": "__lambda__", "config": {"code": "b64", "defaults": None,
                                               "closure": None}}}]},
                 "/layers/0/activation", id="lambda-config"),
    pytest.param({"name": "imported", "keras_config": {
        "module": "keras", "class_name": "Sequential", "config": {"name": "s", "layers": [
            {"module": "keras.layers", "class_name": "InputLayer",
             "config": {"batch_shape": [None, 2], "dtype": "float32", "name": "x"}},
            {"module": "keras.layers", "class_name": "Lambda",
             "config": {"function": {"class_name": "__lambda__", "config": {}}}}]}},
        "compile": SEED_SPEC["compile"]}, "/keras_config", id="imported-lambda"),
    pytest.param({**SEED_SPEC, "inputs": [{"name": "x", "shape": [2]}], "layers": [
        {"type": "Dense", "units": 4}, {"type": "Dense", "units": 1, "kernel_regularizer": {
            "class_name": "L2", "config": {"l2": "lots"}}}]},
                 "/layers/1/kernel_regularizer", id="wrong-nested-argument-type"),
    pytest.param({k: v for k, v in SEED_SPEC.items() if k != "name"}, "/name", id="no-name"),
]


@pytest.mark.parametrize(("spec", "pointer"), BAD_SPECS)
def test_bad_spec(client: Any, unchanged: None, spec: dict[str, Any], pointer: str) -> None:
    body = assert_problem(client.post("/v1/specs", json=spec), 422)
    pointers = [e["pointer"] for e in body["errors"]]
    assert any(p == pointer or p.startswith(pointer + "/") for p in pointers), body


def test_keras_config_import_and_canonical_config(client: Any) -> None:
    """A model's own to_json() output is a spec; GET returns the canonical config and summary."""
    import json

    import keras

    model = keras.Sequential([keras.Input(shape=(4,), name="features"),
                              keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    r = client.post("/v1/specs", json={"name": "imported", "keras_config": model.to_json(),
                                       "compile": {"optimizer": "adam",
                                                   "loss": "binary_crossentropy",
                                                   "metrics": ["auc"]}})
    assert r.status_code == 201, r.text
    got = client.get(f"/v1/specs/{r.json()['id']}").json()
    assert got["total_params"] == model.count_params() == 49
    assert [layer["class_name"] for layer in got["summary"]["layers"]] == ["Dense", "Dense"]
    assert got["keras_config"]["class_name"] == "Sequential"
    assert got["spec"]["keras_config"] == model.to_json()
    assert json.loads(model.to_json())["config"]["layers"][1]["config"]["units"] == 8


def test_shape_errors_name_the_layer_and_expected_rank(client: Any, unchanged: None) -> None:
    spec = {**SEED_SPEC, "layers": [{"type": "Dense", "units": 4}, {"type": "Dense", "units": 4},
                                    {"type": "Flatten"}, {"type": "LSTM", "units": 3}]}
    body = assert_problem(client.post("/v1/specs", json=spec), 422, "/layers/3")
    assert "layers/3 (LSTM) expects input rank = 3 (batch included), got (None, 4)" in str(body)
    spec = {**SEED_SPEC, "layers": [{"type": "Reshape", "target_shape": [3]}]}
    body = assert_problem(client.post("/v1/specs", json=spec), 422, "/layers/0")
    assert "total size of the tensor must be unchanged" in body["detail"]
    assert "\x1b" not in body["detail"] and "Arguments received" not in body["detail"]


def test_unknown_optimizer_suggests(client: Any, unchanged: None) -> None:
    spec = {**SEED_SPEC, "compile": {**SEED_SPEC["compile"], "optimizer": "adamm"}}
    body = assert_problem(client.post("/v1/specs", json=spec), 422)
    assert "adam" in str(body)


@pytest.fixture(scope="module")
def fit_refs(client: Any) -> dict[str, str]:
    x, y = two_classes(n=20)
    ds = upload(client, "refs", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    return {"spec_id": spec["id"], "dataset_id": ds["id"]}


def _bad_jobs(refs: dict[str, str]) -> list[tuple[dict[str, Any], int, str]]:
    fit = {"type": "fit", **refs}
    return [
        ({**fit, "spec_id": "spec_missing"}, 422, "/spec_id"),
        ({**fit, "dataset_id": "ds_missing"}, 422, "/dataset_id"),
        ({**fit, "x": "nope"}, 422, "/x"),
        ({**fit, "y": ["x", "nope"]}, 422, "/y/1"),
        ({**fit, "epochs": 0}, 422, "/epochs"),
        ({**fit, "x": "y"}, 422, "/x"),  # rows of shape [1] for an input of shape [2]
        ({**fit, "x": {"a": "x"}}, 422, "/x"),
        ({**fit, "batch_size": -1}, 422, "/batch_size"),
        ({**fit, "validation_split": 1.5}, 422, "/validation_split"),
        ({**fit, "validation_split": 0.2, "validation_dataset_id": refs["dataset_id"]}, 422,
         "/validation_dataset_id"),
        ({**fit, "validation_split": 0.2, "validation_split_shuffled": 0.2}, 422,
         "/validation_split_shuffled"),
        ({**fit, "validation_split_shuffled": 0}, 422, "/validation_split_shuffled"),
        ({**fit, "model_name": "bad name/with slash"}, 422, "/model_name"),
        ({**fit, "learning_rate": 3}, 422, "/learning_rate"),
        ({"type": "train", **refs}, 422, "/type"),
        ({"type": "evaluate", "model": "missing-model", "dataset_id": refs["dataset_id"]}, 422,
         "/model"),
    ]


def test_bad_jobs(client: Any, fit_refs: dict[str, str], service_env: dict[str, str]) -> None:
    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    before_rows, before_files = table_counts(), stored_files(root)
    for body, status, pointer in _bad_jobs(fit_refs):
        r = client.post("/v1/jobs", json=body)
        problem = assert_problem(r, status)
        pointers = [e["pointer"] for e in problem.get("errors", [])]
        assert any(p.startswith(pointer) for p in pointers), (body, problem)
    assert table_counts() == before_rows
    assert stored_files(root) == before_files


def test_not_found_and_cancel_unknown(client: Any) -> None:
    for path in ("/v1/specs/spec_nope", "/v1/datasets/ds_nope", "/v1/jobs/job_nope",
                 "/v1/models/nope"):
        assert_problem(client.get(path), 404)
    assert_problem(client.post("/v1/jobs/job_nope:cancel"), 404)


def test_health(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    deadline = time.monotonic() + 60  # TensorFlow is imported in the background at start-up
    while (r := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        assert r.json()["checks"]["serving"] == "starting"
        time.sleep(0.2)
    ready = r.json()
    assert ready["checks"] == {"database": "ok", "broker": "ok", "artifact_store": "ok",
                               "serving": "ok"}
    assert isinstance(ready["loaded_model_count"], int)
    assert client.get("/docs").status_code == 200
