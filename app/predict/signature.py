"""A model's input/output signature and the checks every wire format shares.

Each codec (TF Serving JSON, .npy/.npz, Open Inference Protocol) turns its body into NumPy
arrays and hands them to `check_array`, so shape and dtype errors read the same whatever the
format: they name the input and the signature the model expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ml_dtypes
import numpy as np

from app.core.errors import DomainError, FieldError

BFLOAT16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
_TITLES = {400: "Bad request", 413: "Payload too large", 415: "Unsupported media type"}
_TYPES = {400: "/problems/bad-request", 413: "/problems/payload-too-large",
          415: "/problems/unsupported-media-type"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int | None, ...]  # including the batch dimension (None)
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    def describe(self) -> str:
        """'[None, 2] of float32', the form every shape/dtype error quotes."""
        return f"{fmt_shape(self.shape)} of {self.dtype}"


def fmt_shape(shape: tuple[int | None, ...] | list[int | None]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


def pointer_token(name: str) -> str:
    """A name as one JSON pointer segment (RFC 6901: '~' and '/' are escaped)."""
    return name.replace("~", "~0").replace("/", "~1")


def problem(detail: str, pointer: str, what: str, *, status: int = 400) -> DomainError:
    """A DomainError that renders as problem+json and also carries TF Serving's / Triton's
    `{"error": ...}` field, which their clients read instead of `detail`."""
    err = DomainError(status, _TITLES[status], detail, [FieldError(pointer, what)],
                      type=_TYPES[status])
    err.extra["error"] = detail
    return err


def _kind_name(dtype: np.dtype[Any]) -> str:
    kinds = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers",
             "c": "complex numbers", "U": "strings", "S": "bytes", "O": "mixed or non-numeric "
             "values (null, objects, integers too large for 64 bits)", "V": "records",
             "M": "dates", "m": "durations"}
    return kinds.get(dtype.kind, str(dtype))


def _dtype_error(info: TensorInfo, got: str, pointer: str) -> DomainError:
    return problem(f"Input '{info.name}' holds {got}; the model expects {info.describe()}.",
                   pointer, f"expected {info.describe()}")


def check_shape(shape: tuple[int, ...], info: TensorInfo, pointer: str) -> None:
    """Refuse a wrong rank or a wrong fixed dimension (None in the signature matches any)."""
    want = info.shape
    if len(shape) != len(want) or any(w is not None and w != g
                                       for w, g in zip(want, shape, strict=True)):
        raise problem(f"Input '{info.name}' has shape {fmt_shape(list(shape))}; the model "
                      f"expects {info.describe()} (None = any size).",
                      pointer, f"expected shape {info.describe()}")


def json_array(value: Any, info: TensorInfo, pointer: str) -> np.ndarray[Any, Any]:
    """A JSON value as an array, its type inferred by NumPy (forcing dtype=float32 here would
    quietly turn null into NaN, "1.5" into 1.5 and true into 1.0; check_array decides)."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise problem(f"Input '{info.name}' is not a rectangular array of numbers ({exc}); the "
                      f"model expects {info.describe()}.", pointer,
                      f"expected {info.describe()}") from None


def check_array(arr: np.ndarray[Any, Any], info: TensorInfo,
                pointer: str) -> np.ndarray[Any, Any]:
    """`arr` with the signature's shape checked and its dtype cast to the signature's.

    Casts only where no value changes meaning: integers to floats, wider floats to narrower
    ones unless a finite value would become infinite, integers to narrower integers when every
    value fits. Booleans, floats into integer inputs and anything non-numeric are refused, as
    TensorFlow Serving does. A string input takes text (`<U`) or bytes (`S`) and nothing else.
    """
    if info.dtype == "string":
        if arr.dtype.kind not in "US":
            raise _dtype_error(info, _kind_name(arr.dtype), pointer)
        check_shape(arr.shape, info, pointer)
        return arr
    if arr.dtype.kind not in "biuf" and arr.dtype != BFLOAT16:
        raise _dtype_error(info, _kind_name(arr.dtype), pointer)
    check_shape(arr.shape, info, pointer)
    target = _numpy_dtype_of(info, pointer)
    if arr.dtype == target:
        return arr
    if target.kind == "b" or arr.dtype.kind == "b":
        raise _dtype_error(info, _kind_name(arr.dtype), pointer)
    if target.kind in "iu":
        return _to_int(arr, target, info, pointer)
    if target.kind == "f" or target == BFLOAT16:
        return _to_float(arr, target, info, pointer)
    raise _dtype_error(info, _kind_name(arr.dtype), pointer)


