"""Every allowlisted layer class builds from a spec and survives get_config/from_config."""

from __future__ import annotations

from typing import Any

import pytest

from app.specs.allowlist import allowed_layers
from app.specs.builder import build_model
from tests.specs.layer_table import LAYER_TABLE

ALLOWED = allowed_layers()


def test_table_covers_whole_allowlist() -> None:
    classes = {cls.__name__ for cls in ALLOWED.values()}
    assert sorted(classes - LAYER_TABLE.keys()) == []
    assert sorted(LAYER_TABLE.keys() - classes) == []  # no stale entries


def _spec(type_name: str) -> dict[str, Any]:
    args, shapes, dtype = LAYER_TABLE[ALLOWED[type_name].__name__]
    inputs = [{"name": f"in{i}", "shape": s, "dtype": dtype} for i, s in enumerate(shapes)]
    refs = [f"in{i}" for i in range(len(shapes))]
    layers: list[dict[str, Any]] = [{"type": type_name, "name": "subject", "inputs": refs,
                                     **args}]
    return {"inputs": inputs, "layers": layers, "outputs": ["subject"]}


@pytest.mark.parametrize("type_name", sorted(ALLOWED))
def test_layer_builds_and_config_round_trips(type_name: str) -> None:
    model = build_model(_spec(type_name))
    layer = model.get_layer("subject")
    assert type(layer) is ALLOWED[type_name]
    config = layer.get_config()
    clone = type(layer).from_config(dict(config))  # RNN.from_config pops keys
    assert _unbuilt(clone.get_config()) == _unbuilt(config)


def _unbuilt(config: Any) -> Any:
    """Drop build_config: nested layers of the original are built, the clone's are not yet."""
    if isinstance(config, dict):
        return {k: _unbuilt(v) for k, v in config.items() if k != "build_config"}
    if isinstance(config, list | tuple):
        return [_unbuilt(v) for v in config]
    return config
