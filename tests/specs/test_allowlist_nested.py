"""The allowlist reaches every object Keras deserializes in an imported config or a `.keras`
file's config.json: also the call arguments a functional model records in `inbound_nodes`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import DomainError
from app.specs.keras_config import check_keras_config
from tests.helpers import assert_problem, edited_keras_file

COMPILE = {"optimizer": "adam", "loss": "mse"}
# Objects a config could smuggle into a call's arguments, each refused wherever it appears.
SMUGGLED: dict[str, tuple[dict[str, Any], str]] = {
    "tfsm-layer": ({"module": "keras.layers", "class_name": "TFSMLayer",
                    "config": {"filepath": "/srv/models/secret"}, "registered_name": None},
                   "SavedModel"),
    "lambda-layer": ({"module": "keras.layers", "class_name": "Lambda",
                      "config": {"function": "x"}, "registered_name": None}, "code"),
    "lambda-code": ({"class_name": "__lambda__", "config": {"code": "4wEAAAAA"}}, "code"),
    "os-system": ({"class_name": "function", "config": "system", "module": "os"},
                  "not allowed"),
    "foreign-module": ({"module": "keras.src.saving.file_editor", "class_name": "Dense",
                        "config": {"units": 1}, "registered_name": None}, "not allowed"),
    "registered-name": ({"module": "keras.layers", "class_name": "Dense",
                         "config": {"units": 1}, "registered_name": "my_pkg>Evil"},
                        "built-in"),
    "unknown-class": ({"class_name": "Subprocess", "config": {}}, "unknown"),
}


def _functional() -> dict[str, Any]:
    """x -> Dense -> Dropout(training=True) -> Add(dense, dropout): a call with kwargs, a call
    on a list of tensors."""
    import keras

    x = keras.Input(shape=(4,), name="x")
    h = keras.layers.Dense(3, name="dense")(x)
    d = keras.layers.Dropout(0.1, name="dropout")(h, training=True)
    out = keras.layers.Add(name="add")([h, d])
    config: dict[str, Any] = json.loads(keras.Model(x, out).to_json())
    return config


def _layer(config: dict[str, Any], name: str) -> tuple[int, dict[str, Any]]:
    for i, layer in enumerate(config["config"]["layers"]):
        if layer["name"] == name:
            return i, layer
    raise AssertionError(name)


def _in_kwargs(config: dict[str, Any], obj: dict[str, Any]) -> str:
    """Put `obj` in the Dropout call's kwargs; the JSON pointer it then has."""
    i, layer = _layer(config, "dropout")
    layer["inbound_nodes"][0]["kwargs"]["training"] = obj
    return f"/config/layers/{i}/inbound_nodes/0/kwargs/training"


def _in_args(config: dict[str, Any], obj: dict[str, Any]) -> str:
    """Put `obj` next to the tensors in the Add call's positional argument (a list)."""
    i, layer = _layer(config, "add")
    layer["inbound_nodes"][0]["args"][0].append(obj)
    return f"/config/layers/{i}/inbound_nodes/0/args/0/2"


def _in_legacy_node(config: dict[str, Any], obj: dict[str, Any]) -> str:
    """Keras also reads the older node form [[layer, node, tensor, kwargs], ...]."""
    i, layer = _layer(config, "dense")
    layer["inbound_nodes"] = [[["x", 0, 0, {"mask": obj}]]]
    return f"/config/layers/{i}/inbound_nodes/0/0/3/mask"


PLACES = {"kwargs": _in_kwargs, "args": _in_args, "legacy-node": _in_legacy_node}


@pytest.mark.parametrize("place", sorted(PLACES))
@pytest.mark.parametrize("case", sorted(SMUGGLED))
def test_objects_in_call_arguments_are_checked(case: str, place: str) -> None:
    obj, text = SMUGGLED[case]
    config = _functional()
    where = PLACES[place](config, copy.deepcopy(obj))
    with pytest.raises(DomainError) as info:
        check_keras_config(config, "/keras_config")
    err = info.value
    assert err.status == 422
    (error,) = err.errors
    assert error.pointer.startswith("/keras_config" + where), (error.pointer, where)
    assert text in error.detail


def test_plain_call_arguments_pass() -> None:
    config = _functional()
    check_keras_config(config, "/keras_config")  # training=True, tensors: data only
    _, dropout = _layer(config, "dropout")
    assert dropout["inbound_nodes"][0]["kwargs"] == {"training": True}


def test_a_wrapped_layer_given_by_name_is_refused() -> None:
    """Keras would hand the wrapper a class looked up by name; a saved config never does."""
    import keras

    x = keras.Input(shape=(3, 2), name="x")
    out = keras.layers.Bidirectional(keras.layers.LSTM(2), name="bi")(x)
    config = json.loads(keras.Model(x, out).to_json())
    i, layer = _layer(config, "bi")
    layer["config"]["layer"] = "Lambda"
    with pytest.raises(DomainError) as info:
        check_keras_config(config, "")
    assert info.value.errors[0].pointer == f"/config/layers/{i}/config/layer"


@pytest.mark.parametrize("case", ["tfsm-layer", "os-system", "lambda-code"])
def test_spec_import_refuses_them(client: Any, unchanged: None, case: str) -> None:
    config = _functional()
    where = _in_kwargs(config, copy.deepcopy(SMUGGLED[case][0]))
    for keras_config in (config, json.dumps(config)):  # parsed or as JSON text
        r = client.post("/v1/specs", json={"name": "smuggled", "keras_config": keras_config,
                                           "compile": COMPILE})
        body = assert_problem(r, 422)
        assert body["errors"][0]["pointer"].startswith("/keras_config" + where), body


def test_spec_import_with_call_kwargs_is_accepted(client: Any) -> None:
    r = client.post("/v1/specs", json={"name": "kwargs", "keras_config": _functional(),
                                       "compile": COMPILE})
    assert r.status_code == 201, r.text
    assert [layer["class_name"] for layer in r.json()["summary"]["layers"]] == [
        "InputLayer", "Dense", "Dropout", "Add"]


def _keras_file(tmp_path: Path, edit: Any) -> bytes:
    """A real `.keras` file of the functional model, its config.json edited."""
    import keras

    return edited_keras_file(keras.models.model_from_json(json.dumps(_functional())), tmp_path,
                             edit)


@pytest.mark.parametrize("case", ["tfsm-layer", "os-system", "lambda-layer"])
def test_keras_upload_refuses_them(client: Any, unchanged: None, tmp_path: Path,
                                   case: str) -> None:
    wheres: list[str] = []
    payload = _keras_file(tmp_path, lambda c: wheres.append(
        _in_kwargs(c, copy.deepcopy(SMUGGLED[case][0]))))
    r = client.post("/v1/models/smuggled/versions", files={"file": ("m.keras", payload)})
    body = assert_problem(r, 422)
    assert body["errors"][0]["pointer"].startswith("/file/config.json" + wheres[0]), body
    assert_problem(client.get("/v1/models/smuggled"), 404)
