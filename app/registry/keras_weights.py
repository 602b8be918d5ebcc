"""The weights inside a `.keras` upload (model.weights.h5), checked from HDF5 metadata alone
before Keras reads them.

Keras writes every variable as a contiguous, uncompressed dataset, so a dataset's declared
bytes (shape x item size) are bytes stored in the file. One that declares more than it stores
is inflated on reading (a compression filter) or made up (unallocated storage reads as its fill
value): a few KB can declare GiBs, which Keras allocates before it finds the shape wrong (its
own guard starts at 4 GiB). Datasets whose data lives in other files (external storage, virtual
datasets) and soft or external links are refused too: they read files of the server's.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from app.core.archives import READ_CHUNK, StoredMember, member_pointer
from app.core.errors import DomainError, FieldError, invalid

WEIGHTS_NAME = "model.weights.h5"


def check_weights(path: Path, max_bytes: int, pointer: str = "/file") -> None:
    """Refuse (422) a weights file whose datasets do not store what they declare, or read
    other files; 413 when they declare more than `max_bytes` together. The archive's headers
    passed app.core.archives first; a `.keras` without weights is left to Keras to refuse."""
    import h5py  # type: ignore[import-untyped]

    at = member_pointer(pointer, WEIGHTS_NAME)
    with zipfile.ZipFile(path) as archive, path.open("rb") as fh:
        try:
            entry = archive.getinfo(WEIGHTS_NAME)
        except KeyError:
            return
        with _readable(archive, fh, entry, path.parent) as weights:
            try:
                with h5py.File(weights, "r") as h5:
                    problem = _scan(h5, max_bytes, at)
            except (OSError, RuntimeError, KeyError, TypeError, ValueError) as exc:
                raise invalid(f"{WEIGHTS_NAME} is not a readable HDF5 file: {exc}",
                              [FieldError(at, "an HDF5 file written by model.save")]) from exc
    if problem is not None:
        raise problem


@contextmanager
def _readable(archive: zipfile.ZipFile, fh: IO[bytes], entry: zipfile.ZipInfo,
              folder: Path) -> Iterator[io.RawIOBase | IO[bytes]]:
    """The member as a seekable file for h5py: in place when stored (as Keras writes it),
    else inflated in chunks to a nameless temporary file (its size checked before)."""
    if entry.compress_type == zipfile.ZIP_STORED:
        yield StoredMember(fh, entry)
        return
    with tempfile.TemporaryFile(dir=folder) as tmp, archive.open(entry) as member:
        shutil.copyfileobj(member, tmp, READ_CHUNK)
        tmp.seek(0)
        yield tmp


def _scan(h5: Any, max_bytes: int, at: str) -> DomainError | None:
    import h5py  # type: ignore[import-untyped]

    total = 0

    def link(name: str, info: Any) -> DomainError | None:
        if isinstance(info, (h5py.SoftLink, h5py.ExternalLink)):
            return _bad(f"{WEIGHTS_NAME} has a {type(info).__name__} at '{name}'.", at, name)
        return None

    def dataset(name: str, obj: Any) -> DomainError | None:
        nonlocal total
        if not isinstance(obj, h5py.Dataset):
            return None
        if obj.external or obj.is_virtual:
            return _bad(f"{WEIGHTS_NAME} dataset '{name}' keeps its data in other files.", at,
                        name)
        declared = math.prod(obj.shape or ()) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        if declared > stored:
            return _bad(f"{WEIGHTS_NAME} dataset '{name}' declares {declared} bytes but stores "
                        f"{stored}; Keras writes weights uncompressed, in full.", at, name)
        total += declared
        if total > max_bytes:
            return DomainError(413, "Archive too large",
                               f"{WEIGHTS_NAME}'s datasets declare at least {total} bytes; "
                               f"the limit is {max_bytes} bytes (the largest upload).",
                               [FieldError(at, f"at most {max_bytes} bytes of weights")],
                               type="/problems/too-large")
        return None

    found: DomainError | None = h5.visititems_links(link)
    return found if found is not None else h5.visititems(dataset)


def _bad(detail: str, at: str, name: str) -> DomainError:
    return invalid(f"The file is not a usable `.keras` model: {detail}",
                   [FieldError(f"{at}/{name}", "a contiguous, uncompressed dataset in this "
                               "file, as model.save writes")])
