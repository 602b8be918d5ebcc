"""TensorFlow Serving's REST request and response formats.

Row format: ``{"instances": [row, ...]}`` where a row is one input value, or ``{name: value}``
for a multi-input model; answered with ``{"predictions": [...]}`` (one entry per row; a dict
per row for a multi-output model). Column format: ``{"inputs": tensor}`` or
``{"inputs": {name: tensor}}``; answered with ``{"outputs": tensor}`` or ``{name: tensor}``.

JSON numbers follow TF Serving (tensorflow_serving/util/json_tensor.cc, which parses with
rapidjson's kParseNanAndInfFlag and writes non-finite floats as raw NaN/Infinity tokens):
the literals ``NaN``, ``Infinity`` and ``-Infinity`` are accepted in requests and written in
responses, and a number too big for a double (``1e400``) is a 400, as rapidjson's "Number too
big to be stored in double" is there.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from app.predict.signature import (
    TensorInfo,
    check_array,
    json_array,
    pointer_token,
    problem,
    wire_array,
)

SIGNATURE_NAME = "serving_default"
_NON_FINITE_TOKENS = (b"NaN", b"Infinity")


def parse_json(raw: bytes) -> Any:
    """The parsed body, or a 400 problem; no parsing exception escapes."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # orjson refuses NaN/Infinity; only a body that could hold them pays for a second
        # parse. Anything else (bad syntax, depth > 1024, 1e400) is answered from orjson.
        if not any(token in raw for token in _NON_FINITE_TOKENS):
            raise _malformed(str(exc)) from None
    try:
        return json.loads(raw, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise _malformed(str(exc) or type(exc).__name__) from None


def _finite_float(token: str) -> float:
    # The stdlib turns 1e400 into inf silently; TF Serving (rapidjson) refuses it.
    value = float(token)
    if math.isinf(value):
        raise ValueError(f"Number too big to be stored in double: {token}")
    return value


def _malformed(reason: str) -> Exception:
    return problem(f"The body is not valid JSON: {reason}", "", "expected a JSON object")


def decode(body: Any, inputs: list[TensorInfo]) -> tuple[list[np.ndarray[Any, Any]], str]:
    """Arrays in model-input order, and which format the request used ("row" or "column")."""
    if not isinstance(body, dict) or ("instances" in body) == ("inputs" in body):
        raise problem("The body must be a JSON object with exactly one of 'instances' (rows) "
                      "or 'inputs' (columns).", "", "expected {'instances': [...]} or "
                      "{'inputs': ...}")
    _check_signature_name(body.get("signature_name"))
    if "instances" in body:
        return _decode_rows(body["instances"], inputs), "row"
    return _decode_columns(body["inputs"], inputs), "column"


def _check_signature_name(name: Any) -> None:
    if name is None or name == SIGNATURE_NAME:
        return
    raise problem(f"Unknown signature_name {name!r}; this model serves only "
                  f"'{SIGNATURE_NAME}'.", "/signature_name", f"'{SIGNATURE_NAME}' or absent")


def _decode_rows(rows: Any, inputs: list[TensorInfo]) -> list[np.ndarray[Any, Any]]:
    if not isinstance(rows, list) or not rows:
        raise problem("'instances' must be a non-empty list of rows.", "/instances",
                      "non-empty list")
    if len(inputs) == 1 and not isinstance(rows[0], dict):
        return [_to_array(rows, inputs[0], "/instances")]
    names = [i.name for i in inputs]
    wanted = set(names)
    columns: dict[str, list[Any]] = {n: [] for n in names}
    # One pass over rows (not over elements) to regroup {name: value} rows into columns.
    for r, row in enumerate(rows):
        if not isinstance(row, dict) or row.keys() != wanted:
            raise problem(f"Row {r} must be an object with the model's inputs: {names}.",
                          f"/instances/{r}", f"keys {names}")
        for n in names:
            columns[n].append(row[n])
    return [_to_array(columns[i.name], i, "/instances") for i in inputs]


def _decode_columns(cols: Any, inputs: list[TensorInfo]) -> list[np.ndarray[Any, Any]]:
    names = [i.name for i in inputs]
    if isinstance(cols, dict):
        if cols.keys() != set(names):
            raise problem(f"'inputs' must name the model's inputs: {names}.", "/inputs",
                          f"keys {names}")
        return [_to_array(cols[i.name], i, f"/inputs/{pointer_token(i.name)}") for i in inputs]
    if len(inputs) != 1:
        raise problem(f"This model has several inputs; pass 'inputs' as an object {names}.",
                      "/inputs", f"keys {names}")
    return [_to_array(cols, inputs[0], "/inputs")]


def _to_array(value: Any, info: TensorInfo, pointer: str) -> np.ndarray[Any, Any]:
    return check_array(json_array(value, info, pointer), info, pointer)


def encode(outputs: list[np.ndarray[Any, Any]], infos: list[TensorInfo], fmt: str) -> bytes:
    """`{"predictions": ...}` for the row format, `{"outputs": ...}` for the column format.
    float16 and bfloat16 outputs are written as float32 numbers, string outputs as text."""
    # orjson serialises C order only, and no float16/bfloat16 (sent as float32, exactly).
    outputs = [np.ascontiguousarray(wire_array(o)) for o in outputs]
    named = len(outputs) > 1
    body: dict[str, Any]
    if fmt == "column":
        body = {"outputs": dict(zip([i.name for i in infos], outputs, strict=True))
                if named else outputs[0]}
    elif named:
        body = {"predictions": [{i.name: o[r] for i, o in zip(infos, outputs, strict=True)}
                                for r in range(outputs[0].shape[0])]}
    else:
        body = {"predictions": outputs[0]}
    return dumps(body, outputs)


def dumps(body: Any, arrays: list[np.ndarray[Any, Any]]) -> bytes:
    """`body` as JSON bytes; NumPy arrays inside it are written as nested lists.

    orjson writes NaN and ±inf as null, which a client would read as a missing value; TF
    Serving writes the NaN/Infinity/-Infinity tokens. So when a float output (among `arrays`)
    holds a non-finite value, or an output is text (which orjson's NumPy support lacks), this
    one response goes through the stdlib encoder instead.
    """
    if all(a.dtype.kind in "biu" or (a.dtype.kind == "f" and np.isfinite(a).all())
           for a in arrays):
        return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(body, allow_nan=True, separators=(",", ":"), ensure_ascii=False,
                      default=_to_builtin).encode()


def _to_builtin(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
