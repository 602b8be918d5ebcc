"""Activation memory of a model, per row, from the shapes its layers output.

What a model's weights take is bounded by the parameter limit; what it computes is not: a
`RepeatVector(20_000_000)` holds no weight and outputs 80 MB per row, and a batch of 64 of them
takes gigabytes while it runs. Keras knows every layer's output shape once the model is built,
and a weightless build (app.specs.limits.weightless) is enough, so the figure is had without
allocating a tensor: for each call of each layer (nested models' layers included), the
elements of its outputs past the batch dimension times their dtype's size, summed. That is an
estimate (TensorFlow frees some outputs early and keeps some intermediates no output shows),
but it grows with what a request costs, which is what a bound needs. A dimension of unknown
size (a variable-length sequence) counts as 1: per row and per step.

Two limits: one layer's outputs (KJ_MAX_LAYER_OUTPUT_BYTES_PER_ROW, 64 MiB: the largest of
ResNet50 at 224x224 is 3.4 MB, a RepeatVector(20_000_000) 80 MB) and all of them together
(KJ_MAX_ACTIVATION_BYTES_PER_ROW, 512 MiB: ResNet50 at 224x224 sums to 142 MiB, MobileNetV2
to 83 MiB).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.config import get_settings
from app.core.errors import DomainError

# Dtypes numpy cannot size; a string tensor holds at least a pointer per element.
_ITEMSIZE = {"bfloat16": 2, "string": 8, "object": 8}


@dataclass(frozen=True)
class Activations:
    bytes_per_row: int
    largest_layer: str  # "name (Class)"
    largest_bytes: int


def activations(model: Any) -> Activations:
    """The bytes per row of every layer's outputs in `model` (built, weights or not)."""
    per_layer: dict[int, tuple[Any, int]] = {}
    for layer, outputs in _calls(model):
        size = sum(_tensor_bytes(t) for t in _flatten(outputs))
        _, before = per_layer.get(id(layer), (layer, 0))
        per_layer[id(layer)] = (layer, before + size)
    if not per_layer:
        return Activations(0, "", 0)
    layer, size = max(per_layer.values(), key=lambda item: item[1])
    return Activations(sum(size for _, size in per_layer.values()),
                       f"'{layer.name}' ({type(layer).__name__})", size)


def over_limit(found: Activations) -> tuple[str, int, int] | None:
    """(detail, limit, current) when `found` passes a limit: one layer's outputs past
    KJ_MAX_LAYER_OUTPUT_BYTES_PER_ROW, or all of them past KJ_MAX_ACTIVATION_BYTES_PER_ROW;
    None when within both."""
    settings = get_settings()
    layer_limit, total_limit = (settings.max_layer_output_bytes_per_row,
                                settings.max_activation_bytes_per_row)
    if found.largest_bytes > layer_limit:
        return (f"layer {found.largest_layer} outputs {found.largest_bytes:,} bytes per row of "
                f"input (limit {layer_limit:,}, KJ_MAX_LAYER_OUTPUT_BYTES_PER_ROW): make its "
                "output smaller (fewer units, repeats, steps or channels), or downsample "
                "earlier in the model", layer_limit, found.largest_bytes)
    if found.bytes_per_row > total_limit:
        return (f"the layers' outputs take {found.bytes_per_row:,} bytes per row of input "
                f"(limit {total_limit:,}, KJ_MAX_ACTIVATION_BYTES_PER_ROW); the largest, "
                f"{found.largest_layer}, outputs {found.largest_bytes:,}: use fewer or "
                "smaller layers, or downsample earlier in the model", total_limit,
                found.bytes_per_row)
    return None


def check_activations(model: Any, pointer: str) -> Activations:
    """422 (a /problems/spec-limit) when `model`'s layers output more per row than the limits
    allow (over_limit); the figures otherwise."""
    from app.specs.limits import spec_limit

    found = activations(model)
    refused = over_limit(found)
    if refused is not None:
        raise spec_limit(pointer, *refused)
    return found


def check_servable(found: Activations) -> None:
    """The same limits for a stored version loaded to serve (one stored before they were
    checked, or past lowered ones): a 503, since the request is not to blame."""
    refused = over_limit(found)
    if refused is not None:
        raise DomainError(503, "Model unavailable", f"This version cannot be served: "
                          f"{refused[0]}.", type="/problems/model-unavailable")


def _calls(model: Any, seen: set[int] | None = None) -> Iterator[tuple[Any, Any]]:
    """(layer, outputs) for each call of a layer in `model`'s graph, nested models' graphs
    included. The graph's own nodes (Keras's Functional keeps them by depth; a Sequential
    wraps a Functional) and not each layer's inbound nodes: loading a saved model calls its
    layers more than once, and only one call is the model's."""
    seen = set() if seen is None else seen
    if id(model) in seen:
        return
    seen.add(id(model))
    graph = model if hasattr(model, "_nodes_by_depth") else getattr(model, "_functional", None)
    if graph is None:  # not a graph (a bare layer): its first call
        for layer in getattr(model, "layers", ()):
            nodes = getattr(layer, "_inbound_nodes", ())
            if nodes:
                yield layer, nodes[0].outputs
        return
    # Deepest first: from the inputs on, so that of equal layers the earliest is named.
    for _depth, nodes in sorted(graph._nodes_by_depth.items(), reverse=True):
        for node in nodes:
            yield node.operation, node.outputs
            if hasattr(node.operation, "layers"):  # a nested model: what runs inside it too
                yield from _calls(node.operation, seen)


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif value is not None:
        yield value


def _tensor_bytes(tensor: Any) -> int:
    shape = getattr(tensor, "shape", None)
    if shape is None:
        return 0
    dims = [1 if d is None else int(d) for d in tuple(shape)[1:]]
    return math.prod(dims) * _itemsize(getattr(tensor, "dtype", "float32"))


def _itemsize(dtype: Any) -> int:
    name = str(getattr(dtype, "name", dtype))
    if name in _ITEMSIZE:
        return _ITEMSIZE[name]
    try:
        return int(np.dtype(name).itemsize)
    except TypeError:
        return 4
