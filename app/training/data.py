"""Dataset arrays for a job: opened memory-mapped, selected by name, split for validation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app.core.errors import FieldError, invalid
from app.core.storage import ArtifactStore
from app.tables import Dataset

Arrays = dict[str, np.ndarray]
Selected = np.ndarray | dict[str, np.ndarray]


def open_arrays(store: ArtifactStore, dataset: Dataset) -> Arrays:
    folder = store.path(dataset.storage_key)
    return {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            for name in dataset.arrays}


def select(arrays: Arrays, selector: Any, pointer: str) -> Selected:
    """A name picks one array; a list of names stacks them as columns (1-D arrays become one
    column each); a dict maps model input/output names to either."""
    if isinstance(selector, dict):
        return {key: _one(arrays, sub, f"{pointer}/{key}") for key, sub in selector.items()}
    return _one(arrays, selector, pointer)


def _one(arrays: Arrays, selector: str | list[str], pointer: str) -> np.ndarray:
    if isinstance(selector, str):
        return _get(arrays, selector, pointer)
    columns = [_get(arrays, name, f"{pointer}/{i}") for i, name in enumerate(selector)]
    flat = [c.reshape(len(c), -1) for c in columns]
    return np.concatenate(flat, axis=1).astype(np.result_type(*flat), copy=False)


def _get(arrays: Arrays, name: str, pointer: str) -> np.ndarray:
    if name not in arrays:
        raise invalid(f"The dataset has no array '{name}'.",
                      [FieldError(pointer, f"unknown array; have {sorted(arrays)}")])
    return arrays[name]


def take(data: Selected, index: np.ndarray) -> Selected:
    if isinstance(data, dict):
        return {k: np.asarray(v[index]) for k, v in data.items()}
    return np.asarray(data[index])


def last_rows_split(n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """`validation_split` as Keras's model.fit takes it: the last rows, before any shuffling,
    from ``split_at = floor(n * (1.0 - fraction))`` (Keras 3's
    keras.src.trainers.data_adapters.array_slicing.train_validation_split, the same expression,
    so the same float rounding). Returns (train rows, validation rows)."""
    split_at = int(math.floor(n * (1.0 - fraction)))
    _check_split(split_at, n, fraction, "/validation_split")
    return np.arange(split_at), np.arange(split_at, n)


def split_index(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`validation_split_shuffled`: shuffle rows with
    `numpy.random.default_rng(seed).permutation(n)`, then hold out the last `fraction` of that
    order (``split_at = ceil(n * (1 - fraction))``, as this service always has). Returns
    (train rows, validation rows)."""
    order = np.random.default_rng(seed).permutation(n)
    split_at = int(math.ceil(n * (1 - fraction)))
    _check_split(split_at, n, fraction, "/validation_split_shuffled")
    return order[:split_at], order[split_at:]


def _check_split(split_at: int, n: int, fraction: float, pointer: str) -> None:
    if split_at <= 0 or split_at >= n:
        raise invalid(f"{pointer[1:]}={fraction} leaves no training or no validation rows "
                      f"of {n}.", [FieldError(pointer, "choose a fraction that leaves rows on "
                                              "both sides")])


def rows(data: Selected) -> int:
    if isinstance(data, dict):
        return len(next(iter(data.values())))
    return len(data)


def in_memory(data: Selected) -> Selected:
    """Plain in-memory arrays (Keras converts array inputs to tensors whole). Text arrays
    (<U, S) become string tensors: Keras's array path refuses NumPy text ("Invalid dtype")
    but batches a tf.string tensor as it batches arrays."""
    if isinstance(data, dict):
        return {k: _loaded(v) for k, v in data.items()}
    loaded: Selected = _loaded(data)
    return loaded


def _loaded(array: np.ndarray) -> Any:
    if array.dtype.kind in "US":
        import tensorflow as tf

        return tf.constant(array)
    return np.asarray(array)
