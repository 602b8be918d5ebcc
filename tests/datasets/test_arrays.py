"""A dataset's arrays read back over HTTP (`GET /v1/datasets/{id}/arrays/{name}`): the stored
`.npy` streamed, or JSON for a small array when Accept asks for it; refusals as problems."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest

from app.datasets import arrays
from tests.helpers import assert_problem, upload


@pytest.fixture(scope="module")
def stored(client: Any) -> dict[str, Any]:
    x = np.arange(12, dtype="float32").reshape(6, 2)
    x[1, 1] = np.nan
    labels = np.array(["a", "bb", "c", "d", "e", "f"])
    ids = np.arange(6, dtype="int64")
    return {"x": x, "labels": labels, "ids": ids,
            "id": upload(client, "read-back", x=x, labels=labels, ids=ids)["id"]}


def test_an_array_comes_back_as_the_stored_npy(client: Any, stored: dict[str, Any]) -> None:
    r = client.get(f"/v1/datasets/{stored['id']}/arrays/x")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npy"
    got = np.load(io.BytesIO(r.content), allow_pickle=False)
    np.testing.assert_array_equal(got, stored["x"])  # NaN where it was
    assert got.dtype == np.float32
    r = client.get(f"/v1/datasets/{stored['id']}/arrays/ids", headers={"Accept": "*/*"})
    assert np.load(io.BytesIO(r.content)).tolist() == list(range(6))


def test_json_when_accept_asks_for_it(client: Any, stored: dict[str, Any]) -> None:
    r = client.get(f"/v1/datasets/{stored['id']}/arrays/x",
                   headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    body = json.loads(r.content)  # NaN as TF Serving writes it
    assert (body["name"], body["shape"], body["dtype"]) == ("x", [6, 2], "float32")
    np.testing.assert_array_equal(np.array(body["data"], dtype="float32"), stored["x"])
    r = client.get(f"/v1/datasets/{stored['id']}/arrays/labels",
                   headers={"Accept": "application/x-npy;q=0.5, application/json"})
    assert r.json()["data"] == stored["labels"].tolist()
    r = client.get(f"/v1/datasets/{stored['id']}/arrays/ids",
                   headers={"Accept": "application/json;q=0.2, application/x-npy"})
    assert r.headers["content-type"] == "application/x-npy"


def test_refusals(client: Any, stored: dict[str, Any],
                  monkeypatch: pytest.MonkeyPatch) -> None:
    body = assert_problem(client.get(f"/v1/datasets/{stored['id']}/arrays/nope"), 404,
                          "/path/array")
    assert "'x'" in body["detail"]
    assert_problem(client.get("/v1/datasets/ds_missing/arrays/x"), 404)
    assert client.get(f"/v1/datasets/{stored['id']}/arrays/..%2Fx").status_code in (404, 422)
    monkeypatch.setattr(arrays, "MAX_JSON_ARRAY_BYTES", 16)
    body = assert_problem(client.get(f"/v1/datasets/{stored['id']}/arrays/x",
                                     headers={"Accept": "application/json"}), 406,
                          "/headers/accept")
    assert "application/x-npy" in body["detail"]
    # Past the JSON limit the npy still comes back.
    assert client.get(f"/v1/datasets/{stored['id']}/arrays/x").status_code == 200


def test_accept_ranking() -> None:
    assert not arrays.wants_json(None)
    assert not arrays.wants_json("*/*")
    assert arrays.wants_json("application/json")
    assert not arrays.wants_json("application/json, application/x-npy")  # a tie: the npy
    assert arrays.wants_json("application/json, */*;q=0.1")
    assert not arrays.wants_json("application/json;q=0")
