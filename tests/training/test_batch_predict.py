"""The chunked loop of a predict job, with plain NumPy functions standing in for the model: rows
land in order (also in the last, shorter chunk), each chunk is whole batches, outputs are
named as documented, and a cancel between chunks stops it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.errors import DomainError
from app.training import batch_predict
from app.training.batch_predict import chunk_rows, predict_to_files


def _memmapped(tmp_path: Path, **arrays: np.ndarray) -> dict[str, np.ndarray]:
    """Arrays stored and opened as a job opens a dataset's (one memory-mapped `.npy` each)."""
    for name, values in arrays.items():
        np.save(tmp_path / f"{name}.npy", values)
    return {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in arrays}


def _no_cancel() -> None:
    pass


def test_rows_written_in_order_when_rows_are_not_a_multiple_of_the_chunk(
        tmp_path: Path) -> None:
    n, chunk = 1000, 128  # 7 full chunks and one of 104 rows
    x = np.random.default_rng(0).normal(size=(n, 3)).astype("float32")
    arrays = _memmapped(tmp_path, x=x)
    seen: list[int] = []

    def model(rows: Any) -> np.ndarray:
        seen.append(len(rows))
        return np.asarray(rows @ np.array([[1.0], [2.0], [3.0]], dtype="float32"))

    out = tmp_path / "out"
    out.mkdir()
    written = predict_to_files(arrays, "x", model, out, output_name="predictions",
                               output_names=[], chunk=chunk, check_cancel=_no_cancel)

    assert seen == [128] * 7 + [104]
    assert written.rows == n
    assert written.arrays == {"predictions": {"shape": [n, 1], "dtype": "float32"}}
    stored = np.load(out / "predictions.npy", allow_pickle=False)
    np.testing.assert_array_equal(stored, x @ np.array([[1.0], [2.0], [3.0]], dtype="float32"))


def test_stacked_columns_and_several_outputs_get_prefixed_names(tmp_path: Path) -> None:
    n = 300
    a = np.arange(n, dtype="float32")
    b = -np.arange(n, dtype="float32")
    arrays = _memmapped(tmp_path, a=a, b=b)
    out = tmp_path / "out"
    out.mkdir()

    def model(rows: Any) -> list[np.ndarray]:  # a list, in the order of output_names
        return [rows[:, :1] + rows[:, 1:], rows * 2]

    written = predict_to_files(arrays, ["a", "b"], model, out, output_name="pred",
                               output_names=["cls", "reg/x"], chunk=64,
                               check_cancel=_no_cancel)

    assert set(written.arrays) == {"pred.cls", "pred.reg_x"}
    np.testing.assert_array_equal(np.load(out / "pred.cls.npy"), np.zeros((n, 1)))
    np.testing.assert_array_equal(np.load(out / "pred.reg_x.npy"), np.stack([a, b], 1) * 2)


def test_dict_inputs_and_dict_outputs(tmp_path: Path) -> None:
    arrays = _memmapped(tmp_path, u=np.arange(10, dtype="int64"), v=np.ones((10, 2)))
    out = tmp_path / "out"
    out.mkdir()

    def model(rows: Any) -> dict[str, np.ndarray]:
        return {"first": rows["left"] * 10, "second": rows["right"].sum(axis=1)}

    written = predict_to_files(arrays, {"left": "u", "right": "v"}, model, out,
                               output_name="p", output_names=["ignored", "names"], chunk=4,
                               check_cancel=_no_cancel)

    assert written.arrays == {"p.first": {"shape": [10], "dtype": "int64"},
                              "p.second": {"shape": [10], "dtype": "float64"}}
    np.testing.assert_array_equal(np.load(out / "p.first.npy"), np.arange(10) * 10)


def test_cancel_is_checked_before_each_chunk(tmp_path: Path) -> None:
    arrays = _memmapped(tmp_path, x=np.zeros((100, 1), dtype="float32"))
    calls: list[int] = []

    class Stop(Exception):
        pass

    def check() -> None:
        if len(calls) == 2:
            raise Stop()

    def model(rows: Any) -> np.ndarray:
        calls.append(len(rows))
        return np.asarray(rows)

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Stop):
        predict_to_files(arrays, "x", model, out, output_name="y", output_names=[], chunk=10,
                         check_cancel=check)
    assert calls == [10, 10]


def test_an_output_without_one_row_per_input_row_fails_the_job(tmp_path: Path) -> None:
    arrays = _memmapped(tmp_path, x=np.zeros((20, 2), dtype="float32"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DomainError) as info:
        predict_to_files(arrays, "x", lambda rows: np.asarray(rows)[:1], out, output_name="y",
                         output_names=[], chunk=8, check_cancel=_no_cancel)
    assert info.value.status == 422 and "rows 0..7" in info.value.detail


def test_too_long_multi_output_names_point_at_output_name() -> None:
    with pytest.raises(DomainError) as info:
        batch_predict.array_names("p" * 99, ["a", "b"])
    assert info.value.errors[0].pointer == "/output_name"
    assert batch_predict.array_names("p", ["only"]) == {"only": "p"}


@pytest.mark.parametrize(("batch_size", "row_bytes", "expected"), [
    (128, 8, 1 << 18),         # small rows: the row cap, in whole batches
    (100, 8, 262_100),
    (128, 1 << 20, 128),       # 1 MiB rows: 64 rows by bytes, but never less than a batch
    (300_000, 8, 300_000),     # a batch above the cap is still one chunk
])
def test_chunk_rows_is_whole_batches(batch_size: int, row_bytes: int, expected: int) -> None:
    assert chunk_rows(batch_size, row_bytes) == expected


def test_string_outputs_are_refused_with_what_to_do(tmp_path: Path) -> None:
    arrays = _memmapped(tmp_path, x=np.zeros((4, 1), dtype="float32"))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DomainError) as info:
        predict_to_files(arrays, "x", lambda rows: np.array([[b"a"]] * len(rows), dtype=object),
                         out, output_name="y", output_names=[], chunk=4,
                         check_cancel=_no_cancel)
    assert info.value.status == 422 and "serving API" in info.value.detail
