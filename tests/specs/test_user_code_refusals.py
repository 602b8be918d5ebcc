"""Every refusal of user code says what to do instead: Lambda, custom layers, custom losses and
metrics, subclassed models (spec and import forms)."""

from __future__ import annotations

import json
from typing import Any

import keras
import pytest

from app.core.errors import DomainError
from app.specs.builder import build_compiled, build_model

BASE: dict[str, Any] = {"name": "m", "inputs": [{"name": "x", "shape": [4]}],
                        "layers": [{"type": "Dense", "units": 1}],
                        "compile": {"optimizer": "adam", "loss": "mse"}}


def _refusal(spec: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(DomainError) as info:
        build_compiled(spec) if "compile" in spec else build_model(spec)
    assert info.value.status == 422
    (error,) = info.value.errors
    return error.pointer, error.detail


def _import(config: dict[str, Any]) -> dict[str, Any]:
    return {"name": "m", "keras_config": config, "compile": {"optimizer": "adam", "loss": "mse"}}


def _functional_config() -> dict[str, Any]:
    inp = keras.Input((4,), name="x")
    return dict(json.loads(keras.Model(inp, keras.layers.Dense(1)(inp)).to_json()))


def _custom_layer() -> dict[str, Any]:
    config = _functional_config()
    layer = config["config"]["layers"][1]
    layer.update({"class_name": "MyDense", "module": None,
                  "registered_name": "Custom>MyDense"})
    return _import(config)


def _subclassed() -> dict[str, Any]:
    return _import({"class_name": "MyModel", "config": {}, "module": None,
                    "registered_name": "Custom>MyModel"})


CASES = [
    ("lambda layer", {**BASE, "layers": [{"type": "Lambda", "function": "x"}]},
     "/layers/0/type", "built-in layers"),
    ("custom layer in a spec", {**BASE, "layers": [{"type": "MyAttentionBlock"}]},
     "/layers/0/type", "build it from built-in layers"),
    ("custom layer imported", _custom_layer(), "/keras_config/config/layers/1/class_name",
     "build it from built-in layers"),
    ("custom loss", {**BASE, "compile": {"optimizer": "adam", "loss": {
        "class_name": "FocalTverskyLoss", "config": {}}}}, "/compile/loss/class_name",
     "built-in keras.losses"),
    ("custom loss function", {**BASE, "compile": {"optimizer": "adam", "loss": {
        "class_name": "function", "config": "my_loss", "module": "__main__"}}},
     "/compile/loss/config", "use a built-in by name"),
    ("custom metric", {**BASE, "compile": {"optimizer": "adam", "loss": "mse", "metrics": [
        {"class_name": "MyScore", "config": {}}]}}, "/compile/metrics/0/class_name",
     "built-in keras.metrics"),
    ("subclassed model", _subclassed(), "/keras_config/class_name", "functional API"),
]


@pytest.mark.parametrize(("spec", "pointer", "instead"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refusal_says_what_to_do_instead(spec: dict[str, Any], pointer: str,
                                         instead: str) -> None:
    where, detail = _refusal(spec)
    assert where == pointer
    assert instead in detail, detail
