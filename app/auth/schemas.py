from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.auth.access import SCOPES
from app.auth.keys import NAME_PATTERN, TENANT_PATTERN

# pydantic's constraints, not FastAPI's Path (app.registry.schemas says why).
KeyNameParam = Annotated[str, Field(pattern=f"^{NAME_PATTERN.pattern}$")]
TenantParam = Annotated[str, Field(pattern=f"^{TENANT_PATTERN.pattern}$")]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=100)
    tenant: str | None = Field(None, max_length=63, description="default: the caller's tenant")
    scopes: list[str] = Field(default_factory=lambda: ["read", "write", "predict"],
                              max_length=len(SCOPES))
    expires_in_days: float | None = Field(None, gt=0, le=36500)


class KeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    tenant: str
    scopes: list[str]
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The key itself: shown this once, stored nowhere")


class QuotaUpdate(BaseModel):
    """Overrides of the tenant's quotas; null (or left out): the server's default."""

    model_config = ConfigDict(extra="forbid")

    max_running_jobs: int | None = Field(None, ge=0, le=10**6)
    max_queued_jobs: int | None = Field(None, ge=0, le=10**9)
    max_stored_bytes: int | None = Field(None, ge=0, le=2**62)
    max_upload_bytes: int | None = Field(None, ge=0, le=2**62)


class TenantQuotas(BaseModel):
    tenant: str
    quota: dict[str, int] = Field(description="in force: the overrides over the defaults")
    overrides: dict[str, int | None]
    usage: dict[str, int]


class AuditRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    tenant: str
    actor: str
    action: str
    target: str
    request_id: str | None
    detail: dict[str, Any]
