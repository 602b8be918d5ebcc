"""TensorFlow Serving's REST request and response formats.

Row format: ``{"instances": [row, ...]}`` where a row is one input value, or ``{name: value}``
for a multi-input model; answered with ``{"predictions": [...]}`` (one entry per row; a dict
per row for a multi-output model). Column format: ``{"inputs": tensor}`` or
``{"inputs": {name: tensor}}``; answered with ``{"outputs": tensor}`` or ``{name: tensor}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.core.errors import DomainError, FieldError, bad_request
from app.predict.servable import TensorInfo


def _problem(detail: str, pointer: str, what: str) -> DomainError:
    err = bad_request(detail, [FieldError(pointer, what)])
    err.extra["error"] = detail  # TF Serving clients read "error"
    return err


def _to_array(value: Any, info: TensorInfo, pointer: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=info.dtype)
    except (ValueError, TypeError) as exc:
        raise _problem(f"Input '{info.name}' is not a rectangular array of numbers: {exc}",
                       pointer, f"expected shape {_fmt(info.shape)} of {info.dtype}") from exc
    expected = info.shape[1:]
    got = arr.shape[1:]
    if arr.ndim != len(info.shape) or any(e is not None and e != g
                                          for e, g in zip(expected, got, strict=True)):
        raise _problem(
            f"Input '{info.name}' has shape {_fmt(arr.shape)}; the model expects "
            f"{_fmt(info.shape)} (None = any size).",
            pointer, f"expected shape {_fmt(info.shape)}")
    return arr


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def decode(body: Any, inputs: list[TensorInfo]) -> tuple[list[np.ndarray], str]:
    """Arrays in model-input order, and which format the request used ("row" or "column")."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise _problem("The body must be a JSON object with exactly one of 'instances' (rows) "
                       "or 'inputs' (columns).", "", "expected {'instances': [...]} or "
                       "{'inputs': ...}")
    names = [i.name for i in inputs]
    if "instances" in body:
        rows = body["instances"]
        if not isinstance(rows, list) or not rows:
            raise _problem("'instances' must be a non-empty list of rows.", "/instances",
                           "non-empty list")
        if len(inputs) == 1 and not isinstance(rows[0], dict):
            return [_to_array(rows, inputs[0], "/instances")], "row"
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for r, row in enumerate(rows):
            if not isinstance(row, dict) or set(row) != set(names):
                raise _problem(f"Row {r} must be an object with the model's inputs: {names}.",
                               f"/instances/{r}", f"keys {names}")
            for n in names:
                columns[n].append(row[n])
        return [_to_array(columns[i.name], i, "/instances") for i in inputs], "row"
    cols = body["inputs"]
    if isinstance(cols, dict):
        if set(cols) != set(names):
            raise _problem(f"'inputs' must name the model's inputs: {names}.", "/inputs",
                           f"keys {names}")
        return [_to_array(cols[i.name], i, f"/inputs/{i.name}") for i in inputs], "column"
    if len(inputs) != 1:
        raise _problem(f"This model has several inputs; pass 'inputs' as an object {names}.",
                       "/inputs", f"keys {names}")
    return [_to_array(cols, inputs[0], "/inputs")], "column"


def encode(outputs: list[np.ndarray], infos: list[TensorInfo], fmt: str) -> dict[str, Any]:
    if fmt == "column":
        if len(outputs) == 1:
            return {"outputs": outputs[0].tolist()}
        return {"outputs": {i.name: o.tolist() for i, o in zip(infos, outputs, strict=True)}}
    if len(outputs) == 1:
        return {"predictions": outputs[0].tolist()}
    n = outputs[0].shape[0]
    return {"predictions": [{i.name: o[r].tolist() for i, o in zip(infos, outputs, strict=True)}
                            for r in range(n)]}
