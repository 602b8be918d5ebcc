"""Dataset ingest as a unit: files in, one `.npy` per array out. No database, no worker."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app.core.errors import DomainError
from app.datasets.ingest import detect_format, ingest


def _ingest(tmp_path: Path, name: str, data: bytes) -> tuple[object, Path]:
    src, dest = tmp_path / "upload.bin", tmp_path / "arrays"
    src.write_bytes(data)
    dest.mkdir()
    return ingest(src, name, dest, max_bytes=1 << 20), dest


def test_npz_keeps_each_array_with_its_dtype(tmp_path: Path) -> None:
    x = np.arange(12, dtype="float32").reshape(6, 2)
    y = np.array([0, 1, 0, 1, 1, 0], dtype="int64")
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    result, dest = _ingest(tmp_path, "d.npz", buf.getvalue())
    assert result.format == "npz" and result.num_rows == 6  # type: ignore[attr-defined]
    assert result.arrays == {"x": {"shape": [6, 2], "dtype": "float32"},  # type: ignore[attr-defined]
                             "y": {"shape": [6], "dtype": "int64"}}
    np.testing.assert_array_equal(np.load(dest / "x.npy"), x)
    np.testing.assert_array_equal(np.load(dest / "y.npy"), y)


def test_npy_becomes_x(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.save(buf, np.ones((3, 4), dtype="float64"))
    result, dest = _ingest(tmp_path, "d.npy", buf.getvalue())
    assert result.arrays == {"x": {"shape": [3, 4], "dtype": "float64"}}  # type: ignore[attr-defined]
    assert np.load(dest / "x.npy").sum() == 12


def test_csv_columns_int_when_whole_float_otherwise(tmp_path: Path) -> None:
    result, dest = _ingest(tmp_path, "d.csv", b"a,b,label\n1,0.5,0\n2,1.5,1\n3,2,1\n")
    assert result.arrays == {"a": {"shape": [3], "dtype": "int64"},  # type: ignore[attr-defined]
                             "b": {"shape": [3], "dtype": "float32"},
                             "label": {"shape": [3], "dtype": "int64"}}
    np.testing.assert_allclose(np.load(dest / "b.npy"), [0.5, 1.5, 2.0])


@pytest.mark.parametrize(("name", "data", "status"), [
    ("d.npz", b"", 400),                                  # empty
    ("d.csv", b"a,b\n1,x\n", 422),                         # non-numeric column
    ("d.bin", b"\x00\x01\x02\x03 not a known format", 415),
])
def test_bad_files_are_domain_errors(tmp_path: Path, name: str, data: bytes, status: int) -> None:
    with pytest.raises(DomainError) as info:
        _ingest(tmp_path, name, data)
    assert info.value.status == status


def test_zip_member_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    arr = io.BytesIO()
    np.save(arr, np.zeros(3))
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../x.npy", arr.getvalue())
    with pytest.raises(DomainError) as info:
        _ingest(tmp_path, "d.npz", buf.getvalue())
    assert info.value.status == 422
    assert not (tmp_path / "x.npy").exists()


def test_format_is_told_by_suffix_or_magic() -> None:
    assert detect_format("data.NPZ", b"") == "npz"
    assert detect_format("upload", b"PK\x03\x04....") == "npz"
    assert detect_format("upload", b"\x93NUMPY..") == "npy"
