"""Strict types for the numeric arguments of Keras constructors.

Keras takes `Dense(units=True)` as one unit (a bool is an int in Python), and some layers cast a
string or a float where an int belongs; a spec saying `"units": true` or `"units": "8"` was
stored and built as something its author did not write. JSON has real booleans, strings and
numbers, so a spec can say exactly what it means, and one that does not is a 422 at the value.

What each argument takes is read from its constructor: a default of type int or float means a
number (never a bool, never a string). Arguments whose default says nothing (required, or None)
are typed by name from the table below, the names Keras uses for counts and sizes (ints) and for
rates and scales (numbers); a class whose default for such a name is a string (Conv's
`padding="valid"`) takes what that default says instead. Lists (a kernel size per axis) are
checked element by element. Anything else (objects, lists where a number is expected) is left
to Keras, which names the problem itself.
"""

from __future__ import annotations

import inspect
from typing import Any

from app.specs.allowlist import refuse

# Counts, sizes and seeds: ints (or lists of ints: a value per axis).
INT_ARGS = frozenset({
    "units", "filters", "kernel_size", "strides", "pool_size", "dilation_rate",
    "depth_multiplier", "groups", "output_dim", "input_dim", "num_heads", "key_dim",
    "value_dim", "n", "seed", "max_tokens", "num_tokens", "num_bins", "num_oov_indices",
    "output_sequence_length", "height", "width", "size", "cropping", "padding", "k",
    "num_thresholds", "power_iterations", "sequence_length",
})
# Rates, scales and bounds: numbers (an int is a number too).
NUMBER_ARGS = frozenset({
    "rate", "dropout", "recurrent_dropout", "stddev", "mean", "scale", "offset", "max_value",
    "min_value", "momentum", "epsilon", "alpha", "negative_slope", "threshold", "factor",
    "height_factor", "width_factor", "l1", "l2", "learning_rate", "clipnorm", "clipvalue",
    "global_clipnorm", "weight_decay", "label_smoothing",
})
# Past these bases, __init__ signatures are generic (*args, **kwargs) and say nothing.
_STOP_BASES = frozenset({"Layer", "BaseOptimizer", "Loss", "Metric"})
_DEFAULTS: dict[type[Any], dict[str, Any]] = {}
_NO_DEFAULT = inspect.Parameter.empty


def check_arg_types(cls: type[Any], config: dict[str, Any], pointer: str) -> None:
    """Refuse (422 at the value) a bool, a string or a float where `cls(...)` takes a number or
    an int; the keys of `config` are its constructor's keyword arguments."""
    defaults = _defaults(cls)
    for key, value in config.items():
        kind = _kind(key, defaults.get(key, _NO_DEFAULT))
        if kind is not None:
            _check(value, kind, f"{pointer}/{_token(key)}", key)


def _kind(key: str, default: Any) -> str | None:
    """'int', 'number' or None (not checked here) for argument `key` with `default`."""
    if isinstance(default, str | bool):  # `padding="valid"`, LayerNormalization's `scale=True`
        return None
    if key in INT_ARGS:
        return "int"
    if key in NUMBER_ARGS or (type(default) in (int, float)):
        return "number"
    return None


def _check(value: Any, kind: str, pointer: str, key: str) -> None:
    if value is None or isinstance(value, dict):
        return
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check(item, kind, f"{pointer}/{i}", key)
        return
    wanted = "an integer" if kind == "int" else "a number"
    if isinstance(value, bool) or isinstance(value, str) or (
            kind == "int" and not isinstance(value, int)):
        got = ("true/false" if isinstance(value, bool) else
               f"the string {value!r}" if isinstance(value, str) else f"{value!r}")
        raise refuse(pointer, f"'{key}' takes {wanted}, got {got}")


def _defaults(cls: type[Any]) -> dict[str, Any]:
    """Keyword name -> default of cls(...), following **kwargs up the MRO (as
    app.specs.construct.constructor_params does)."""
    found = _DEFAULTS.get(cls)
    if found is not None:
        return found
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]
        except (TypeError, ValueError):  # a builtin without a signature says nothing
            break
        for p in params:
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                out.setdefault(p.name, p.default)
        if klass.__name__ in _STOP_BASES or not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    _DEFAULTS[cls] = out
    return out


def _token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
