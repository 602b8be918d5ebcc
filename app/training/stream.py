"""A tf.data pipeline over memory-mapped arrays: only the rows of the batches in flight are
read, so a dataset larger than the worker's memory trains.

Each epoch shuffles row indices (seeded), batches them, and reads those rows from the
`.npy` files (sorted within a batch, so reads move forward through the file).
"""

from __future__ import annotations

import os
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
    dtypes = [tf_dtype(a.dtype) for a in arrays]

    def fetch(rows: np.ndarray) -> list[np.ndarray]:
        rows = np.sort(rows)
        return [_read_rows(a, rows) for a in arrays]

    def load(rows: Any) -> Any:
        tensors = tf.numpy_function(fetch, [rows], dtypes, stateful=False)
        for t, a in zip(tensors, arrays, strict=True):
            t.set_shape((None, *a.shape[1:]))
        return rebuild(list(tensors))

    rows = tf.constant(index.astype(np.int64))
    batches = -(-len(index) // batch_size)
    if shuffle:
        # One permutation tensor per pass, drawn statelessly from (seed, pass number): each
        # epoch differs and the sequence repeats run to run. A tf.data shuffle buffer over
        # single indices would cost hundreds of bytes per row.
        passes = tf.Variable(0, dtype=tf.int64, trainable=False)

        def permute(r: Any) -> Any:
            key = tf.stack([tf.constant(seed, tf.int64), passes.assign_add(1)])
            return tf.random.experimental.stateless_shuffle(r, seed=key)

        ds = tf.data.Dataset.from_tensors(rows).map(permute).flat_map(
            lambda r: tf.data.Dataset.from_tensor_slices(r).batch(batch_size))
    else:
        ds = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))
    if repeat:
        ds = ds.repeat()
    # A small fixed read-ahead: AUTOTUNE would buffer as many batches as memory allows.
    return ds.map(load, num_parallel_calls=2, deterministic=True).prefetch(2)


# Rows at least this large are read with pread; smaller ones through a short-lived map.
PREAD_MIN_ROW_BYTES = 512


def _read_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """array[rows] for sorted `rows`, without keeping the file resident in this process.

    Large rows are read with one pread each, straight into the batch: only the batch is
    resident. (Faulting rows in through a map would bring in ~64 KiB around each touched page,
    so a random batch maps most of a large file.) Small rows, where a pread per row costs more
    than the read, go through a map made for the batch and dropped after it."""
    if not isinstance(array, np.memmap) or not array.filename:
        return np.ascontiguousarray(array[rows])
    row_bytes = array.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    if row_bytes >= PREAD_MIN_ROW_BYTES and array.flags.c_contiguous:
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        view = memoryview(out.data).cast("B")
        fd = os.open(array.filename, os.O_RDONLY)
        try:
            for i, row in enumerate(rows.tolist()):
                os.preadv(fd, [view[i * row_bytes:(i + 1) * row_bytes]],
                          array.offset + row * row_bytes)
        finally:
            os.close(fd)
        return out
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    fresh = np.memmap(str(array.filename), dtype=array.dtype, mode="r", offset=int(array.offset),
                      shape=tuple(array.shape), order="F" if fortran else "C")
    out = np.ascontiguousarray(fresh[rows])
    del fresh
    return out


def read_range(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """array[start:stop] in memory. A memory-mapped, C-ordered array is read with pread into a
    fresh buffer (one read per range, nothing of the file left mapped here); anything else is
    copied through a slice."""
    if not isinstance(array, np.memmap) or not array.filename or not array.flags.c_contiguous:
        return np.array(array[start:stop])
    out = np.empty((max(0, stop - start), *array.shape[1:]), dtype=array.dtype)
    view = memoryview(out.reshape(-1).view(np.uint8).data)
    row_bytes = out.itemsize * int(np.prod(array.shape[1:], dtype=np.int64))
    offset, done = int(array.offset) + start * row_bytes, 0
    fd = os.open(array.filename, os.O_RDONLY)
    try:
        while done < len(view):
            got = os.preadv(fd, [view[done:]], offset + done)
            if got <= 0:
                raise OSError(f"{array.filename} ended before row {stop}")
            done += got
    finally:
        os.close(fd)
    return out


def chunk_rows(batch_size: int, row_bytes: int, target_bytes: int) -> int:
    """Rows per read: whole batches of about `target_bytes`, never less than one batch."""
    return max(1, target_bytes // max(1, row_bytes) // batch_size) * batch_size


# Bytes read from the files at a time when rows are read in order (evaluate, predict).
SEQUENTIAL_CHUNK_BYTES = 64 << 20


def tf_dtype(dtype: np.dtype[Any]) -> Any:
    """The TensorFlow dtype of a NumPy one; text (<U, S) is tf.string."""
    import tensorflow as tf

    return tf.string if dtype.kind in "US" else tf.as_dtype(dtype)


def sequential(data: Structure, batch_size: int,
               chunk_bytes: int = SEQUENTIAL_CHUNK_BYTES) -> Any:
    """All rows of `data` in order, in batches of `batch_size` (the last one shorter), as
    Keras's own array path batches them. The files are read a large chunk (whole batches) at a
    time on a background thread, a chunk ahead, so reading overlaps the model's work; only the
    chunks in flight are in memory. tf.data cuts the chunks into batches (`rebatch`: one
    Python call per chunk, not per batch)."""
    import tensorflow as tf

    arrays, rebuild = _flatten(data)
    n = len(arrays[0])
    row_bytes = sum(a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays)
    chunk = chunk_rows(batch_size, row_bytes, chunk_bytes)

    def chunks() -> Any:
        for start in range(0, n, chunk):
            yield tuple(read_range(a, start, min(start + chunk, n)) for a in arrays)

    signature = tuple(tf.TensorSpec((None, *a.shape[1:]), tf_dtype(a.dtype)) for a in arrays)
    ds = tf.data.Dataset.from_generator(chunks, output_signature=signature).rebatch(batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size)))
    return ds.map(lambda *t: rebuild(list(t))).prefetch(2)


def nbytes(*data: Structure) -> int:
    arrays, _ = _flatten(tuple(data))
    return sum(int(a.nbytes) for a in arrays)


def per_input(x: Structure, index: np.ndarray, batch_size: int = 4096) -> Any:
    """What adapt() reads in streaming mode: a dataset of one model input (or a dict of them)."""
    if isinstance(x, dict):
        return {k: dataset(v, index, batch_size, False, 0) for k, v in x.items()}
    return dataset(x, index, batch_size, False, 0)
