"""The native graph spec passes call arguments (`call_kwargs`) and names one output of a layer
that returns several (["enc", 1]): an LSTM seq2seq without the import form."""

from __future__ import annotations

import copy
from typing import Any

import keras
import numpy as np
import pytest

from app.core.errors import DomainError
from app.specs.builder import build_compiled, build_model

SEQ2SEQ: dict[str, Any] = {
    "name": "seq2seq",
    "inputs": [{"name": "enc_in", "shape": [None, 5]}, {"name": "dec_in", "shape": [None, 6]}],
    "layers": [
        {"type": "LSTM", "units": 8, "return_state": True, "name": "enc", "inputs": "enc_in"},
        {"type": "LSTM", "units": 8, "return_sequences": True, "name": "dec",
         "inputs": "dec_in", "call_kwargs": {"initial_state": [["enc", 1], ["enc", 2]]}},
        {"type": "Dense", "units": 6, "activation": "softmax", "name": "probs",
         "inputs": "dec"},
    ],
    "outputs": ["probs"],
    "compile": {"optimizer": "adam", "loss": "categorical_crossentropy"},
}


def seq2seq_data(n: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    enc = rng.normal(size=(n, 7, 5)).astype("float32")
    labels = rng.integers(0, 6, size=(n, 4))
    target = np.eye(6, dtype="float32")[labels]
    dec = np.concatenate([np.zeros((n, 1, 6), "float32"), target[:, :-1]], axis=1)
    return {"enc": enc, "dec": dec, "target": target}


def keras_seq2seq() -> keras.Model:
    """The same model as a notebook writes it."""
    enc_in = keras.Input((None, 5), name="enc_in")
    dec_in = keras.Input((None, 6), name="dec_in")
    _, h, c = keras.layers.LSTM(8, return_state=True, name="enc")(enc_in)
    seq = keras.layers.LSTM(8, return_sequences=True, name="dec")(dec_in, initial_state=[h, c])
    probs = keras.layers.Dense(6, activation="softmax", name="probs")(seq)
    return keras.Model({"enc_in": enc_in, "dec_in": dec_in}, probs, name="seq2seq")


def test_seq2seq_builds_as_keras_builds_it_and_trains() -> None:
    data = seq2seq_data()
    x = {"enc_in": data["enc"], "dec_in": data["dec"]}
    keras.utils.set_random_seed(4)
    model = build_compiled(SEQ2SEQ)
    keras.utils.set_random_seed(4)
    reference = keras_seq2seq()
    reference.compile(optimizer="adam", loss="categorical_crossentropy")
    for ours, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert len(model.get_layer("dec")._inbound_nodes[0].input_tensors) == 3  # with the state
    keras.utils.set_random_seed(5)
    ours_h = model.fit(x, data["target"], epochs=2, batch_size=8, verbose=0).history
    keras.utils.set_random_seed(5)
    theirs_h = reference.fit(x, data["target"], epochs=2, batch_size=8, verbose=0).history
    assert ours_h == theirs_h
    assert ours_h["loss"][-1] < ours_h["loss"][0]


def test_one_output_of_a_multi_output_layer_as_a_model_output() -> None:
    spec = {"inputs": [{"name": "x", "shape": [3, 2]}],
            "layers": [{"type": "GRU", "units": 4, "return_state": True, "name": "gru",
                        "inputs": "x"}],
            "outputs": ["gru", 1]}
    model = build_model(spec)
    assert model.output.shape == (None, 4)


def _bad(change: Any) -> DomainError:
    spec = copy.deepcopy(SEQ2SEQ)
    change(spec)
    with pytest.raises(DomainError) as info:
        build_model(spec)
    assert info.value.status == 422
    return info.value


def _set(layer: int, key: str, value: Any) -> Any:
    return lambda spec: spec["layers"][layer].__setitem__(key, value)


@pytest.mark.parametrize(("change", "pointer", "text"), [
    (_set(1, "call_kwargs", {"initial_stat": [["enc", 1], ["enc", 2]]}),
     "/layers/1/call_kwargs/initial_stat", "did you mean 'initial_state'"),
    (_set(1, "call_kwargs", {"sequences": "enc_in"}), "/layers/1/call_kwargs/sequences",
     "has no argument"),
    (_set(1, "call_kwargs", {"initial_state": {"h": "enc"}}),
     "/layers/1/call_kwargs/initial_state", "a list of refs"),
    (_set(1, "call_kwargs", {"initial_state": [["enc", 1], ["probs", 0]]}),
     "/layers/1/call_kwargs/initial_state/1", "later one"),
    (_set(1, "call_kwargs", {"initial_state": [["enc", 1], ["enc", 3]]}),
     "/layers/1/call_kwargs/initial_state/1", "0..2"),
    (_set(1, "call_kwargs", {"initial_state": [["enc", 1], "nothing"]}),
     "/layers/1/call_kwargs/initial_state/1", "unknown input or layer"),
    (_set(1, "call_kwargs", ["enc"]), "/layers/1/call_kwargs", "expected an object"),
    (_set(2, "inputs", "enc"), "/layers/2/inputs", "[\"enc\", 0]"),
    (_set(2, "inputs", ["dec", 0]), "/layers/2/inputs", "returns one tensor"),
])
def test_refused_with_pointer(change: Any, pointer: str, text: str) -> None:
    err = _bad(change)
    assert [e.pointer for e in err.errors] == [pointer]
    assert text in err.errors[0].detail


def test_scalar_call_arguments_pass() -> None:
    spec = {"inputs": [{"name": "q", "shape": [3, 4]}, {"name": "v", "shape": [5, 4]}],
            "layers": [{"type": "Attention", "name": "att", "inputs": ["q", "v"],
                        "call_kwargs": {"use_causal_mask": True}}],
            "outputs": ["att"]}
    node = build_model(spec).get_layer("att")._inbound_nodes[0]
    assert node.arguments.kwargs["use_causal_mask"] is True
    bad = copy.deepcopy(spec)
    bad["layers"][0]["call_kwargs"] = {"training": True}
    with pytest.raises(DomainError, match="set by Keras itself"):
        build_model(bad)


def test_a_dict_input_model_is_served(tmp_path: Any) -> None:
    """Its inputs are not in alphabetical order (enc_in, dec_in): the servable called it with
    a list in model.inputs' (sorted) order, which Keras refused."""
    from app.predict.servable import Servable

    model = build_model(SEQ2SEQ)
    model.save(tmp_path / "model.keras")
    servable = Servable(tmp_path / "model.keras")
    data = seq2seq_data(n=3)
    arrays = {"enc_in": data["enc"], "dec_in": data["dec"]}
    (served,) = servable([arrays[i.name] for i in servable.inputs])
    np.testing.assert_allclose(served, model.predict(arrays, verbose=0), rtol=0, atol=1e-6)


def test_output_refs_in_inputs_lists_and_shared_calls() -> None:
    base = {"inputs": [{"name": "x", "shape": [3, 2]}],
            "layers": [{"type": "LSTM", "units": 4, "return_state": True, "name": "enc",
                        "inputs": "x"}]}
    together = build_model({**base, "layers": [*base["layers"], {
        "type": "Concatenate", "name": "cat", "inputs": [["enc", 1], ["enc", 2]]}],
        "outputs": ["cat"]})
    assert together.output.shape == (None, 8)
    shared = build_model({**base, "layers": [*base["layers"], {
        "type": "Dense", "units": 2, "name": "head", "inputs": [[["enc", 1]], [["enc", 2]]]}],
        "outputs": ["head:0", "head:1"]})
    assert [t.shape for t in shared.outputs] == [(None, 2), (None, 2)]
    assert len(shared.get_layer("head")._inbound_nodes) == 2
