"""Zip archives from outside (.npz datasets and predict bodies, `.keras` model uploads), checked
from their headers before any member is inflated.

zipfile parses the whole central directory when it opens an archive, then inflates a member up
to the size that directory declares for it and checks its CRC. So the checks come in that order:
  1. the end-of-central-directory record (the archive's last bytes): the member count and the
     central directory's size, before zipfile parses it (a few MB can list millions of entries);
  2. every entry of the central directory: a relative name without '..', a regular file or a
     folder (no links), not encrypted, stored or deflated (what NumPy and Keras write; other
     methods bring other decoders and their memory), listed once; compressed sizes that fit in
     the archive (entries sharing their data are how the biggest zip bombs multiply it);
  3. the sum of the declared uncompressed sizes against the caller's bound, and the compression
     ratio of each member and of all of them together (KJ_MAX_ARCHIVE_RATIO, for a member or a
     total declaring more than KJ_ARCHIVE_RATIO_FLOOR_BYTES): the total's ratio is what keeps
     many members, each under the floor, from adding up to a bomb; with it an archive writes at
     most the ratio times its own size, plus the floor.
A member's data is then bounded by its declared size, provided it is read in bounded chunks
(`read_member`, or a caller's own loop): zipfile cuts what it inflates at the declared size and
checks the CRC there, but it cuts *after* inflating what one read asked for, and a read of the
whole member (`ZipFile.read`, `ZipExtFile.read()`) asks for up to 2 GiB. Where other code reads
members whole (Keras), `check_deflated` first inflates each deflated member in bounded chunks
and refuses one whose data does not end at its declared size with its declared CRC.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

from app.core.config import get_settings
from app.core.errors import DomainError, FieldError, invalid

# Most bytes inflated by one read of a member.
READ_CHUNK = 1 << 20
# Central-directory bytes allowed per member: an entry is 46 bytes plus its name, extra fields
# and comment; NumPy's and Keras's take under 150.
CENTRAL_BYTES_PER_MEMBER = 1024
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ENCRYPTED = 0x1
_DRIVE = re.compile(r"^[A-Za-z]:")

# A member's local header (APPNOTE 4.3.7), then the end records as zipfile reads them
# (4.3.14-4.3.16).
_LOCAL = struct.Struct("<4s5H3L2H")
_LOCAL_SIG = b"PK\x03\x04"
_END = b"PK\x05\x06"
_END_STRUCT = struct.Struct("<4s4H2LH")
_END64_LOCATOR = b"PK\x06\x07"
_END64_LOCATOR_SIZE = 20
_END64 = b"PK\x06\x06"
_END64_STRUCT = struct.Struct("<4sQ2H2L4Q")
_MAX_COMMENT = 1 << 16

# What zipfile raises on a malformed archive besides BadZipFile (bad UTF-8 names, versions it
# cannot read, truncated data); `open_zip` turns them all into BadZipFile.
_MALFORMED = (zipfile.BadZipFile, ValueError, struct.error, NotImplementedError, EOFError,
              OSError)


def open_zip(source: Path | bytes, *, max_members: int, max_total_bytes: int,
             pointer: str = "/file", max_ratio: float | None = None,
             ratio_floor_bytes: int | None = None
             ) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    """The archive, open, and its entries, once the checks above passed; the caller closes it.

    `max_members` bounds the entries (folders included), `max_total_bytes` the sum of their
    declared uncompressed sizes. A member, or all members together, declaring more than
    `ratio_floor_bytes` and inflating to more than `max_ratio` times its compressed size is
    refused too (None: the KJ_ settings). Raises DomainError (413 for sizes and ratios, 422
    for the rest, pointers under `pointer`) or zipfile.BadZipFile when `source` is not a
    readable zip."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    try:
        with _binary(source) as fh:
            _check_end_record(fh, size, max_members, pointer)
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except _MALFORMED as exc:
        raise zipfile.BadZipFile(str(exc) or type(exc).__name__) from exc
    try:
        members = check_entries(archive.infolist(), size, max_members=max_members,
                                max_total_bytes=max_total_bytes, pointer=pointer,
                                max_ratio=max_ratio, ratio_floor_bytes=ratio_floor_bytes)
    except BaseException:
        archive.close()
        raise
    return archive, members


