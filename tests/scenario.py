"""The tutorial, as a user runs it over HTTP: shared by the PostgreSQL/Redis and embedded tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.helpers import SEED_SPEC, two_classes, upload, wait_for_job

METRICS = {"loss", "binary_accuracy", "val_loss", "val_binary_accuracy"}


def run_tutorial(http: Any, model_name: str, seed: int = 1) -> dict[str, Any]:
    x, y = two_classes()
    dataset = upload(http, "two-classes", x=x, y=y)
    assert dataset["num_rows"] == 2000
    assert dataset["arrays"] == {"x": {"shape": [2000, 2], "dtype": "float32"},
                                 "y": {"shape": [2000, 1], "dtype": "float32"}}

    r = http.post("/v1/specs", json=SEED_SPEC)
    assert r.status_code == 201, r.text
    spec = r.json()
    assert spec["total_params"] == 3

    r = http.post("/v1/jobs", json={
        "type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "x": "x", "y": "y",
        "epochs": 5, "batch_size": 16, "validation_split_shuffled": 0.3, "shuffle": True,
        "seed": seed,
        "model_name": model_name})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    fit = wait_for_job(http, r.json()["id"])
    assert fit["status"] == "succeeded", fit
    history = fit["history"]
    assert set(history) == METRICS
    assert all(len(v) == 5 for v in history.values())
    assert history["val_binary_accuracy"][-1] >= 0.95
    assert fit["epoch"] == 5 and fit["epochs"] == 5
    assert fit["started_at"] and fit["finished_at"] and fit["created_at"]
    assert fit["model_name"] == model_name and fit["model_version"] >= 1

    model = http.get(f"/v1/models/{model_name}").json()
    assert model["latest_version"] == fit["model_version"]
    assert model["versions"][0]["job_id"] == fit["id"]

    r = http.post("/v1/jobs", json={"type": "evaluate", "model": model_name,
                                    "dataset_id": dataset["id"], "batch_size": 128})
    assert r.status_code == 202, r.text
    ev = wait_for_job(http, r.json()["id"])
    assert ev["status"] == "succeeded", ev
    assert set(ev["result"]) == {"loss", "binary_accuracy"}
    assert ev["result"]["binary_accuracy"] >= 0.95

    rng = np.random.default_rng(99)
    cov = [[1, 0.5], [0.5, 1]]
    neg = rng.multivariate_normal([0, 3], cov, size=20).tolist()
    pos = rng.multivariate_normal([3, 0], cov, size=20).tolist()
    r = http.post(f"/v1/models/{model_name}:predict", json={"instances": [[0, 3], [3, 0]]})
    assert r.status_code == 200, r.text
    preds = np.array(r.json()["predictions"])
    assert preds.shape == (2, 1) and preds[0, 0] < 0.5 < preds[1, 0]
    version = fit["model_version"]
    r = http.post(f"/v1/models/{model_name}/versions/{version}:predict",
                  json={"inputs": neg + pos})
    assert r.status_code == 200, r.text
    outs = np.array(r.json()["outputs"])[:, 0]
    assert np.median(outs[:20]) < 0.5 < np.median(outs[20:])
    assert (outs[:20] < 0.5).mean() >= 0.9 and (outs[20:] > 0.5).mean() >= 0.9
    return {"dataset": dataset, "spec": spec, "fit": fit, "evaluate": ev}
