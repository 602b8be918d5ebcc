"""Datasets: stream an upload into the artifact store, validate it, record it."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.db import get_owned, on_commit, on_rollback, paginate
from app.core.errors import FieldError, conflict, invalid
from app.core.storage import ArtifactStore, ReceivedFile
from app.datasets.ingest import ingest
from app.tables import Dataset, Job, JobStatus
from app.tables.base import new_id


def create(session: Session, store: ArtifactStore, owner: str, staging: Path,
           upload: ReceivedFile, name: str | None, max_bytes: int) -> Dataset:
    """Parse a received upload (in `staging`) into per-array files, publish them and add the
    row. The caller removes `staging`; a failure here publishes nothing: no row, no file."""
    if name is not None and len(name) > 200:
        raise invalid("The dataset name is too long.", [FieldError("/name", "at most 200 "
                                                                   "characters")])
    arrays_dir = staging / "arrays"
    arrays_dir.mkdir()
    result = ingest(upload.path, upload.filename, arrays_dir, max_bytes * 8)
    dataset_id = new_id("ds")
    key = store.dataset_key(dataset_id)
    dataset = Dataset(id=dataset_id, owner=owner, name=name or upload.filename,
                      filename=upload.filename, format=result.format, sha256=upload.sha256,
                      size_bytes=upload.size, num_rows=result.num_rows, arrays=result.arrays,
                      storage_key=key)
    session.add(dataset)
    session.flush()
    store.publish(arrays_dir, key)
    # If the request's commit fails later, the published folder must go too.
    on_rollback(session, lambda: store.delete(key))
    return dataset


def get(session: Session, owner: str, dataset_id: str) -> Dataset:
    return get_owned(session, Dataset, owner, dataset_id, "Dataset")


def list_(session: Session, owner: str, limit: int, offset: int) -> tuple[list[Dataset], int]:
    return paginate(session, select(Dataset).where(Dataset.owner == owner),
                    (Dataset.created_at.desc(), Dataset.id), limit, offset)


def delete(session: Session, store: ArtifactStore, owner: str, dataset_id: str) -> None:
    dataset = get(session, owner, dataset_id)
    active = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.dataset_id == dataset_id,
            Job.status.in_([JobStatus.queued, JobStatus.running]),
        )
    )
    if active:
        raise conflict(f"Dataset {dataset_id} is used by {active} queued or running job(s); "
                       "cancel them or wait for them to finish before deleting it.")
    key = dataset.storage_key
    session.delete(dataset)
    session.flush()
    # Remove files only once the row is gone for good.
    on_commit(session, lambda: store.delete(key))
