"""One request must not take the whole server: predict rows are counted on the body's bytes
before anything is parsed (JSON rows and columns, .npy headers, OIP shapes); a served
version's batches are capped by what its layers output per row; a stored version past the
activation limit is never traced; and every JSON route but predict, infer and the uploads
goes through the JSON size and depth checks (a label named `infer` included)."""

from __future__ import annotations

import io
import secrets
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.config import get_settings
from tests.helpers import assert_problem

ROWS = 200_000  # past KJ_MAX_PREDICT_ROWS (65,536)
# Parsing ROWS one-value rows builds ~ROWS lists and floats (tens of MB); counting them on
# the bytes takes a few MB of NumPy scratch.
PARSE_FREE_BYTES = 12 << 20


def _save(model: Any, folder: Path) -> bytes:
    path = folder / f"{secrets.token_hex(4)}.keras"
    model.save(path)
    return path.read_bytes()


def _publish(client: Any, name: str, payload: bytes) -> int:
    r = client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", payload)})
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


@pytest.fixture(scope="module")
def served(client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two uploaded models: 'fixed' takes rows of 1 value, 'ragged' sequences of any length."""
    import keras

    folder = tmp_path_factory.mktemp("bounds")
    suffix = secrets.token_hex(3)
    fixed = keras.Sequential([keras.Input(shape=(1,), name="x"), keras.layers.Dense(1)])
    ragged = keras.Sequential([keras.Input(shape=(None, 1), name="x"),
                               keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    names = {"fixed": f"bounds-fixed-{suffix}", "ragged": f"bounds-ragged-{suffix}"}
    _publish(client, names["fixed"], _save(fixed, folder))
    _publish(client, names["ragged"], _save(ragged, folder))
    for name in names.values():  # loaded and warmed: the requests below measure only parsing
        assert client.post(f"/v1/models/{name}:predict",
                           json={"instances": [[[0.0]]] if "ragged" in name else [[0.0]]}
                           ).status_code == 200
    return names


def _peak_bytes(call: Callable[[], Any]) -> tuple[Any, int]:
    """What `call` returns, and the most Python (and NumPy) memory it held at once."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        result = call()
        return result, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def _too_many(r: Any, rows: int) -> dict[str, Any]:
    body = assert_problem(r, 413)
    assert body["type"] == "/problems/too-large"
    assert body["current"] >= min(rows, body["limit"] + 1) and body["limit"] < rows
    return body


@pytest.mark.parametrize("kind", ["fixed", "ragged"])
def test_json_rows_are_counted_before_the_body_is_parsed(
        client: Any, served: dict[str, str], kind: str) -> None:
    row = b"[[1.5]]" if kind == "ragged" else b"[1.5]"
    body = b'{"instances": [' + b",".join([row] * ROWS) + b"]}"
    r, peak = _peak_bytes(lambda: client.post(
        f"/v1/models/{served[kind]}:predict", content=body,
        headers={"content-type": "application/json"}))
    problem = _too_many(r, ROWS)
    assert peak < len(body) + PARSE_FREE_BYTES, peak
    if kind == "ragged":  # the rows themselves, counted from the brackets
        assert problem["title"] == "Too many rows" and problem["limit"] <= 65_536
        assert f"{problem['limit']:,}" in problem["detail"]


def test_column_format_rows_are_counted_too(client: Any, served: dict[str, str]) -> None:
    body = b'{"inputs": {"x": [' + b",".join([b"[[0.5]]"] * ROWS) + b"]}}"
    r, peak = _peak_bytes(lambda: client.post(
        f"/v1/models/{served['ragged']}:predict", content=body,
        headers={"content-type": "application/json"}))
    assert _too_many(r, ROWS)["current"] > 16_384
    assert peak < len(body) + PARSE_FREE_BYTES, peak


def test_npy_rows_are_read_from_the_header(client: Any, served: dict[str, str]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((ROWS, 1), np.float32))
    r = client.post(f"/v1/models/{served['fixed']}:predict", content=buffer.getvalue(),
                    headers={"content-type": "application/x-npy"})
    assert _too_many(r, ROWS)["current"] == ROWS


def test_infer_shapes_are_checked_before_the_data_is_parsed(
        client: Any, served: dict[str, str]) -> None:
    data = b",".join([b"0.5"] * ROWS)
    body = (b'{"inputs": [{"name": "x", "shape": [%d, 1], "datatype": "FP32", "data": [%s]}]}'
            % (ROWS, data))
    r, peak = _peak_bytes(lambda: client.post(
        f"/v2/models/{served['fixed']}/infer", content=body,
        headers={"content-type": "application/json"}))
    assert _too_many(r, ROWS)["current"] >= ROWS  # its values, as they arrive
    assert peak < len(body) + PARSE_FREE_BYTES, peak
    # A binary request declares its rows in its shape, read before any data.
    header = b'{"inputs": [{"name": "x", "shape": [%d, 1], "datatype": "FP32", ' \
             b'"parameters": {"binary_data_size": %d}}]}' % (ROWS, ROWS * 4)
    r = client.post(f"/v2/models/{served['fixed']}/infer",
                    content=header + np.zeros(ROWS, "<f4").tobytes(),
                    headers={"content-type": "application/octet-stream",
                             "inference-header-content-length": str(len(header))})
    assert _too_many(r, ROWS)["current"] == ROWS
    # A small declared shape does not let a large body of values through either.
    lying = body.replace(b"[%d, 1]" % ROWS, b"[1, 1]")
    r, peak = _peak_bytes(lambda: client.post(
        f"/v2/models/{served['fixed']}/infer", content=lying,
        headers={"content-type": "application/json"}))
    assert_problem(r, 413)
    assert peak < len(body) + PARSE_FREE_BYTES, peak


def test_rows_within_the_limit_still_predict(client: Any, served: dict[str, str]) -> None:
    rows = 16_000  # more commas than the row limit, few enough rows: scanned, let through
    r = client.post(f"/v1/models/{served['ragged']}:predict",
                    json={"instances": [[[0.5], [1.5]]] * rows})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == rows


def test_json_rows_scan() -> None:
    from app.predict.rows import json_rows

    cases = {
        b'{"instances": [[1.0], [2.0], [3.0]]}': 3,
        b'{"instances": [1, 2, 3, 4]}': 4,
        b'{"inputs": {"a": [[1], [2]], "b": [[1], [2], [3]]}}': 3,
        b'{"instances": [{"a": [1, 2, 3, 4, 5], "b": 2}, {"a": [1, 2, 3, 4, 5], "b": 2}]}': 2,
        b'{"signature_name": "x,[,[,\\"[", "instances": [[1, 2, 3, 4, 5, 6]]}': 1,
        b'{"inputs": [[1, 2, 3, 4, 5, 6]]}': 1,
    }
    for body, rows in cases.items():
        assert json_rows(body, 10**9) == rows, body
    # Strings across the scan's 256 KiB pieces, brackets and commas inside them, escapes.
    row = b'{"a": "x,[]\\"{' + b"," * 300 + b'", "b": [1, 2]}'
    body = b'{"instances": [' + b",".join([row] * 20_000) + b"]}"
    assert json_rows(body, 10**9) == 20_000
    assert json_rows(b'{"instances": ["' + b"[," * (3 << 20) + b'", 1]}', 10**9) == 2


# --- serving: batches within a memory budget ------------------------------------------------

def test_batches_and_warm_up_stay_within_the_version_budget(
        client: Any, tmp_path: Path, settings_env: Callable[..., None]) -> None:
    import keras

    from app.predict.service import get_serving

    model = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1000),
                              keras.layers.Dense(1)])
    per_row = 4 * (2 + 1000 + 1)  # what its input and layers output per row, float32
    name = f"bounds-budget-{secrets.token_hex(3)}"
    version = _publish(client, name, _save(model, tmp_path))
    settings_env(KJ_SERVING_MEMORY_PER_VERSION_BYTES=10 * per_row + 100)
    r = client.post(f"/v1/models/{name}:predict", json={"instances": [[0.0, 1.0]] * 25})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 25  # split into batches of at most 10
    loaded = [m for m in get_serving().cache.loaded() if m.version == version
              and m.name == name][0]
    assert loaded.servable.activations.bytes_per_row == per_row
    policy = loaded.batcher.policy
    assert policy.max_batch_size == 10 and policy.allowed_batch_sizes == (1, 2, 4, 8, 10)
    assert max(loaded.batcher.stats.batch_sizes) <= 10

    # A version stored before the activation limit (or past a lowered one) is never traced.
    settings_env(KJ_MAX_ACTIVATION_BYTES_PER_ROW=per_row - 1)
    r = client.post(f"/v1/models/{name}:predict", json={"instances": [[0.0, 1.0]]})
    body = assert_problem(r, 503)
    assert f"{per_row:,} bytes per row" in body["detail"]
    assert "KJ_MAX_ACTIVATION_BYTES_PER_ROW" in body["detail"]
    r = client.put(f"/v1/models/{name}/labels/prod", json={"version": version})
    assert_problem(r, 422)


