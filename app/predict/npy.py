"""Binary tensors: NumPy's .npy (one array) and .npz (a zip of .npy members, one per name).

Nothing here calls `np.load`: it would allocate the array a header declares before reading
any data (a 100-byte body can declare terabytes) and, for .npz, read members of any size. The
.npy header is parsed by hand (NumPy's own header reader, with its size guard), its declared
size is checked against the bytes actually present and against `max_bytes`, and the data is
then viewed in place with `np.frombuffer`. Pickles are never read: object dtypes are refused
from the header, before any data is touched.
"""

from __future__ import annotations

import io
import math
import zipfile
import zlib
from typing import Any

import numpy as np
from numpy.lib import format as npformat

from app.core.archives import open_zip, read_member
from app.core.errors import DomainError
from app.predict.rows import too_many_rows
from app.predict.signature import BFLOAT16, TensorInfo, check_array, pointer_token, problem

NPY = "application/x-npy"
NPZ = "application/x-npz"
ZIP = "application/zip"
MEDIA_TYPES = (NPY, NPZ, ZIP)
DEFAULT_MAX_BYTES = 64 * 2**20
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"
_SUFFIX = ".npy"


def media_type(content_type: str | None) -> str:
    """'application/x-npy' from 'Application/X-NPY; charset=binary'."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_npy_media(content_type: str | None) -> bool:
    return media_type(content_type) in MEDIA_TYPES


def decode_npy(raw: bytes, inputs: list[TensorInfo], *, content_type: str | None = None,
               max_bytes: int = DEFAULT_MAX_BYTES,
               max_rows: tuple[int, str] | None = None) -> list[np.ndarray[Any, Any]]:
    """Arrays in model-input order from a .npy body (single-input models) or an .npz body.

    `content_type` (the request's Content-Type) picks the format; without one the body's magic
    bytes do. `max_bytes` bounds the uncompressed size of every array and of all together;
    `max_rows` (the limit, and why) every array's rows, read from its header (413).
    """
    kind = media_type(content_type) if content_type else _sniff(raw)
    if kind == NPY:
        return [_decode_single(raw, inputs, max_bytes, max_rows)]
    if kind in (NPZ, ZIP):
        return _decode_archive(raw, inputs, max_bytes, max_rows)
    raise problem(f"Unsupported content type {kind!r} for tensors; send {NPY} (one array) or "
                  f"{NPZ} (one member per input).", "", f"{NPY} or {NPZ}", status=415)


def _sniff(raw: bytes) -> str:
    if raw.startswith(_NPY_MAGIC):
        return NPY
    if raw.startswith(_ZIP_MAGIC):
        return NPZ
    return "unknown (neither .npy nor .npz magic bytes)"


def _decode_single(raw: bytes, inputs: list[TensorInfo], max_bytes: int,
                   max_rows: tuple[int, str] | None) -> np.ndarray[Any, Any]:
    if len(inputs) != 1:
        names = [i.name for i in inputs]
        raise problem(f"This model has several inputs {names}; send an {NPZ} archive with "
                      "one member per input.", "", f"{NPZ} with members {names}", status=415)
    info = inputs[0]
    return check_array(read_npy(raw, info.name, "", max_bytes, max_rows), info, "")


def read_npy(raw: bytes, name: str, pointer: str, max_bytes: int = DEFAULT_MAX_BYTES,
             max_rows: tuple[int, str] | None = None) -> np.ndarray[Any, Any]:
    """The array in one .npy file, viewed in place; 400/413 problems for anything else."""
    stream = io.BytesIO(raw)
    try:
        version = npformat.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, EOFError, TypeError) as exc:
        raise problem(f"'{name}' is not a valid .npy array: {exc}", pointer,
                      "a .npy file written by numpy.save") from None
    if dtype.hasobject or dtype.kind not in "biufUS":
        raise problem(f"'{name}' has dtype {dtype}; only numeric, boolean and string (<U, S) "
                      "arrays are accepted (object arrays would need pickle).", pointer,
                      "a numeric or string .npy array")
    if max_rows is not None and shape and shape[0] > max_rows[0]:
        raise too_many_rows(shape[0], *max_rows)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise _too_large(name, nbytes, max_bytes, pointer)
    offset = stream.tell()
    if len(raw) - offset != nbytes:
        raise problem(f"'{name}' declares shape {list(shape)} of {dtype} ({nbytes} bytes) but "
                      f"holds {len(raw) - offset} bytes of data.", pointer,
                      "data matching the .npy header")
    arr = np.frombuffer(raw, dtype=dtype, count=math.prod(shape), offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def _too_large(name: str, nbytes: int, max_bytes: int, pointer: str) -> Exception:
    return problem(f"'{name}' would take {nbytes} bytes uncompressed; the limit is "
                   f"{max_bytes} bytes.", pointer, f"at most {max_bytes} bytes", status=413)


def _decode_archive(raw: bytes, inputs: list[TensorInfo], max_bytes: int,
                    max_rows: tuple[int, str] | None) -> list[np.ndarray[Any, Any]]:
    try:
        # Checked from the end record and the central directory alone (nothing inflated):
        # count, names, links, declared uncompressed sizes; a zip bomb costs a header read.
        archive, entries = open_zip(raw, max_members=len(inputs), max_total_bytes=max_bytes,
                                    pointer="")
    except zipfile.BadZipFile as exc:
        raise problem(f"The body is not a valid .npz archive: {exc}", "",
                      "a .npz file written by numpy.savez") from None
    except DomainError as exc:
        raise _as_problem(exc) from None
    with archive:
        members = _members(entries, inputs)
        return [check_array(_read_member(archive, members[i.name], i.name, max_bytes,
                                         max_rows), i, f"/{pointer_token(i.name)}")
                for i in inputs]


def _as_problem(exc: DomainError) -> DomainError:
    """An archive refusal in this route's terms: 413 for sizes, 400 for the rest, with the
    `error` field TF Serving's and Triton's clients read."""
    status = 413 if exc.status == 413 else 400
    where = exc.errors[0] if exc.errors else None
    return problem(exc.detail, where.pointer if where else "",
                   where.detail if where else "a .npz file written by numpy.savez",
                   status=status)


def _members(entries: list[zipfile.ZipInfo],
             inputs: list[TensorInfo]) -> dict[str, zipfile.ZipInfo]:
    """Members by input name: one per input, no other."""
    names = [i.name for i in inputs]
    members: dict[str, zipfile.ZipInfo] = {}
    for entry in entries:
        name = entry.filename.removesuffix(_SUFFIX)
        if name not in names or name in members:
            raise problem(f"Unexpected archive member '{entry.filename}'; the model's inputs "
                          f"are {names}.", f"/{pointer_token(name)}", f"one of {names}")
        members[name] = entry
    missing = [n for n in names if n not in members]
    if missing:
        raise problem(f"The archive lacks members for inputs {missing}.",
                      f"/{pointer_token(missing[0])}", f"members {names}")
    return members


def _read_member(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, name: str,
                 max_bytes: int, max_rows: tuple[int, str] | None) -> np.ndarray[Any, Any]:
    pointer = f"/{pointer_token(name)}"
    try:
        # In bounded chunks up to the declared size (a whole-member read would inflate all of
        # a lying member before cutting it there); then zipfile checks the CRC.
        data = read_member(archive, entry)
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, ValueError,
            OSError, EOFError) as exc:
        raise problem(f"Archive member '{entry.filename}' cannot be read: {exc}", pointer,
                      "a .npy member written by numpy.savez") from None
    return read_npy(data, name, pointer, max_bytes, max_rows)


# Names the outputs a .npy/.npz answer carries in another dtype than the model's.
CONVERTED_HEADER = "X-Converted-Dtypes"


def npy_array(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """An output as a .npy file can hold it: bfloat16 as float32 (exact; NumPy has no
    bfloat16, and a .npy of ml_dtypes' reads back as opaque `|V2` records), a string tensor's
    bytes objects as `S` bytes. float16 and every other dtype stay as they are."""
    if arr.dtype == BFLOAT16:
        return arr.astype(np.float32)
    if arr.dtype.kind == "O":
        return np.array(arr.reshape(-1).tolist(), dtype=np.bytes_).reshape(arr.shape)
    return arr


def converted_header(outputs: list[np.ndarray[Any, Any]],
                     infos: list[TensorInfo]) -> dict[str, str]:
    """`X-Converted-Dtypes: y=bfloat16->float32` when encode_npy widened an output."""
    changed = [f"{i.name}=bfloat16->float32" for i, o in zip(infos, outputs, strict=True)
               if o.dtype == BFLOAT16]
    return {CONVERTED_HEADER: ", ".join(changed)} if changed else {}


def encode_npy(outputs: list[np.ndarray[Any, Any]],
               infos: list[TensorInfo]) -> tuple[bytes, str]:
    """One output as .npy bytes, several as an (uncompressed) .npz with one member each
    (dtypes as `npy_array` gives them)."""
    outputs = [npy_array(o) for o in outputs]
    buffer = io.BytesIO()
    if len(outputs) == 1:
        np.save(buffer, outputs[0], allow_pickle=False)
        return buffer.getvalue(), NPY
    # ZIP_STORED: the arrays are already in memory and mostly incompressible floats.
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for info, out in zip(infos, outputs, strict=True):
            with archive.open(info.name + _SUFFIX, "w", force_zip64=True) as member:
                npformat.write_array(member, np.asanyarray(out), allow_pickle=False)
    return buffer.getvalue(), NPZ


def wants_npy(accept: str | None) -> bool:
    """Whether an Accept header asks for .npy/.npz at least as much as for JSON.

    Only an explicit application/json competes: `*/*` is a fallback, so
    "application/x-npy, */*" means NumPy, while "*/*" alone (or no header) means JSON, as does
    a tie between application/json and a NumPy type."""
    best_npy = best_json = 0.0
    for part in (accept or "").split(","):
        media, _, params = part.partition(";")
        kind = media.strip().lower()
        q = _quality(params)
        if kind in MEDIA_TYPES:
            best_npy = max(best_npy, q)
        elif kind == "application/json":
            best_json = max(best_json, q)
    return best_npy > 0 and best_npy > best_json


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0
