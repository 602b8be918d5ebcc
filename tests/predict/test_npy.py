"""Binary tensors: .npy / .npz bodies in, .npy / .npz responses out."""

from __future__ import annotations

import io
import pickle
import struct
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from app.core.errors import DomainError
from app.predict.npy import NPY, NPZ, ZIP, decode_npy, encode_npy, wants_npy
from app.predict.signature import TensorInfo

X = TensorInfo("x", (None, 2), "float32")
A = TensorInfo("a", (None, 2), "float32")
B = TensorInfo("b", (None,), "int64")
MB = 2**20


def npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def npz(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if compressed:
        np.savez_compressed(buf, allow_pickle=False, **arrays)
    else:
        np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def refused(exc: pytest.ExceptionInfo[DomainError], status: int = 400) -> DomainError:
    assert exc.value.status == status, exc.value.detail
    assert exc.value.extra["error"] == exc.value.detail
    return exc.value


def test_npy_round_trip() -> None:
    arr = np.random.default_rng(0).random((5, 2), dtype=np.float32)
    (got,) = decode_npy(npy(arr), [X], content_type=NPY)
    np.testing.assert_array_equal(got, arr)
    assert got.dtype == np.float32
    body, media = encode_npy([got], [X])
    assert media == NPY
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), arr)


def test_npy_sniffed_without_content_type_and_params_ignored() -> None:
    arr = np.ones((1, 2), np.float32)
    decode_npy(npy(arr), [X])
    decode_npy(npy(arr), [X], content_type="Application/X-NPY; charset=binary")


def test_npy_casts_ints_and_foreign_byte_order() -> None:
    (got,) = decode_npy(npy(np.arange(6).reshape(3, 2)), [X], content_type=NPY)
    assert got.dtype == np.float32 and got[2, 1] == 5
    (got,) = decode_npy(npy(np.arange(4, dtype=">f4").reshape(2, 2)), [X], content_type=NPY)
    assert got.dtype == np.float32 and got[1, 1] == 3


def test_fortran_order_npy() -> None:
    arr = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(3, 2))
    (got,) = decode_npy(npy(arr), [X], content_type=NPY)
    np.testing.assert_array_equal(got, arr)


def test_npy_shape_error_names_the_signature() -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(npy(np.zeros((3, 5), np.float32)), [X], content_type=NPY)
    assert "Input 'x' has shape [3, 5]; the model expects [None, 2] of float32" in \
        refused(exc).detail


def test_npy_for_a_multi_input_model_asks_for_npz() -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(npy(np.zeros((1, 2), np.float32)), [A, B], content_type=NPY)
    assert NPZ in refused(exc, 415).detail


def test_npz_multi_input_in_any_member_order() -> None:
    raw = npz(b=np.array([7, 8]), a=np.ones((2, 2)))
    a, b = decode_npy(raw, [A, B], content_type=NPZ)
    assert a.dtype == np.float32 and a.shape == (2, 2)
    assert b.dtype == np.int64 and b.tolist() == [7, 8]


@pytest.mark.parametrize("content_type", [NPZ, ZIP, None])
def test_compressed_npz(content_type: str | None) -> None:
    raw = npz(True, a=np.ones((3, 2), np.float32), b=np.arange(3))
    a, b = decode_npy(raw, [A, B], content_type=content_type)
    assert a.shape == (3, 2) and b.tolist() == [0, 1, 2]


def test_object_arrays_are_refused_without_unpickling() -> None:
    obj = np.array([[{"a": 1}, None]], dtype=object)
    with pytest.raises(DomainError) as exc:
        decode_npy(npy(obj, allow_pickle=True), [X], content_type=NPY)
    assert "pickle" in refused(exc).detail
    buf = io.BytesIO()
    np.savez(buf, x=obj)
    with pytest.raises(DomainError) as exc:
        decode_npy(buf.getvalue(), [X], content_type=NPZ)
    assert refused(exc).errors[0].pointer == "/x"


def test_a_pickle_is_not_an_npy() -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(pickle.dumps(np.zeros((1, 2))), [X], content_type=NPY)
    refused(exc)


@pytest.mark.parametrize("arr", [np.array([["a", "b"]]), np.zeros((1, 2), np.complex64),
                                 np.zeros((1, 2), dtype=[("f", "f4")])])
def test_non_numeric_dtypes_are_refused(arr: np.ndarray) -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(npy(arr), [X], content_type=NPY)
    refused(exc)


