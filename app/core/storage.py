"""Artifact store: a folder (a shared volume under compose) holding datasets, model versions and
job checkpoints. Writes go to a staging folder first and are renamed into place, so a reader
never sees half an artifact and a failed write leaves nothing behind."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.core.state import AppState, Part, current

# The layout of a model version's folder: everything a version holds is named here.
MODEL_FILE = "model.keras"
TENSORBOARD_FOLDER = "tensorboard"


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
        self._generation_paths: dict[str, str] = {}

    def path(self, key: str) -> Path:
        resolved = (self.root / key).resolve()
        if not resolved.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact key escapes the store: {key!r}")
        return resolved

    def staging_dir(self, job_id: str | None = None) -> Path:
        """A fresh private folder on the same file system as the store (so publish is a rename).
        A job's are named after it (`<job_id>.<random>`), so the folders a killed job left can
        be found and removed once it has ended."""
        name = uuid.uuid4().hex
        path = self.root / "tmp" / (f"{job_id}.{name}" if job_id else name)
        path.mkdir(parents=True)
        return path

    @contextmanager
    def staging(self, job_id: str | None = None) -> Iterator[Path]:
        """A staging folder that is gone afterwards, whatever happened: what was published
        from it has been renamed out of it; anything left is a failed write's remains."""
        path = self.staging_dir(job_id)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(self, staging: Path, key: str) -> Path:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)
        return target

    # A generation: a file replaced (new inode) whenever what it names changes ("registry":
    # a version or a label; "keys": an API key), so every API process sharing the store sees
    # the change with one stat() per request instead of a database query.
    GENERATION_FILE = "registry.generation"

    def _generation_path(self, name: str) -> str:
        # A str, built once per name: generation() runs on every predict request.
        path = self._generation_paths.get(name)
        if path is None:
            file = self.GENERATION_FILE if name == "registry" else f"{name}.generation"
            path = self._generation_paths[name] = str(self.root / file)
        return path

    def bump_generation(self, name: str = "registry") -> None:
        tmp = self.root / "tmp" / f".generation-{uuid.uuid4().hex}"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(uuid.uuid4().hex)
        os.replace(tmp, self._generation_path(name))

    def generation(self, name: str = "registry") -> tuple[int, int]:
        try:
            st = os.stat(self._generation_path(name))
        except FileNotFoundError:
            return (0, 0)
        return (st.st_ino, st.st_mtime_ns)

    def job_staging(self) -> dict[str, list[Path]]:
        """Staging folders of jobs, by job id (see staging_dir)."""
        found: dict[str, list[Path]] = {}
        tmp = self.root / "tmp"
        for path in tmp.iterdir() if tmp.is_dir() else ():
            job_id, dot, _rest = path.name.partition(".")
            if dot and job_id.startswith("job_") and path.is_dir():
                found.setdefault(job_id, []).append(path)
        return found

    def job_checkpoints(self) -> dict[str, Path]:
        """Checkpoint folders, by job id."""
        root = self.root / "checkpoints"
        return {p.name: p for p in (root.iterdir() if root.is_dir() else ()) if p.is_dir()}

    def remove_job_folders(self, job_id: str) -> None:
        """A job's checkpoints and staging folders (once it has ended, or before a new attempt
        starts: an attempt that was killed leaves its staging folder)."""
        shutil.rmtree(self.path(self.checkpoint_key(job_id)), ignore_errors=True)
        self.remove_job_staging(job_id)

    def remove_job_staging(self, job_id: str) -> None:
        for path in self.job_staging().get(job_id, []):
            shutil.rmtree(path, ignore_errors=True)

    def remove_stale_staging(self, max_age_s: float) -> list[str]:
        """Remove what a killed upload (or other writer) left in the staging area: entries in
        which nothing was written for `max_age_s`, so one still being written by a live process
        (another API process, or a worker) is left alone. Jobs' folders are not touched: the
        workers remove them once their job has ended. Returns the names removed."""
        tmp = self.root / "tmp"
        cutoff = time.time() - max_age_s
        removed = []
        for path in tmp.iterdir() if tmp.is_dir() else ():
            if path.name.partition(".")[0].startswith("job_") or _newest_mtime(path) >= cutoff:
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
        return removed

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

    @staticmethod
    def tensorboard_key(job_id: str = "") -> str:
        """A fit job's TensorBoard event files (job option `tensorboard`); with no job, the
        folder of all of them, which `keras-jobs tensorboard` serves."""
        return f"{TENSORBOARD_FOLDER}/{job_id}" if job_id else TENSORBOARD_FOLDER


def _newest_mtime(path: Path) -> float:
    """The last time anything in `path` (a file, or a folder and everything in it) changed."""
    try:
        newest = path.stat().st_mtime
        if path.is_dir():
            for sub in path.rglob("*"):
                newest = max(newest, sub.stat().st_mtime)
    except FileNotFoundError:  # removed meanwhile (its writer finished): treat as fresh
        return time.time()
    return newest


def _store(state: AppState) -> ArtifactStore:
    root = state.settings.resolved_artifact_root
    root.mkdir(parents=True, exist_ok=True)
    return ArtifactStore(root)


STORE: Part[ArtifactStore] = Part("artifact store", _store)


def get_store() -> ArtifactStore:
    """The current state's store (one object: predict resolves artifact paths on its hot
    path, and the store keeps the generation files' paths)."""
    return current().get(STORE)
