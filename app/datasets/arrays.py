"""One array of a dataset read back: the stored `.npy` file as it is, or, for a small one, its
values as JSON. Batch-predict jobs write their predictions as a dataset; this is how they come
back to the caller."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import DomainError, FieldError
from app.core.storage import ArtifactStore

# A JSON answer is built whole in memory (and is ~3x the array's bytes as text): past this
# many array bytes the caller is asked for the streamed `.npy` instead.
MAX_JSON_ARRAY_BYTES = 16 << 20
NPY = "application/x-npy"
JSON = "application/json"


@dataclass(frozen=True)
class StoredArray:
    name: str
    path: Path
    shape: list[int]
    dtype: str


def stored_array(store: ArtifactStore, storage_key: str, arrays: dict[str, Any],
                 name: str) -> StoredArray:
    """The file of array `name` of a dataset (its `arrays` metadata and storage key); a 404
    naming the arrays it has otherwise."""
    meta = arrays.get(name)
    if not isinstance(meta, dict):
        raise DomainError(404, "Array not found", f"The dataset has no array '{name}'; it has "
                          f"{sorted(arrays)}.", [FieldError("/path/array", "unknown array")],
                          type="/problems/not-found")
    return StoredArray(name, store.path(storage_key) / f"{name}.npy",
                       list(meta.get("shape") or []), str(meta.get("dtype")))


def wants_json(accept: str | None) -> bool:
    """True when Accept ranks application/json above application/x-npy (quality values
    honoured; no Accept, `*/*` or a tie is the `.npy`)."""
    if not accept:
        return False
    ranks: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranks[media.lower()] = max(q, ranks.get(media.lower(), 0.0))
    npy = max(ranks.get(NPY, 0.0), ranks.get("application/*", 0.0), ranks.get("*/*", 0.0))
    return ranks.get(JSON, 0.0) > npy


def as_json(array: StoredArray) -> bytes:
    """{"name", "shape", "dtype", "data"}: the values as nested lists. Floats of any width
    (bfloat16 and float16 included) are written as JSON numbers, non-finite ones as the
    NaN/Infinity tokens the predict routes write; a 406 for an array too large for JSON or of
    a dtype JSON cannot hold."""
    pointer = "/headers/accept"
    values = np.load(array.path, mmap_mode="r", allow_pickle=False)  # the header only
    size = int(values.nbytes)
    if size > MAX_JSON_ARRAY_BYTES:
        raise DomainError(406, "Array too large for JSON",
                          f"Array '{array.name}' holds {size} bytes; JSON answers are limited "
                          f"to {MAX_JSON_ARRAY_BYTES}. Ask for Accept: {NPY} (streamed).",
                          [FieldError(pointer, f"ask for {NPY}")], type="/problems/too-large")
    kind = values.dtype.kind
    if kind in "biuU":
        data = values.tolist()
    elif kind == "f" or values.dtype.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        data = np.asarray(values, dtype=np.float64).tolist()
    else:
        raise DomainError(406, "Array not representable as JSON",
                          f"Array '{array.name}' has dtype {values.dtype}, which JSON cannot "
                          f"hold. Ask for Accept: {NPY}.",
                          [FieldError(pointer, f"ask for {NPY}")],
                          type="/problems/not-acceptable")
    body = {"name": array.name, "shape": list(values.shape), "dtype": str(values.dtype),
            "data": data}
    return json.dumps(body, allow_nan=True, separators=(",", ":")).encode()

