"""A property-based run of every operation in the app's own OpenAPI document (schemathesis over
the in-process app): no answer is a 5xx, every status code and content type is one the document
gives for that operation, and every body fits the schema it gives for it. Cases that fit the
schema and cases that do not (schemathesis's positive and negative modes) are both sent.

Bounded and repeatable: at most MAX_EXAMPLES cases per operation (derandomized, so every run
sends the same requests), and the whole run shares BUDGET_S seconds: each operation gets an
equal share of what is left, and stops sending once its share is spent.

Requests go through the session's TestClient, whose event loop serves every other test: a
model's dynamic batcher is bound to the loop that first used it, so a second client (with a
loop of its own) would not do. A saved model (MODEL, with the label LABEL) exists first; the
operations that read a model (GET and POST with a model name in the path) also get cases naming
it, and predict and infer cases with rows it takes, so the model runs and is not only answered
404. Operations that change a model (labels, serving settings, new versions) get generated names
only: a fuzzed batching setting would reload the model for every case.

The operations are the document's, so every route FastAPI documents is run; none is skipped.
The event stream (`GET /v1/jobs/{job_id}/events`) streams until its job ends; with generated
ids it is only ever asked for unknown jobs (404), which is all that is fuzzed of it.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 25
BUDGET_S = 75.0
MODEL = "fuzz-model"
LABEL = "production"
BASE_URL = "http://testserver"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# Path parameters of the saved model, for the operations that read it.
KNOWN = {"name": MODEL, "version": 1, "label": LABEL}


def _schema() -> Any:
    from app.main import create_app

    return schemathesis.openapi.from_dict(create_app().openapi())


SCHEMA = _schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


class Budget:
    """The run's time, shared out among the operations still to run."""

    def __init__(self, total_s: float, operations: int) -> None:
        self.deadline = time.monotonic() + total_s
        self.left = operations

    def share(self) -> float:
        """This operation's deadline: an equal part of the time left."""
        now = time.monotonic()
        share = max(0.0, self.deadline - now) / max(1, self.left)
        self.left -= 1
        return now + share


@pytest.fixture(scope="module")
def budget() -> Budget:
    return Budget(BUDGET_S, len(OPERATIONS))


@pytest.fixture(scope="module")
def model(client: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """MODEL version 1 (a Dense(1) on two inputs), labelled LABEL and loaded."""
    import keras

    path = tmp_path_factory.mktemp("fuzz") / "m.keras"
    keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1)]).save(path)
    r = client.post(f"/v1/models/{MODEL}/versions", files={"file": ("m.keras",
                                                                     path.read_bytes())})
    assert r.status_code == 201, r.text
    r = client.put(f"/v1/models/{MODEL}/labels/{LABEL}", json={"version": 1})
    assert r.status_code == 200, r.text
    # Tests before may have installed states of their own; the session's (whose start
    # preloaded its serving) is current again after each.
    assert client.get("/readyz").status_code == 200, client.get("/readyz").text
    return MODEL


# Rows the saved model takes (two numbers each), as TF Serving rows and as an OIP tensor.
ROWS = st.lists(st.lists(st.floats(-1e6, 1e6) | st.integers(-2**31, 2**31), min_size=2,
                         max_size=2), min_size=1, max_size=8)


def _tf_serving(rows: list[list[float]]) -> dict[str, Any]:
    return {"instances": rows}


def _oip(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [len(rows), 2], "datatype": "FP32",
                        "data": [v for row in rows for v in row]}]}


def _strategy(operation: Any) -> Any:
    """Cases that fit the schema and cases that do not; for an operation that reads a model,
    as many again that name the saved model, and for predict and infer some with rows it
    takes, so the model runs."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE),
                  operation.as_strategy(GenerationMode.NEGATIVE)]
    names = {p.name for p in operation.path_parameters}
    reads = operation.method.upper() in ("GET", "POST") and not operation.path.endswith(
        "/versions")  # not an upload of a new version
    if "name" in names and reads:
        known = {k: v for k, v in KNOWN.items() if k in names}
        strategies.append(operation.as_strategy(GenerationMode.POSITIVE,
                                                path_parameters=known))
        body = (_tf_serving if operation.path.endswith(":predict")
                else _oip if operation.path.endswith("/infer") else None)
        if body is not None:
            strategies.append(ROWS.flatmap(lambda rows: operation.as_strategy(
                GenerationMode.POSITIVE, path_parameters=known, body=body(rows),
                media_type="application/json")))
    return st.one_of(strategies)


def _send(client: Any, case: Any) -> httpx.Response:
    """The case as requests would send it (schemathesis's own serialisation: JSON, multipart,
    binary), through the session's TestClient."""
    prepared = requests.Request(**case.as_transport_kwargs(base_url=BASE_URL)).prepare()
    response: httpx.Response = client.request(prepared.method, prepared.url,
                                              content=prepared.body,
                                              headers=dict(prepared.headers))
    return response


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_operation_answers_as_documented(client: Any, model: str, budget: Budget,
                                         operation: Any) -> None:
    deadline = budget.share()
    seen: dict[tuple[int, str], int] = {}

    @given(case=_strategy(operation))
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        if time.monotonic() > deadline:
            return  # this operation's share of the budget is spent
        response = _send(client, case)
        key = (response.status_code, response.headers.get("content-type", "").split(";")[0])
        seen[key] = seen.get(key, 0) + 1
        case.validate_response(response, checks=CHECKS)

    run()
    print(f"{operation.label}: {sorted(seen.items())}")

