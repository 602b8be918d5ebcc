"""Admin routes: API keys, tenants' quotas, the audit log (scope `admin`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api import problems
from app.api.deps import CallerDep, PageDep, SessionDep
from app.api.schemas import Page
from app.auth import audit, keys, quotas
from app.auth.schemas import (
    AuditRead,
    KeyCreate,
    KeyCreated,
    KeyNameParam,
    KeyRead,
    QuotaUpdate,
    TenantParam,
    TenantQuotas,
)

router = APIRouter(tags=["admin"], responses=problems.responses(401, 403, 404, 409, 422, 503))


@router.post("/v1/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(caller: CallerDep, session: SessionDep, response: Response,
               body: KeyCreate) -> KeyCreated:
    """A new API key. The answer's `key` is shown this once: only its hash is kept."""
    tenant = body.tenant or caller.owner
    row, raw = keys.create(session, tenant=tenant, name=body.name, scopes=body.scopes,
                           expires_in_days=body.expires_in_days, created_by=caller.actor)
    # Recorded under the key's tenant (an admin may make keys for any tenant), as the CLI does.
    audit.record(session, tenant=tenant, actor=caller.actor, action="key.create",
                 target=f"key/{row.name}", scopes=row.scopes)
    response.headers["Location"] = f"/v1/keys/{row.name}"
    return KeyCreated(**KeyRead.model_validate(row).model_dump(), key=raw)


@router.get("/v1/keys", response_model=list[KeyRead])
def list_keys(session: SessionDep, _caller: CallerDep,
              tenant: Annotated[str | None, Query(max_length=63)] = None) -> list[KeyRead]:
    """Every key (or a tenant's), newest first; the keys themselves are not kept."""
    return [KeyRead.model_validate(k) for k in keys.list_(session, tenant)]


@router.delete("/v1/keys/{name}", response_model=KeyRead)
def revoke_key(caller: CallerDep, session: SessionDep, name: KeyNameParam) -> KeyRead:
    """Revoke a key: every API process refuses it from its next request on."""
    row = keys.revoke(session, name)
    audit.record(session, tenant=row.tenant, actor=caller.actor, action="key.revoke",
                 target=f"key/{name}")
    return KeyRead.model_validate(row)


@router.get("/v1/tenants/{tenant}/quotas", response_model=TenantQuotas)
def get_quotas(session: SessionDep, _caller: CallerDep, tenant: TenantParam) -> TenantQuotas:
    """The tenant's quotas in force, the overrides, and what it uses now."""
    return TenantQuotas(**quotas.describe(session, tenant))


@router.put("/v1/tenants/{tenant}/quotas", response_model=TenantQuotas)
def put_quotas(caller: CallerDep, session: SessionDep, tenant: TenantParam,
               body: QuotaUpdate) -> TenantQuotas:
    values = body.model_dump()
    quotas.set_overrides(session, tenant, values)
    audit.record(session, tenant=tenant, actor=caller.actor, action="quota.set",
                 target=f"tenant/{tenant}", **values)
    return TenantQuotas(**quotas.describe(session, tenant))


@router.get("/v1/audit", response_model=Page[AuditRead])
def list_audit(session: SessionDep, _caller: CallerDep, page: PageDep,
               tenant: Annotated[str | None, Query(max_length=63)] = None,
               action: Annotated[str | None, Query(max_length=60)] = None) -> Page[AuditRead]:
    """Who did what, newest first: creations, deletions, cancellations, label moves, keys and
    quotas."""
    rows, total = audit.list_(session, tenant, action, page.limit, page.offset)
    return page.of([AuditRead.model_validate(r) for r in rows], total)
