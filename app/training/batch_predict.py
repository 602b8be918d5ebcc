"""Batch prediction: `model.predict(x, batch_size=b)` over a whole dataset, never all in memory.

Rows are read a large chunk at a time from the dataset's `.npy` files, predicted, and written
into `.npy` files opened with `numpy.lib.format.open_memmap` in a staging folder; those are
created once the first chunk shows each output's row shape and dtype. A chunk is a whole number
of batches, and each batch goes through one compiled call of the model (`model(x,
training=False)` in a `tf.function`, what `model.predict` runs per batch), so the model sees
exactly the batches that `model.predict` over all rows would, without predict()'s set-up cost
per chunk.

bfloat16 outputs (a `mixed_bfloat16` model) are written as float32: NumPy has no bfloat16, and
a `.npy` of one would read back as opaque 2-byte records (`|V2`). The conversion is exact.

Output arrays: a model with one output writes one array named `output_name`; a model with
several writes `<output_name>.<output>` per output, where `<output>` is the output's name
(`model.output_names`, or the key of a dict-output model; characters an array name cannot
hold become `_`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import DomainError, FieldError, invalid
from app.jobs.schemas import ARRAY_NAME_PATTERN
from app.training import data
from app.training.stream import read_range

# Input bytes read per chunk, and a cap on its rows: the chunk's inputs and outputs are both
# held in memory, and larger reads gain nothing once they are megabytes.
CHUNK_BYTES = 64 << 20
MAX_CHUNK_ROWS = 1 << 18

Predict = Callable[[data.Selected], Any]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Written:
    rows: int
    arrays: dict[str, dict[str, Any]]  # array name -> {"shape": [...], "dtype": "float32"}


def chunk_rows(batch_size: int, row_bytes: int, target_bytes: int = CHUNK_BYTES,
               max_rows: int = MAX_CHUNK_ROWS) -> int:
    """Rows per chunk: whole batches, about `target_bytes` of input and at most `max_rows`
    rows, but never less than one batch."""
    by_bytes = target_bytes // max(1, row_bytes)
    return max(1, min(by_bytes, max_rows) // batch_size) * batch_size


def selected_names(selector: Any) -> list[str]:
    """The dataset arrays an `x` selector reads."""
    if isinstance(selector, str):
        return [selector]
    if isinstance(selector, dict):
        return [name for sub in selector.values() for name in selected_names(sub)]
    return list(selector)


def row_bytes(arrays: data.Arrays, selector: Any) -> int:
    return sum(arrays[n].itemsize * int(np.prod(arrays[n].shape[1:], dtype=np.int64))
               for n in set(selected_names(selector)) if n in arrays)


def read_chunk(arrays: data.Arrays, selector: Any, start: int, stop: int) -> data.Selected:
    """Rows [start, stop) of the selected inputs, in memory, each array's in one pread: a map
    over the whole file would keep every page read so far resident, the whole dataset by the
    last chunk."""
    window = {n: read_range(arrays[n], start, stop) for n in set(selected_names(selector))
              if n in arrays}
    return data.select(window, selector, "/x")


def output_arrays(result: Any, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """A predict() result as {model output name: rows}, in the model's output order."""
    if isinstance(result, dict):
        return {str(k): storable(v) for k, v in result.items()}
    if isinstance(result, list | tuple):
        names = (list(output_names) if len(output_names) == len(result)
                 else [str(i) for i in range(len(result))])
        return {n: storable(v) for n, v in zip(names, result, strict=True)}
    return {output_names[0] if output_names else "output": storable(result)}


def storable(values: Any) -> np.ndarray:
    """Rows as a `.npy` file can hold them: bfloat16 widened to float32 (see above)."""
    arr = np.asarray(values)
    return arr.astype(np.float32) if arr.dtype.name == "bfloat16" else arr


def compiled_predict(model: Any, batch_size: int,
                     check_cancel: Callable[[], None] = lambda: None) -> Predict:
    """A chunk -> outputs function calling the model once per batch of `batch_size` rows
    through one `tf.function` (traced for the first batch shape, generalised to any batch size
    on the first shorter one, as Keras's own predict function is). `check_cancel` runs before
    each batch: a chunk of small batches can take long."""
    import tensorflow as tf

    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def batch(x: data.Selected) -> Any:
        check_cancel()
        return call(x)

    def predict(x: data.Selected) -> Any:
        n = data.rows(x)
        parts = [batch(_rows(x, start, start + batch_size))
                 for start in range(0, n, batch_size)]
        return tf.nest.map_structure(lambda *ys: np.concatenate([y.numpy() for y in ys]),
                                     *parts)

    return predict


