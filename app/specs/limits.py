"""Per-request limits on model specs and on imported or uploaded model configs.

Each is checked before the step whose cost it bounds:
1. size: a spec's compact JSON (what `json.dumps(body, separators=(",", ":"))` writes, so
   whitespace sent does not count) is at most KJ_MAX_SPEC_BYTES (413), and no string in it is
   longer than MAX_STRING_CHARS (422); a `keras_config` sent as JSON text is the one longer
   string allowed, and its parsed content is held to the same rule;
2. layers, counted on the JSON: at most KJ_MAX_SPEC_LAYERS (422). Every layer object counts:
   wrapped ones (Bidirectional, TimeDistributed), RNN cells, nested models and their layers;
   input layers do not;
3. parameters: the model is built `weightless()`, where Keras variables get a shape and no
   memory, and its weights are counted before any is allocated: at most KJ_MAX_SPEC_PARAMS
   (422). The API never allocates a spec's weights at all; a fit job builds the model for
   real, from a spec that passed here;
4. activations: from the same build, the bytes its layers output per row of input
   (app.specs.activations): at most KJ_MAX_ACTIVATION_BYTES_PER_ROW (422).
Nesting depth is bounded earlier (app.core.json_limits: 64 levels).

A refusal is a problem of type /problems/spec-limit (413: /problems/too-large) whose detail
says the limit and the current use, which `limit` and `current` repeat as numbers.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import keras
from keras.src.backend.common import global_state

from app.core.config import get_settings
from app.core.errors import DomainError, FieldError
from app.core.json_limits import pointer_token
from app.specs.activations import check_activations
from app.specs.allowlist import REGISTRIES, refuse
from app.specs.construct import first_line

# No name, description or layer argument needs more; a vocabulary is a list of short strings.
MAX_STRING_CHARS = 10_000
SPEC_LIMIT_TYPE = "/problems/spec-limit"
# What Keras counts as a layer when it builds a model from a config (input layers aside).
LAYER_CLASS_NAMES = frozenset(
    name for category in ("layer", "cell", "model") for name in REGISTRIES[category].classes)
# Keras's thread-local list of variables created in a stateless scope, to initialize later.
_DEFERRED = "uninitialized_variables"


def spec_limit(pointer: str, detail: str, limit: int, current: int) -> DomainError:
    return DomainError(422, "Spec over a limit", detail, [FieldError(pointer, detail)],
                       type=SPEC_LIMIT_TYPE, extra={"limit": limit, "current": current})


def check_spec_request(body: dict[str, Any]) -> None:
    """Size, string lengths and layer count of a spec request body, before anything is built
    (a `keras_config` is counted when it is parsed: check_keras_config)."""
    settings = get_settings()
    size = len(json.dumps(body, separators=(",", ":"), ensure_ascii=False)
               .encode("utf-8", "surrogatepass"))  # a lone surrogate is the parser's to refuse
    if size > settings.max_spec_bytes:
        detail = (f"the spec is {size:,} bytes of JSON (limit {settings.max_spec_bytes:,}, "
                  "KJ_MAX_SPEC_BYTES); send vocabularies or statistics this large as a dataset "
                  "and adapt() the layer instead")
        raise DomainError(413, "Spec too large", detail, [FieldError("", detail)],
                          type="/problems/too-large",
                          extra={"limit": settings.max_spec_bytes, "current": size})
    text = body.get("keras_config")
    check_strings({k: v for k, v in body.items() if k != "keras_config"}
                  if isinstance(text, str) else body)
    layers = body.get("layers")
    if isinstance(layers, list):  # each item, and the layer objects in its arguments
        check_layer_count(len(layers) + count_layers(layers), "/layers")


def check_strings(value: Any, pointer: str = "") -> None:
    """422 at the first string (or object key) longer than MAX_STRING_CHARS."""
    pending: list[tuple[str, Any]] = [(pointer, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, str):
            _check_length(item, where)
        elif isinstance(item, dict):
            children = []
            for key, child in item.items():
                child_pointer = f"{where}/{pointer_token(str(key))}"
                _check_length(str(key), child_pointer)
                children.append((child_pointer, child))
            pending.extend(reversed(children))
        elif isinstance(item, list):
            pending.extend(reversed([(f"{where}/{i}", c) for i, c in enumerate(item)]))


def _check_length(text: str, pointer: str) -> None:
    if len(text) > MAX_STRING_CHARS:
        raise spec_limit(pointer, f"a string of {len(text):,} characters (limit "
                                  f"{MAX_STRING_CHARS:,})", MAX_STRING_CHARS, len(text))


def count_layers(value: Any) -> int:
    """Layer objects (`{"class_name": <a Keras layer, cell or model>}`) anywhere in `value`."""
    count = 0
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            name = item.get("class_name")
            if isinstance(name, str) and name in LAYER_CLASS_NAMES:
                count += 1
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return count


def check_layer_count(count: int, pointer: str) -> None:
    limit = get_settings().max_spec_layers
    if count > limit:
        raise spec_limit(pointer, f"{count:,} layers (limit {limit:,}, KJ_MAX_SPEC_LAYERS); "
                                  "nested and wrapped layers count too", limit, count)


@contextmanager
def weightless() -> Iterator[None]:
    """Keras objects built inside get variables with a shape and no memory.

    In a StatelessScope Keras defers each variable's initializer
    (keras/src/backend/common/variables.py) and, with initialize_variables=False, never runs
    it. Such a model can be counted, compiled, described and serialized; it cannot be run. The
    deferred variables are kept on a thread-local Keras list (for a later initialization);
    that list is put back as it was, so the model is freed with its last reference.
    """
    saved = global_state.get_global_attribute(_DEFERRED)
    global_state.set_global_attribute(_DEFERRED, [])
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        global_state.set_global_attribute(_DEFERRED, saved)


def check_param_count(model: Any, pointer: str) -> None:
    """422 when the (weightless-built) `model` holds more than KJ_MAX_SPEC_PARAMS weights."""
    limit = get_settings().max_spec_params
    total = _params(model)
    if total <= limit:
        return
    largest = max(model.layers, key=_params)
    raise spec_limit(pointer, f"{total:,} parameters (limit {limit:,}, KJ_MAX_SPEC_PARAMS); the "
                              f"largest layer, '{largest.name}' ({type(largest).__name__}), "
                              f"holds {_params(largest):,}", limit, total)


def _params(layer: Any) -> int:
    # From the variables' shapes: count_params() refuses a layer that was never built.
    return sum(math.prod(int(d) for d in w.shape) for w in layer.weights)


def check_config_params(config: dict[str, Any], pointer: str) -> None:
    """The parameter limit for an allowlisted model config (a `.keras` file's config.json),
    from a weightless build of it: before Keras loads (and allocates) the weights."""
    # Compiling would build an optimizer, whose scalar variables need a value at once; Keras
    # also empties the functional config it deserializes, and this one is still needed.
    bare = copy.deepcopy({k: v for k, v in config.items() if k != "compile_config"})
    try:
        with weightless():
            model = keras.saving.deserialize_keras_object(bare, safe_mode=True)
    except Exception as exc:  # malformed but allowlisted config
        raise refuse(pointer, f"cannot rebuild the model: {first_line(exc)}") from exc
    check_param_count(model, pointer)
    check_activations(model, pointer)
