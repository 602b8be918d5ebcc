"""NumPy in and out: the arrays of a fit/evaluate call as one `.npz` dataset plus the job's
array selectors, and predict bodies and answers as `.npy`/`.npz`.

Dict (and, for several inputs or outputs, list) data become named arrays, `x.<input>` and
`y.<output>`, and the selectors map each model input/output name to its array, which is how
a job picks several inputs out of one dataset."""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

import numpy as np

Array = np.ndarray[Any, Any]
Selector = str | dict[str, str]
# The service's array names (app/datasets/ingest.py accepts these as .npz members).
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")  # fullmatch: no "x\n"


def named_arrays(role: str, value: Any, names: Sequence[str] = ()) -> tuple[dict[str, Array],
                                                                          Selector]:
    """`value` (one array, a dict by input/output name, or a list with one entry per name in
    `names`) as dataset arrays named after `role`, and the selector that picks them."""
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple) and len(names) > 1:
        if len(value) != len(names):
            raise ValueError(f"{role}: {len(value)} arrays for the model's {len(names)} "
                             f"({', '.join(names)}); give one per name or a dict")
        items = list(zip(names, value, strict=True))
    else:
        return {role: np.asarray(value)}, role
    arrays: dict[str, Array] = {}
    selector: dict[str, str] = {}
    for i, (key, array) in enumerate(items):
        member = f"{role}.{key}"
        if not _NAME_RE.fullmatch(member) or member in arrays:
            member = f"{role}.{i}"  # a name the service would refuse as an array name
        arrays[member] = np.asarray(array)
        selector[key] = member
    return arrays, selector


def fingerprint(arrays: Mapping[str, Array]) -> str:
    """A digest of names, dtypes, shapes and contents: the same data uploaded again is found
    by this, without comparing `.npz` bytes (zip members carry their write time)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        try:
            digest.update(array.data.cast("B"))  # no copy of a large array
        except (TypeError, ValueError):  # a dtype the buffer protocol cannot export
            digest.update(array.tobytes())
    return digest.hexdigest()


def write_npz(arrays: Mapping[str, Array], out: IO[bytes]) -> None:
    """Uncompressed (the service copies members as streams; floats barely compress) and
    without pickles (the service refuses object arrays)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            if array.dtype.hasobject:
                raise ValueError(f"array {name!r} has dtype object: it holds Python objects, "
                                 "which the service refuses; convert it to a numeric dtype")
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


def rows(arrays: Mapping[str, Array]) -> int:
    counts = {len(a) for a in arrays.values() if a.ndim > 0}
    if len(counts) != 1:
        sizes = {name: (len(a) if a.ndim else 0) for name, a in arrays.items()}
        raise ValueError(f"all arrays need the same number of rows, got {sizes}")
    return counts.pop()


def encode(x: Array | Mapping[str, Array]) -> tuple[bytes, str]:
    """A predict body: `.npy` for one input, `.npz` with one member per input name."""
    buffer = io.BytesIO()
    if isinstance(x, Mapping):
        write_npz({str(k): np.asarray(v) for k, v in x.items()}, buffer)
        return buffer.getvalue(), "application/x-npz"
    np.save(buffer, np.asarray(x), allow_pickle=False)
    return buffer.getvalue(), "application/x-npy"


def decode(raw: bytes) -> Array | dict[str, Array]:
    """A predict answer: one array, or {output name: array} from an `.npz`."""
    loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    return np.asarray(loaded)


def split(x: Array | Mapping[str, Array], size: int) -> list[Array | dict[str, Array]]:
    """Consecutive slices of at most `size` rows (of every input alike)."""
    n = rows(x) if isinstance(x, Mapping) else len(x)
    if isinstance(x, Mapping):
        return [{k: v[i:i + size] for k, v in x.items()} for i in range(0, n, size)]
    return [x[i:i + size] for i in range(0, n, size)]


def concat(parts: list[Array | dict[str, Array]]) -> Array | dict[str, Array]:
    first = parts[0]
    if isinstance(first, dict):
        return {k: np.concatenate([p[k] for p in parts if isinstance(p, dict)])
                for k in first}
    return np.concatenate([p for p in parts if not isinstance(p, dict)])
