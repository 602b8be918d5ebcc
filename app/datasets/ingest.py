"""Turn an uploaded file (.npz, .npy or CSV) into one `.npy` file per named array.

Arrays are stored uncompressed, one file each, so a job can open them memory-mapped. Nothing
here holds a whole file in memory: an npz's central directory is checked first (app.core.archives:
names, links, member count, total uncompressed size), then each member is copied to its file in
chunks with plain writes (a memory map being filled counts its dirty pages in the process's
memory); CSV rows are parsed in chunks. Object arrays are refused from the header, never loaded.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from app.core.archives import open_zip
from app.core.config import get_settings
from app.core.errors import DomainError, FieldError, bad_request, invalid, unsupported_media

# Whole names only (fullmatch): `^...$` with `match` took "x\n".
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,99}")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
CSV_CHUNK_ROWS = 65536
# A chunk also holds at most this many cells, so a wide CSV's chunk stays small (parsed cells
# are Python strings until the chunk is converted).
CSV_CHUNK_CELLS = 1 << 20
SINGLE_ARRAY_NAME = "x"
COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class IngestResult:
    format: str
    num_rows: int
    arrays: dict[str, dict[str, Any]]  # name -> {"shape": [...], "dtype": "float32"}


def detect_format(filename: str, head: bytes) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix in (".npz", ".npy", ".csv"):
        return suffix[1:]
    if head.startswith(ZIP_MAGIC):
        return "npz"
    if head.startswith(NPY_MAGIC):
        return "npy"
    raise unsupported_media(
        f"Cannot tell the format of '{filename}'. Upload a .npz (named arrays), a .npy "
        "(one array) or a .csv with a header row."
    )


def ingest(src: Path, filename: str, dest: Path, max_bytes: int,
           max_columns: int | None = None, max_members: int | None = None) -> IngestResult:
    """Read `src` and write its arrays as `dest/<name>.npy`; raise DomainError on bad input.
    `max_bytes` bounds each array and an npz's members together (uncompressed); an npz has at
    most `max_members` members (None: KJ_MAX_ARCHIVE_MEMBERS), a CSV at most `max_columns`
    columns (None: no bound)."""
    if src.stat().st_size == 0:
        raise bad_request("The uploaded file is empty.", [FieldError("/file", "empty file")])
    with src.open("rb") as fh:
        head = fh.read(8)
    fmt = detect_format(filename, head)
    if fmt == "npz":
        members = get_settings().max_archive_members if max_members is None else max_members
        _ingest_npz(src, dest, max_bytes, members)
    elif fmt == "npy":
        _copy_npy(src.open("rb"), dest / f"{SINGLE_ARRAY_NAME}.npy", "/file", max_bytes)
    else:
        _ingest_csv(src, dest, max_columns)
    arrays = _describe(dest)
    return IngestResult(fmt, _common_rows(arrays), arrays)


def _read_npy_header(fh: IO[bytes], pointer: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fh)  # type: ignore[no-any-return]
        return np.lib.format.read_array_header_2_0(fh)  # type: ignore[no-any-return]
    except ValueError as exc:
        raise invalid("Not a readable .npy array.", [FieldError(pointer, str(exc))]) from exc


def _copy_npy(fh: IO[bytes], target: Path, pointer: str, max_bytes: int) -> None:
    """Check the header (no object dtype, size within bounds), then write header and data to
    `target` in chunks; the source must end where the data does."""
    with fh:
        shape, fortran, dtype = _read_npy_header(fh, pointer)
        if dtype.hasobject:
            raise invalid(
                "Object arrays are not accepted (they need pickle).",
                [FieldError(pointer, f"dtype {dtype} holds Python objects; save numeric arrays")],
            )
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes > max_bytes:
            raise DomainError(413, "Dataset too large",
                              f"Array is {nbytes} bytes; the limit is {max_bytes}.",
                              [FieldError(pointer, "too large")], type="/problems/too-large")
        try:
            with target.open("wb") as out:
                _write_npy_header(out, shape, fortran, dtype)
                copied = _copy_bytes(fh, out, nbytes)
            if copied != nbytes:
                raise invalid("The array data is truncated.",
                              [FieldError(pointer, f"expected {nbytes} bytes of data, "
                                          f"got {copied}")])
            # Reading on to the end also makes zipfile check an archive member's CRC.
            if fh.read(1):
                raise invalid("The file holds more bytes than its array header declares.",
                              [FieldError(pointer, f"expected {nbytes} bytes of data after "
                                          "the header, and nothing more")])
        except BaseException:
            target.unlink(missing_ok=True)
            raise


def _write_npy_header(out: IO[bytes], shape: tuple[int, ...], fortran: bool,
                      dtype: np.dtype[Any]) -> None:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran,
              "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(out, header)
    except ValueError:  # (raised before writing) a header past 64 KiB needs version 2.0
        np.lib.format.write_array_header_2_0(out, header)


def _copy_bytes(src: IO[bytes], out: IO[bytes], nbytes: int) -> int:
    copied = 0
    while copied < nbytes:
        chunk = src.read(min(COPY_CHUNK, nbytes - copied))
        if not chunk:
            break
        out.write(chunk)
        copied += len(chunk)
    return copied


def _ingest_npz(src: Path, dest: Path, max_bytes: int, max_members: int) -> None:
    """The central directory passes app.core.archives' checks before any member is read; each
    member is then inflated at most to its declared size (zipfile stops there)."""
    try:
        archive, entries = open_zip(src, max_members=max_members, max_total_bytes=max_bytes)
    except zipfile.BadZipFile as exc:
        raise invalid("Not a readable .npz file.", [FieldError("/file", str(exc))]) from exc
    with archive:
        members = [m for m in entries if not m.is_dir()]
        if not members:
            raise invalid("The .npz file holds no arrays.", [FieldError("/file", "no arrays")])
        for member in members:
            name = member.filename.removesuffix(".npy")
            pointer = f"/file/{name}"
            if not member.filename.endswith(".npy") or not NAME_RE.fullmatch(name):
                raise invalid(
                    f"Array name {member.filename!r} is not accepted.",
                    [FieldError(pointer, "names must be letters, digits, '_', '.', '-' "
                                "(starting with a letter or '_'), at most 100 characters")],
                )
            try:
                _copy_npy(archive.open(member), dest / f"{name}.npy", pointer, max_bytes)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise invalid("Not a readable .npz file.", [FieldError(pointer, str(exc))]) from exc


def _csv_rows(src: Path, max_columns: int | None) -> tuple[list[str], Iterator[list[str]]]:
    text = io.TextIOWrapper(src.open("rb"), encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = [h.strip() for h in next(reader)]
    except (StopIteration, UnicodeDecodeError, csv.Error) as exc:
        raise invalid("The CSV file has no readable header row.",
                      [FieldError("/file", str(exc) or "no header")]) from exc
    if max_columns is not None and len(header) > max_columns:
        raise invalid(f"The CSV file has {len(header)} columns; at most {max_columns} are "
                      "accepted (KJ_MAX_CSV_COLUMNS). Upload wide data as a .npz or .npy "
                      "array instead.",
                      [FieldError("/file/columns", f"at most {max_columns} columns")])
    for i, name in enumerate(header):
        if not NAME_RE.fullmatch(name):
            raise invalid(f"CSV column name {name!r} is not accepted.",
                          [FieldError(f"/file/columns/{i}", "column names must be letters, "
                                      "digits, '_', '.', '-', starting with a letter or '_'")])
    if len(set(header)) != len(header):
        raise invalid("CSV column names repeat.", [FieldError("/file/columns", "duplicate names")])
    return header, reader


def _ingest_csv(src: Path, dest: Path, max_columns: int | None) -> None:
    """Numeric columns become arrays of shape (rows,): int64 when every value is whole,
    float32 otherwise (Keras's default float)."""
    header, reader = _csv_rows(src, max_columns)
    # Each column's values go to its own raw file, opened for each chunk's append: holding one
    # file per column open would run out of file descriptors on a wide CSV.
    raw = [dest / f".{name}.f64" for name in header]
    whole = [True] * len(header)
    rows = 0
    chunk: list[list[str]] = []
    chunk_rows = min(CSV_CHUNK_ROWS, max(1, CSV_CHUNK_CELLS // len(header)))

    def flush() -> None:
        nonlocal rows
        if not chunk:
            return
        try:
            block = np.array(chunk, dtype=np.float64)
        except ValueError as exc:
            raise invalid("The CSV file has a value that is not a number.",
                          [FieldError("/file", f"rows {rows + 2}..{rows + len(chunk) + 1}: {exc}")]
                          ) from exc
        for j, path in enumerate(raw):
            col = np.ascontiguousarray(block[:, j])
            whole[j] = whole[j] and bool(np.all(np.mod(col, 1) == 0))
            with path.open("ab") as fh:
                fh.write(col.tobytes())
        rows += len(chunk)
        chunk.clear()

    try:
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise invalid("A CSV row has the wrong number of fields.",
                              [FieldError("/file", f"line {line_no} has {len(row)} fields, "
                                          f"the header has {len(header)}")])
            chunk.append(row)
            if len(chunk) >= chunk_rows:
                flush()
        flush()
    except (UnicodeDecodeError, csv.Error) as exc:
        raise invalid("The CSV file is not readable UTF-8 text.", [FieldError("/file", str(exc))]
                      ) from exc
    if rows == 0:
        raise invalid("The CSV file has a header but no rows.", [FieldError("/file", "no rows")])
    for j, name in enumerate(header):
        tmp = dest / f".{name}.f64"
        values = np.memmap(tmp, dtype=np.float64, mode="r", shape=(rows,))
        dtype = np.int64 if whole[j] else np.float32
        out = np.lib.format.open_memmap(dest / f"{name}.npy", mode="w+", dtype=dtype, shape=(rows,))
        for start in range(0, rows, CSV_CHUNK_ROWS):
            out[start:start + CSV_CHUNK_ROWS] = values[start:start + CSV_CHUNK_ROWS]
        out.flush()
        del out, values
        tmp.unlink()


def _describe(dest: Path) -> dict[str, dict[str, Any]]:
    arrays: dict[str, dict[str, Any]] = {}
    for path in sorted(dest.glob("*.npy")):
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        arrays[path.stem] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
    return arrays


def _common_rows(arrays: dict[str, dict[str, Any]]) -> int:
    for name, meta in arrays.items():
        if not meta["shape"]:
            raise invalid("Every array needs a first (row) dimension; scalars are not datasets.",
                          [FieldError(f"/file/{name}", "0-d array")])
    counts = {name: meta["shape"][0] for name, meta in arrays.items()}
    if len(set(counts.values())) > 1:
        raise invalid(
            "Arrays have different row counts; every array must have one row per sample.",
            [FieldError(f"/file/{n}", f"{c} rows") for n, c in counts.items()],
        )
    rows = next(iter(counts.values()))
    if rows == 0:
        raise invalid("The dataset has no rows.", [FieldError("/file", "0 rows")])
    return int(rows)
