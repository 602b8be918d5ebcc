"""Admin routes: API keys, tenants' quotas, the audit log.

An `admin` key acts within its own tenant: its keys, its quotas (read), its audit log. An
`operator` key (or `keras-jobs` on the server's database) manages every tenant, and alone sets
quotas: a tenant that could raise its own would have none."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from app.api import problems
from app.api.deps import Caller, CallerDep, PageDep, SessionDep
from app.api.schemas import Page
from app.auth import audit, keys, quotas
from app.auth.access import ADMIN_READ, ADMIN_WRITE, OPERATOR_WRITE, requires
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
from app.core.errors import DomainError, not_found

router = APIRouter(tags=["admin"], responses=problems.responses(401, 403, 404, 409, 422, 503))


def _forbidden(caller: Caller, what: str) -> DomainError:
    return DomainError(403, "Forbidden", f"The key '{caller.actor}' is an admin of the tenant "
                       f"'{caller.owner}' only; {what} needs a key with the `operator` scope "
                       "(or `keras-jobs` on the server's database).", type="/problems/forbidden")


def _tenant(caller: Caller, tenant: str | None, what: str) -> str | None:
    """The tenant a list shows: the one asked for if the caller manages it; without one, an
    admin's own and an operator's every tenant (None)."""
    if tenant is None:
        return None if caller.is_operator else caller.owner
    if not caller.manages(tenant):
        raise _forbidden(caller, f"{what} of the tenant '{tenant}'")
    return tenant


@router.post("/v1/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
@requires(ADMIN_WRITE)
def create_key(caller: CallerDep, session: SessionDep, response: Response,
               body: KeyCreate) -> KeyCreated:
    """A new API key. The answer's `key` is shown this once: only its hash is kept."""
    tenant = body.tenant or caller.owner
    if not caller.manages(tenant):
        raise _forbidden(caller, f"a key for the tenant '{tenant}'")
    if "operator" in body.scopes and not caller.is_operator:
        raise _forbidden(caller, "a key with the `operator` scope")
    row, raw = keys.create(session, tenant=tenant, name=body.name, scopes=body.scopes,
                           expires_in_days=body.expires_in_days, created_by=caller.actor)
    response.headers["Location"] = f"/v1/keys/{row.name}"
    return KeyCreated(**KeyRead.model_validate(row).model_dump(), key=raw)


@router.get("/v1/keys", response_model=list[KeyRead])
@requires(ADMIN_READ)
def list_keys(session: SessionDep, caller: CallerDep,
              tenant: Annotated[str | None, Query(max_length=63)] = None) -> list[KeyRead]:
    """The tenant's keys (an operator's: every key, or a tenant's), newest first; the keys
    themselves are not kept."""
    shown = _tenant(caller, tenant, "the keys")
    return [KeyRead.model_validate(k) for k in keys.list_(session, shown)]


@router.delete("/v1/keys/{name}", response_model=KeyRead)
@requires(ADMIN_WRITE)
def revoke_key(caller: CallerDep, session: SessionDep, name: KeyNameParam) -> KeyRead:
    """Revoke a key: every API process refuses it from its next request on."""
    row = keys.find(session, name)
    if row is None or not caller.manages(row.tenant):  # another tenant's: as a made-up name
        raise not_found("API key", name)
    if "operator" in row.scopes and not caller.is_operator:
        raise _forbidden(caller, "revoking a key with the `operator` scope")
    keys.revoke(session, name, actor=caller.actor)
    return KeyRead.model_validate(row)


@router.get("/v1/tenants/{tenant}/quotas", response_model=TenantQuotas)
@requires(ADMIN_READ)
def get_quotas(session: SessionDep, caller: CallerDep, tenant: TenantParam) -> TenantQuotas:
    """The tenant's quotas in force, the overrides, and what it uses now."""
    if not caller.manages(tenant):
        raise _forbidden(caller, f"the quotas of the tenant '{tenant}'")
    return TenantQuotas(**quotas.describe(session, tenant))


@router.put("/v1/tenants/{tenant}/quotas", response_model=TenantQuotas)
@requires(OPERATOR_WRITE)
def put_quotas(caller: CallerDep, session: SessionDep, tenant: TenantParam,
               body: QuotaUpdate) -> TenantQuotas:
    """Set the tenant's quota overrides (operator only)."""
    quotas.set_overrides(session, tenant, body.model_dump(), actor=caller.actor)
    return TenantQuotas(**quotas.describe(session, tenant))


@router.get("/v1/audit", response_model=Page[AuditRead])
@requires(ADMIN_READ)
def list_audit(session: SessionDep, caller: CallerDep, page: PageDep,
               tenant: Annotated[str | None, Query(max_length=63)] = None,
               action: Annotated[str | None, Query(max_length=60)] = None) -> Page[AuditRead]:
    """Who did what in the tenant (an operator's: in every tenant, or one), newest first:
    creations, deletions, cancellations, label moves, keys and quotas."""
    shown = _tenant(caller, tenant, "the audit log")
    rows, total = audit.list_(session, shown, action, page.limit, page.offset)
    return page.of([AuditRead.model_validate(r) for r in rows], total)
