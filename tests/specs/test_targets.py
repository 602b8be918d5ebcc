"""A spec's output targets, read from what is stored for it (summary and canonical config): the
shapes refused are the clear mismatches, and what is accepted, Keras trains on."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from app.specs.targets import Target, mismatch, row_shape, spec_targets

SEQUENTIAL = {"name": "seq", "inputs": [{"name": "x", "shape": [2]}],
              "layers": [{"name": "out", "type": "Dense", "units": 3}],
              "compile": {"optimizer": "adam", "loss": "mean_squared_error"}}
CLASSES = {"name": "cls", "inputs": [{"name": "x", "shape": [2]}],
           "layers": [{"name": "h", "type": "Dense", "units": 8, "inputs": "x"},
                      {"name": "logits", "type": "Dense", "units": 4}],
           "outputs": ["logits"],
           "compile": {"optimizer": "adam", "loss": {
               "class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": True}}}}
TWO_OUTPUTS = {"name": "two", "inputs": [{"name": "x", "shape": [2]}],
               "layers": [{"name": "h", "type": "Dense", "units": 8, "inputs": "x"},
                          {"name": "cls", "type": "Dense", "units": 1, "inputs": "h"},
                          {"name": "reg", "type": "Dense", "units": 2, "inputs": "h"}],
               "outputs": ["cls", "reg"],
               "compile": {"optimizer": "adam", "loss": {"cls": "binary_crossentropy",
                                                         "reg": "huber"}}}
CUSTOM_LOSS = {**SEQUENTIAL, "compile": {"optimizer": "adam", "loss": "ctc"}}


def _stored(spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    from app.specs.builder import build_compiled, describe

    model = build_compiled(spec)
    return json.loads(model.to_json()), describe(model)


def _targets(spec: dict[str, Any]) -> list[Target] | None:
    return spec_targets(spec, *_stored(spec))


def test_outputs_and_their_losses_are_read_from_the_stored_spec() -> None:
    assert _targets(SEQUENTIAL) == [Target("out", (3,), "mean_squared_error", "dense")]
    assert _targets(CLASSES) == [Target("logits", (4,), "SparseCategoricalCrossentropy",
                                        "sparse")]
    assert _targets(TWO_OUTPUTS) == [Target("cls", (1,), "binary_crossentropy", "dense"),
                                     Target("reg", (2,), "huber", "dense")]
    unknown = _targets(CUSTOM_LOSS)
    assert unknown is not None and unknown[0].kind is None


@pytest.mark.parametrize(("spec", "rows", "refused"), [
    (SEQUENTIAL, (3,), False),
    (SEQUENTIAL, (3, 1), False),  # Keras drops a trailing 1
    (SEQUENTIAL, (1,), True),  # would broadcast against [3]
    (SEQUENTIAL, (), True),
    (SEQUENTIAL, (4,), True),
    (CLASSES, (), False),  # class ids
    (CLASSES, (1,), False),
    (CLASSES, (4,), True),  # one-hot rows for a sparse loss
    (CLASSES, (2, 3), True),
    (CUSTOM_LOSS, (7, 9), False),  # a loss not known here: left to Keras
])
def test_mismatch(spec: dict[str, Any], rows: tuple[int, ...], refused: bool) -> None:
    found = _targets(spec)
    assert found is not None
    detail = mismatch(rows, found[0])
    assert (detail is not None) == refused, detail
    if refused:
        assert str(list(rows)) in detail and found[0].name in detail


def test_a_1d_target_for_a_one_unit_output() -> None:
    found = _targets(TWO_OUTPUTS)
    assert found is not None
    assert mismatch((), found[0]) is None and mismatch((1,), found[0]) is None
    assert mismatch((), found[1]) is not None and mismatch((2,), found[1]) is None


@pytest.mark.parametrize(("spec", "y"), [
    (SEQUENTIAL, np.zeros((8, 3, 1), "float32")),
    (CLASSES, np.array([0, 1, 2, 3, 0, 1, 2, 3])),
    (CLASSES, np.array([[0], [1], [2], [3], [0], [1], [2], [3]])),
    (TWO_OUTPUTS, {"cls": np.zeros(8, "float32"), "reg": np.zeros((8, 2), "float32")}),
])
def test_what_is_accepted_keras_trains_on(spec: dict[str, Any], y: Any) -> None:
    from app.specs.builder import build_compiled

    found = _targets(spec)
    assert found is not None
    by_name = {t.name: t for t in found}
    for name, array in (y.items() if isinstance(y, dict) else [(found[0].name, y)]):
        assert mismatch(tuple(array.shape[1:]), by_name[name]) is None
    model = build_compiled(spec)
    history = model.fit(np.zeros((8, 2), "float32"), y, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_row_shape_of_a_selector() -> None:
    arrays = {"a": {"shape": [10]}, "b": {"shape": [10, 3]}, "c": {"shape": [10, 2, 2]}}
    assert row_shape(arrays, "b") == (3,)
    assert row_shape(arrays, "a") == ()
    assert row_shape(arrays, ["a", "b", "c"]) == (8,)  # columns stacked, each flattened
    assert row_shape(arrays, ["missing"]) is None


def test_shared_layer_outputs_are_not_guessed() -> None:
    keras_config = {"class_name": "Functional", "config": {"output_layers": [["d", 1, 0]]}}
    summary = {"layers": [{"name": "d", "output_shape": [None, 3]}]}
    assert spec_targets({"compile": {"loss": "mse"}}, keras_config, summary) is None
