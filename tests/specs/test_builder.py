"""Building specs: determinism, the seven reference architectures, describe()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from app.specs.builder import build_compiled, build_model, describe

SEED_LINEAR: dict[str, Any] = {
    "name": "seed-linear", "inputs": [{"name": "x", "shape": [2]}],
    "layers": [{"type": "Dense", "units": 1, "kernel_initializer": {
        "class_name": "RandomUniform", "config": {"minval": 0, "maxval": 1}}}],
    "compile": {"optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.1}},
                "loss": "mean_squared_error", "metrics": ["binary_accuracy"]},
}


def test_sequential_build_matches_plain_keras_bit_for_bit() -> None:
    spec = {**SEED_LINEAR, "layers": [
        *SEED_LINEAR["layers"], {"type": "Dropout", "rate": 0.5},
        {"type": "Dense", "units": 3, "activation": "relu"}]}
    keras.utils.set_random_seed(7)
    ours = build_model(spec)
    keras.utils.set_random_seed(7)
    plain = keras.Sequential([
        keras.Input(shape=(2,)),
        keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomUniform(0, 1)),
        keras.layers.Dropout(0.5), keras.layers.Dense(3, activation="relu")])
    x = np.random.default_rng(0).normal(size=(8, 2)).astype("float32")
    for a, b in zip(ours.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(8)
    other = build_model(spec)
    assert not np.array_equal(other.get_weights()[0], ours.get_weights()[0])
    np.testing.assert_array_equal(ours.predict(x, verbose=0), plain.predict(x, verbose=0))


def test_describe_seed_linear() -> None:
    info = describe(build_model(SEED_LINEAR))
    assert info["total_params"] == 3
    assert info["trainable_params"] == 3
    assert info["layers"] == [{"name": info["layers"][0]["name"], "class_name": "Dense",
                               "output_shape": [None, 1], "params": 3}]


def _dense(name: str, units: int, inputs: Any = None, **kw: Any) -> dict[str, Any]:
    layer = {"type": "Dense", "name": name, "units": units, **kw}
    if inputs is not None:
        layer["inputs"] = inputs
    return layer


RNG = np.random.default_rng(0)
N = 16

REFERENCE: dict[str, tuple[dict[str, Any], Any, Any]] = {
    "two_branch": ({
        "inputs": [{"name": "a", "shape": [4]}, {"name": "b", "shape": [3]}],
        "layers": [_dense("ta", 5, "a", activation="relu"), _dense("tb", 5, "b"),
                   {"type": "Concatenate", "name": "cat", "inputs": ["ta", "tb"]},
                   _dense("out", 1, "cat", activation="sigmoid")],
        "outputs": ["out"],
        "compile": {"optimizer": "adam", "loss": "binary_crossentropy",
                    "metrics": ["accuracy", "auc"]}},
        {"a": RNG.normal(size=(N, 4)), "b": RNG.normal(size=(N, 3))},
        RNG.integers(0, 2, size=(N, 1)).astype("float32")),
    "two_heads": ({
        "inputs": [{"name": "x", "shape": [6]}],
        "layers": [_dense("trunk", 8, "x", activation="relu"),
                   _dense("reg", 1, "trunk"), _dense("cls", 3, "trunk", activation="softmax")],
        "outputs": ["reg", "cls"],
        "compile": {"optimizer": {"class_name": "SGD", "config": {"momentum": 0.9}},
                    "loss": {"reg": "mse", "cls": {"class_name": "SparseCategoricalCrossentropy",
                                                   "config": {}}},
                    "loss_weights": {"reg": 0.5, "cls": 1.0},
                    "metrics": {"reg": ["mae"], "cls": ["sparse_categorical_accuracy"]}}},
        RNG.normal(size=(N, 6)),
        {"reg": RNG.normal(size=(N, 1)), "cls": RNG.integers(0, 3, size=(N,))}),
    "residual": ({
        "inputs": [{"name": "x", "shape": [8]}],
        "layers": [_dense("h1", 8, "x", activation="relu"), _dense("h2", 8),
                   {"type": "Add", "name": "skip", "inputs": ["x", "h2"]},
                   {"type": "LayerNormalization", "name": "norm"}, _dense("out", 1)],
        "outputs": ["out"], "compile": {"optimizer": "adam", "loss": "mse"}},
        RNG.normal(size=(N, 8)), RNG.normal(size=(N, 1))),
    "conv2d": ({
        "inputs": [{"name": "img", "shape": [8, 8, 3]}],
        "layers": [{"type": "Rescaling", "scale": 0.5},
                   {"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                   {"type": "MaxPooling2D"}, {"type": "BatchNormalization"},
                   {"type": "Flatten"}, {"type": "Dense", "units": 3, "activation": "softmax"}],
        "compile": {"optimizer": "adam", "loss": "categorical_crossentropy",
                    "metrics": ["categorical_accuracy"]}},
        RNG.normal(size=(N, 8, 8, 3)), np.eye(3)[RNG.integers(0, 3, size=N)]),
    "lstm": ({
        "inputs": [{"name": "seq", "shape": [5, 2]}],
        "layers": [{"type": "LSTM", "units": 4, "return_sequences": True},
                   {"type": "Bidirectional", "layer": {"class_name": "GRU",
                                                       "config": {"units": 3}}},
                   {"type": "Dense", "units": 1, "activation": "sigmoid"}],
        "compile": {"optimizer": "rmsprop", "loss": "binary_crossentropy"}},
        RNG.normal(size=(N, 5, 2)), RNG.integers(0, 2, size=(N, 1)).astype("float32")),
    "conv1d": ({
        "inputs": [{"name": "sig", "shape": [12, 1]}],
        "layers": [{"type": "Conv1D", "filters": 4, "kernel_size": 3, "padding": "same"},
                   {"type": "GlobalAveragePooling1D"}, {"type": "Dense", "units": 1}],
        "compile": {"optimizer": "adam", "loss": "huber"}},
        RNG.normal(size=(N, 12, 1)), RNG.normal(size=(N, 1))),
    "embedding": ({
        "inputs": [{"name": "tokens", "shape": [6], "dtype": "int32"}],
        "layers": [{"type": "Embedding", "input_dim": 20, "output_dim": 4},
                   {"type": "GlobalAveragePooling1D"},
                   {"type": "Dense", "units": 2, "activation": "softmax"}],
        "compile": {"optimizer": "adam", "loss": "sparse_categorical_crossentropy",
                    "metrics": ["accuracy"]}},
        RNG.integers(0, 20, size=(N, 6)).astype("int32"), RNG.integers(0, 2, size=(N,))),
}


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_reference_model_fits_saves_and_reloads(case: str, tmp_path: Path) -> None:
    spec, x, y = REFERENCE[case]
    model = build_compiled({"name": case, **spec})
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    expected, got = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for a, b in zip(keras.tree.flatten(expected), keras.tree.flatten(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_shared_layer_and_call_indices() -> None:
    spec = {
        "inputs": [{"name": "a", "shape": [4]}, {"name": "b", "shape": [4]}],
        "layers": [_dense("shared", 3, [["a"], ["b"]]),
                   {"type": "Subtract", "name": "diff", "inputs": ["shared:0", "shared:1"]},
                   {"type": "Multiply", "name": "prod", "inputs": ["shared:0", "shared"]},
                   {"type": "Concatenate", "name": "both", "inputs": ["diff", "prod"]}],
        "outputs": ["both"]}
    model = build_model(spec)
    assert len(model.get_layer("shared").get_weights()) == 2  # one kernel, one bias
    x = np.ones((2, 4), "float32")
    assert model.predict({"a": x, "b": x}, verbose=0).shape == (2, 6)


def test_multi_head_attention_gets_query_and_value() -> None:
    spec = {
        "inputs": [{"name": "q", "shape": [3, 4]}, {"name": "v", "shape": [5, 4]}],
        "layers": [{"type": "MultiHeadAttention", "name": "mha", "num_heads": 2,
                    "key_dim": 2, "inputs": ["q", "v"]},
                   {"type": "Attention", "name": "att", "inputs": ["q", "v"]},
                   {"type": "Add", "name": "sum", "inputs": ["mha", "att"]}],
        "outputs": "sum"}
    info = describe(build_model(spec))
    assert info["layers"][-1]["output_shape"] == [None, 3, 4]


def test_adapt_layers_on_model_input_data() -> None:
    from app.core.errors import DomainError
    from app.specs.builder import adapt_layers

    x = RNG.normal(loc=3.0, size=(32, 2)).astype("float32")
    model = build_model({"inputs": [{"name": "x", "shape": [2]}],
                         "layers": [{"type": "Normalization"}, {"type": "Dense", "units": 1}]})
    adapt_layers(model, {"x": x})
    out = model.layers[0](x)
    np.testing.assert_allclose(np.asarray(out).mean(axis=0), [0, 0], atol=1e-4)
    deep = build_model({"inputs": [{"name": "x", "shape": [2]}],
                        "layers": [{"type": "Dense", "units": 2}, {"type": "Normalization"}]})
    with pytest.raises(DomainError):
        adapt_layers(deep, x)


def test_an_imported_functional_config_builds_again_from_the_same_body() -> None:
    """Keras empties a functional config it deserializes; the stored spec must survive it (a
    fit job rebuilds the model from the very body the API stored)."""
    import copy
    import json

    import keras

    from app.specs.builder import build_compiled

    a, b = keras.Input(shape=(2,), name="a"), keras.Input(shape=(3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    model = keras.Model([a, b], keras.layers.Dense(1, name="out")(joined))
    body = {"name": "functional", "keras_config": json.loads(model.to_json()),
            "compile": {"optimizer": "adam", "loss": "mse"}}
    stored = copy.deepcopy(body)
    first = build_compiled(body)
    assert body == stored  # nothing of the request body was consumed
    second = build_compiled(body)
    assert first.count_params() == second.count_params() == model.count_params()
