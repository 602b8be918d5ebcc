"""The streaming input path: the right rows, every row once per epoch, a repeatable shuffle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.training import stream


@pytest.fixture
def arrays(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(500, 64)).astype(np.float32)     # 256-byte rows: small-row path
    wider = rng.normal(size=(500, 8, 32)).astype(np.float32)  # 1 KiB rows: pread path
    fortran = np.asfortranarray(rng.normal(size=(500, 3)))
    labels = np.arange(500, dtype=np.int64)
    for name, arr in {"wide": wide, "wider": wider, "fortran": fortran, "labels": labels}.items():
        np.save(tmp_path / f"{name}.npy", arr)
    return {p.stem: np.load(p, mmap_mode="r") for p in tmp_path.glob("*.npy")}


def test_read_rows_matches_fancy_indexing(arrays: dict[str, np.ndarray]) -> None:
    rows = np.sort(np.random.default_rng(1).choice(500, 77, replace=False))
    for name, arr in arrays.items():
        assert isinstance(arr, np.memmap)
        np.testing.assert_array_equal(stream._read_rows(arr, rows), np.asarray(arr)[rows],
                                      err_msg=name)
    assert arrays["wider"].itemsize * 8 * 32 >= stream.PREAD_MIN_ROW_BYTES


def _epoch(ds: object) -> list[list[int]]:
    return [b[1].numpy().tolist() for b in ds]  # type: ignore[attr-defined]


def test_each_epoch_visits_every_row_once_in_a_new_repeatable_order(
        arrays: dict[str, np.ndarray]) -> None:
    parts = ({"a": arrays["wide"], "b": arrays["wider"]}, arrays["labels"])
    index = np.arange(100, 400)
    ds = stream.dataset(parts, index, 32, shuffle=True, seed=7)
    first, second = _epoch(ds), _epoch(ds)
    assert sorted(sum(first, [])) == index.tolist() == sorted(sum(second, []))
    assert first != second  # reshuffled each epoch
    again = stream.dataset(parts, index, 32, shuffle=True, seed=7)
    assert _epoch(again) == first  # same seed, same sequence
    x, y = next(iter(ds))
    np.testing.assert_array_equal(x["b"].numpy(), np.asarray(arrays["wider"])[y.numpy()])
    assert int(ds.cardinality()) == -(-300 // 32)


def test_unshuffled_keeps_order(arrays: dict[str, np.ndarray]) -> None:
    ds = stream.dataset((arrays["wide"], arrays["labels"]), np.arange(10), 4, False, 0)
    assert _epoch(ds) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_sequential_gives_keras_batches_in_order_across_chunks(
        arrays: dict[str, np.ndarray]) -> None:
    # 500 rows of 1,288 bytes, batches of 32, chunks of 96 rows (three batches; 130 kB):
    # chunk edges fall on batch edges, and the last batch is the 20 rows left.
    ds = stream.sequential(({"a": arrays["wide"], "b": arrays["wider"]}, arrays["labels"]), 32,
                           chunk_bytes=130_000)
    batches = list(ds)
    assert [len(y) for _, y in batches] == [32] * 15 + [20]
    assert int(ds.cardinality()) == 16
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in batches]),
                                  np.arange(500))
    np.testing.assert_array_equal(np.concatenate([x["b"].numpy() for x, _ in batches]),
                                  np.asarray(arrays["wider"]))


def test_read_range_matches_slicing(arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        np.testing.assert_array_equal(stream.read_range(arr, 17, 402), np.asarray(arr)[17:402],
                                      err_msg=name)
