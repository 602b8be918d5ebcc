"""Whether the arrays a job names can feed its model's inputs, told at submit time from what is
recorded (a dataset's array shapes and dtypes, the model's Keras config), never by loading an
array or a model: a job that cannot run is a 422 at its field instead of a failure minutes later
in a worker.

A model's inputs are read from its Keras config (a spec's canonical `keras_config`, or a saved
version's `config.json`): the InputLayers a Functional model lists, or the first layer of a
Sequential one. What Keras itself accepts is accepted: a trailing axis of 1 added or dropped
(Keras adjusts a rank that differs by that axis), any size where the input says null.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from app.core.errors import FieldError, invalid
from app.specs.targets import Shape, row_shape
from app.tables import Dataset

# A saved version's config.json is at most this large (app.registry.upload.MAX_CONFIG_BYTES).
MAX_CONFIG_BYTES = 16 << 20
_TEXT_KINDS = frozenset("USO")  # NumPy kinds of strings, bytes, objects


@dataclass(frozen=True)
class ModelInput:
    name: str | None  # the key a dict `x` uses; None when the config does not say
    shape: Shape  # per row (without the batch axis)
    dtype: str | None


def config_inputs(config: Any) -> list[ModelInput] | None:
    """The inputs of a Keras model config, in order; None when they cannot be told for sure."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        return None
    body = config["config"]
    layers = body.get("layers")
    if not isinstance(layers, list):
        return None
    if config.get("class_name") == "Sequential":
        first = layers[0] if layers else None
        if isinstance(first, dict) and first.get("class_name") == "InputLayer":
            found = _input_layer(first, None)
            return None if found is None else [found]
        shape = _row(body.get("build_input_shape"))
        return None if shape is None else [ModelInput(None, shape, None)]
    if config.get("class_name") not in ("Functional", "Model"):
        return None
    by_name = {_layer_name(layer): layer for layer in layers
               if isinstance(layer, dict) and layer.get("class_name") == "InputLayer"}
    refs = body.get("input_layers")
    if isinstance(refs, dict):  # dict inputs: x is keyed by the dict's keys
        named: list[tuple[str | None, Any]] = list(refs.items())
    elif isinstance(refs, list) and refs and isinstance(refs[0], str):  # one input
        named = [(None, refs)]
    elif isinstance(refs, list) and refs and all(isinstance(r, list) and r for r in refs):
        named = [(None, r) for r in refs]
    else:
        return None
    out = []
    for key, ref in named:
        layer = by_name.get(ref[0]) if isinstance(ref, list) and ref else None
        found = _input_layer(layer, key) if layer is not None else None
        if found is None:
            return None
        out.append(found)
    return out


def _layer_name(layer: dict[str, Any]) -> Any:
    config = layer.get("config")
    return layer.get("name") or (config.get("name") if isinstance(config, dict) else None)


def _input_layer(layer: dict[str, Any], key: str | None) -> ModelInput | None:
    config = layer.get("config")
    if not isinstance(config, dict):
        return None
    shape = _row(config.get("batch_shape", config.get("batch_input_shape")))
    if shape is None:
        return None
    dtype = config.get("dtype")
    name = key if key is not None else _layer_name(layer)
    return ModelInput(name if isinstance(name, str) else None, shape,
                      dtype if isinstance(dtype, str) else None)


def _row(shape: Any) -> Shape | None:
    if not isinstance(shape, list) or not shape or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape):
        return None
    return tuple(shape[1:])


@lru_cache(maxsize=512)
def version_inputs(version_id: str, model_file: str) -> list[ModelInput] | None:
    """The inputs of a saved version, from its `.keras` file's config.json (read, not loaded;
    a version never changes, so what was read once is kept)."""
    try:
        with zipfile.ZipFile(Path(model_file)) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                return None
            with zf.open(info) as f:
                config = json.loads(f.read(MAX_CONFIG_BYTES + 1))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # its job will say what is wrong with the file
    return config_inputs(config)


def check_x(inputs: list[ModelInput] | None, dataset: Dataset, selector: Any,
            where: str = "") -> None:
    """Refuse (422 at /x…) arrays that cannot feed `inputs`: names, per-row shapes, text
    arrays into numeric inputs. `where` says which dataset, for a validation dataset."""
    if not inputs:
        return
    names = [i.name for i in inputs]
    if isinstance(selector, dict):
        if any(n is None for n in names):
            return  # the config does not name its inputs: Keras matches them
        if set(selector) != set(names):
            raise invalid("x must map each of the model's inputs to an array.",
                          [FieldError("/x", f"expected keys {names}, got {sorted(selector)}")])
        pairs = [(i, selector[i.name], f"/x/{_token(str(i.name))}") for i in inputs]
    elif len(inputs) != 1:
        raise invalid("The model has several inputs; map each to an array.",
                      [FieldError("/x", f'expected {{"{names[0]}": "array", ...}} for {names}')])
    else:
        pairs = [(inputs[0], selector, "/x")]
    for model_input, sub, pointer in pairs:
        _check_one(model_input, dataset, sub, pointer, where)


def _check_one(model_input: ModelInput, dataset: Dataset, selector: str | list[str],
               pointer: str, where: str) -> None:
    label = f"input '{model_input.name}'" if model_input.name else "the model's input"
    arrays = dataset.arrays
    names = [selector] if isinstance(selector, str) else selector
    for i, name in enumerate(names):
        dtype = str(arrays.get(name, {}).get("dtype", ""))
        if _is_text(dtype) != _is_text(model_input.dtype or "float32") and dtype:
            at = pointer if isinstance(selector, str) else f"{pointer}/{i}"
            raise invalid(f"Array '{name}'{where} cannot feed {label}.",
                          [FieldError(at, f"'{name}' holds {dtype}; {label} takes "
                                      f"{model_input.dtype or 'numbers'}")])
    rows = row_shape(arrays, selector)
    if rows is None or _fits(rows, model_input.shape):
        return
    want = list(model_input.shape)
    if isinstance(selector, str):
        got = f"rows of '{selector}'{where} have shape {list(rows)}"
    else:
        got = (f"the {len(selector)} arrays named{where} stack into rows of width {rows[0]}")
    raise invalid(f"The arrays named for x do not fit {label}.",
                  [FieldError(pointer, f"{got}; {label} expects rows of shape {want} "
                              "(null = any size)")])


def _fits(rows: Shape, want: Shape) -> bool:
    """As Keras takes it: the same rank, or one differing by a trailing axis of 1."""
    def same(got: Shape, expected: Shape) -> bool:
        return len(got) == len(expected) and all(
            w is None or w == g for g, w in zip(got, expected, strict=True))
    return (same(rows, want) or (bool(want) and want[-1] in (1, None) and same(rows, want[:-1]))
            or (bool(rows) and rows[-1] == 1 and same(rows[:-1], want)))


def _is_text(dtype: str) -> bool:
    if dtype == "string":
        return True
    try:
        import numpy as np

        return np.dtype(dtype).kind in _TEXT_KINDS
    except TypeError:
        return False


def _token(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
