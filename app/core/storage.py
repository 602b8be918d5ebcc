"""Artifact store: a folder (a shared volume under compose) holding datasets, model versions and
job checkpoints. Writes go to a staging folder first and are renamed into place, so a reader
never sees half an artifact and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

# The layout of a model version's folder: everything a version holds is named here.
MODEL_FILE = "model.keras"


@dataclass
class ReceivedFile:
    """An uploaded file as it landed in a staging folder."""

    path: Path
    filename: str
    size: int
    sha256: str


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

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A staging folder that is gone afterwards, whatever happened: what was published
        from it has been renamed out of it; anything left is a failed write's remains."""
        path = self.staging_dir()
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, staging: Path, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    # The registry's generation: a file replaced (new inode) whenever a version or a label
    # changes, so every API process sharing the store sees the change with one stat() per
    # request instead of a database query.
    GENERATION_FILE = "registry.generation"

    def bump_generation(self) -> None:
        tmp = self.root / "tmp" / f".generation-{uuid.uuid4().hex}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, self.root / self.GENERATION_FILE)

    def generation(self) -> tuple[int, int]:
        try:
            st = os.stat(self.root / self.GENERATION_FILE)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

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
    def model_file(folder: Path) -> Path:
        """The `.keras` file inside a version's folder (published or still staged)."""
        return folder / MODEL_FILE

    @staticmethod
    def log_key(job_id: str) -> str:
        return f"logs/{job_id}.log"

    @staticmethod
    def checkpoint_key(job_id: str) -> str:
        return f"checkpoints/{job_id}"


@lru_cache
def get_store() -> ArtifactStore:
    """The process's store (cached: predict resolves artifact paths on its hot path)."""
    from app.core.config import get_settings

    root = get_settings().resolved_artifact_root
    root.mkdir(parents=True, exist_ok=True)
    return ArtifactStore(root)