def _numpy_dtype_of(info: TensorInfo, pointer: str) -> np.dtype[Any]:
    try:
        return numpy_dtype_of(info.dtype)
    except TypeError:
        raise problem(f"Input '{info.name}' is {info.describe()}, which this server cannot "
                      "feed from numbers.", pointer, f"expected {info.describe()}") from None


def numpy_dtype_of(dtype: str) -> np.dtype[Any]:
    """The NumPy dtype of a Keras one; bfloat16 is ml_dtypes' (NumPy has none)."""
    return BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)


def _to_int(arr: np.ndarray[Any, Any], target: np.dtype[Any], info: TensorInfo,
            pointer: str) -> np.ndarray[Any, Any]:
    if arr.dtype.kind == "f":
        raise _dtype_error(info, "decimal numbers", pointer)
    # A silent wrap-around (300 -> 44 in uint8) would give a wrong answer, not an error.
    limits = np.iinfo(target)
    if arr.size and (int(arr.min()) < limits.min or int(arr.max()) > limits.max):
        raise problem(f"Input '{info.name}' holds integers outside the range of {target.name} "
                      f"[{limits.min}, {limits.max}]; the model expects {info.describe()}.",
                      pointer, f"expected {info.describe()}")
    return arr.astype(target)


def _to_float(arr: np.ndarray[Any, Any], target: np.dtype[Any], info: TensorInfo,
              pointer: str) -> np.ndarray[Any, Any]:
    with np.errstate(over="ignore"):  # overflow is detected below and answered as a 400
        out = arr.astype(target)
    # Most batches are all finite: one pass. Only then look for a finite value that overflowed
    # (1e39 into float32), which TF Serving refuses as a lossy conversion.
    if not np.isfinite(out).all() and (np.isfinite(arr) & ~np.isfinite(out)).any():
        limit = float(ml_dtypes.finfo(target).max)  # type: ignore[no-untyped-call]
        raise problem(f"Input '{info.name}' holds values beyond the range of {target.name} "
                      f"(±{limit:.4g}); the model expects {info.describe()}.",
                      pointer, f"expected {info.describe()}")
    return out


# Open Inference Protocol datatypes. BF16 is ml_dtypes' bfloat16 (as tritonclient has it);
# BYTES is a string tensor (NumPy <U or S here; length-prefixed elements in binary).
_OIP_BY_NUMPY: dict[str, str] = {
    "bool": "BOOL", "int8": "INT8", "int16": "INT16", "int32": "INT32", "int64": "INT64",
    "uint8": "UINT8", "uint16": "UINT16", "uint32": "UINT32", "uint64": "UINT64",
    "float16": "FP16", "bfloat16": "BF16", "float32": "FP32", "float64": "FP64",
    "string": "BYTES",
}
_NUMPY_BY_OIP: dict[str, str] = {v: k for k, v in _OIP_BY_NUMPY.items()}


def oip_datatype(dtype: str | np.dtype[Any]) -> str:
    """The OIP datatype ("FP32") of a NumPy / Keras dtype ("float32"); ValueError if none."""
    name = dtype if isinstance(dtype, str) else (
        "string" if dtype.kind in "USO" else dtype.name)
    try:
        return _OIP_BY_NUMPY[name]
    except KeyError:
        raise ValueError(f"dtype {name} has no Open Inference Protocol datatype here") from None


def numpy_dtype(datatype: Any, pointer: str) -> np.dtype[Any]:
    """The NumPy dtype of an OIP datatype (object for BYTES); a 400 naming the supported ones
    otherwise."""
    name = _NUMPY_BY_OIP.get(datatype) if isinstance(datatype, str) else None
    if name is None:
        supported = ", ".join(_NUMPY_BY_OIP)
        raise problem(f"Datatype {datatype!r} is not supported; use one of {supported}.",
                      pointer, f"one of {supported}")
    return np.dtype(object) if name == "string" else numpy_dtype_of(name)


def wire_array(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An output as JSON can carry it: float16 and bfloat16 as float32 (exact), strings (a
    TensorFlow string tensor's bytes objects) as text."""
    if arr.dtype == np.float16 or arr.dtype == BFLOAT16:
        return arr.astype(np.float32)
    if arr.dtype.kind in "OS":
        return as_text(arr)
    return arr


def as_text(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """bytes (object or S arrays) decoded as UTF-8 (undecodable bytes replaced)."""
    flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in arr.reshape(-1).tolist()]
    return np.array(flat, dtype=np.str_).reshape(arr.shape)
