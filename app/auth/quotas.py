"""Per-tenant quotas: running and queued jobs, stored bytes, largest upload. Defaults come from
settings (KJ_QUOTA_*, KJ_MAX_UPLOAD_BYTES); an admin overrides them per tenant.

A quota is checked by the domain service that writes what it counts (jobs, datasets, model
versions, whoever calls it: a route, the worker, the CLI), under the tenant's quota lock
(`hold`), right before the row is written: counting and writing are then one step for that
tenant until the transaction ends, so concurrent requests cannot all count the same free slot.
Only domain services call the checks (tests/structure/test_rules.py)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from app.auth import audit
from app.core.config import get_settings
from app.core.db import upsert
from app.core.errors import DomainError, FieldError
from app.tables import Dataset, Job, JobStatus, ModelVersion, TenantQuota
from app.tables.base import utcnow

# How long a client refused for too many jobs waits before trying again.
JOBS_RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Quota:
    max_running_jobs: int
    max_queued_jobs: int
    max_stored_bytes: int
    max_upload_bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


FIELDS = ("max_running_jobs", "max_queued_jobs", "max_stored_bytes", "max_upload_bytes")


def defaults() -> Quota:
    s = get_settings()
    return Quota(s.quota_running_jobs, s.quota_queued_jobs, s.quota_stored_bytes,
                 s.max_upload_bytes)


def overrides(session: Session, tenant: str) -> dict[str, int | None]:
    row = session.get(TenantQuota, tenant)
    return {f: (getattr(row, f) if row is not None else None) for f in FIELDS}


def quota(session: Session, tenant: str) -> Quota:
    base = defaults().as_dict()
    own = overrides(session, tenant)
    merged: dict[str, int] = {f: base[f] if own[f] is None else int(own[f] or 0) for f in FIELDS}
    return Quota(**merged)


def set_overrides(session: Session, tenant: str, values: dict[str, int | None], *,
                  actor: str) -> None:
    """Set `tenant`'s overrides (None: the default), recorded in the audit log as `actor`'s."""
    row = {f: values.get(f) for f in FIELDS}
    upsert(session, TenantQuota, {"tenant": tenant, **row, "updated_at": utcnow()}, ["tenant"])
    audit.record(session, tenant=tenant, actor=actor, action="quota.set",
                 target=f"tenant/{tenant}", **row)


def usage(session: Session, tenant: str) -> dict[str, int]:
    counts = dict(session.execute(
        select(Job.status, func.count()).where(
            Job.owner == tenant, Job.status.in_([JobStatus.queued, JobStatus.running]))
        .group_by(Job.status)).tuples().all())
    return {"running_jobs": counts.get(JobStatus.running, 0),
            "queued_jobs": counts.get(JobStatus.queued, 0),
            "stored_bytes": stored_bytes(session, tenant)}


def stored_bytes(session: Session, tenant: str) -> int:
    # Rows from before stored_bytes was recorded (0) count their upload's size.
    per_row = case((Dataset.stored_bytes > 0, Dataset.stored_bytes), else_=Dataset.size_bytes)
    datasets = session.scalar(select(func.coalesce(func.sum(per_row), 0))
                              .where(Dataset.owner == tenant)) or 0
    models = session.scalar(select(func.coalesce(func.sum(ModelVersion.size_bytes), 0))
                            .where(ModelVersion.owner == tenant)) or 0
    return int(datasets) + int(models)


def hold(session: Session, tenant: str) -> None:
    """Take `tenant`'s quota lock until `session`'s transaction ends. PostgreSQL: a
    transaction-scoped advisory lock of that tenant's (other tenants are not held up; READ
    COMMITTED, so what is counted after it includes every row committed before it was
    granted). SQLite: the database's write lock (BEGIN IMMEDIATE), which writers take in turn
    anyway; pysqlite would only begin at the first INSERT, after the counts were read."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        name = f"kj-quota\0{tenant}".encode()
        lock_id = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
        session.execute(select(func.pg_advisory_xact_lock(lock_id)))
    elif conn.dialect.name == "sqlite":
        dbapi_conn: Any = conn.connection.dbapi_connection
        # Already in a transaction means a write began it: the write lock is held.
        if not dbapi_conn.in_transaction:
            dbapi_conn.execute("BEGIN IMMEDIATE")


def reserve_job(session: Session, tenant: str) -> None:
    """Before a job's row is added: 429 when the tenant has its limit queued, 413 when it
    already stores all its quota allows (the job would store a model or predictions)."""
    hold(session, tenant)
    check_queued(session, tenant)
    check_stored(session, tenant, 0, "the job")


def reserve_bytes(session: Session, tenant: str, added: int, what: str = "this upload") -> None:
    """Before a row that stores `added` bytes (`what`) is added: 413 when the tenant would be
    past its stored-bytes quota with it (the caller's transaction rolls back)."""
    hold(session, tenant)
    check_stored(session, tenant, added, what)


def check_queued(session: Session, tenant: str) -> None:
    """429 with Retry-After when the tenant has its limit queued (call under `hold`)."""
    limit = quota(session, tenant).max_queued_jobs
    queued = session.scalar(select(func.count()).select_from(Job).where(
        Job.owner == tenant, Job.status == JobStatus.queued)) or 0
    if queued >= limit:
        raise DomainError(429, "Too many queued jobs",
                          f"Tenant '{tenant}' has {queued} queued jobs (limit {limit}); wait "
                          "for some to start, cancel some, or ask an admin to raise "
                          "max_queued_jobs.", type="/problems/quota",
                          extra={"limit": limit, "current": queued},
                          headers={"Retry-After": str(JOBS_RETRY_AFTER_S)})


def check_stored(session: Session, tenant: str, added: int, what: str) -> None:
    """Before `added` bytes (`what`) join the tenant's rows: 413 when its stored bytes would be
    past its quota; with added=0, when it is at or past it already (nothing more may be kept).
    Under `hold` when a row is written next; without, a check ahead of work that will write
    one (it is checked again, held, when it does)."""
    limit = quota(session, tenant).max_stored_bytes
    stored = stored_bytes(session, tenant)
    if stored + added > limit or (added == 0 and stored >= limit):
        where = (f"would store {stored + added} bytes ({what} adds {added})" if added else
                 f"stores {stored} bytes and {what} would store more")
        raise DomainError(413, "Storage quota exceeded",
                          f"Tenant '{tenant}' {where}, past its limit of {limit} bytes "
                          "(max_stored_bytes). Delete datasets or model versions you no longer "
                          "need, or ask an admin to raise max_stored_bytes.",
                          type="/problems/quota",
                          extra={"limit": limit, "current": stored, "requested": added})


def upload_limit(session: Session, tenant: str, size: int | None = None) -> int:
    """The largest upload `tenant` may make; 413 when a received `size` is past it."""
    limit = quota(session, tenant).max_upload_bytes
    if size is not None and size > limit:
        raise upload_too_large(limit, size)
    return limit


def upload_too_large(limit: int, size: int) -> DomainError:
    return DomainError(413, "Upload too large",
                       f"The upload exceeds {limit} bytes, the largest upload this tenant may "
                       "make (max_upload_bytes quota; default KJ_MAX_UPLOAD_BYTES).",
                       [FieldError("/file", "too large")], type="/problems/too-large",
                       extra={"limit": limit, "current": size})


def running_limit(session: Session, tenant: str) -> int:
    return quota(session, tenant).max_running_jobs


def describe(session: Session, tenant: str) -> dict[str, Any]:
    return {"tenant": tenant, "quota": quota(session, tenant).as_dict(),
            "overrides": overrides(session, tenant), "usage": usage(session, tenant)}