def test_unknown_extra_and_missing_members() -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(npz(a=np.ones((1, 2)), c=np.ones(1)), [A, B], content_type=NPZ)
    assert refused(exc).errors[0].pointer == "/c"
    with pytest.raises(DomainError) as exc:
        decode_npy(npz(a=np.ones((1, 2)), b=np.ones(1), c=np.ones(1)), [A, B],
                   content_type=NPZ)
    assert "3 members" in refused(exc).detail
    with pytest.raises(DomainError) as exc:
        decode_npy(npz(a=np.ones((1, 2))), [A, B], content_type=NPZ)
    assert refused(exc).errors[0].pointer == "/b"


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(b"{}", [X], content_type="application/octet-stream")
    refused(exc, 415)
    with pytest.raises(DomainError) as exc:
        decode_npy(b"{}", [X])
    refused(exc, 415)


def test_garbage_claiming_to_be_npz_is_400() -> None:
    with pytest.raises(DomainError) as exc:
        decode_npy(b"PK\x03\x04 not really a zip", [X], content_type=NPZ)
    refused(exc)


def _with_declared_size(raw: bytes, size: int) -> bytes:
    """`raw` (a one-member zip) with the member's uncompressed size rewritten in both the local
    header and the central directory, as a crafted archive would declare it."""
    data = bytearray(raw)
    local = data.index(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, size)
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, size)
    return bytes(data)


def test_zip_bomb_is_refused_from_the_headers_fast_and_without_allocating() -> None:
    small = npz(True, x=np.zeros((1000, 2), np.float32))
    bomb = _with_declared_size(small, 1_000_000_000)  # declares 1 GB uncompressed
    assert zipfile.ZipFile(io.BytesIO(bomb)).infolist()[0].file_size == 1_000_000_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DomainError) as exc:
            decode_npy(bomb, [X], content_type=NPZ, max_bytes=10 * MB)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "1000000000 bytes" in refused(exc, 413).detail
    assert elapsed < 1.0
    assert peak < 1 * MB


def test_real_deflate_bomb_is_refused_before_inflating() -> None:
    # 50 MB of zeros deflate to ~50 kB; the central directory gives the size away.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as member:
        member.write(npy(np.zeros((0, 2), np.float32))[:128])
        chunk = bytes(MB)
        for _ in range(50):
            member.write(chunk)
    start = time.perf_counter()
    with pytest.raises(DomainError) as exc:
        decode_npy(buf.getvalue(), [X], content_type=NPZ, max_bytes=10 * MB)
    assert time.perf_counter() - start < 1.0
    refused(exc, 413)


def test_member_understating_its_size_is_not_inflated_past_it() -> None:
    raw = npz(True, x=np.zeros((100_000, 2), np.float32))  # 800 kB inflated
    liar = _with_declared_size(raw, 1000)
    with pytest.raises(DomainError) as exc:
        decode_npy(liar, [X], content_type=NPZ, max_bytes=10_000)
    refused(exc)


def test_npy_header_declaring_a_huge_array_is_refused_without_allocating() -> None:
    raw = _npy_declaring((10**12, 2))  # 8 TB declared, 8 bytes present
    tracemalloc.start()
    try:
        with pytest.raises(DomainError) as exc:
            decode_npy(raw, [X], content_type=NPY, max_bytes=10 * MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    refused(exc, 413)
    assert peak < MB


def _npy_declaring(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + bytes(8)


def test_npy_with_missing_or_extra_data_is_400() -> None:
    raw = npy(np.zeros((4, 2), np.float32))
    for bad in (raw[:-4], raw + b"\0\0\0\0"):
        with pytest.raises(DomainError) as exc:
            decode_npy(bad, [X], content_type=NPY)
        assert "bytes of data" in refused(exc).detail


def test_encode_several_outputs_as_npz() -> None:
    y = np.arange(4, dtype=np.float32).reshape(2, 2)
    z = np.array([True, False])
    body, media = encode_npy([y, z], [TensorInfo("y", (None, 2), "float32"),
                                      TensorInfo("z", (None,), "bool")])
    assert media == NPZ
    with np.load(io.BytesIO(body), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["y", "z"]
        np.testing.assert_array_equal(loaded["y"], y)
        np.testing.assert_array_equal(loaded["z"], z)
    # and our own decoder reads what we write
    got = decode_npy(body, [TensorInfo("y", (None, 2), "float32"),
                            TensorInfo("z", (None,), "bool")])
    np.testing.assert_array_equal(got[1], z)


@pytest.mark.parametrize(("accept", "expected"), [
    (None, False), ("", False), ("*/*", False), ("application/json", False),
    ("application/x-npy", True), ("application/x-npz", True), ("application/zip", True),
    ("application/x-npy, */*;q=0.8", True), ("application/x-npy, */*", True),
    ("application/json, application/x-npy", False),
    ("application/json;q=0.5, application/x-npy", True),
    ("application/x-npy;q=0, application/json", False),
    ("application/x-npy;q=0", False), ("application/x-npy;q=oops", False),
    ("Application/X-NPY ; q=0.9", True),
])
def test_wants_npy(accept: str | None, expected: bool) -> None:
    assert wants_npy(accept) is expected
