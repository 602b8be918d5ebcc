"""Strict types for Keras arguments: a bool, a string or a float where a constructor takes an
int (or a number) is a 422 at the value, not the 1, 8 or 2 Keras would make of it."""

from __future__ import annotations

import json
from typing import Any

import keras
import pytest

from app.core.errors import DomainError
from app.specs.builder import build_compiled, build_model, check_keras_config

INPUT_4 = [{"name": "x", "shape": [4]}]
COMPILE = {"optimizer": "sgd", "loss": "mse"}


def _spec(*layers: dict[str, Any], shape: list[int] | None = None,
          compile_block: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"inputs": [{"name": "x", "shape": shape or [4]}],
                            "layers": list(layers)}
    if compile_block is not None:
        spec["compile"] = compile_block
    return spec


REFUSED = [
    ("units-true", _spec({"type": "Dense", "units": True}), "/layers/0/units"),
    ("units-false", _spec({"type": "Dense", "units": False}), "/layers/0/units"),
    ("units-string", _spec({"type": "Dense", "units": "8"}), "/layers/0/units"),
    ("units-float", _spec({"type": "Dense", "units": 2.0}), "/layers/0/units"),
    ("kernel-size-entry-true", _spec({"type": "Conv1D", "filters": 2, "kernel_size": [True]},
                                     shape=[8, 1]), "/layers/0/kernel_size/0"),
    ("strides-string", _spec({"type": "Conv1D", "filters": 2, "kernel_size": 2,
                              "strides": "1"}, shape=[8, 1]), "/layers/0/strides"),
    ("pool-size-float", _spec({"type": "MaxPooling1D", "pool_size": 2.5}, shape=[8, 1]),
     "/layers/0/pool_size"),
    ("rate-true", _spec({"type": "Dropout", "rate": True}), "/layers/0/rate"),
    ("rate-string", _spec({"type": "Dropout", "rate": "0.5"}), "/layers/0/rate"),
    ("seed-float", _spec({"type": "Dropout", "rate": 0.5, "seed": 1.5}), "/layers/0/seed"),
    ("int-default-true", _spec({"type": "RepeatVector", "n": 2},
                               {"type": "Softmax", "axis": True}), "/layers/1/axis"),
    ("float-default-string", _spec({"type": "LeakyReLU", "negative_slope": "0.2"}),
     "/layers/0/negative_slope"),
    ("nested-regularizer-true", _spec({"type": "Dense", "units": 1, "kernel_regularizer": {
        "class_name": "L2", "config": {"l2": True}}}), "/layers/0/kernel_regularizer/config/l2"),
    ("nested-initializer-seed-string", _spec({"type": "Dense", "units": 1,
                                              "kernel_initializer": {
                                                  "class_name": "GlorotUniform",
                                                  "config": {"seed": "7"}}}),
     "/layers/0/kernel_initializer/config/seed"),
    ("optimizer-learning-rate-true", _spec({"type": "Dense", "units": 1}, compile_block={
        "optimizer": {"class_name": "SGD", "config": {"learning_rate": True}}, "loss": "mse"}),
     "/compile/optimizer/config/learning_rate"),
]


@pytest.mark.parametrize(("spec", "pointer"), [c[1:] for c in REFUSED],
                         ids=[c[0] for c in REFUSED])
def test_a_wrong_type_is_a_422_at_the_value(spec: dict[str, Any], pointer: str) -> None:
    with pytest.raises(DomainError) as info:
        build_compiled(spec) if "compile" in spec else build_model(spec)
    assert info.value.status == 422
    assert [e.pointer for e in info.value.errors] == [pointer], info.value


def test_what_keras_takes_passes() -> None:
    """Ints where numbers go, bools where the default is a bool (LayerNormalization's
    `scale`), strings where it is a string (Conv's `padding`), lists of ints, null."""
    model = build_compiled(_spec(
        {"type": "Reshape", "target_shape": [4, 1]},
        {"type": "Conv1D", "filters": 2, "kernel_size": [2], "strides": 1, "padding": "same",
         "dilation_rate": [1]},
        {"type": "LayerNormalization", "scale": True, "center": False, "epsilon": 1},
        {"type": "MaxPooling1D", "pool_size": 2, "strides": None},
        {"type": "Flatten"},
        {"type": "Dropout", "rate": 0, "seed": 3},
        {"type": "LeakyReLU", "negative_slope": 1},
        {"type": "Dense", "units": 1, "kernel_regularizer": {"class_name": "L2",
                                                             "config": {"l2": 1}}},
        compile_block={"optimizer": {"class_name": "SGD", "config": {"learning_rate": 0.1}},
                       "loss": "mse"}))
    assert model.count_params() > 0


def test_an_imported_config_is_held_to_the_same_types() -> None:
    """What Keras writes passes; the same config edited to `"units": true` does not."""
    model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(3),
                              keras.layers.Dropout(0.5, seed=1),
                              keras.layers.LayerNormalization()])
    config = json.loads(model.to_json())
    check_keras_config(config, "/keras_config")
    config["config"]["layers"][1]["config"]["units"] = True
    with pytest.raises(DomainError) as info:
        check_keras_config(config, "/keras_config")
    assert [e.pointer for e in info.value.errors] == [
        "/keras_config/config/layers/1/config/units"]
