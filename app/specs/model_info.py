"""Read-side helpers on built models: a JSON summary, and adapting preprocessing layers."""

from __future__ import annotations

from typing import Any

from app.core.errors import FieldError, invalid


def _shape(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_shape(v) for v in value]
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    return [None if d is None else int(d) for d in value.shape]


def describe(model: Any) -> dict[str, Any]:
    """{"layers": [{name, class_name, output_shape, params}], total_params, trainable_params}.

    output_shape is [dims...] (null for unknown), a list of those for multi-output layers,
    and the first call's shape for shared layers (each call has the same layer, not shape).
    """
    layers = []
    for layer in model.layers:
        nodes = getattr(layer, "_inbound_nodes", [])
        try:
            shape = _shape(nodes[0].outputs[0] if len(nodes[0].outputs) == 1
                           else nodes[0].outputs) if nodes else _shape(layer.output)
        except (AttributeError, ValueError, IndexError):  # never called: no shape known
            shape = None
        layers.append({"name": layer.name, "class_name": type(layer).__name__,
                       "output_shape": shape, "params": int(layer.count_params())})
    trainable = sum(int(_size(w.shape)) for w in model.trainable_weights)
    return {"layers": layers, "total_params": int(model.count_params()),
            "trainable_params": trainable}


def _size(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def needs_adapt(layer: Any) -> bool:
    """True for preprocessing layers whose state must be learned from data first."""
    name = type(layer).__name__
    if name == "Normalization":
        return getattr(layer, "input_mean", None) is None
    if name == "Discretization":
        return getattr(layer, "bin_boundaries", None) is None
    if name in ("StringLookup", "IntegerLookup"):
        return not getattr(layer, "_has_input_vocabulary", True)
    if name == "TextVectorization":
        return not getattr(getattr(layer, "_lookup_layer", None), "_has_input_vocabulary", True)
    return False


def needs_adapting(model: Any) -> bool:
    return any(needs_adapt(layer) for layer in _all_layers(model))


def adapt_layers(model: Any, x: Any) -> None:
    """adapt() every layer that needs it on the training data of the model input feeding it.

    Rule: a layer needing adapt() (Normalization without mean/variance, Discretization
    without bin_boundaries, StringLookup/IntegerLookup/TextVectorization without vocabulary)
    must take a model input directly (every call of it); it is adapted on that input's
    array: `x` itself for a single-input model, `x[input name]` for a dict. A layer further
    down the graph cannot be adapted from raw data, so it is a 422 telling the user to give
    its statistics/vocabulary explicitly.
    """
    inputs = list(model.inputs)
    names = [t.name for t in inputs]
    for layer in _all_layers(model):
        if not needs_adapt(layer):
            continue
        sources = {_input_index(node, inputs) for node in getattr(layer, "_inbound_nodes", [])}
        if len(sources) != 1 or None in sources:
            detail = (f"layer '{layer.name}' ({type(layer).__name__}) needs adapt() but is not "
                      "fed directly by one model input; give its mean/variance, "
                      "bin_boundaries or vocabulary in the spec")
            raise invalid(detail, [FieldError("/layers", detail)])
        (index,) = sources
        assert index is not None
        data = x[names[index]] if isinstance(x, dict) else x
        layer.adapt(data)


def _all_layers(model: Any) -> list[Any]:
    out: list[Any] = []
    for layer in model.layers:
        out.append(layer)
        out.extend(getattr(layer, "layers", []) or [])  # nested models
    return out


def _input_index(node: Any, inputs: list[Any]) -> int | None:
    tensors = node.input_tensors
    if len(tensors) != 1:
        return None
    for i, t in enumerate(inputs):
        if tensors[0] is t:
            return i
    return None