def _binary(source: Path | bytes) -> IO[bytes]:
    return source.open("rb") if isinstance(source, Path) else io.BytesIO(source)


def _check_end_record(fh: IO[bytes], size: int, max_members: int, pointer: str) -> None:
    """Bound the member count and the central directory's size from the end records, found
    where zipfile looks for them. Nothing found: zipfile will say the archive is not a zip."""
    found = _end_record(fh, size)
    if found is None:
        return
    entries, central_bytes = found
    if entries > max_members:
        raise _too_many(entries, max_members, pointer)
    budget = max_members * CENTRAL_BYTES_PER_MEMBER
    if central_bytes > budget:
        raise invalid(f"The archive's central directory is {central_bytes} bytes; at most "
                      f"{budget} bytes ({CENTRAL_BYTES_PER_MEMBER} per member for at most "
                      f"{max_members} members) are accepted.",
                      [FieldError(pointer, f"central directory of at most {budget} bytes")],
                      title="Invalid archive")


def _end_record(fh: IO[bytes], size: int) -> tuple[int, int] | None:
    """(entries, central directory bytes) from the end of the archive, zip64 record included,
    read the way zipfile reads them (zipfile._EndRecData): the last 22 bytes when they are a
    record without comment, else the last record signature in the final 64 KiB."""
    if size < _END_STRUCT.size:
        return None
    start = max(size - _MAX_COMMENT - _END_STRUCT.size, 0)
    fh.seek(start)
    tail = fh.read()
    last = tail[-_END_STRUCT.size:]
    if last[:4] == _END and last[-2:] == b"\0\0":
        at = len(tail) - _END_STRUCT.size
    else:
        at = tail.rfind(_END)
        if at < 0 or at + _END_STRUCT.size > len(tail):
            return None
    record = _END_STRUCT.unpack_from(tail, at)
    entries, central_bytes = record[4], record[5]
    end_at = start + at
    if end_at >= _END64_LOCATOR_SIZE + _END64_STRUCT.size:
        fh.seek(end_at - _END64_LOCATOR_SIZE)
        if fh.read(4) == _END64_LOCATOR:
            fh.seek(end_at - _END64_LOCATOR_SIZE - _END64_STRUCT.size)
            raw = fh.read(_END64_STRUCT.size)
            if len(raw) == _END64_STRUCT.size and raw[:4] == _END64:
                record64 = _END64_STRUCT.unpack(raw)
                entries, central_bytes = record64[7], record64[8]
    return entries, central_bytes


def check_entries(entries: list[zipfile.ZipInfo], archive_size: int, *, max_members: int,
                  max_total_bytes: int, pointer: str = "/file", max_ratio: float | None = None,
                  ratio_floor_bytes: int | None = None) -> list[zipfile.ZipInfo]:
    """The checks of `open_zip` on a parsed central directory (see there); `entries` if they
    pass. Reads nothing: only the entries' fields."""
    settings = get_settings()
    ratio = settings.max_archive_ratio if max_ratio is None else max_ratio
    floor = settings.archive_ratio_floor_bytes if ratio_floor_bytes is None else ratio_floor_bytes
    if len(entries) > max_members:
        raise _too_many(len(entries), max_members, pointer)
    seen: set[str] = set()
    total = compressed = 0
    bomb: zipfile.ZipInfo | None = None  # the first member past the ratio
    for entry in entries:
        at = member_pointer(pointer, entry.filename)
        _check_name(entry.filename, at)
        if entry.filename in seen:
            raise _bad_entry(f"'{entry.filename}' is listed more than once.", at,
                             "each member once")
        seen.add(entry.filename)
        _check_kind(entry, at)
        if entry.flag_bits & _ENCRYPTED:
            raise _bad_entry(f"'{entry.filename}' is encrypted.", at, "an unencrypted member")
        if entry.compress_type not in METHODS:
            raise _bad_entry(f"'{entry.filename}' uses compression method "
                             f"{entry.compress_type}; only {' or '.join(METHODS.values())} "
                             "members are read.", at, "a stored or deflated member")
        if entry.compress_type == zipfile.ZIP_STORED and entry.compress_size != entry.file_size:
            raise _bad_entry(f"'{entry.filename}' is stored uncompressed but declares "
                             f"{entry.file_size} bytes and holds {entry.compress_size}.", at,
                             "equal sizes for a stored member")
        if (bomb is None and entry.file_size > floor
                and entry.file_size > ratio * entry.compress_size):
            bomb = entry
        total += entry.file_size
        compressed += entry.compress_size
    if total > max_total_bytes:
        raise _too_large(f"The archive's members add up to {total} bytes uncompressed; the "
                         f"limit is {max_total_bytes} bytes.", pointer,
                         f"at most {max_total_bytes} bytes uncompressed")
    if bomb is not None:
        raise _too_compressed(f"'{bomb.filename}' inflates", bomb.file_size, bomb.compress_size,
                              ratio, floor, member_pointer(pointer, bomb.filename))
    if total > floor and total > ratio * compressed:
        raise _too_compressed("The archive's members together inflate", total, compressed,
                              ratio, floor, pointer)
    if compressed > archive_size:
        raise invalid(f"The archive's members claim {compressed} compressed bytes but the "
                      f"archive has {archive_size} bytes (overlapping or truncated members).",
                      [FieldError(pointer, "members that do not overlap")],
                      title="Invalid archive")
    return entries


