"""Datasets: stream an upload into the artifact store, validate it, record it; record the
arrays a job wrote (predictions) the same way. Both are counted against the tenant's
stored-bytes quota and recorded in the audit log here, whoever asks."""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.auth import audit, quotas
from app.core.db import get_owned, on_commit, on_rollback, paginate
from app.core.errors import FieldError, conflict, invalid
from app.core.storage import ArtifactStore, ReceivedFile
from app.datasets.ingest import _common_rows, _describe, ingest
from app.tables import Dataset, Job, JobStatus
from app.tables.base import new_id

# The columns' sizes (tables/dataset.py).
MAX_NAME = 200
MAX_FILENAME = 300


def upload_limit(session: Session, owner: str) -> int:
    """The largest file `owner` may upload (the max_upload_bytes quota): a receiver stops
    reading past it; `create` checks it again."""
    return quotas.upload_limit(session, owner)


def create(session: Session, store: ArtifactStore, owner: str, staging: Path,
           upload: ReceivedFile, name: str | None, *, actor: str,
           max_csv_columns: int | None = None) -> Dataset:
    """Parse a received upload (in `staging`) into per-array files, publish them and add the
    row, recorded as `actor`'s. The caller removes `staging`; a failure here publishes nothing:
    no row, no file.

    The file name is kept for reference only: its last MAX_FILENAME characters (the end holds
    the extension, which says the format), and the default name its last MAX_NAME."""
    if name is not None and len(name) > MAX_NAME:
        raise invalid("The dataset name is too long.", [FieldError("/name", "at most 200 "
                                                                   "characters")])
    for pointer, what, text in (("/name", "name", name or ""),
                                ("/file", "file name", upload.filename)):
        if "\x00" in text:  # PostgreSQL text cannot hold it
            raise invalid(f"The {what} may not contain the NUL character.",
                          [FieldError(pointer, f"the {what} contains NUL (\\u0000)")])
    max_bytes = quotas.upload_limit(session, owner, upload.size)
    arrays_dir = staging / "arrays"
    arrays_dir.mkdir()
    # The arrays written may be no larger than the largest upload (an archive or a CSV can
    # expand several times; the stored-bytes quota counts what is written).
    result = ingest(upload.path, upload.filename, arrays_dir, max_bytes, max_csv_columns)
    dataset_id = new_id("ds")
    key = store.dataset_key(dataset_id)
    filename = upload.filename[-MAX_FILENAME:]
    dataset = Dataset(id=dataset_id, owner=owner, name=name or filename[-MAX_NAME:],
                      filename=filename, format=result.format, sha256=upload.sha256,
                      size_bytes=upload.size, num_rows=result.num_rows, arrays=result.arrays,
                      storage_key=key)
    _add_published(session, store, dataset, arrays_dir, actor, "this upload")
    return dataset


def check_room(session: Session, owner: str) -> None:
    """Before a job computes arrays to keep for `owner`: 413 when the tenant is at its
    stored-bytes quota already (what it writes is checked, exactly, by `record_output`)."""
    quotas.check_stored(session, owner, 0, "the job's output")


def record_output(session: Session, store: ArtifactStore, owner: str, name: str,
                  arrays_dir: Path, *, source: str, actor: str, format: str = "npy") -> Dataset:
    """Record arrays a job wrote (`arrays_dir/<name>.npy`, inside a staging folder) as a new
    dataset, stored exactly as an upload is: one row and one folder of `.npy` files, within
    the stored-bytes quota as an upload is. `source` (the job's id) stands where an upload has
    its file name; `sha256` and `size_bytes` cover the array files, concatenated in name
    order."""
    arrays = _describe(arrays_dir)
    dataset_id = new_id("ds")
    key = store.dataset_key(dataset_id)
    sha256, size = _digest(arrays_dir, sorted(arrays))
    dataset = Dataset(id=dataset_id, owner=owner, name=name[:MAX_NAME],
                      filename=source[:MAX_FILENAME],
                      format=format, sha256=sha256, size_bytes=size,
                      num_rows=_common_rows(arrays), arrays=arrays, storage_key=key)
    _add_published(session, store, dataset, arrays_dir, actor, f"the output of job {source}")
    return dataset


def _digest(arrays_dir: Path, names: list[str]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    for name in names:
        with (arrays_dir / f"{name}.npy").open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
                size += len(block)
    return digest.hexdigest(), size


def _add_published(session: Session, store: ArtifactStore, dataset: Dataset,
                   arrays_dir: Path, actor: str, what: str) -> None:
    """Add the row, then rename its folder into place (after the flush: a row that cannot be
    inserted publishes nothing); 413 (nothing added) past the tenant's stored bytes."""
    dataset.stored_bytes = sum(f.stat().st_size for f in arrays_dir.rglob("*") if f.is_file())
    quotas.reserve_bytes(session, dataset.owner, dataset.stored_bytes, what)
    session.add(dataset)
    session.flush()
    audit.record(session, tenant=dataset.owner, actor=actor, action="dataset.create",
                 target=f"dataset/{dataset.id}", name=dataset.name, size_bytes=dataset.size_bytes,
                 stored_bytes=dataset.stored_bytes)
    key = dataset.storage_key
    store.publish(arrays_dir, key)
    # If the transaction's commit fails later, the published folder must go too.
    on_rollback(session, lambda: store.delete(key))


def get(session: Session, owner: str, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, owner, dataset_id, "Dataset")


def list_(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Dataset], int]:
    return paginate(session, select(Dataset).where(Dataset.owner == owner),
                    (Dataset.created_at.desc(), Dataset.id), limit, offset)


def delete(session: Session, store: ArtifactStore, owner: str, dataset_id: str, *,
           actor: str) -> None:
    dataset = get(session, owner, dataset_id)
    # Every dataset a queued or running job reads: its own (the training rows, or the rows a
    # predict job reads) and a fit job's validation dataset, which lives in its params.
    active = session.scalar(
        select(func.count()).select_from(Job).where(
            or_(Job.dataset_id == dataset_id,
                Job.params["validation_dataset_id"].as_string() == dataset_id),
            Job.status.in_([JobStatus.queued, JobStatus.running]),
        )
    )
    if active:
        raise conflict(f"Dataset {dataset_id} is used by {active} queued or running job(s); "
                       "cancel them or wait for them to finish before deleting it.")
    key = dataset.storage_key
    session.delete(dataset)
    session.flush()
    audit.record(session, tenant=owner, actor=actor, action="dataset.delete",
                 target=f"dataset/{dataset_id}")
    # Remove files only once the row is gone for good.
    on_commit(session, lambda: store.delete(key))
