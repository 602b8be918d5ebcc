"""Model registry: named models whose versions are saved `.keras` files.

`publish_version` is the one way a version comes to be, for a finished fit job and for an
uploaded file alike: counted against the tenant's stored-bytes quota and recorded in the audit
log there, whoever publishes. Every change here is recorded as its `actor`'s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth import audit, quotas
from app.core.db import on_commit, on_rollback, upsert
from app.core.errors import FieldError, conflict, invalid, not_found
from app.core.storage import ArtifactStore
from app.tables import Job, JobStatus, ModelLabel, ModelVersion
from app.tables.base import utcnow

# Segments and verbs of the model routes (/v1/models/{name}/labels/{label}[...], and the
# /v2 and TF Serving verbs): a label spelled like one reads as another route to a person, a
# proxy rule or a client's URL builder, so none may be set.
RESERVED_LABELS = frozenset({
    "infer", "predict", "classify", "regress", "metadata", "ready", "versions", "labels",
    "serving", "download", "boundary"})


def reserved_label(label: str) -> bool:
    return label.lower() in RESERVED_LABELS


# Attempts at taking the next version number when concurrent publishers keep taking it first.
VERSION_ATTEMPTS = 8


def resolve(session: Session, owner: str, name: str, version: int | None,
            label: str | None = None) -> ModelVersion:
    """Version `version` of `name`, the one `label` points at, or its latest when neither."""
    if label is not None:
        pointed = session.get(ModelLabel, (owner, name, label))
        if pointed is None:
            raise not_found("Model label", f"{name}/labels/{label}")
        version = pointed.version
    query = select(ModelVersion).where(ModelVersion.owner == owner, ModelVersion.name == name)
    if version is None:
        found = session.scalars(query.order_by(ModelVersion.version.desc()).limit(1)).first()
    else:
        found = session.scalars(query.where(ModelVersion.version == version)).first()
    if found is None:
        raise not_found("Model", f"{name}/{version}" if version else name)
    return found


def get_version(session: Session, version_id: str) -> ModelVersion | None:
    return session.get(ModelVersion, version_id)


def _next_version(session: Session, owner: str, name: str) -> int:
    current = session.scalar(select(func.max(ModelVersion.version))
                             .where(ModelVersion.owner == owner, ModelVersion.name == name))
    return (current or 0) + 1


def upload_limit(session: Session, owner: str, size: int | None = None) -> int:
    """The largest `.keras` file `owner` may upload (the max_upload_bytes quota); 413 when a
    received `size` is past it."""
    return quotas.upload_limit(session, owner, size)


def check_room(session: Session, owner: str, at_least: int) -> None:
    """Before a job trains a model for `owner`: 413 when the tenant's stored bytes plus
    `at_least` (the model's weights; its file holds more) would be past its quota. The
    version's exact size is checked again by `publish_version`."""
    quotas.check_stored(session, owner, at_least, "the job's model, its weights alone,")


def publish_version(session: Session, store: ArtifactStore, owner: str, name: str,
                    staging: Path, *, actor: str, metrics: dict[str, Any] | None = None,
                    job_id: str | None = None, spec_id: str | None = None,
                    best_epoch: int | None = None) -> ModelVersion:
    """Record version n+1 of `name` in `session`'s transaction and move the `staging` folder
    into place as its artifact; 413 (nothing recorded) when its bytes would take the tenant
    past its stored-bytes quota.

    Each attempt runs in a SAVEPOINT: when a concurrent publisher commits the same number first,
    only that attempt is undone and the next number is tried; the caller's other work in the
    transaction stays. The folder is published once the row is in; if the transaction then
    rolls back, the folder is removed with it."""
    size = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
    quotas.reserve_bytes(session, owner, size, "the model version" if job_id is None else
                         f"the model of job {job_id}")
    for _attempt in range(VERSION_ATTEMPTS):
        try:
            with session.begin_nested():
                version = _next_version(session, owner, name)
                key = store.model_key(owner, name, version)
                mv = ModelVersion(owner=owner, name=name, version=version, artifact_key=key,
                                  metrics=metrics or {}, job_id=job_id, spec_id=spec_id,
                                  best_epoch=best_epoch, size_bytes=size)
                session.add(mv)
        except IntegrityError:  # another publisher took that number first; take the next
            continue
        store.publish(staging, key)
        on_rollback(session, lambda k=key: store.delete(k))
        on_commit(session, store.bump_generation)
        detail = {"job_id": job_id} if job_id else {}
        audit.record(session, tenant=owner, actor=actor, action="model_version.create",
                     target=f"model/{name}/{version}", size_bytes=size, **detail)
        return mv
    raise conflict(f"Could not take a version number of {name}: too many concurrent "
                   "publishers; retry.")


def labels(session: Session, owner: str, name: str) -> dict[str, int]:
    rows = session.scalars(select(ModelLabel).where(ModelLabel.owner == owner,
                                                    ModelLabel.name == name)
                           .order_by(ModelLabel.label)).all()
    return {r.label: r.version for r in rows}


def check_label(label: str) -> None:
    """422 for a label spelled like a route segment or verb (see RESERVED_LABELS)."""
    if reserved_label(label):
        raise invalid(f"'{label}' is a segment or verb of the model routes, so it cannot be a "
                      "label: its URLs would read as another route's. Choose another name "
                      f"(not one of {', '.join(sorted(RESERVED_LABELS))}).",
                      [FieldError("/path/label", f"'{label}' is reserved")])


def set_label(session: Session, store: ArtifactStore, owner: str, name: str, label: str,
              version: int, *, actor: str) -> None:
    """Point `label` at `version` (which must exist); every process sees it after commit."""
    check_label(label)
    resolve(session, owner, name, version)
    upsert(session, ModelLabel, {"owner": owner, "name": name, "label": label,
                                 "version": version, "updated_at": utcnow()},
           ["owner", "name", "label"])
    audit.record(session, tenant=owner, actor=actor, action="label.set",
                 target=f"model/{name}/labels/{label}", version=version)
    on_commit(session, store.bump_generation)


def delete_label(session: Session, store: ArtifactStore, owner: str, name: str,
                 label: str, *, actor: str) -> None:
    row = session.get(ModelLabel, (owner, name, label))
    if row is None:
        raise not_found("Model label", f"{name}/labels/{label}")
    session.delete(row)
    session.flush()
    audit.record(session, tenant=owner, actor=actor, action="label.delete",
                 target=f"model/{name}/labels/{label}")
    on_commit(session, store.bump_generation)


def delete_version(session: Session, store: ArtifactStore, owner: str, name: str,
                   version: int, *, actor: str) -> ModelVersion:
    """Remove version `version` of `name`: its row (and with it its stored bytes) now, its
    files once the transaction commits. 409 while a label points at it (move the label
    first) or a queued or running job reads it."""
    mv = resolve(session, owner, name, version)
    pointing = sorted(label for label, v in labels(session, owner, name).items()
                      if v == version)
    if pointing:
        raise conflict(f"Version {version} of '{name}' is what label(s) {', '.join(pointing)} "
                       "point at; move them to another version (PUT .../labels/{label}) or "
                       "delete them first.")
    active = session.scalars(select(Job).where(
        Job.owner == owner, Job.status.in_([JobStatus.queued, JobStatus.running]))).all()
    users = [job.id for job in active
             if mv.id in (job.params.get("model_version_id"),
                          job.params.get("from_model_version_id"))]
    if users:
        raise conflict(f"Version {version} of '{name}' is used by {len(users)} queued or "
                       f"running job(s) ({', '.join(users[:5])}); cancel them or wait for them "
                       "to finish before deleting it.")
    key = mv.artifact_key
    session.delete(mv)
    session.flush()
    audit.record(session, tenant=owner, actor=actor, action="model_version.delete",
                 target=f"model/{name}/{version}", size_bytes=mv.size_bytes)
    # Files go once the row is gone for good; every process re-resolves what it serves.
    on_commit(session, lambda: store.delete(key))
    on_commit(session, store.bump_generation)
    return mv


def list_models(session: Session, owner: str, limit: int, offset: int
                ) -> tuple[list[dict[str, Any]], int]:
    grouped = (select(ModelVersion.name, func.max(ModelVersion.version).label("latest"),
                      func.count().label("versions"),
                      func.max(ModelVersion.created_at).label("updated_at"))
               .where(ModelVersion.owner == owner).group_by(ModelVersion.name))
    total = session.scalar(select(func.count()).select_from(grouped.subquery())) or 0
    rows = session.execute(grouped.order_by(ModelVersion.name).limit(limit).offset(offset)).all()
    return [{"name": r.name, "latest_version": r.latest, "versions": r.versions,
             "updated_at": r.updated_at} for r in rows], total


def versions(session: Session, owner: str, name: str) -> list[ModelVersion]:
    rows = session.scalars(select(ModelVersion)
                           .where(ModelVersion.owner == owner, ModelVersion.name == name)
                           .order_by(ModelVersion.version.desc())).all()
    if not rows:
        raise not_found("Model", name)
    return list(rows)
