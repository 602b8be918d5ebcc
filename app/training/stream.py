"""A tf.data pipeline over memory-mapped arrays: only the rows of the batches in flight are
read, so a dataset larger than the worker's memory trains.

Each epoch shuffles row indices (seeded), batches them, and reads those rows from the
`.npy` files (sorted within a batch, so reads move forward through the file).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Structure = Any  # an array, a dict of arrays, or a tuple of those (x, y[, sample_weight])


def _flatten(data: Structure) -> tuple[list[np.ndarray], Any]:
    """The arrays in `data`, and a function that puts a list of tensors back in its shape."""
    if isinstance(data, tuple):
        parts = [_flatten(d) for d in data]
        arrays = [a for flat, _ in parts for a in flat]
        sizes = [len(flat) for flat, _ in parts]

        def rebuild_tuple(items: list[Any]) -> Any:
            out, i = [], 0
            for (_, rebuild), n in zip(parts, sizes, strict=True):
                out.append(rebuild(items[i:i + n]))
                i += n
            return tuple(out)

        return arrays, rebuild_tuple
    if isinstance(data, dict):
        keys = list(data)
        return [data[k] for k in keys], lambda items: dict(zip(keys, items, strict=True))
    return [data], lambda items: items[0]


def dataset(data: Structure, index: np.ndarray, batch_size: int, shuffle: bool, seed: int,
            repeat: bool = False) -> Any:
    import tensorflow as tf

    arrays, rebuild = _flatten(data)
    dtypes = [tf.as_dtype(a.dtype) for a in arrays]

    def fetch(rows: np.ndarray) -> list[np.ndarray]:
        rows = np.sort(rows)
        return [np.ascontiguousarray(a[rows]) for a in arrays]

    def load(rows: Any) -> Any:
        tensors = tf.numpy_function(fetch, [rows], dtypes, stateful=False)
        for t, a in zip(tensors, arrays, strict=True):
            t.set_shape((None, *a.shape[1:]))
        return rebuild(list(tensors))

    ds = tf.data.Dataset.from_tensor_slices(index.astype(np.int64))
    if shuffle:
        ds = ds.shuffle(len(index), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if repeat:
        ds = ds.repeat()
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
        tf.data.AUTOTUNE)


def nbytes(*data: Structure) -> int:
    arrays, _ = _flatten(tuple(data))
    return sum(int(a.nbytes) for a in arrays)


def per_input(x: Structure, index: np.ndarray, batch_size: int = 4096) -> Any:
    """What adapt() reads in streaming mode: a dataset of one model input (or a dict of them)."""
    if isinstance(x, dict):
        return {k: dataset(v, index, batch_size, False, 0) for k, v in x.items()}
    return dataset(x, index, batch_size, False, 0)
