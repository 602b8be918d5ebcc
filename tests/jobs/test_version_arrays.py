"""Jobs on a version trained from a spec: its x checked against the version's inputs, its y
against the spec's outputs, at submit (they used to be accepted and fail, or train on
nonsense, in the worker)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import SEED_SPEC, assert_problem, two_classes, upload, wait_for_job


@pytest.mark.slow
def test_jobs_on_a_trained_version_check_x_and_y(client: Any, worker: Any) -> None:
    x, y = two_classes(n=20)
    ds = upload(client, "version-arrays", x=x, y=y, x3=np.zeros((len(x), 3), "float32"),
                y3=np.zeros((len(x), 3), "float32"))
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    r = client.post("/v1/jobs", json={"type": "fit", "spec_id": spec["id"],
                                      "dataset_id": ds["id"], "model_name": "version-arrays"})
    assert r.status_code == 202, r.text
    assert wait_for_job(client, r.json()["id"])["status"] == "succeeded"
    model = "version-arrays/1"
    for body, pointer in [
        ({"type": "evaluate", "model": model, "y": "y3"}, "/y"),
        ({"type": "evaluate", "model": model, "x": "x3"}, "/x"),
        ({"type": "fit", "from_model": model, "y": "y3"}, "/y"),
        ({"type": "predict", "model": model, "x": ["x", "x3"]}, "/x"),
    ]:
        before = client.get("/v1/jobs", params={"limit": 1}).json()["total"]
        assert_problem(client.post("/v1/jobs", json={**body, "dataset_id": ds["id"]}), 422,
                       pointer)
        assert client.get("/v1/jobs", params={"limit": 1}).json()["total"] == before
