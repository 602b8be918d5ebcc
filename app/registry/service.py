"""Model registry: named models whose versions are saved `.keras` files."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.errors import not_found
from app.models import ModelVersion


def resolve(session: Session, owner: str, name: str, version: int | None) -> ModelVersion:
    """Version `version` of `name`, or its latest when None."""
    query = select(ModelVersion).where(ModelVersion.owner == owner, ModelVersion.name == name)
    if version is None:
        found = session.scalars(query.order_by(ModelVersion.version.desc()).limit(1)).first()
    else:
        found = session.scalars(query.where(ModelVersion.version == version)).first()
    if found is None:
        raise not_found("Model", f"{name}/{version}" if version else name)
    return found


def next_version(session: Session, owner: str, name: str) -> int:
    current = session.scalar(select(func.max(ModelVersion.version))
                             .where(ModelVersion.owner == owner, ModelVersion.name == name))
    return (current or 0) + 1


def add_version(session: Session, owner: str, name: str, version: int, artifact_key: str,
                metrics: dict[str, Any], job_id: str | None = None,
                spec_id: str | None = None) -> ModelVersion:
    mv = ModelVersion(owner=owner, name=name, version=version, artifact_key=artifact_key,
                      metrics=metrics, job_id=job_id, spec_id=spec_id)
    session.add(mv)
    session.flush()
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
