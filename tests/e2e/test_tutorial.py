"""The tutorial end to end on PostgreSQL + Redis with a real worker process."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import SEED_SPEC, assert_problem, two_classes, upload, wait_for_job
from tests.scenario import run_tutorial

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


@pytest.fixture(scope="module")
def trained(client: Any) -> dict[str, Any]:
    return run_tutorial(client, "seed-linear-pg")


def test_tutorial_scenario(client: Any, trained: dict[str, Any]) -> None:
    fit = trained["fit"]
    assert fit["status"] == "succeeded"  # run_tutorial asserts each step
    # Its model version is in the audit log as the job's doing, like an upload.
    events = client.get("/v1/audit", params={"action": "model_version.create",
                                             "limit": 100}).json()["items"]
    target = f"model/{fit['model_name']}/{fit['model_version']}"
    [made] = [e for e in events if e["target"] == target and e["tenant"] == "local"]
    assert made["actor"] == f"job/{fit['id']}" and made["detail"]["job_id"] == fit["id"]


def test_predict_wrong_shape_names_expected_shape(client: Any, trained: dict[str, Any]) -> None:
    name = trained["fit"]["model_name"]
    body = assert_problem(client.post(f"/v1/models/{name}:predict",
                                      json={"instances": [[1.0, 2.0, 3.0]]}), 400)
    assert "[None, 2]" in body["detail"] and "error" in body
    assert_problem(client.post(f"/v1/models/{name}:predict", json={"rows": []}), 400)
    assert_problem(client.post("/v1/models/nope:predict", json={"instances": [[1, 2]]}), 404)
    assert_problem(client.post(f"/v1/models/{name}:predict", content=b"{not json"), 400)
    assert_problem(client.post(f"/v1/models/{name}:predict", json={"instances": [[1, "a"]]}),
                   400, "/instances")
    # Like TF Serving, a JSON body without a JSON content type is accepted (curl -d sends form).
    r = client.post(f"/v1/models/{name}:predict", content=b'{"instances": [[0, 3]]}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text


def keras_reference(x: np.ndarray, y: np.ndarray, seed: int) -> dict[str, list[float]]:
    """What a user runs in a notebook, following docs/specs-and-jobs.md, 'Reproducing a fit job'."""
    import keras

    n = len(x)
    order = np.random.default_rng(seed).permutation(n)
    split_at = math.ceil(n * (1 - 0.3))
    tr, va = order[:split_at], order[split_at:]
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.RMSprop(learning_rate=0.1),
                  loss="mean_squared_error", metrics=["binary_accuracy"])
    history = model.fit(x[tr], y[tr], epochs=5, batch_size=16, shuffle=True,
                        validation_data=(x[va], y[va]), verbose=0)
    return {k: [float(v) for v in vs] for k, vs in history.history.items()}


def test_fit_history_equals_plain_keras(client: Any) -> None:
    x, y = two_classes(seed=5)
    dataset = upload(client, "determinism", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    r = client.post("/v1/jobs", json={
        "type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 5,
        "batch_size": 16, "validation_split_shuffled": 0.3, "seed": 1234,
        "model_name": "determinism"})
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "succeeded", job
    expected = keras_reference(x, y, 1234)
    assert set(job["history"]) == set(expected)
    for key, values in expected.items():
        np.testing.assert_allclose(job["history"][key], values, atol=1e-5, rtol=0, err_msg=key)
    assert job["result"]["seed"] == 1234


def test_cancel_running_fit_then_worker_takes_next_job(client: Any) -> None:
    x, y = two_classes(seed=3)
    dataset = upload(client, "cancel", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    long_job = client.post("/v1/jobs", json={
        "type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 10_000,
        "batch_size": 8, "model_name": "cancelled"}).json()
    running = wait_for_job(client, long_job["id"], until=("running",), min_epoch=1, timeout=120)
    r = client.post(f"/v1/jobs/{long_job['id']}:cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"], r.text
    done = wait_for_job(client, long_job["id"], timeout=10)
    assert done["status"] == "cancelled", done
    assert running["started_at"] and done["finished_at"] and done["cancel_requested_at"]
    assert done["epoch"] < 10_000
    assert client.get("/v1/models/cancelled").status_code == 404  # no version saved
    assert_problem(client.post(f"/v1/jobs/{long_job['id']}:cancel"), 409)

    nxt = client.post("/v1/jobs", json={
        "type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 1,
        "model_name": "after-cancel"}).json()
    assert wait_for_job(client, nxt["id"], timeout=120)["status"] == "succeeded"


def test_cancel_queued_job_never_starts(client: Any) -> None:
    x, y = two_classes(seed=4, n=50)
    dataset = upload(client, "queued", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    body = {"type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 2000,
            "batch_size": 4, "model_name": "blocker"}
    blocker = client.post("/v1/jobs", json=body).json()  # keeps the single worker busy
    queued = client.post("/v1/jobs", json={**body, "epochs": 1, "model_name": "never"}).json()
    r = client.post(f"/v1/jobs/{queued['id']}:cancel")
    assert r.json()["status"] == "cancelled", r.text
    client.post(f"/v1/jobs/{blocker['id']}:cancel")
    assert wait_for_job(client, blocker["id"], timeout=60)["status"] == "cancelled"
    follow = client.post("/v1/jobs", json={**body, "epochs": 1, "model_name": "follow"}).json()
    assert wait_for_job(client, follow["id"], timeout=120)["status"] == "succeeded"
    job = client.get(f"/v1/jobs/{queued['id']}").json()
    assert job["status"] == "cancelled" and job["started_at"] is None and job["epoch"] == 0


def test_jobs_list_newest_first_filter_and_paginate(client: Any, trained: dict[str, Any]) -> None:
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert page["limit"] == 2 and len(page["items"]) <= 2 and page["total"] >= len(page["items"])
    everything = client.get("/v1/jobs", params={"limit": 500}).json()["items"]
    created = [j["created_at"] for j in everything]
    assert created == sorted(created, reverse=True)
    succeeded = client.get("/v1/jobs", params={"status": "succeeded", "limit": 500}).json()
    assert succeeded["items"] and all(j["status"] == "succeeded" for j in succeeded["items"])
    second = client.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()["items"]
    assert second[0]["id"] == everything[1]["id"]
    assert_problem(client.get("/v1/jobs", params={"status": "bogus"}), 422, "/query/status")


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_pool_children_are_forked_with_tensorflow_loaded(worker: Any) -> None:
    """The worker's parent imports TensorFlow before its pool forks (worker_init): every pool
    child, one per job, has it from its first instant instead of importing it per job."""
    import subprocess
    import time

    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(worker.pid)],
                             capture_output=True, text=True, check=False).stdout.split()
        children = [int(p) for p in out]
        if children and all("libtensorflow" in _maps(c) for c in children):
            break
        assert time.monotonic() < deadline, "no worker child with TensorFlow loaded"
        time.sleep(0.5)
    assert "libtensorflow" in _maps(worker.pid)
