"""Per-request limits on specs and `.keras` configs (app/specs/limits.py): layers and parameters
(422, counted before any weight is allocated), size (413) and string length (422); and checking
a spec is linear in its layers and runs beside other checks, not behind them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.core.config import get_settings
from app.specs.builder import build_model
from app.specs.limits import MAX_STRING_CHARS, weightless
from tests.helpers import assert_problem, edited_keras_file

COMPILE = {"optimizer": "adam", "loss": "mse"}
INPUTS = [{"name": "x", "shape": [4]}]


def _spec(layers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "limits", "inputs": INPUTS, "layers": layers, "compile": COMPILE, **extra}


def _limit_problem(r: Any, pointer: str) -> dict[str, Any]:
    body = assert_problem(r, 422, pointer)
    assert body["type"] == "/problems/spec-limit"
    assert f"(limit {body['limit']:,}" in body["detail"]
    assert f"{body['current']:,}" in body["detail"]
    return body


def test_too_many_layers_is_refused_before_building(client: Any, unchanged: None) -> None:
    limit = get_settings().max_spec_layers
    body = _limit_problem(client.post("/v1/specs", json=_spec(
        [{"type": "Dense", "units": 1}] * (limit + 1))), "/layers")
    assert body["limit"] == limit and body["current"] == limit + 1
    assert f"{limit + 1:,} layers" in body["detail"]


def test_wrapped_layers_count(client: Any, unchanged: None) -> None:
    """A Bidirectional(LSTM) is two layers to Keras, and to the limit."""
    limit = get_settings().max_spec_layers
    layers = [{"type": "Dense", "units": 2} for _ in range(limit - 1)]
    layers.append({"type": "Bidirectional", "layer": {"class_name": "LSTM",
                                                       "config": {"units": 2}}})
    body = _limit_problem(client.post("/v1/specs", json=_spec(layers)), "/layers")
    assert body["current"] == limit + 1


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_weightless_build_allocates_no_weights() -> None:
    """A Dense of 5e8 parameters (2 GB of float32) built weightless: counted, not allocated."""
    spec = {"inputs": INPUTS, "layers": [{"type": "Dense", "units": 100_000_000}]}
    before = _rss_bytes()
    with weightless():
        model = build_model(spec)
    assert model.count_params() == 500_000_000
    assert _rss_bytes() - before < 256 << 20
    assert json.loads(model.to_json())["config"]["layers"][1]["config"]["units"] == 100_000_000


def test_too_many_parameters(client: Any, unchanged: None) -> None:
    limit = get_settings().max_spec_params
    body = _limit_problem(client.post("/v1/specs", json=_spec(
        [{"type": "Dense", "units": 8}, {"type": "Dense", "units": 100_000_000,
                                         "name": "huge"}])), "/layers")
    assert body["limit"] == limit and body["current"] == 4 * 8 + 8 + 9 * 100_000_000
    assert "'huge' (Dense)" in body["detail"]


def test_imported_config_over_the_limits(client: Any, unchanged: None) -> None:
    import keras

    x = keras.Input(shape=(4,), name="x")
    config = json.loads(keras.Model(x, keras.layers.Dense(1)(x)).to_json())
    config["config"]["layers"][1]["config"]["units"] = 100_000_000
    _limit_problem(client.post("/v1/specs", json={"name": "big", "keras_config": config,
                                                  "compile": COMPILE}), "/keras_config")
    limit = get_settings().max_spec_layers
    dense = {"class_name": "Dense", "config": {"units": 1}}
    config["config"]["layers"] += [dense] * limit  # counted on the JSON, never built
    body = _limit_problem(client.post("/v1/specs", json={
        "name": "many", "keras_config": json.dumps(config), "compile": COMPILE}),
        "/keras_config")
    assert body["current"] == limit + 1


def test_long_strings(client: Any, unchanged: None) -> None:
    long = "x" * (MAX_STRING_CHARS + 1)
    body = _limit_problem(client.post("/v1/specs", json=_spec(
        [{"type": "Dense", "units": 1}], description=long)), "/description")
    assert body["current"] == MAX_STRING_CHARS + 1
    _limit_problem(client.post("/v1/specs", json=_spec(
        [{"type": "StringLookup", "vocabulary": ["a", long]}])), "/layers/0/vocabulary/1")


def test_keras_config_text_may_be_long(client: Any) -> None:
    """A to_json() text is one long string; its content is held to the rules instead."""
    import keras

    model = keras.Sequential([keras.Input(shape=(4,), name="x")]
                             + [keras.layers.Dense(2) for _ in range(30)])
    text = model.to_json()
    assert len(text) > MAX_STRING_CHARS
    r = client.post("/v1/specs", json={"name": "long-text", "keras_config": text,
                                       "compile": COMPILE})
    assert r.status_code == 201, r.text
    config = json.loads(text)
    config["config"]["name"] = "n" * (MAX_STRING_CHARS + 1)
    _limit_problem(client.post("/v1/specs", json={"name": "long-name",
                                                  "keras_config": json.dumps(config),
                                                  "compile": COMPILE}),
                   "/keras_config/config/name")


def test_spec_too_large(client: Any, unchanged: None) -> None:
    limit = get_settings().max_spec_bytes
    vocabulary = [f"token{i:07d}" for i in range(limit // 10)]
    r = client.post("/v1/specs", json=_spec(
        [{"type": "StringLookup", "vocabulary": vocabulary}]))
    body = assert_problem(r, 413, "")
    assert body["type"] == "/problems/too-large"
    assert body["limit"] == limit and body["current"] > limit
    assert f"(limit {limit:,}" in body["detail"]


# --- `.keras` uploads get the same limits, from config.json, before Keras loads weights -----

def _keras_file(tmp_path: Path, edit: Any) -> bytes:
    import keras

    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2)])
    return edited_keras_file(model, tmp_path, edit)


def _huge_dense(config: dict[str, Any]) -> None:
    config["config"]["layers"][1]["config"]["units"] = 100_000_000


def _many_layers(config: dict[str, Any]) -> None:
    dense = {"class_name": "Dense", "config": {"units": 1}}
    config["config"]["layers"] += [dense] * get_settings().max_spec_layers


@pytest.mark.parametrize("edit", [_huge_dense, _many_layers], ids=["params", "layers"])
def test_keras_upload_over_the_limits(client: Any, unchanged: None, tmp_path: Path,
                                      edit: Any) -> None:
    r = client.post("/v1/models/over-limit/versions",
                    files={"file": ("m.keras", _keras_file(tmp_path, edit))})
    # A spec-limit problem, not Keras's complaint about weights that do not fit the config:
    # the config is refused before the weights are read.
    _limit_problem(r, "/file/config.json")


# --- time: linear in the layers, and no spec waits behind another ---------------------------

def _wide_attention_spec(branches: int, depth: int) -> dict[str, Any]:
    """`branches` chains of `depth` self-attention layers from the input, concatenated: one of
    the slower layers to check (it builds four projections of its own)."""
    layers: list[dict[str, Any]] = []
    for b in range(branches):
        for d in range(depth):
            previous = "x" if d == 0 else f"b{b}_{d - 1}"
            layers.append({"type": "MultiHeadAttention", "num_heads": 2, "key_dim": 4,
                           "name": f"b{b}_{d}", "inputs": [previous, previous]})
    layers.append({"type": "Concatenate", "name": "joined",
                   "inputs": [f"b{b}_{depth - 1}" for b in range(branches)]})
    return {"name": "attention", "inputs": [{"name": "x", "shape": [3, 4]}], "layers": layers,
            "outputs": ["joined"], "compile": COMPILE}


def _small_spec(client: Any, tmp_path: Path) -> Callable[[], Any]:
    body = _spec([{"type": "Dense", "units": 1}])
    return lambda: client.post("/v1/specs", json=body)


def _small_upload(client: Any, tmp_path: Path) -> Callable[[], Any]:
    payload = _keras_file(tmp_path, lambda config: None)
    return lambda: client.post("/v1/models/beside-a-large-spec/versions",
                               files={"file": ("m.keras", payload)})


@pytest.mark.parametrize("small_request", [_small_spec, _small_upload], ids=["spec", "upload"])
def test_a_large_spec_does_not_hold_up_a_small_request(client: Any, tmp_path: Path,
                                                       small_request: Any) -> None:
    """A 1-layer spec or a `.keras` upload sent while a 451-layer spec is being checked is
    answered in a fraction of the large one's time: it does not wait for it (both share the
    interpreter only)."""
    send_small = small_request(client, tmp_path)
    big: dict[str, Any] = {}

    def post_big() -> None:
        started = time.monotonic()
        big["response"] = client.post("/v1/specs", json=_wide_attention_spec(30, 15))
        big["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=post_big)
    thread.start()
    time.sleep(0.5)  # the large one is being checked now
    started = time.monotonic()
    small = send_small()
    small_seconds = time.monotonic() - started
    thread.join()
    assert small.status_code == 201, small.text
    assert big["response"].status_code == 201, big["response"].text
    # Query, key and value projections of 4x2x4 (+2x4 bias), output 2x4x4 (+4): 156 a layer.
    assert big["response"].json()["total_params"] == 30 * 15 * 156
    assert small_seconds < big["seconds"] / 2, (small_seconds, big["seconds"])


def test_checking_is_linear_in_the_layers() -> None:
    """A sequential spec of 400 layers used to take a minute (every added layer rebuilt the
    stack built so far); now it costs about 400 times one layer, well under 30 s."""
    spec = {"inputs": INPUTS, "layers": [{"type": "Dense", "units": 2}] * 400}
    started = time.monotonic()
    with weightless():
        model = build_model(spec)
    assert len(model.layers) == 400
    assert time.monotonic() - started < 30
    # Each layer was called once (rebuilding the stack per add left a node per rebuild).
    assert {len(layer._inbound_nodes) for layer in model.layers} == {1}