def read_member(archive: zipfile.ZipFile, entry: zipfile.ZipInfo) -> bytes:
    """A member's data, read in chunks of at most READ_CHUNK up to its declared size (so at
    most that much is inflated past it); reaching the declared size makes zipfile check the
    CRC (zipfile.BadZipFile when it differs)."""
    parts: list[bytes] = []
    left = entry.file_size
    with archive.open(entry) as member:
        while left > 0:
            part = member.read(min(READ_CHUNK, left))
            if not part:
                break
            parts.append(part)
            left -= len(part)
    return b"".join(parts)


def check_deflated(source: Path | bytes, entries: list[zipfile.ZipInfo],
                   pointer: str = "/file") -> None:
    """Inflate every deflated member in chunks (at most READ_CHUNK at a time, nothing kept) and
    refuse (422) one whose data inflates past its declared size, ends short of it, or does not
    match its CRC: after this, reading a member whole inflates exactly its declared size.
    Costs one pass over the members' declared bytes, which `open_zip` bounded."""
    with _binary(source) as fh:
        for entry in entries:
            if entry.compress_type == zipfile.ZIP_DEFLATED:
                _inflate_checked(fh, entry, member_pointer(pointer, entry.filename))


def member_bytes_at(fh: IO[bytes], entry: zipfile.ZipInfo) -> int:
    """Where a member's data starts in the archive `fh` (after its local header)."""
    fh.seek(entry.header_offset)
    header = fh.read(_LOCAL.size)
    if len(header) != _LOCAL.size or header[:4] != _LOCAL_SIG:
        raise zipfile.BadZipFile(f"no local header for '{entry.filename}' where the central "
                                 "directory says")
    name_len, extra_len = _LOCAL.unpack(header)[9:11]
    return entry.header_offset + _LOCAL.size + int(name_len) + int(extra_len)


class StoredMember(io.RawIOBase):
    """A stored member's bytes, read in place from the archive file, seekable both ways
    (zipfile's member objects go back to the member's start on every backward seek)."""

    def __init__(self, fh: IO[bytes], entry: zipfile.ZipInfo) -> None:
        super().__init__()
        self._fh, self._size, self._pos = fh, entry.file_size, 0
        self._start = member_bytes_at(fh, entry)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = min(len(view), self._size - self._pos)
        if count <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(count)
        view[:len(data)] = data
        self._pos += len(data)
        return len(data)


