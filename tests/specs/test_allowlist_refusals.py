"""Specs that must be refused with a 422 and a pointer to the culprit."""

from __future__ import annotations

import copy
import json
from typing import Any

import keras
import pytest

from app.core.errors import DomainError
from app.specs.allowlist import DENIED_LAYERS, allowed_layers
from app.specs.builder import build_compiled, build_model, check_keras_config

BASE: dict[str, Any] = {"inputs": [{"name": "x", "shape": [4]}],
                        "layers": [{"type": "Dense", "units": 2}]}


def _with_layer(layer: dict[str, Any]) -> dict[str, Any]:
    return {**BASE, "layers": [{"type": "Dense", "units": 3}, layer]}


def _refused(spec: Any) -> DomainError:
    with pytest.raises(DomainError) as info:
        build_compiled(spec) if "compile" in spec else build_model(spec)
    assert info.value.status == 422
    return info.value


RANDOM_UNIFORM = {"class_name": "RandomUniform", "config": {"minval": 0, "maxval": 1}}

CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("lambda", _with_layer({"type": "Lambda", "function": "x"}), "/layers/1/type", "code"),
    ("tfsm", _with_layer({"type": "TFSMLayer", "filepath": "/etc"}), "/layers/1/type",
     "SavedModel"),
    ("unknown layer", _with_layer({"type": "Dense2"}), "/layers/1/type", "did you mean"),
    ("module key", _with_layer({"type": "Dense", "units": 1, "kernel_initializer": {
        **RANDOM_UNIFORM, "module": "os"}}), "/layers/1/kernel_initializer/module", "os"),
    ("registered_name outside keras", _with_layer({"type": "Dense", "units": 1,
        "kernel_initializer": {**RANDOM_UNIFORM, "registered_name": "evil>Init"}}),
     "/layers/1/kernel_initializer/registered_name", "built-in"),
    ("lambda activation", _with_layer({"type": "Dense", "units": 1, "activation": {
        "class_name": "__lambda__", "config": {"code": "AAAA"}}}),
     "/layers/1/activation/class_name", "code"),
    ("function outside keras", _with_layer({"type": "Dense", "units": 1, "activation": {
        "class_name": "function", "config": "system", "module": "os"}}),
     "/layers/1/activation/config", "not allowed"),
    ("wrapped lambda", _with_layer({"type": "TimeDistributed", "layer": {
        "class_name": "Lambda", "config": {}}}), "/layers/1/layer/class_name", "code"),
    ("wrong arg type", _with_layer({"type": "Dense", "units": "abc"}), "/layers/1/units",
     "units"),
    ("unknown arg", _with_layer({"type": "Dense", "unitz": 3}), "/layers/1/unitz",
     "did you mean 'units'"),
    ("missing arg", _with_layer({"type": "Dense"}), "/layers/1", "units"),
    ("unknown initializer", _with_layer({"type": "Dense", "units": 1,
        "kernel_initializer": "glorot_unifrom"}), "/layers/1/kernel_initializer",
     "did you mean 'glorot_uniform'"),
    ("file vocabulary", _with_layer({"type": "StringLookup", "vocabulary": "/etc/passwd"}),
     "/layers/1/vocabulary", "file paths"),
    ("shape error", _with_layer({"type": "LSTM", "units": 2}), "/layers/1",
     "expects input rank = 3"),
    ("unknown top-level key", {**BASE, "extra": 1}, "/extra", "unknown key"),
    ("missing inputs", {"layers": BASE["layers"]}, "/inputs", "inputs"),
    ("mixed forms", {**BASE, "keras_config": {}}, "/inputs", "keras_config"),
    ("duplicate names", {**BASE, "layers": [{"type": "Dense", "units": 1, "name": "a"},
                                           {"type": "Dense", "units": 1, "name": "a"}]},
     "/layers/1/name", "duplicate"),
    ("later ref", {**BASE, "layers": [
        {"type": "Dense", "units": 1, "name": "a", "inputs": "b"},
        {"type": "Dense", "units": 1, "name": "b", "inputs": "x"}], "outputs": ["b"]},
     "/layers/0/inputs", "later"),
    ("unknown ref", {**BASE, "layers": [{"type": "Dense", "units": 1, "name": "a",
                                        "inputs": "xx"}], "outputs": ["a"]},
     "/layers/0/inputs", "did you mean 'x'"),
    ("unknown output", {**BASE, "layers": [{"type": "Dense", "units": 1, "name": "a",
                                           "inputs": "x"}], "outputs": ["b"]},
     "/outputs/0", "unknown layer"),
    ("bad call index", {**BASE, "layers": [{"type": "Dense", "units": 1, "name": "a",
                                           "inputs": "x"}], "outputs": ["a:1"]},
     "/outputs/0", "called 1 time"),
]


@pytest.mark.parametrize(("spec", "pointer", "text"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused_with_pointer(spec: dict[str, Any], pointer: str, text: str) -> None:
    err = _refused(spec)
    assert [e.pointer for e in err.errors] == [pointer]
    assert text in err.errors[0].detail


def test_denied_layers_are_not_allowed() -> None:
    assert not set(DENIED_LAYERS) & set(allowed_layers())
    assert "Lambda" not in allowed_layers()


def _lambda_model_config() -> dict[str, Any]:
    inp = keras.Input((2,), name="x")
    out = keras.layers.Lambda(lambda t: t * 2)(keras.layers.Dense(2)(inp))
    return json.loads(keras.Model(inp, out).to_json())


def test_import_form_refuses_lambda_inside() -> None:
    config = _lambda_model_config()
    err = _refused({"keras_config": json.dumps(config)})
    (error,) = err.errors
    assert error.pointer.startswith("/keras_config/config/layers/2")
    assert "code" in error.detail
    with pytest.raises(DomainError):
        check_keras_config(config, "/x")


def test_import_form_refuses_foreign_module() -> None:
    inp = keras.Input((2,), name="x")
    config = json.loads(keras.Model(inp, keras.layers.Dense(1)(inp)).to_json())
    bad = copy.deepcopy(config)
    bad["config"]["layers"][1]["module"] = "keras.src.saving.file_editor"
    err = _refused({"keras_config": bad})
    assert err.errors[0].pointer == "/keras_config/config/layers/1/module"


def test_import_form_round_trips_a_real_config() -> None:
    inp = keras.Input((3,), name="x")
    h = keras.layers.Dense(4, activation="relu", kernel_regularizer="l2")(inp)
    out = keras.layers.Add()([h, keras.layers.Dropout(0.2)(h)])
    original = keras.Model(inp, out)
    original.compile(optimizer="adam", loss="mse")
    model = build_compiled({"keras_config": original.to_json(),
                            "compile": {"optimizer": "adam", "loss": "mse"}})
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Dense", "Dropout", "Add"]
