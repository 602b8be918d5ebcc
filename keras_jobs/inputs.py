"""The data of a Keras-shaped call (`fit`, `evaluate`, `predict_job`) as one `.npz` dataset:
NumPy arrays (a dict or list for several inputs/outputs) as they are, and a `tf.data.Dataset`,
a Python generator or a `keras.utils.PyDataset` read batch by batch, each batch appended to a
file per array on disk, so a dataset larger than memory is never whole in it; the `.npz` is
then assembled from those files and uploaded streamed.

Batches are Keras's: `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`, `x`/`y` an array, a
dict or a list."""

from __future__ import annotations

import math
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from keras_jobs.arrays import Array, Selector, named_arrays, rows

SAMPLE_WEIGHT = "sample_weight"


@dataclass
class Packed:
    """What the dataset holds and how a job picks from it: `x`/`y` selectors, the
    sample-weight array's name, the rows, and for batches read from an iterable the size of
    its batches (the job trains them in that order, as Keras does: no shuffling)."""

    x: Selector
    y: Selector | None
    sample_weight: str | None
    rows: int
    arrays: dict[str, Array] | None = None  # NumPy data, not yet written
    path: Path | None = None  # batches read from an iterable, written as an .npz
    batch_size: int | None = None
    folder: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def close(self) -> None:
        if self.folder is not None:
            self.folder.cleanup()


def is_iterable_data(value: Any) -> bool:
    """A tf.data.Dataset, a generator/iterator of batches or a keras PyDataset: anything
    that is not an array, a dict or a list of arrays."""
    if value is None or isinstance(value, np.ndarray | Mapping | list | tuple):
        return False
    if hasattr(value, "__array__") or hasattr(value, "shape"):
        return False  # a tensor: an array
    return hasattr(value, "__iter__") or hasattr(value, "__getitem__") and hasattr(
        value, "__len__")


def pack_arrays(x: Any, y: Any, sample_weight: Any, input_names: Sequence[str],
                output_names: Sequence[str]) -> Packed:
    """NumPy data: the named arrays and their selectors."""
    arrays, x_sel = named_arrays("x", x, input_names)
    y_sel: Selector | None = None
    if y is not None:
        y_arrays, y_sel = named_arrays("y", y, output_names)
        arrays.update(y_arrays)
    sw = None
    if sample_weight is not None:
        arrays[SAMPLE_WEIGHT] = np.asarray(sample_weight)
        sw = SAMPLE_WEIGHT
    return Packed(x_sel, y_sel, sw, rows(arrays), arrays=arrays)


def pack_batches(data: Any, input_names: Sequence[str], output_names: Sequence[str],
                 max_batches: int | None = None, with_targets: bool = True) -> Packed:
    """Batches of an iterable, appended array by array to files on disk, then one `.npz`."""
    folder = tempfile.TemporaryDirectory(prefix="keras-jobs-")
    writer = _Appender(Path(folder.name))
    x_sel: Selector = "x"
    y_sel: Selector | None = None
    sw: str | None = None
    first: int | None = None
    count = 0
    try:
        for batch in _batches(data, max_batches):
            x, y, weights = _unpack(batch, with_targets)
            arrays, x_sel = named_arrays("x", to_numpy(x), input_names)
            if y is not None:
                y_arrays, y_sel = named_arrays("y", to_numpy(y), output_names)
                arrays.update(y_arrays)
            if weights is not None:
                arrays[SAMPLE_WEIGHT] = np.asarray(to_numpy(weights))
                sw = SAMPLE_WEIGHT
            n = rows(arrays)
            first = n if first is None else first
            writer.add(arrays, count)
            count += 1
        if first is None:
            raise ValueError("the data yielded no batches")
        path = Path(folder.name) / "data.npz"
        total = writer.write_npz(path)
    except BaseException:
        folder.cleanup()
        raise
    return Packed(x_sel, y_sel, sw, total, path=path, batch_size=first, folder=folder)