def test_within_memory_caps_the_policy() -> None:
    from app.predict.batcher import Batcher, BatchPolicy
    from app.predict.cache import within_memory

    policy = BatchPolicy.build(max_batch_size=64)
    assert within_memory(policy, 1000, 64_000) is policy
    capped = within_memory(policy, 1000, 20_000)
    assert capped.max_batch_size == 20
    assert capped.allowed_batch_sizes == (1, 2, 4, 8, 16, 20)
    assert capped.max_queued_rows == policy.max_queued_rows
    assert within_memory(policy, 10**9, 1000).max_batch_size == 1
    # Warm-up runs exactly the sizes kept.
    sizes: list[int] = []

    def fn(inputs: list[np.ndarray]) -> list[np.ndarray]:
        sizes.append(len(inputs[0]))
        return [inputs[0][:, :1]]

    Batcher(fn, capped).warm_up([np.zeros((1, 2), np.float32)])
    assert sizes == [1, 2, 4, 8, 16, 20]


# --- the JSON checks on every other route ------------------------------------------------------

def test_a_label_named_infer_gets_the_json_checks(client: Any, served: dict[str, str]) -> None:
    name = served["fixed"]
    limit = get_settings().max_json_body_bytes
    big = b'{"version": 1, "pad": "' + b"x" * limit + b'"}'
    for label in ("infer", "versions"):
        r = client.put(f"/v1/models/{name}/labels/{label}", content=big,
                       headers={"content-type": "application/json"})
        body = assert_problem(r, 413)
        assert body["limit"] == limit
        deep = b'{"version": 1, "x": ' + b"[" * 100 + b"]" * 100 + b"}"
        r = client.put(f"/v1/models/{name}/labels/{label}", content=deep,
                       headers={"content-type": "application/json"})
        assert "nested more than" in assert_problem(r, 400)["detail"]


