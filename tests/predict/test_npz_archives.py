""".npz predict bodies: a member whose deflate data goes on past its declared size is read in
bounded chunks up to that size, never inflated whole (zipfile cuts a member at its declared
size only after inflating what one read asked for: all of it, for a whole-member read)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from app.core.errors import DomainError
from app.predict.npy import NPZ, decode_npy
from app.predict.signature import TensorInfo
from tests.archives import (
    Entry,
    GiB,
    MiB,
    deflated,
    deflated_entry,
    npy_bytes,
    npy_header,
    peak_rss_growth,
    raw_zip,
)

X = TensorInfo("x", (None, 2), "float32")


@pytest.fixture(scope="module")
def array_then_a_gib() -> tuple[bytes, bytes, int]:
    """(the .npy of [[1, 2]], a deflate stream of it then 1 GiB of zeros, the .npy's CRC)."""
    arr = npy_bytes(np.array([[1, 2]], np.float32))
    return arr, deflated(arr, GiB).data, zlib.crc32(arr)


def test_member_going_on_past_its_size_is_read_up_to_it_only(
        array_then_a_gib: tuple[bytes, bytes, int]) -> None:
    arr, stream, crc = array_then_a_gib
    body = raw_zip([Entry("x.npy", stream, len(arr), crc)])
    with peak_rss_growth() as peak:
        [out] = decode_npy(body, [X], content_type=NPZ, max_bytes=MiB)
    np.testing.assert_array_equal(out, [[1, 2]])
    assert peak.seconds < 1.0, peak
    assert peak.growth < 64 * MiB, peak


def test_same_member_with_the_stream_crc_is_a_400(
        array_then_a_gib: tuple[bytes, bytes, int]) -> None:
    arr, stream, _ = array_then_a_gib
    body = raw_zip([Entry("x.npy", stream, len(arr), 0)])
    with peak_rss_growth() as peak, pytest.raises(DomainError) as exc:
        decode_npy(body, [X], content_type=NPZ, max_bytes=MiB)
    assert exc.value.status == 400 and "CRC" in exc.value.detail
    assert peak.growth < 64 * MiB, peak


def test_symlink_and_escaping_members_are_400s() -> None:
    link = Entry("x.npy", b"/etc/passwd", 11, zlib.crc32(b"/etc/passwd"), method=0,
                 mode=0o120777)
    with pytest.raises(DomainError) as exc:
        decode_npy(raw_zip([link]), [X], content_type=NPZ)
    assert exc.value.status == 400 and "symbolic link" in exc.value.detail
    assert exc.value.extra["error"] == exc.value.detail
    data = npy_bytes(np.zeros((1, 2), np.float32))
    escaping = Entry("../x.npy", data, len(data), zlib.crc32(data), method=0)
    with pytest.raises(DomainError) as exc:
        decode_npy(raw_zip([escaping]), [X], content_type=NPZ)
    assert exc.value.status == 400 and "'..'" in exc.value.detail


def test_bomb_within_the_byte_bound_is_a_413_for_its_ratio() -> None:
    """64 MiB of float32 rows deflated to 64 kB, under a 1 GiB bound on the arrays: refused for
    its compression ratio from the central directory (it was inflated into memory whole)."""
    rows = 8 * MiB
    body = raw_zip([deflated_entry("x.npy", deflated(npy_header((rows, 2), "<f4"), rows * 8))])
    with peak_rss_growth() as peak, pytest.raises(DomainError) as exc:
        decode_npy(body, [X], content_type=NPZ, max_bytes=GiB)
    assert exc.value.status == 413, exc.value
    assert "KJ_MAX_ARCHIVE_RATIO" in exc.value.detail and "(1" in exc.value.detail
    assert exc.value.errors[0].pointer == "/x.npy"
    assert peak.seconds < 1.0 and peak.growth < 16 * MiB, peak