def _rows(x: data.Selected, start: int, stop: int) -> data.Selected:
    return {k: v[start:stop] for k, v in x.items()} if isinstance(x, dict) else x[start:stop]


def predict_job(model: Any, arrays: data.Arrays, selector: Any, out_dir: Path, *,
                batch_size: int, output_name: str, check_cancel: Callable[[], None]) -> Written:
    """What a predict job runs: `predict_to_files` with the model's compiled function."""
    return predict_to_files(
        arrays, selector, compiled_predict(model, batch_size, check_cancel), out_dir,
        output_name=output_name,
        output_names=list(getattr(model, "output_names", None) or []),
        chunk=chunk_rows(batch_size, row_bytes(arrays, selector)), check_cancel=check_cancel)


def array_names(output_name: str, outputs: Sequence[str]) -> dict[str, str]:
    """Model output name -> array name in the new dataset (see the module docstring)."""
    if len(outputs) == 1:
        return {outputs[0]: output_name}
    names = {out: f"{output_name}.{_UNSAFE.sub('_', out)}" for out in outputs}
    bad = [n for n in names.values() if not re.fullmatch(ARRAY_NAME_PATTERN, n)]
    if bad or len(set(names.values())) < len(names):
        raise invalid(
            f"The model's outputs {list(outputs)} do not give distinct array names of at most "
            "100 characters.",
            [FieldError("/output_name", f"arrays would be named {sorted(names.values())}; "
                        "choose a shorter output_name")])
    return names


def predict_to_files(arrays: data.Arrays, selector: Any, predict: Predict, out_dir: Path, *,
                     output_name: str, output_names: Sequence[str], chunk: int,
                     check_cancel: Callable[[], None]) -> Written:
    """Predict every row of the selected arrays, `chunk` rows per `predict` call, writing
    `out_dir/<array>.npy` in row order. `check_cancel` runs before each chunk (it raises to
    stop)."""
    num_rows = len(arrays[selected_names(selector)[0]])
    files: dict[str, np.memmap[Any, Any]] = {}
    names: dict[str, str] = {}
    for start in range(0, num_rows, chunk):
        check_cancel()
        stop = min(start + chunk, num_rows)
        outputs = output_arrays(predict(read_chunk(arrays, selector, start, stop)),
                                output_names)
        if not files:
            names = array_names(output_name, list(outputs))
            files = {names[k]: _open(out_dir / f"{names[k]}.npy", v, num_rows)
                     for k, v in outputs.items()}
        for key, values in outputs.items():
            name = names.get(key)
            target = files[name] if name is not None else None
            if target is None or values.shape != (stop - start, *target.shape[1:]):
                raise _mismatch(key, values, target, start, stop)
            target[start:stop] = values
    for out in files.values():
        out.flush()
    described = {n: {"shape": list(f.shape), "dtype": str(f.dtype)} for n, f in files.items()}
    files.clear()  # unmap before the folder is published
    return Written(num_rows, described)


def _open(path: Path, first: np.ndarray, num_rows: int) -> np.memmap[Any, Any]:
    if first.ndim == 0:
        raise DomainError(422, "Prediction failed", "The model returned a scalar, not one "
                          "prediction per row.", type="/problems/invalid-input")
    if first.dtype.kind == "O":  # a string tensor: its width is unknown until the last chunk
        raise DomainError(422, "Prediction failed", f"The model's output '{path.stem}' is "
                          "strings, which a predict job cannot store as a dataset array; "
                          "ask the serving API (:predict or /v2 infer) for it instead.",
                          type="/problems/invalid-input")
    out: np.memmap[Any, Any] = np.lib.format.open_memmap(
        path, mode="w+", dtype=first.dtype, shape=(num_rows, *first.shape[1:]))
    return out


def _mismatch(key: str, values: np.ndarray, target: np.memmap[Any, Any] | None, start: int,
              stop: int) -> DomainError:
    want = "no such output" if target is None else str((stop - start, *target.shape[1:]))
    return DomainError(422, "Prediction failed", f"For rows {start}..{stop - 1} the model's "
                       f"output '{key}' has shape {values.shape}; expected {want} (one "
                       "prediction per row, the same shape in every chunk).",
                       type="/problems/invalid-input")
