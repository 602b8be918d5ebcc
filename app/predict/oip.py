"""Open Inference Protocol v2 (KServe v2, Triton) over HTTP: infer requests and responses,
with Triton's binary tensor extension, and model metadata.

Request: ``{"id"?, "inputs": [{"name", "shape", "datatype", "data" | "parameters":
{"binary_data_size": n}}], "outputs"?: [{"name", "parameters"?: {"binary_data": bool}}],
"parameters"?: {"binary_data_output": bool}}``. With the binary extension the body is that JSON
(its length in the ``Inference-Header-Content-Length`` header) followed by the raw little-endian
bytes of each binary input, in the order the inputs are listed. Responses mirror it: binary
outputs carry ``parameters.binary_data_size`` and follow the JSON, in output order.

This follows what `tritonclient.http` builds (`_get_inference_request`) and parses
(`InferResult`): with no "outputs" it asks for every output in binary
(``binary_data_output: true``); each requested output says ``binary_data`` itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.predict.codec import dumps, parse_json
from app.predict.rows import check_infer_header
from app.predict.signature import (
    TensorInfo,
    check_array,
    check_shape,
    json_array,
    numpy_dtype,
    oip_datatype,
    problem,
    wire_array,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_MEDIA = "application/json"
BINARY_MEDIA = "application/octet-stream"
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")
# BYTES elements in the binary extension: a 4-byte little-endian length, then the bytes.
_BYTES_LENGTH = np.dtype("<u4")

Arrays = list[np.ndarray[Any, Any]]


def parse_header_length(value: str | None) -> int | None:
    """The Inference-Header-Content-Length header as an int (None when absent)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise problem(f"{HEADER_LENGTH} must be an integer, not {value!r}.", "",
                      f"{HEADER_LENGTH}: <bytes of JSON>") from None


def decode_infer(raw: bytes, header_length: int | None, inputs: list[TensorInfo], *,
                 outputs: list[TensorInfo] | None = None,
                 max_rows: tuple[int, str] | None = None,
                 ) -> tuple[Arrays, list[str] | None, set[str] | bool, str | None]:
    """Arrays in model-input order; the requested output names (None: all); which outputs to
    send in binary (a set when outputs are named, else one flag for all); the request id.

    `outputs`, when given, lets unknown requested outputs be refused before the model runs;
    `max_rows` (the limit, and why), a tensor of more rows (413), before its data is parsed.
    """
    header, tail = _split(raw, header_length)
    if max_rows is not None:
        check_infer_header(header, inputs, *max_rows)
    body = parse_json(header)
    if not isinstance(body, dict):
        raise problem("The inference request must be a JSON object.", "",
                      "expected {'inputs': [...]}")
    request_id = _request_id(body.get("id"))
    arrays = _decode_inputs(body.get("inputs"), tail, inputs)
    requested, binary = _requested_outputs(body, outputs)
    return arrays, requested, binary, request_id


