"""What a model's layers output per row is bounded (KJ_MAX_ACTIVATION_BYTES_PER_ROW) wherever a
model comes in, from a weightless build: a spec, an imported config, a `.keras` upload. A
RepeatVector(20_000_000) holds 3 parameters and took 21.8 GB to serve."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

from app.core.config import get_settings
from tests.helpers import assert_problem

COMPILE = {"optimizer": "adam", "loss": "mse"}


def _activation_problem(r: Any, pointer: str, current: int) -> dict[str, Any]:
    body = assert_problem(r, 422, pointer)
    limit = get_settings().max_activation_bytes_per_row
    assert body["type"] == "/problems/spec-limit"
    assert body["limit"] == limit and body["current"] == current
    assert f"{current:,} bytes per row" in body["detail"]
    assert f"(limit {limit:,}, KJ_MAX_ACTIVATION_BYTES_PER_ROW)" in body["detail"]
    assert "(RepeatVector), outputs" in body["detail"]  # the layer to make smaller
    return body


def test_a_spec_whose_layers_output_gigabytes_is_refused(client: Any, unchanged: None) -> None:
    spec = {"name": "bomb", "inputs": [{"name": "x", "shape": [1]}], "compile": COMPILE,
            "layers": [{"type": "RepeatVector", "n": 1_000_000_000}, {"type": "Dense",
                                                                       "units": 1}]}
    tracemalloc.start()
    try:
        r = client.post("/v1/specs", json=spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # input 4 + RepeatVector 4e9 + Dense 4e9 bytes per row, never allocated
    _activation_problem(r, "/layers", 4 + 8_000_000_000)
    assert peak < 64 << 20


def test_an_imported_config_is_held_to_it_too(client: Any, unchanged: None) -> None:
    import keras

    x = keras.Input(shape=(1,), name="x")
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.RepeatVector(10)(x)))
    config = json.loads(model.to_json())
    config["config"]["layers"][1]["config"]["n"] = 20_000_000
    r = client.post("/v1/specs", json={"name": "bomb", "keras_config": config,
                                       "compile": COMPILE})
    _activation_problem(r, "/keras_config", 4 + 160_000_000)


def test_a_keras_upload_whose_layers_output_gigabytes_is_refused(
        client: Any, unchanged: None, tmp_path: Path) -> None:
    """The 14 KB file of the finding: 3 parameters, 160 MB per row."""
    import keras

    model = keras.Sequential([keras.Input(shape=(1,), name="x"),
                              keras.layers.RepeatVector(20_000_000), keras.layers.Dense(1)])
    path = tmp_path / "bomb.keras"
    model.save(path)  # symbolic: nothing of that size is ever made
    assert path.stat().st_size < 64 << 10
    r = client.post("/v1/models/activation-bomb/versions",
                    files={"file": ("m.keras", path.read_bytes())})
    _activation_problem(r, "/file/config.json", 4 + 160_000_000)


def test_ordinary_models_pass(client: Any) -> None:
    spec = {"name": "conv", "inputs": [{"name": "image", "shape": [64, 64, 3]}],
            "compile": COMPILE,
            "layers": [{"type": "Conv2D", "filters": 32, "kernel_size": 3},
                       {"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 1}]}
    assert client.post("/v1/specs", json=spec).status_code == 201
