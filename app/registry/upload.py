"""Upload a `.keras` file as the next version of a model.

The file is streamed into a staging folder, then checked in this order, each refusal a
problem that leaves no row and no file behind:
  1. size (413) and format: HDF5 (`.h5`/`.hdf5` or HDF5's magic bytes) is refused (422 at `/file`),
     since legacy HDF5 model loading has had code-execution bugs; only the `.keras` zip is read;
  2. the zip's headers (app.core.archives): only the members Keras writes (config.json,
     metadata.json, model.weights.h5, assets/...), relative names, no links, at most
     KJ_MAX_ARCHIVE_MEMBERS members, at most the upload limit uncompressed in all, no member
     and not all of them together inflating past KJ_MAX_ARCHIVE_RATIO:1 (Keras stores members
     uncompressed), assets within KJ_MAX_KERAS_ASSETS(_BYTES) (app.registry.keras_load: loading
     unpacks them to disk), and every deflated member
     inflated once in bounded chunks to prove it ends at its declared size: Keras reads the
     weights whole into memory (and extracts every member when there are assets), so what the
     headers declare must be what loading costs; then the HDF5 weights' metadata
     (app.registry.keras_weights): every dataset stores the bytes it declares;
  3. its `config.json` (read with zipfile, bounded) passes check_keras_config, the same
     allowlist imported spec configs pass, before any Keras code sees the file;
  4. Keras loads it (`compile=False`, `safe_mode=True`, assets unpacked in the store, never the
     system temp folder: app.registry.keras_load) once its layers and parameters pass the spec
     limits (app.specs.limits);
  5. its `compile_config`, if any, passes the same allowlist as a spec's compile block
     (evaluate jobs load versions with `compile=True`, so Keras would otherwise build it).
Then the next version number is taken and the staging folder is published under it.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.core.archives import check_deflated, member_pointer, open_zip
from app.core.config import get_settings
from app.core.errors import DomainError, FieldError, invalid
from app.core.json_limits import MAX_DEPTH, too_deep
from app.core.storage import ArtifactStore, ReceivedFile
from app.registry import service as registry
from app.registry.keras_load import (
    ASSETS_PREFIX,
    CONFIG_NAME,
    KERAS_MEMBERS,
    check_assets,
    load_keras,
)
from app.registry.keras_weights import check_weights
from app.tables import ModelVersion

MAX_CONFIG_BYTES = 16 << 20
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_SUFFIXES = (".h5", ".hdf5")
FILE_POINTER = "/file"
CONFIG_POINTER = "/file/config.json"
MAX_DETAIL = 1000


def create(session: Session, store: ArtifactStore, owner: str, name: str, staging: Path,
           upload: ReceivedFile, *, actor: str) -> ModelVersion:
    """Check the upload (received as `staging`/model.keras), then publish the staging folder as
    version n+1 of `name`, recorded as `actor`'s. The tenant's largest upload (max_upload_bytes)
    bounds the file and the archive's members together, uncompressed. The caller removes
    `staging`; a failure here publishes nothing: no row, no file."""
    limit = registry.upload_limit(session, owner, upload.size)
    if upload.filename.lower().endswith(HDF5_SUFFIXES):
        raise _hdf5_refused()
    path = upload.path
    with path.open("rb") as f:
        if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            raise _hdf5_refused()
    config = read_config(path, limit)
    check_weights(path, limit, FILE_POINTER)
    _load_checked(path, config)
    return registry.publish_version(session, store, owner, name, staging, actor=actor)


def _hdf5_refused() -> DomainError:
    detail = ("Only the `.keras` format (Keras 3's zip) is accepted: legacy HDF5 (.h5) model "
              "files are refused because loading them has had code-execution vulnerabilities. "
              "Save with model.save('m.keras').")
    return invalid(detail, [FieldError(FILE_POINTER, "HDF5 file; expected a .keras file")])


def _not_keras(detail: str, pointer: str = FILE_POINTER) -> DomainError:
    return invalid(f"The file is not a usable `.keras` model: {detail}",
                   [FieldError(pointer, detail)])


def read_config(path: Path, max_bytes: int) -> dict[str, Any]:
    """The `config.json` of a `.keras` zip whose headers pass the checks above (`max_bytes`:
    the members' uncompressed total), parsed; read with zipfile only, at most
    MAX_CONFIG_BYTES."""
    if not zipfile.is_zipfile(path):
        raise _not_keras("expected a `.keras` file (a zip archive); this is not a zip")
    try:
        zf, entries = open_zip(path, max_members=get_settings().max_archive_members,
                               max_total_bytes=max_bytes, pointer=FILE_POINTER)
        with zf:
            _check_members(entries)
            check_assets(entries, FILE_POINTER)
            # Keras reads members whole, which inflates all of a member's deflate data however
            # small its declared size: make sure every one ends where it says.
            check_deflated(path, entries, FILE_POINTER)
            try:
                info = zf.getinfo(CONFIG_NAME)
            except KeyError:
                raise _not_keras(f"the archive has no {CONFIG_NAME}; save the model with "
                                 "model.save('m.keras')") from None
            if info.file_size > MAX_CONFIG_BYTES:
                raise _not_keras(f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes",
                                 CONFIG_POINTER)
            with zf.open(info) as f:
                raw = f.read(MAX_CONFIG_BYTES + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            OSError) as exc:
        raise _not_keras(f"cannot read the archive: {exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise _not_keras(f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes",
                         CONFIG_POINTER)
    if too_deep(raw) is not None:  # json.loads and the allowlist walk recurse per level
        raise _not_keras(f"{CONFIG_NAME} is nested more than {MAX_DEPTH} levels deep",
                         CONFIG_POINTER)
    try:
        config = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _not_keras(f"{CONFIG_NAME} is not valid JSON: {exc}", CONFIG_POINTER) from exc
    if not isinstance(config, dict):
        raise _not_keras(f"{CONFIG_NAME} must hold a JSON object", CONFIG_POINTER)
    return config


def _check_members(entries: list[zipfile.ZipInfo]) -> None:
    for entry in entries:
        if entry.filename not in KERAS_MEMBERS and not entry.filename.startswith(ASSETS_PREFIX):
            raise _not_keras(f"the archive holds '{entry.filename}'; a `.keras` file holds only "
                             f"{', '.join(sorted(KERAS_MEMBERS))} and files under "
                             f"{ASSETS_PREFIX} (save the model with model.save('m.keras'))",
                             member_pointer(FILE_POINTER, entry.filename))


def _load_checked(path: Path, config: dict[str, Any]) -> None:
    """Allowlist the config, then prove Keras loads the file and its compile settings pass."""
    from app.specs.builder import check_keras_config
    from app.specs.compiler import check_compile_config
    from app.specs.limits import check_config_params
    from app.specs.service import build_slots

    check_keras_config(config, CONFIG_POINTER)  # before any Keras code sees the file
    import keras

    with build_slots:
        check_config_params(config, CONFIG_POINTER)  # weightless: before any weight is loaded
        try:
            model = load_keras(path, compile=False)
        except Exception as exc:  # whatever Keras finds wrong with the file
            message = " ".join(str(exc).split())[:MAX_DETAIL] or type(exc).__name__
            raise _not_keras(f"Keras cannot load it: {message}") from exc
        if not isinstance(model, keras.Model):
            raise _not_keras("the file does not hold a Keras model")
        compile_config = config.get("compile_config")
        if compile_config or compile_config not in (None, {}):
            # Keras compiles on load only when it is truthy; `{}`/null mean "not compiled".
            check_compile_config(model, compile_config, f"{CONFIG_POINTER}/compile_config")
