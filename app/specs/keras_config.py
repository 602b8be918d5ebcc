"""Recursive allowlist check of Keras serialized objects (`{"class_name", "config", ...}`).

Two modes share one walker:
- spec mode (`normalize`): user-written nested objects. Each object must be allowed for the
  category its key implies (`kernel_initializer` -> initializer, ...); the result is rewritten to
  Keras's canonical form with the public `module` filled in, so Keras resolves exactly the
  class we checked and nothing else.
- import mode (`check_keras_config`): a whole model config as `model.to_json()` / a `.keras`
  file's config.json holds it. Any allowlisted class of any category may appear; the config
  is only checked, never rewritten.
In both modes `module` must be the Keras namespace of that class and `registered_name` must be
absent/null or the class name itself: either one pointing elsewhere would make Keras import
or look up something outside the allowlist.

Import mode walks every key Keras reads, not only `config`: a functional model's layers carry
`inbound_nodes`, whose call `args` and `kwargs` Keras deserializes too (any `{"class_name"}`
object there becomes a live object), so they pass the same check. Before walking, the number of
layers is checked against KJ_MAX_SPEC_LAYERS (app.specs.limits).
"""

from __future__ import annotations

from typing import Any

from app.specs.allowlist import (
    ALL_CATEGORIES,
    DATA_MARKERS,
    INSTEAD,
    MODULES,
    NOUNS,
    REGISTRIES,
    SPEC_CATEGORIES,
    Category,
    category_of,
    refuse,
    resolve_class,
    resolve_string,
)
from app.specs.arg_types import check_arg_types
from app.specs.construct import pointer_join
from app.specs.limits import check_layer_count, count_layers

_OBJECT_KEYS = frozenset({"class_name", "config", "module", "registered_name"})
# Extra keys the serializer writes around layers/models inside a model config.
_IMPORT_KEYS = frozenset({"build_config", "compile_config", "name", "inbound_nodes",
                          "shared_object_id"})
_STRING_CATEGORIES = frozenset({"initializer", "regularizer", "constraint", "activation",
                                "optimizer", "loss", "metric"})


def key_category(key: str, parent: Category | None) -> Category | None:
    """Category of the object expected under `key` inside a `parent` config."""
    if parent == "optimizer":
        return "schedule" if key == "learning_rate" else None
    if parent not in ("layer", "cell", "model", "input_layer"):
        return None
    if key.endswith("initializer"):
        return "initializer"
    if key.endswith("regularizer"):
        return "regularizer"
    if key.endswith("constraint"):
        return "constraint"
    if key == "activation" or key.endswith("_activation"):
        return "activation"
    if key in ("layer", "backward_layer"):
        return "layer"
    if key in ("cell", "cells"):
        return "cell"
    if key == "dtype":
        return "dtype_policy"
    return None


def normalize(value: Any, pointer: str, expected: Category | None) -> Any:
    """Spec mode: check `value` and return it with nested objects in canonical form."""
    return _walk(value, pointer, expected, spec=True)