def _split(raw: bytes, header_length: int | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return raw, memoryview(b"")
    if not 0 < header_length <= len(raw):
        raise problem(f"{HEADER_LENGTH} is {header_length} but the body has {len(raw)} bytes.",
                      "", f"{HEADER_LENGTH} between 1 and the body's length")
    # A view, not a copy: binary inputs are read in place with np.frombuffer.
    return raw[:header_length], memoryview(raw)[header_length:]


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise problem("'id' must be a string.", "/id", "a string")


def _decode_inputs(tensors: Any, tail: memoryview, inputs: list[TensorInfo]) -> Arrays:
    names = [i.name for i in inputs]
    if not isinstance(tensors, list):
        raise problem(f"'inputs' must be a list of tensors named {names}.", "/inputs",
                      "a list of {name, shape, datatype, data}")
    by_name = {i.name: i for i in inputs}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for k, tensor in enumerate(tensors):
        pointer = f"/inputs/{k}"
        info = _input_info(tensor, by_name, arrays, pointer)
        arrays[info.name], offset = _decode_tensor(tensor, info, tail, offset, pointer)
    if offset != len(tail):
        raise problem(f"The body has {len(tail) - offset} bytes after the binary inputs "
                      "declared by 'binary_data_size'.", "/inputs",
                      "binary data sizes that add up to the bytes after the JSON")
    missing = [n for n in names if n not in arrays]
    if missing:
        raise problem(f"Missing inputs {missing}; the model takes {names}.", "/inputs",
                      f"tensors named {names}")
    return [arrays[n] for n in names]


def _input_info(tensor: Any, by_name: dict[str, TensorInfo],
                seen: dict[str, np.ndarray[Any, Any]], pointer: str) -> TensorInfo:
    if not isinstance(tensor, dict):
        raise problem("Each input must be an object {name, shape, datatype, data}.", pointer,
                      "an object")
    name = tensor.get("name")
    info = by_name.get(name) if isinstance(name, str) else None
    if info is None:
        raise problem(f"Unknown input {name!r}; the model takes {list(by_name)}.",
                      f"{pointer}/name", f"one of {list(by_name)}")
    if name in seen:
        raise problem(f"Input '{name}' is given twice.", f"{pointer}/name", "each input once")
    return info


def _decode_tensor(tensor: dict[str, Any], info: TensorInfo, tail: memoryview, offset: int,
                   pointer: str) -> tuple[np.ndarray[Any, Any], int]:
    dtype = _datatype(tensor.get("datatype"), info, f"{pointer}/datatype")
    shape = _shape(tensor.get("shape"), f"{pointer}/shape")
    check_shape(shape, info, f"{pointer}/shape")
    params = _parameters(tensor.get("parameters"), f"{pointer}/parameters")
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise problem(f"Input '{info.name}' has neither 'data' nor "
                          "parameters.binary_data_size.", f"{pointer}/data", "a list of values")
        return _json_data(tensor["data"], shape, info, f"{pointer}/data"), offset
    if "data" in tensor:
        raise problem(f"Input '{info.name}' has both 'data' and binary data.", f"{pointer}/data",
                      "either 'data' or parameters.binary_data_size")
    if dtype.kind == "O":
        return _binary_strings(size, shape, info, tail, offset,
                               f"{pointer}/parameters/binary_data_size")
    arr = _binary_data(size, shape, dtype, info, tail, offset,
                       f"{pointer}/parameters/binary_data_size")
    return arr, offset + arr.nbytes


def _datatype(datatype: Any, info: TensorInfo, pointer: str) -> np.dtype[Any]:
    dtype = numpy_dtype(datatype, pointer)
    try:
        expected = oip_datatype(info.dtype)
    except ValueError:
        raise problem(f"Input '{info.name}' is {info.describe()}, which this protocol cannot "
                      "carry here.", pointer, "a numeric or boolean input") from None
    # Triton refuses a datatype other than the model's; no silent FP64 -> FP32 here either.
    if datatype != expected:
        raise problem(f"Input '{info.name}' has datatype {datatype}; the model expects "
                      f"{info.describe()} ({expected}).", pointer, expected)
    return dtype


def _shape(shape: Any, pointer: str) -> tuple[int, ...]:
    if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise problem("'shape' must be a list of non-negative integers.", pointer,
                      "a list of non-negative integers")
    return tuple(shape)


def _parameters(params: Any, pointer: str) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise problem("'parameters' must be an object.", pointer, "an object")
    for key in _SHARED_MEMORY:
        if key in params:
            raise problem("Shared-memory tensors are not supported; send the data in the body.",
                          f"{pointer}/{key}", "data in the request body")
    return params


def _json_data(data: Any, shape: tuple[int, ...], info: TensorInfo,
               pointer: str) -> np.ndarray[Any, Any]:
    # 'data' is row-major, flat or nested; only the element count has to match the shape.
    arr = json_array(data, info, pointer)
    count = int(np.prod(shape))
    if arr.size != count:
        raise problem(f"Input '{info.name}' has {arr.size} values in 'data' but shape "
                      f"{list(shape)} needs {count}.", pointer, f"{count} values")
    return check_array(arr.reshape(shape), info, pointer)


def _binary_data(size: Any, shape: tuple[int, ...], dtype: np.dtype[Any], info: TensorInfo,
                 tail: memoryview, offset: int, pointer: str) -> np.ndarray[Any, Any]:
    count = int(np.prod(shape))
    nbytes = count * dtype.itemsize
    if not isinstance(size, int) or isinstance(size, bool) or size != nbytes:
        raise problem(f"Input '{info.name}' declares binary_data_size {size!r} but shape "
                      f"{list(shape)} of {dtype.name} takes {nbytes} bytes.", pointer,
                      f"{nbytes}")
    if offset + nbytes > len(tail):
        raise problem(f"Input '{info.name}' needs {nbytes} bytes of binary data but only "
                      f"{len(tail) - offset} remain in the body.", pointer,
                      "binary data present after the JSON")
    if count == 0:
        return np.empty(shape, dtype)
    # The extension's tensors are little-endian whatever this host is; a view, no copy.
    wire = dtype.newbyteorder("<")
    arr = np.frombuffer(tail, dtype=wire, count=count, offset=offset).reshape(shape)
    return arr if wire == dtype else arr.astype(dtype)


def _binary_strings(size: Any, shape: tuple[int, ...], info: TensorInfo, tail: memoryview,
                    offset: int, pointer: str) -> tuple[np.ndarray[Any, Any], int]:
    """A BYTES tensor in the binary extension: `count` length-prefixed elements in exactly
    `size` bytes; as an `S` array for the model's string input."""
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(tail) - offset:
        raise problem(f"Input '{info.name}' declares binary_data_size {size!r} but "
                      f"{len(tail) - offset} bytes remain in the body.", pointer,
                      "the size of the length-prefixed elements")
    data, count, items, at = bytes(tail[offset:offset + size]), int(np.prod(shape)), [], 0
    for _ in range(count):
        if at + 4 > size:
            break
        length = int(np.frombuffer(data, _BYTES_LENGTH, 1, at)[0])
        items.append(data[at + 4:at + 4 + length])
        at += 4 + length
    if len(items) != count or at != size:
        raise problem(f"Input '{info.name}' of shape {list(shape)} needs {count} "
                      f"length-prefixed elements in exactly {size} bytes.", pointer,
                      "4-byte little-endian lengths, each followed by its bytes")
    arr = np.array(items, dtype=np.bytes_).reshape(shape)
    return check_array(arr, info, pointer), offset + size


def _strings_wire(arr: np.ndarray[Any, Any]) -> bytes:
    """A string output as BYTES elements of the binary extension."""
    parts = []
    for value in arr.reshape(-1).tolist():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts += [len(raw).to_bytes(4, "little"), raw]
    return b"".join(parts)


def _requested_outputs(body: dict[str, Any], outputs: list[TensorInfo] | None,
                       ) -> tuple[list[str] | None, set[str] | bool]:
    params = _parameters(body.get("parameters"), "/parameters")
    default = params.get("binary_data_output", False)
    if not isinstance(default, bool):
        raise problem("'binary_data_output' must be true or false.",
                      "/parameters/binary_data_output", "a boolean")
    spec = body.get("outputs")
    if spec is None:
        return None, default
    if not isinstance(spec, list):
        raise problem("'outputs' must be a list of {name, parameters}.", "/outputs", "a list")
    known = None if outputs is None else [o.name for o in outputs]
    names: list[str] = []
    binary: set[str] = set()
    for k, entry in enumerate(spec):
        name, wants_binary = _requested_output(entry, known, names, default, f"/outputs/{k}")
        names.append(name)
        if wants_binary:
            binary.add(name)
    return names, binary


def _requested_output(entry: Any, known: list[str] | None, seen: list[str], default: bool,
                      pointer: str) -> tuple[str, bool]:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or (known is not None and name not in known) or name in seen:
        what = f"one of {known}" if known is not None else "an output name"
        raise problem(f"Requested output {name!r} is unknown or repeated; the model's outputs "
                      f"are {known}.", f"{pointer}/name", what)
    params = _parameters(entry.get("parameters"), f"{pointer}/parameters")
    if params.get("classification"):
        raise problem("Classification outputs are not supported.",
                      f"{pointer}/parameters/classification", "no classification")
    wants_binary = params.get("binary_data", default)
    if not isinstance(wants_binary, bool):
        raise problem("'binary_data' must be true or false.",
                      f"{pointer}/parameters/binary_data", "a boolean")
    return name, wants_binary


def encode_infer(model_name: str, version: int | str, outputs: Arrays, infos: list[TensorInfo],
                 requested: list[str] | None, binary: set[str] | bool,
                 request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (Content-Type, and Inference-Header-Content-Length
    when binary outputs follow the JSON)."""
    selected = _select(outputs, infos, requested)
    binary_names = ({i.name for i, _ in selected} if binary is True
                    else set() if binary is False else binary)
    entries: list[dict[str, Any]] = []
    chunks: list[bytes | memoryview] = []
    for info, arr in selected:
        # Binary tensors go in their own datatype (BF16, FP16, BYTES as Triton sends them);
        # JSON numbers of float16/bfloat16 are float32 ones (exact), strings text.
        entry: dict[str, Any] = {"name": info.name, "datatype": oip_datatype(arr.dtype),
                                 "shape": list(arr.shape)}
        if info.name in binary_names:
            if arr.dtype.kind in "OSU":
                raw: bytes | memoryview = _strings_wire(arr)
            else:
                # As bytes: a buffer of ml_dtypes' bfloat16 itself cannot be exported.
                raw = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).reshape(
                    -1).view(np.uint8).data
            entry["parameters"] = {"binary_data_size": raw.nbytes if isinstance(
                raw, memoryview) else len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(wire_array(arr)).reshape(-1)
        entries.append(entry)
    body: dict[str, Any] = {"model_name": model_name, "model_version": str(version)}
    if request_id:
        body["id"] = request_id
    body["outputs"] = entries
    header = dumps(body, [e["data"] for e in entries if "data" in e])
    if not chunks:
        return header, {"Content-Type": JSON_MEDIA}
    # bytes.join reads each (C-contiguous) array's buffer directly: one copy into the body.
    payload = b"".join([header, *chunks])
    return payload, {"Content-Type": BINARY_MEDIA, HEADER_LENGTH: str(len(header))}


def _select(outputs: Arrays, infos: list[TensorInfo], requested: list[str] | None,
            ) -> list[tuple[TensorInfo, np.ndarray[Any, Any]]]:
    pairs = list(zip(infos, outputs, strict=True))
    if requested is None:
        return pairs
    by_name = {info.name: (info, arr) for info, arr in pairs}
    unknown = [n for n in requested if n not in by_name]
    if unknown:
        raise problem(f"Requested outputs {unknown} are unknown; the model's outputs are "
                      f"{list(by_name)}.", "/outputs", f"names among {list(by_name)}")
    return [by_name[n] for n in requested]


def model_metadata(name: str, versions: list[int] | list[str], platform: str,
                   inputs: list[TensorInfo], outputs: list[TensorInfo]) -> dict[str, Any]:
    """The v2 model metadata response; -1 marks a dimension of any size."""
    return {"name": name, "versions": [str(v) for v in versions], "platform": platform,
            "inputs": [_tensor_metadata(i) for i in inputs],
            "outputs": [_tensor_metadata(o) for o in outputs]}


def _tensor_metadata(info: TensorInfo) -> dict[str, Any]:
    datatype = "BYTES" if info.dtype == "object" else oip_datatype(info.dtype)
    return {"name": info.name, "datatype": datatype,
            "shape": [-1 if d is None else d for d in info.shape]}
