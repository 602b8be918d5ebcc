"""Zip archives built byte by byte for the archive checks' tests (zip bombs, headers that lie,
links, overlapping members), and a sampler of this process's resident memory."""

from __future__ import annotations

import io
import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

MiB = 1 << 20
GiB = 1 << 30
_CHUNK = 16 * MiB


@dataclass(frozen=True)
class Deflated:
    """A raw deflate stream with the size and CRC-32 of what it inflates to."""

    data: bytes
    size: int
    crc: int


def deflated(prefix: bytes, zeros: int) -> Deflated:
    """`prefix` then `zeros` zero bytes, deflated without deflating them all: after a full
    flush the compressor starts afresh, so every block of zeros compresses to the same bytes,
    computed once and repeated (about 1000:1, deflate's limit)."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [co.compress(prefix) + co.flush(zlib.Z_FULL_FLUSH)]
    crc = zlib.crc32(prefix)
    if zeros:
        chunk = min(zeros, _CHUNK)
        assert zeros % chunk == 0, "zeros: a multiple of 16 MiB, or less"
        parts.append((co.compress(bytes(chunk)) + co.flush(zlib.Z_FULL_FLUSH)) * (zeros // chunk))
        zero = bytes(chunk)
        for _ in range(zeros // chunk):
            crc = zlib.crc32(zero, crc)
    parts.append(co.flush())
    return Deflated(b"".join(parts), len(prefix) + zeros, crc)


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": shape})
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@dataclass
class Entry:
    """One member as written: `data` as stored (raw deflate when method is 8), and what the
    central directory declares about it."""

    name: str
    data: bytes
    file_size: int
    crc: int
    method: int = zipfile.ZIP_DEFLATED
    mode: int = stat.S_IFREG | 0o644
    flags: int = 0
    # Index of an earlier entry whose local header and data this one points at (overlap).
    same_data_as: int | None = None
    offset: int = field(default=0, init=False)


def stored(name: str, data: bytes, **kw: int) -> Entry:
    return Entry(name, data, len(data), zlib.crc32(data), method=zipfile.ZIP_STORED, **kw)


def deflated_entry(name: str, body: Deflated, declared_size: int | None = None) -> Entry:
    return Entry(name, body.data, body.size if declared_size is None else declared_size,
                 body.crc)


def raw_zip(entries: list[Entry], declared_count: int | None = None) -> bytes:
    """A zip with exactly these headers (no zip64: sizes under 4 GiB); `declared_count`
    overrides the entry count in the end record."""
    out = io.BytesIO()
    for e in entries:
        if e.same_data_as is not None:
            e.offset = entries[e.same_data_as].offset
            continue
        e.offset = out.tell()
        name = e.name.encode()
        out.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, e.flags, e.method, 0, 0x21,
                              e.crc, len(e.data), e.file_size, len(name), 0))
        out.write(name)
        out.write(e.data)
    central = out.tell()
    for e in entries:
        name = e.name.encode()
        out.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 0x031E, 20, e.flags, e.method, 0,
                              0x21, e.crc, len(e.data), e.file_size, len(name), 0, 0, 0, 0,
                              e.mode << 16, e.offset))
        out.write(name)
    size = out.tell() - central
    count = len(entries) if declared_count is None else declared_count
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, size, central, 0))
    return out.getvalue()


def member_names(raw: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(raw)).namelist()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Peak:
    growth: int = 0
    seconds: float = 0.0


@contextmanager
def peak_rss_growth(interval_s: float = 0.001) -> Iterator[Peak]:
    """The most this process's resident memory grew above its level at the start while the
    block ran (sampled every millisecond), and the block's wall time."""
    peak = Peak()
    base = rss_bytes()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.growth = max(peak.growth, rss_bytes() - base)
            time.sleep(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    thread.start()
    try:
        yield peak
    finally:
        peak.seconds = time.perf_counter() - start
        done.set()
        thread.join()
        peak.growth = max(peak.growth, rss_bytes() - base)