def check_keras_config(config: dict[str, Any], pointer: str) -> None:
    """Import mode: refuse (422) any class, module or marker outside the allowlist."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise refuse(pointer, "expected a Keras model config object with 'class_name'")
    if category_of(str(config["class_name"]), ("model",)) is None:
        raise refuse(pointer_join(pointer, "class_name"),
                     f"expected a model (Functional or Sequential), got "
                     f"{config['class_name']!r}; {INSTEAD['model']}")
    check_layer_count(count_layers(config.get("config")), pointer)
    _walk(config, pointer, None, spec=False)


def _walk(value: Any, pointer: str, expected: Category | None, spec: bool) -> Any:
    if isinstance(value, list):
        return [_walk(v, pointer_join(pointer, i), expected, spec) for i, v in enumerate(value)]
    if isinstance(value, str):
        if expected in _STRING_CATEGORIES:
            resolve_string(expected, value, pointer)  # type: ignore[arg-type]
        elif expected in ("layer", "cell") or (spec and expected == "schedule"):
            # Keras would look a bare name up among its layer classes and hand over the
            # class itself; a saved config always holds the layer object here.
            raise refuse(pointer, f"expected a {NOUNS[expected]} object "  # type: ignore[index]
                                  '{"class_name": ..., "config": {...}}, got a string')
        return value
    if not isinstance(value, dict):
        return value
    if "class_name" in value:
        return _object(value, pointer, expected, spec)
    for key in ("module", "registered_name"):
        if key in value:
            raise refuse(pointer_join(pointer, key),
                         f"'{key}' is only allowed next to a Keras 'class_name'")
    return {k: _walk(v, pointer_join(pointer, k), None, spec) for k, v in value.items()}


def _object(value: dict[str, Any], pointer: str, expected: Category | None,
            spec: bool) -> Any:
    name = value["class_name"]
    if not isinstance(name, str):  # before any set lookup: a list or object is unhashable
        raise refuse(pointer_join(pointer, "class_name"),
                     f"expected a class name (string), got {type(name).__name__}")
    allowed_keys = _OBJECT_KEYS if spec else _OBJECT_KEYS | _IMPORT_KEYS
    for key in value:
        if key not in allowed_keys:
            raise refuse(pointer_join(pointer, key),
                         f"unexpected key '{key}' in a Keras object (allowed: "
                         f"{', '.join(sorted(allowed_keys))})")
    if name in DATA_MARKERS:
        if value.get("module") is not None:
            raise refuse(pointer_join(pointer, "module"), f"'{name}' takes no module")
        return value
    if name == "function":
        return _function(value, pointer, expected, spec)
    categories = (expected,) if expected else (SPEC_CATEGORIES if spec else ALL_CATEGORIES)
    category = category_of(name, categories)
    if category is None:
        # Re-resolve in the most specific category to get the "not allowed"/"did you mean" text.
        resolve_class(expected or "layer", name, pointer_join(pointer, "class_name"))
        raise AssertionError("unreachable")  # pragma: no cover
    _check_origin(value, pointer, category, name)
    config = value.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise refuse(pointer_join(pointer, "config"),
                     f"expected the {NOUNS[category]}'s config as an object")
    cfg_ptr = pointer_join(pointer, "config")
    check_arg_types(REGISTRIES[category].classes[name], config, cfg_ptr)
    checked = {k: _walk(v, pointer_join(cfg_ptr, k), key_category(k, category), spec)
               for k, v in config.items()}
    if not spec:
        # Every other key Keras reads: inbound_nodes (call args and kwargs, deserialized as
        # objects), build_config, compile_config, name, shared_object_id.
        for key in [k for k in value if k in _IMPORT_KEYS]:
            _walk(value[key], pointer_join(pointer, key), None, spec)
        return value
    return {"module": MODULES[category][0], "class_name": name, "config": checked,
            "registered_name": None}


def _check_origin(value: dict[str, Any], pointer: str, category: Category, name: str) -> None:
    module = value.get("module")
    if module is not None and module not in MODULES[category]:
        raise refuse(pointer_join(pointer, "module"),
                     f"module {module!r} is not allowed for {NOUNS[category]} '{name}' "
                     f"(expected {' or '.join(MODULES[category])}); classes are resolved "
                     "from Keras's built-ins only")
    registered = value.get("registered_name")
    if registered is not None and registered != name:
        raise refuse(pointer_join(pointer, "registered_name"),
                     f"registered_name {registered!r} is not allowed: only Keras built-ins "
                     f"can be used (registered_name must be null or '{name}'); "
                     f"{INSTEAD.get(category, 'user code is never run')}")


FUNCTION_CATEGORIES: tuple[Category, ...] = ("activation", "loss", "metric")


def _function(value: dict[str, Any], pointer: str, expected: Category | None,
              spec: bool) -> Any:
    """Keras serializes built-in functions (activations, and losses/metrics given as functions,
    e.g. loss=keras.losses.mean_squared_error) as class_name 'function' with the function's
    name as config. Only names in the built-in registries pass."""
    if expected not in (None, *FUNCTION_CATEGORIES):
        raise refuse(pointer_join(pointer, "class_name"),
                     f"expected a {NOUNS[expected]}, got a function")  # type: ignore[index]
    fn = value.get("config")
    candidates = [expected] if expected else list(FUNCTION_CATEGORIES)
    category = next((c for c in candidates
                     if isinstance(fn, str) and fn in REGISTRIES[c].strings), None)
    if category is None:
        kinds = " or ".join(NOUNS[c] for c in candidates)
        raise refuse(pointer_join(pointer, "config"),
                     f"function {fn!r} is not allowed: only Keras built-in {kinds} functions "
                     "can be referenced; user code is refused: use a built-in by name (e.g. "
                     "\"relu\", \"mse\", \"mae\") or a keras.losses / keras.metrics class")
    module = value.get("module")
    if module is not None and module not in ("builtins", *MODULES[category]):
        raise refuse(pointer_join(pointer, "module"),
                     f"module {module!r} is not allowed for {NOUNS[category]} '{fn}'")
    registered = value.get("registered_name")
    if registered not in (None, "function", fn):
        raise refuse(pointer_join(pointer, "registered_name"),
                     f"registered_name {registered!r} is not allowed for built-in "
                     f"{NOUNS[category]} '{fn}'")
    return fn if spec else value
