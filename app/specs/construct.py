"""Constructing allowlisted Keras objects from checked configs, with errors pinned to a field."""

from __future__ import annotations

import difflib
import inspect
import re
from typing import Any

from app.specs.allowlist import refuse

# Layer.__init__ pops these from **kwargs; inputs are declared in the spec's `inputs` block.
_LEGACY_LAYER_KWARGS = frozenset({"input_dim", "input_shape", "batch_input_shape", "batch_size"})
# Past these bases, __init__ signatures are generic (*args, **kwargs) and say nothing.
_STOP_BASES = frozenset({"Layer", "BaseOptimizer", "Loss", "Metric"})


def pointer_join(pointer: str, key: str | int) -> str:
    """Append one JSON pointer segment (RFC 6901 escaping)."""
    return f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"


def constructor_params(cls: type[Any]) -> tuple[set[str], set[str]]:
    """(accepted, required) keyword names of cls(...), following **kwargs up the MRO."""
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
    return accepted - _LEGACY_LAYER_KWARGS, required


def check_kwargs(cls: type[Any], kwargs: dict[str, Any], pointer: str, what: str) -> None:
    """Refuse unknown or missing constructor arguments before Keras sees them."""
    accepted, required = constructor_params(cls)
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=1)
            hint = f" — did you mean '{close[0]}'?" if close else ""
            raise refuse(pointer_join(pointer, key),
                         f"{what} ({cls.__name__}) has no argument '{key}'{hint}")
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


def first_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def instantiate(cls: type[Any], config: dict[str, Any], pointer: str, what: str) -> Any:
    """cls.from_config(config) (Keras's own path, handles nested objects); errors -> 422."""
    try:
        return cls.from_config(config)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        where = blame(exc, config, pointer)
        raise refuse(where, f"invalid {what} ({cls.__name__}): {first_line(exc)}") from exc
