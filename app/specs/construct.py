"""Constructing allowlisted Keras objects from checked configs, with errors pinned to a field."""

from __future__ import annotations

import inspect
import re
from typing import Any

from app.core.errors import did_you_mean
from app.specs.allowlist import DATA_MARKERS, MODULES, REGISTRIES, SPEC_CATEGORIES, refuse

# Past these bases, __init__ signatures are generic (*args, **kwargs) and say nothing.
_STOP_BASES = frozenset({"Layer", "BaseOptimizer", "Loss", "Metric"})


def pointer_join(pointer: str, key: str | int) -> str:
    """Append one JSON pointer segment (RFC 6901 escaping)."""
    return f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"


# Per allowlisted class: inspect.signature over the MRO was a large part of checking a layer.
_PARAMS: dict[type[Any], tuple[frozenset[str], frozenset[str]]] = {}


def constructor_params(cls: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """(accepted, required) keyword names of cls(...), following **kwargs up the MRO."""
    params = _PARAMS.get(cls)
    if params is None:
        params = _PARAMS[cls] = _constructor_params(cls)
    return params


def _constructor_params(cls: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    accepted: set[str] = set()
    required: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            accepted.add(p.name)
            if p.default is p.empty and klass is cls:
                required.add(p.name)
        if klass.__name__ in _STOP_BASES or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return frozenset(accepted), frozenset(required)


def check_kwargs(cls: type[Any], kwargs: dict[str, Any], pointer: str, what: str) -> None:
    """Refuse unknown or missing constructor arguments before Keras sees them."""
    accepted, required = constructor_params(cls)
    for key in kwargs:
        if key not in accepted:
            raise refuse(pointer_join(pointer, key), f"{what} ({cls.__name__}) has no argument "
                         f"'{key}'{did_you_mean(key, accepted)}")
    missing = sorted(required - kwargs.keys())
    if missing:
        raise refuse(pointer, f"{what} ({cls.__name__}) is missing required argument "
                              f"'{missing[0]}'")


def blame(exc: BaseException, kwargs: dict[str, Any], pointer: str) -> str:
    """The pointer of the argument a Keras error message names, else `pointer` itself."""
    msg = str(exc)
    keys = sorted(kwargs, key=len, reverse=True)
    # Keras quotes the culprit as `units`, 'units' or units=...; prefer those forms.
    for key in keys:
        k = re.escape(key)
        if re.search(rf"`{k}`|'{k}'|\b{k}=", msg):
            return pointer_join(pointer, key)
    for key in keys:
        if key not in ("name", "dtype") and re.search(rf"\b{re.escape(key)}\b", msg):
            return pointer_join(pointer, key)
    return pointer


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_CALL_WRAPPER_RE = re.compile(r"^Exception encountered when calling [\w.]+\(\)\. ")


def first_line(exc: BaseException, limit: int = 300) -> str:
    if isinstance(exc, RecursionError):  # Keras follows a model's graph one call per layer
        return ("its layers are chained too deep for Keras, which follows a chain of layers "
                "recursively and gives up near 1,000 in a row; use fewer layers in a row")
    text = " ".join(_ANSI_RE.sub("", str(exc)).split())
    # from_config wraps the real cause after this marker, behind a dump of the whole config.
    text = text.rsplit("Exception encountered: ", 1)[-1]
    # Layer calls wrap it as "Exception encountered when calling X.call(). <cause> Arguments
    # received by X.call(): <dump>"; keep the cause.
    text = _CALL_WRAPPER_RE.sub("", text).split(" Arguments received by ", 1)[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_object(value: Any) -> bool:
    if isinstance(value, list):
        return bool(value) and all(_is_object(v) for v in value)
    return isinstance(value, dict) and "class_name" in value


def build_object(value: Any, pointer: str = "") -> Any:
    """Construct a normalized nested object (or list of them) through its constructor.

    Constructors (unlike Keras's from_config) accept partial configs such as
    {"class_name": "Rescaling", "config": {"scale": 0.5}}; inner objects are built first,
    as hand-written Keras code would build them.
    """
    if isinstance(value, list):
        return [build_object(v, pointer_join(pointer, i)) for i, v in enumerate(value)]
    if not _is_object(value):
        return value
    name = value["class_name"]
    if name in DATA_MARKERS:
        import keras

        return keras.saving.deserialize_keras_object(value, safe_mode=True)
    category = next(c for c in SPEC_CATEGORIES
                    if MODULES[c][0] == value["module"] and name in REGISTRIES[c].classes)
    cls = REGISTRIES[category].classes[name]
    cfg_ptr = pointer_join(pointer, "config")
    kwargs = {k: build_object(v, pointer_join(cfg_ptr, k)) for k, v in value["config"].items()}
    try:
        return cls(**kwargs)
    except Exception as exc:  # the user's nested config: point at it, not at its owner
        raise refuse(blame(exc, value["config"], cfg_ptr),
                     f"invalid {name}: {first_line(exc)}") from exc


def instantiate(cls: type[Any], config: dict[str, Any], pointer: str, what: str) -> Any:
    """cls(**config) with nested objects constructed first; errors -> 422 at the culprit.

    `config` must already be checked and normalized (keras_config.normalize), so every
    nested class_name is an allowlisted built-in.
    """
    kwargs = {k: build_object(v, pointer_join(pointer, k)) for k, v in config.items()}
    try:
        return cls(**kwargs)
    except Exception as exc:  # any failure here is caused by the user-supplied config
        where = blame(exc, config, pointer)
        raise refuse(where, f"invalid {what} ({cls.__name__}): {first_line(exc)}") from exc
