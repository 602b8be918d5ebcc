"""The audit log: who (the key's name) created, deleted or cancelled what, moved a label, made or
revoked a key or set a quota; written in the transaction of the change it records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.db import paginate
from app.core.logs import request_id
from app.tables import AuditEvent


def record(session: Session, *, tenant: str, actor: str, action: str, target: str,
           **detail: Any) -> None:
    session.add(AuditEvent(tenant=tenant, actor=actor, action=action, target=target[:300],
                           request_id=request_id.get(), detail=detail))


def list_(session: Session, tenant: str | None, action: str | None, limit: int,
          offset: int) -> tuple[list[AuditEvent], int]:
    """Newest first."""
    query = select(AuditEvent)
    if tenant is not None:
        query = query.where(AuditEvent.tenant == tenant)
    if action is not None:
        query = query.where(AuditEvent.action == action)
    return paginate(session, query, (AuditEvent.id.desc(),), limit, offset)
