"""What a model's layers output per row is bounded (one layer: KJ_MAX_LAYER_OUTPUT_BYTES_PER_ROW,
all: KJ_MAX_ACTIVATION_BYTES_PER_ROW) wherever a model comes in, from a weightless build: a
spec, an imported config, a `.keras` upload. A RepeatVector(20_000_000) holds 3 parameters and
took 21.8 GB to serve."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

from app.core.config import get_settings
from tests.helpers import assert_problem

COMPILE = {"optimizer": "adam", "loss": "mse"}


def _activation_problem(r: Any, pointer: str, current: int,
                        setting: str = "KJ_MAX_LAYER_OUTPUT_BYTES_PER_ROW") -> dict[str, Any]:
    body = assert_problem(r, 422, pointer)
    settings = get_settings()
    limit = (settings.max_layer_output_bytes_per_row if "LAYER" in setting
             else settings.max_activation_bytes_per_row)
    assert body["type"] == "/problems/spec-limit"
    assert body["limit"] == limit and body["current"] == current
    assert f"{current:,} bytes per row" in body["detail"]
    assert f"(limit {limit:,}, {setting})" in body["detail"]
    assert "(RepeatVector)" in body["detail"]  # the layer to make smaller
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
    # RepeatVector's 4e9 bytes per row (and Dense's), never allocated
    _activation_problem(r, "/layers", 4_000_000_000)
    assert peak < 64 << 20


def test_an_imported_config_is_held_to_it_too(client: Any, unchanged: None) -> None:
    import keras

    x = keras.Input(shape=(1,), name="x")
    model = keras.Model(x, keras.layers.Dense(1)(keras.layers.RepeatVector(10)(x)))
    config = json.loads(model.to_json())
    config["config"]["layers"][1]["config"]["n"] = 20_000_000
    r = client.post("/v1/specs", json={"name": "bomb", "keras_config": config,
                                       "compile": COMPILE})
    _activation_problem(r, "/keras_config", 80_000_000)


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
    _activation_problem(r, "/file/config.json", 80_000_000)


def test_many_layers_within_the_layer_limit_add_up(client: Any, unchanged: None) -> None:
    """16 outputs of 40 MB a row: each within 64 MiB, 640 MB together past 512 MiB."""
    layers = [{"type": "RepeatVector", "n": 10_000_000}] + [
        {"type": "Dense", "units": 1} for _ in range(15)]
    r = client.post("/v1/specs", json={"name": "wide", "inputs": [{"name": "x", "shape": [1]}],
                                       "compile": COMPILE, "layers": layers})
    _activation_problem(r, "/layers", 4 + 16 * 40_000_000, "KJ_MAX_ACTIVATION_BYTES_PER_ROW")


def test_ordinary_models_pass(client: Any) -> None:
    spec = {"name": "conv", "inputs": [{"name": "image", "shape": [64, 64, 3]}],
            "compile": COMPILE,
            "layers": [{"type": "Conv2D", "filters": 32, "kernel_size": 3},
                       {"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 1}]}
    assert client.post("/v1/specs", json=spec).status_code == 201
    import keras

    from app.specs.activations import activations, over_limit
    from app.specs.limits import weightless

    with weightless():  # ImageNet-sized models fit the defaults
        for build in (keras.applications.ResNet50, keras.applications.MobileNetV2):
            found = activations(build(weights=None))
            assert 64 << 20 < found.bytes_per_row < 256 << 20 and over_limit(found) is None
