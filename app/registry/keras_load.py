"""Load a `.keras` file without Keras unpacking it into the system temp folder.

Keras reads a `.keras` zip in place as long as it holds only config.json, metadata.json and
model.weights.h5; with any other member (assets/: a StringLookup's vocabulary, a
TextVectorization's) it extracts the WHOLE archive, weights included, to `tempfile.mkdtemp()`
on every load: a disk nobody bounds or sweeps, filled as often as the model is loaded. Here
such a file's members are unpacked (in chunks, up to their declared sizes) into a private
folder of the artifact store's staging area instead, Keras loads that folder (which it reads
in place), and the folder is removed afterwards; a process killed meanwhile leaves it to the
start-up sweep of stale staging folders. The assets are bounded first, by count and bytes
(KJ_MAX_KERAS_ASSETS, KJ_MAX_KERAS_ASSETS_BYTES), here and at upload.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.core.archives import READ_CHUNK, member_pointer
from app.core.config import get_settings
from app.core.errors import DomainError, FieldError, invalid
from app.core.storage import ArtifactStore, get_store

CONFIG_NAME = "config.json"
METADATA_NAME = "metadata.json"
WEIGHTS_NAME = "model.weights.h5"
# What `model.save("m.keras")` writes (keras.src.saving.saving_lib, Keras 3.x): config.json,
# metadata.json, model.weights.h5 and, for layers with assets, files under assets/.
KERAS_MEMBERS = frozenset({CONFIG_NAME, METADATA_NAME, WEIGHTS_NAME})
ASSETS_PREFIX = "assets/"


def check_assets(entries: list[zipfile.ZipInfo], pointer: str = "/file") -> None:
    """413 when the assets/ members are more, or declare more bytes together, than the
    settings allow: loading writes each of them to disk."""
    settings = get_settings()
    assets = [e for e in entries if e.filename.startswith(ASSETS_PREFIX) and not e.is_dir()]
    if len(assets) > settings.max_keras_assets:
        at = member_pointer(pointer, assets[settings.max_keras_assets].filename)
        raise _too_large(f"The `.keras` file has {len(assets)} files under {ASSETS_PREFIX}; at "
                         f"most {settings.max_keras_assets} are accepted (KJ_MAX_KERAS_ASSETS).",
                         at, f"at most {settings.max_keras_assets} asset files",
                         settings.max_keras_assets, len(assets))
    total = sum(e.file_size for e in assets)
    if total > settings.max_keras_assets_bytes:
        limit = settings.max_keras_assets_bytes
        raise _too_large(f"The `.keras` file's {len(assets)} files under {ASSETS_PREFIX} add up "
                         f"to {total} bytes uncompressed; at most {limit} bytes are accepted "
                         "(KJ_MAX_KERAS_ASSETS_BYTES): loading the model unpacks them to disk. "
                         "Keep vocabularies and other assets small, or ask the operator to "
                         "raise the limit.", member_pointer(pointer, ASSETS_PREFIX.rstrip("/")),
                         f"at most {limit} bytes of assets", limit, total)


def _too_large(detail: str, at: str, what: str, limit: int, current: int) -> DomainError:
    return DomainError(413, "Archive too large", detail, [FieldError(at, what)],
                       type="/problems/too-large", extra={"limit": limit, "current": current})


def load_keras(path: Path, *, compile: bool = False, store: ArtifactStore | None = None) -> Any:
    """The model in the `.keras` file `path` (`safe_mode=True`). A file with members besides
    config, metadata and weights is unpacked into a staging folder of `store` (None: the
    process's store), removed once loaded."""
    import keras

    with zipfile.ZipFile(path) as archive:
        entries = archive.infolist()
        if all(e.filename in KERAS_MEMBERS for e in entries):
            # Read in place: the weights into memory or, when Keras judges memory short, into
            # a folder next to `path` (in the store), never the system temp folder.
            return keras.saving.load_model(path, compile=compile, safe_mode=True)
        check_assets(entries)
        with _unpacked(archive, entries, store or get_store()) as folder:
            return keras.saving.load_model(folder, compile=compile, safe_mode=True)


@contextmanager
def _unpacked(archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo],
              store: ArtifactStore) -> Iterator[Path]:
    parent = store.staging_dir()
    folder = parent / "model"  # a folder Keras loads: not named *.keras
    try:
        folder.mkdir()
        for entry in entries:
            _unpack(archive, entry, folder)
        if not (folder / METADATA_NAME).exists():
            # Keras opens the assets folder only when the folder holds more than 3 names.
            (folder / METADATA_NAME).write_text("{}")
        yield folder
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def _unpack(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, folder: Path) -> None:
    target = (folder / entry.filename).resolve()
    if not target.is_relative_to(folder.resolve()) or target == folder.resolve():
        raise invalid(f"The `.keras` file's member '{entry.filename}' points out of it.",
                      [FieldError(member_pointer("/file", entry.filename), "a relative name")])
    if entry.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    if entry.filename not in KERAS_MEMBERS and not entry.filename.startswith(ASSETS_PREFIX):
        return  # not Keras's: nothing Keras would read
    target.parent.mkdir(parents=True, exist_ok=True)
    left = entry.file_size
    with archive.open(entry) as member, target.open("wb") as out:
        # Chunks up to the declared size: zipfile inflates at most one chunk past it.
        while left > 0 and (chunk := member.read(min(READ_CHUNK, left))):
            out.write(chunk)
            left -= len(chunk)
