"""Artifact store: a folder (a shared volume under compose) holding datasets, model versions and
job checkpoints. Writes go to a staging folder first and are renamed into place, so a reader
never sees half an artifact and a failed write leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import IO

from app.core.errors import DomainError, FieldError

COPY_CHUNK = 1 << 20


def receive(upload: IO[bytes], path: Path, max_bytes: int) -> tuple[int, str]:
    """Copy an upload to `path` in chunks, never holding it whole; (size, sha256 hex).
    Past `max_bytes` the copy stops with a 413."""
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as out:
        while chunk := upload.read(COPY_CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise DomainError(413, "Upload too large",
                                  f"The upload exceeds {max_bytes} bytes (KJ_MAX_UPLOAD_BYTES).",
                                  [FieldError("/file", "too large")], type="/problems/too-large")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        resolved = (self.root / key).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return resolved

    def staging_dir(self) -> Path:
        """A fresh private folder on the same file system as the store (so publish is a rename)."""
        path = self.root / "tmp" / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    def publish(self, staging: Path, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    def delete(self, key: str) -> None:
        target = self.path(key)
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        elif target.exists():
            target.unlink()

    def check(self) -> None:
        """Raise if the store cannot be written (used by /readyz)."""
        probe = self.root / "tmp" / f".probe-{uuid.uuid4().hex}"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()

    @staticmethod
    def dataset_key(dataset_id: str) -> str:
        return f"datasets/{dataset_id}"

    @staticmethod
    def model_key(owner: str, name: str, version: int) -> str:
        return f"models/{owner}/{name}/{version}"

    @staticmethod
    def checkpoint_key(job_id: str) -> str:
        return f"checkpoints/{job_id}"


def get_store() -> ArtifactStore:
    from app.core.config import get_settings

    root = get_settings().resolved_artifact_root
    root.mkdir(parents=True, exist_ok=True)
    return ArtifactStore(root)
