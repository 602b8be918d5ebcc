"""What a stored spec's outputs take as training targets, read from its summary and canonical
Keras config (no Keras needed), so a fit job whose `y` cannot fit is refused at submit time
instead of training to nonsense (a loss broadcasts [n, 3] targets against [n, 1] outputs
without complaint).

Only what is certain is checked: outputs whose shape the summary records, and losses whose
target shape is known. Anything else (an unknown or custom loss, a shared layer's later call,
a model class other than Sequential/Functional) is accepted and left to Keras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Shape = tuple[int | None, ...]

DENSE = "dense"  # the target has the output's shape (Keras adds or drops a trailing 1)
SPARSE = "sparse"  # integer class ids: the output's shape without its last (class) axis

# Loss names (Keras's function names, aliases and class names) lower-cased without '_'.
_DENSE_LOSSES = frozenset({
    "meansquarederror", "mse", "meanabsoluteerror", "mae", "meanabsolutepercentageerror",
    "mape", "meansquaredlogarithmicerror", "msle", "binarycrossentropy",
    "binaryfocalcrossentropy", "categoricalcrossentropy", "categoricalfocalcrossentropy",
    "hinge", "squaredhinge", "categoricalhinge", "huber", "logcosh", "kldivergence", "kld",
    "kullbackleiblerdivergence", "poisson", "cosinesimilarity", "dice", "tversky",
})
_SPARSE_LOSSES = frozenset({"sparsecategoricalcrossentropy"})


@dataclass(frozen=True)
class Target:
    """One model output: its name, its per-row shape, and what its loss compares it with."""

    name: str
    shape: Shape
    loss: str  # as the spec names it, for messages
    kind: str | None  # DENSE, SPARSE, or None when the loss is not one known here


def spec_targets(spec: dict[str, Any], keras_config: dict[str, Any],
                 summary: dict[str, Any]) -> list[Target] | None:
    """The model's outputs in order, each with its loss's target kind; None when the outputs
    cannot be told for sure."""
    outputs = _outputs(keras_config, summary)
    if outputs is None:
        return None
    compile_block = spec.get("compile")
    loss = compile_block.get("loss") if isinstance(compile_block, dict) else None
    names = [name for name, _ in outputs]
    return [Target(name, shape, _loss_name(one), _loss_kind(one))
            for (name, shape), one in zip(outputs, _per_output(loss, names), strict=True)]


def mismatch(rows: Shape, target: Target) -> str | None:
    """Why targets whose rows have shape `rows` cannot train `target`, or None if Keras takes
    them (an unknown loss takes anything)."""
    want = target.shape
    if target.kind == DENSE:
        if _fits(rows, want) or (want and want[-1] in (1, None) and _fits(rows, want[:-1])) \
                or (rows and rows[-1] == 1 and _fits(rows[:-1], want)):
            return None
        expected = f"{list(want)} (the output's shape)"
    elif target.kind == SPARSE and want:
        classes = want[:-1]
        if _fits(rows, classes) or _fits(rows, (*classes, 1)):
            return None
        expected = (f"{list(classes)} or {[*classes, 1]} (integer class ids for an output of "
                    f"shape {list(want)})")
    else:
        return None
    return (f"rows of y have shape {list(rows)}; output '{target.name}' with loss "
            f"'{target.loss}' takes {expected}")


def row_shape(arrays: dict[str, Any], selector: str | list[str]) -> Shape | None:
    """The per-row shape of what `selector` picks from a dataset's arrays (their recorded
    shapes): one array's own, or stacked columns [total width]; None if unknown."""
    if isinstance(selector, str):
        shape = arrays.get(selector, {}).get("shape")
        return tuple(shape[1:]) if isinstance(shape, list) and shape else None
    widths = []
    for name in selector:
        shape = arrays.get(name, {}).get("shape")
        if not isinstance(shape, list) or not shape:
            return None
        widths.append(math.prod(shape[1:]))
    return (sum(widths),)


def _fits(got: Shape, want: Shape) -> bool:
    return len(got) == len(want) and all(w is None or w == g for g, w in zip(got, want,
                                                                             strict=True))


def _outputs(keras_config: dict[str, Any], summary: dict[str, Any]
             ) -> list[tuple[str, Shape]] | None:
    layers = [layer for layer in summary.get("layers", []) if isinstance(layer, dict)]
    if keras_config.get("class_name") == "Sequential":
        if not layers:
            return None
        shape = _row(layers[-1].get("output_shape"))
        return None if shape is None else [(str(layers[-1].get("name")), shape)]
    if keras_config.get("class_name") != "Functional":
        return None
    config = keras_config.get("config")
    refs = config.get("output_layers") if isinstance(config, dict) else None
    shapes = {layer.get("name"): layer.get("output_shape") for layer in layers}
    if isinstance(refs, dict):  # dict outputs: the model's output names are the keys
        named = list(refs.items())
    elif isinstance(refs, list) and refs and isinstance(refs[0], str):  # one output
        named = [(refs[0], refs)]
    elif isinstance(refs, list) and refs and all(isinstance(r, list) and r for r in refs):
        named = [(r[0], r) for r in refs]
    else:
        return None
    out = []
    for name, ref in named:
        shape = _output_shape(ref, shapes)
        if shape is None:
            return None
        out.append((str(name), shape))
    return out


def _output_shape(ref: Any, shapes: dict[Any, Any]) -> Shape | None:
    """A Keras output reference [layer, node index, tensor index] as the summary's shape."""
    if not (isinstance(ref, list) and len(ref) == 3 and ref[1] == 0):
        return None  # the summary records a shared layer's first call only
    shape = shapes.get(ref[0])
    if isinstance(shape, list) and shape and isinstance(shape[0], list):  # several outputs
        index = ref[2]
        shape = shape[index] if isinstance(index, int) and 0 <= index < len(shape) else None
    elif ref[2] != 0:
        return None
    return _row(shape)


def _row(shape: Any) -> Shape | None:
    """[batch, *dims] as the per-row dims, if it is a plain shape."""
    if not isinstance(shape, list) or not shape or not all(
            d is None or (isinstance(d, int) and not isinstance(d, bool)) for d in shape):
        return None
    return tuple(shape[1:])


def _per_output(loss: Any, names: list[str]) -> list[Any]:
    """The loss of each output: one loss for all, a list by position, a dict by name."""
    if isinstance(loss, list):
        return [loss[i] if i < len(loss) else None for i in range(len(names))]
    if isinstance(loss, dict) and "class_name" not in loss:
        return [loss.get(name) for name in names]
    return [loss] * len(names)


def _loss_name(loss: Any) -> str:
    if isinstance(loss, dict):
        return str(loss.get("class_name"))
    return str(loss)


def _loss_kind(loss: Any) -> str | None:
    key = _loss_name(loss).replace("_", "").lower()
    if key in _SPARSE_LOSSES:
        return SPARSE
    return DENSE if key in _DENSE_LOSSES else None