def _batches(data: Any, max_batches: int | None) -> Iterator[Any]:
    cardinality = getattr(data, "cardinality", None)
    if callable(cardinality) and max_batches is None:
        import tensorflow as tf

        if int(cardinality()) == int(tf.data.INFINITE_CARDINALITY):
            raise ValueError("the tf.data.Dataset repeats forever; give steps_per_epoch "
                             "(the batches read and sent) or drop .repeat()")
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not hasattr(
            data, "__next__") and not callable(cardinality):  # a keras PyDataset
        source: Iterator[Any] = (data[i] for i in range(len(data)))
    else:
        source = iter(data)
    for i, batch in enumerate(source):
        if max_batches is not None and i >= max_batches:
            return
        yield batch


def iter_batches(data: Any, max_batches: int | None = None) -> Iterator[Any]:
    """The `x` of each batch of an iterable (predict's input: `x` or `(x, ...)`)."""
    for batch in _batches(data, max_batches):
        yield _unpack(batch, False)[0]


def _unpack(batch: Any, with_targets: bool) -> tuple[Any, Any, Any]:
    if isinstance(batch, tuple) and len(batch) in (1, 2, 3):
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        weights = batch[2] if len(batch) > 2 else None
    else:
        x, y, weights = batch, None, None
    if with_targets and y is None:
        raise ValueError("each batch must be (x, y) or (x, y, sample_weight) to train on")
    return x, y, weights


def to_numpy(value: Any) -> Any:
    """Tensors (TensorFlow's, JAX's, NumPy's) as NumPy, inside dicts and lists too."""
    if isinstance(value, Mapping):
        return {str(k): to_numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_numpy(v) for v in value]
    return np.asarray(value)


class _Appender:
    """One raw file per array; the rows of each batch appended, checked against the first
    batch's dtype and row shape."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.meta: dict[str, tuple[np.dtype[Any], tuple[int, ...]]] = {}
        self.counts: dict[str, int] = {}
        self.files: dict[str, IO[bytes]] = {}

    def add(self, arrays: Mapping[str, Array], index: int) -> None:
        if index and set(arrays) != set(self.meta):
            raise ValueError(f"batch {index} holds arrays {sorted(arrays)}, the first held "
                             f"{sorted(self.meta)}")
        for name, array in arrays.items():
            array = np.ascontiguousarray(array)
            if array.ndim == 0:
                raise ValueError(f"batch {index}: '{name}' is a scalar, not a batch of rows")
            if name not in self.meta:
                self.meta[name] = (array.dtype, array.shape[1:])
                self.counts[name] = 0
                self.files[name] = (self.folder / f"{name}.raw").open("wb")
            dtype, shape = self.meta[name]
            if array.shape[1:] != shape:
                raise ValueError(f"batch {index}: '{name}' has rows of shape "
                                 f"{array.shape[1:]}, the first batch's were {shape}")
            self.files[name].write(array.astype(dtype, copy=False).tobytes())
            self.counts[name] += len(array)

    def write_npz(self, path: Path) -> int:
        for f in self.files.values():
            f.close()
        total = {self.counts[n] for n in self.meta}
        if len(total) != 1:
            raise ValueError(f"the batches' arrays hold different numbers of rows: "
                             f"{self.counts}")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, (dtype, shape) in self.meta.items():
                if dtype.hasobject:
                    raise ValueError(f"array {name!r} has dtype object; convert it to a "
                                     "numeric dtype")
                header = {"descr": np.lib.format.dtype_to_descr(dtype),
                          "fortran_order": False, "shape": (self.counts[name], *shape)}
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array_header_2_0(member, header)
                    raw = self.folder / f"{name}.raw"
                    with raw.open("rb") as src:
                        shutil.copyfileobj(src, member, 1 << 20)
                    raw.unlink()
        return total.pop()


def steps(rows: int, batch_size: int) -> int:
    return math.ceil(rows / batch_size)