def test_only_the_routes_that_read_their_own_bodies_skip_the_json_checks() -> None:
    """They are found as the router finds them (a label or model named like a protocol verb
    is another route), and say themselves that they read their own bodies."""
    from app.api.json_depth import has_own_body_reader
    from app.main import create_app

    app = create_app()

    def own(method: str, path: str) -> bool:
        return has_own_body_reader({"type": "http", "method": method, "path": path,
                                    "root_path": "", "app": app})

    reads = [("POST", "/v1/models/m:predict"), ("POST", "/v1/models/m/versions/3:predict"),
             ("POST", "/v1/models/m/labels/prod:predict"), ("POST", "/v2/models/m/infer"),
             ("POST", "/v2/models/m/versions/2/infer"), ("POST", "/v1/datasets"),
             ("POST", "/v1/models/m/versions"), ("POST", "/v1/models/m:classify"),
             ("POST", "/v1/models/m/labels/prod:regress")]
    checked = [("PUT", "/v1/models/m/labels/infer"), ("PUT", "/v1/models/m/labels/versions"),
               ("POST", "/v1/models/m:predict\n"), ("POST", "/v2/models/m/infer\n"),
               ("PUT", "/v1/models/m/serving"), ("POST", "/v1/specs"),
               ("POST", "/v1/models/m/labels/infer"), ("PUT", "/v2/models/m/infer"),
               ("POST", "/v1/models/m/versions/1/labels/infer"), ("POST", "/v1/jobs"),
               ("PUT", "/v1/models/m:classify"), ("POST", "/v2/models/m/ready/infer/x")]
    assert all(own(method, path) for method, path in reads)
    assert not any(own(method, path) for method, path in checked)
