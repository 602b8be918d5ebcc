"""Dependencies shared by every route: the caller and the request's unit of work."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from app.api.schemas import Page
from app.auth.access import ALL_SCOPES, LOCAL_TENANT
from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.core.storage import ArtifactStore, get_store


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant whose rows they see, and the key they used (none while the
    service runs open)."""

    owner: str
    key_id: str | None = None
    key_name: str | None = None
    scopes: frozenset[str] = ALL_SCOPES

    @property
    def actor(self) -> str:
        return self.key_name or LOCAL_TENANT

    @property
    def is_operator(self) -> bool:
        """Whether it may manage every tenant (an `admin` key manages its own only)."""
        return "operator" in self.scopes

    def manages(self, tenant: str) -> bool:
        return self.is_operator or tenant == self.owner


LOCAL_OWNER = LOCAL_TENANT
OPEN_CALLER = Caller(owner=LOCAL_TENANT)
# Where the request's Caller is kept in the ASGI scope's state.
CALLER_STATE = "kj_caller"


async def get_caller(request: Request) -> Caller:
    """The caller app.api.auth.Authenticate found for this request (it runs before routing, so
    a request without a valid key is refused before its body is read)."""
    caller: Caller | None = request.scope.get("state", {}).get(CALLER_STATE)
    if caller is None:  # a public route asking for a caller: a programming error
        raise RuntimeError(f"{request.url.path} is public (app.api.auth.PUBLIC) but asks for "
                           "a caller")
    return caller


def get_session() -> Iterator[Session]:
    """The request's unit of work: committed when the handler returns, rolled back if it
    raises. A job is sent to the broker after the commit; a send the broker refuses leaves it
    queued for the sweep (app.jobs.recovery), so it never fails the request."""
    with session_scope() as session:
        yield session


CallerDep = Annotated[Caller, Depends(get_caller)]
# scope="function": commit before the response is sent. With the default ("request") the commit
# would run after the client already has its 201, which could then read a row not yet there.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


# PostgreSQL's OFFSET is a bigint; a larger one was a 500 ("bigint out of range").
MAX_OFFSET = 2**63 - 1


class PageParams:
    """`?limit=&offset=` of every list route."""

    def __init__(self, limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> None:
        self.limit = limit
        self.offset = offset

    def of(self, items: Sequence[Any], total: int) -> Page[Any]:
        """This page of a list route's answer."""
        return Page[Any](items=list(items), total=total, limit=self.limit, offset=self.offset)


PageDep = Annotated[PageParams, Depends()]
