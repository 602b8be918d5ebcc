"""A job's failure reason is plain text: Keras writes its messages for a terminal (bold escape
codes around the cause), and they used to be stored, streamed and served as they were."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.helpers import assert_problem, read_events, upload, wait_for_job

# One input of any width, reshaped to 2: accepted at submit (the width cannot be told from the
# input), refused by Keras when the job runs on 3 columns.
RESHAPE_SPEC = {
    "name": "reshape-two",
    "inputs": [{"name": "x", "shape": [None]}],
    "layers": [{"type": "Reshape", "target_shape": [2]}, {"type": "Dense", "units": 1}],
    "compile": {"optimizer": "sgd", "loss": "mse"},
}


@pytest.mark.slow
def test_a_keras_failure_is_recorded_without_escape_codes(client: Any, worker: Any) -> None:
    spec = client.post("/v1/specs", json=RESHAPE_SPEC)
    assert spec.status_code == 201, spec.text
    ds = upload(client, "three-columns", x=np.zeros((8, 3), "float32"),
                y=np.zeros((8, 1), "float32"))
    r = client.post("/v1/jobs", json={"type": "fit", "spec_id": spec.json()["id"],
                                      "dataset_id": ds["id"], "max_attempts": 1})
    assert r.status_code == 202, r.text
    job = wait_for_job(client, r.json()["id"])
    assert job["status"] == "failed", job
    assert "total size of the tensor must be unchanged" in job["error"], job["error"]
    reasons = [job["error"], *(a["reason"] or "" for a in job["attempts"])]
    events = read_events(client, job["id"])
    reasons += [e["data"].get("error") or "" for e in events if e["event"] == "status"]
    for text in reasons:
        assert "\x1b" not in text and "[1m" not in text, repr(text)


def test_problem_details_carry_no_escape_codes(client: Any, unchanged: None) -> None:
    """A detail quoting a Keras message (here the spec's own text, echoed back) is plain."""
    body = {**RESHAPE_SPEC, "layers": [{"type": "Dense\x1b[1m", "units": 1}]}
    problem = assert_problem(client.post("/v1/specs", json=body), 422, "/layers/0/type")
    text = problem["detail"] + " ".join(e["detail"] for e in problem["errors"])
    assert "\x1b" not in text and "Dense" in text, problem