def _inflate_checked(fh: IO[bytes], entry: zipfile.ZipInfo, at: str) -> None:
    try:
        fh.seek(member_bytes_at(fh, entry))
    except zipfile.BadZipFile as exc:
        raise _bad_entry(f"{exc}.", at, "a readable member") from None
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    left, produced, crc = entry.compress_size, 0, 0
    pending = b""
    while not inflater.eof:
        if not pending:
            pending = fh.read(min(READ_CHUNK, left))
            left -= len(pending)
            if not pending:
                break
        try:
            out = inflater.decompress(pending, READ_CHUNK)
        except zlib.error as exc:
            raise _bad_entry(f"'{entry.filename}' is not valid deflate data: {exc}.", at,
                             "a readable member") from None
        pending = inflater.unconsumed_tail
        produced += len(out)
        crc = zlib.crc32(out, crc)
        if produced > entry.file_size:
            raise _bad_entry(f"'{entry.filename}' inflates past the {entry.file_size} bytes its "
                             "header declares.", at, "data of the declared size")
    if produced != entry.file_size or not inflater.eof:
        cut = "" if inflater.eof else " (its data is cut short)"
        raise _bad_entry(f"'{entry.filename}' inflates to {produced} bytes{cut}; its header "
                         f"declares {entry.file_size}.", at, "data of the declared size")
    if crc != entry.CRC:
        raise _bad_entry(f"'{entry.filename}' does not match its CRC-32.", at,
                         "data matching its CRC-32")


def _check_name(name: str, at: str) -> None:
    """Relative names only: members are files in a folder of ours, never paths out of it."""
    if not name:
        raise _bad_entry("A member has an empty name.", at, "a non-empty name")
    if name.startswith("/") or "\\" in name or _DRIVE.match(name):
        raise _bad_entry(f"'{name}' is an absolute or Windows path; member names are relative "
                         "and separated by '/'.", at, "a relative name")
    if ".." in name.split("/"):
        raise _bad_entry(f"'{name}' has a '..' component.", at, "a name without '..'")


def _check_kind(entry: zipfile.ZipInfo, at: str) -> None:
    """Unix file types live in the high 16 bits of external_attr; only files and folders pass
    (a symbolic link member would point an extraction anywhere)."""
    kind = stat.S_IFMT(entry.external_attr >> 16)
    if kind in (0, stat.S_IFREG, stat.S_IFDIR):
        return
    what = "a symbolic link" if kind == stat.S_IFLNK else f"a special file (mode {kind:#o})"
    raise _bad_entry(f"'{entry.filename}' is {what}; only regular files are accepted.", at,
                     "a regular file")


def member_pointer(pointer: str, name: str) -> str:
    """The JSON pointer of member `name` under `pointer` (RFC 6901 escapes)."""
    return f"{pointer}/{name.replace('~', '~0').replace('/', '~1')}"


def _too_many(count: int, max_members: int, pointer: str) -> DomainError:
    return invalid(f"The archive has {count} members; at most {max_members} are accepted.",
                   [FieldError(pointer, f"at most {max_members} members")],
                   title="Invalid archive")


def _bad_entry(detail: str, at: str, what: str) -> DomainError:
    return invalid(detail, [FieldError(at, f"expected {what}")], title="Invalid archive")


def _too_large(detail: str, at: str, what: str) -> DomainError:
    return DomainError(413, "Archive too large", detail, [FieldError(at, what)],
                       type="/problems/too-large")


def _too_compressed(what: str, size: int, compressed: int, max_ratio: float, floor: int,
                    at: str) -> DomainError:
    """413 for a compression ratio past the limit: the figure, the limit, and the way out
    (members stored as they are, as np.savez and model.save write them, always pass)."""
    ratio = size / max(compressed, 1)
    error = _too_large(
        f"{what} from {compressed} to {size} bytes ({ratio:.0f}:1); at most {max_ratio:g}:1 is "
        f"accepted past {floor} bytes (KJ_MAX_ARCHIVE_RATIO), as real data does not compress "
        "further while zip bombs do. Store the members uncompressed (numpy.savez instead of "
        "numpy.savez_compressed; model.save writes `.keras` files that way), or ask the "
        "operator to raise KJ_MAX_ARCHIVE_RATIO.", at,
        f"a compression ratio of at most {max_ratio:g}:1")
    error.extra.update({"limit": max_ratio, "current": round(ratio, 1)})
    return error
