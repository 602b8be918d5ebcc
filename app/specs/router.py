from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Response, status
from fastapi.responses import JSONResponse

from app.api import idempotency, problems
from app.api.deps import CallerDep, PageDep, SessionDep
from app.api.idempotency import IdempotentJsonDep
from app.api.schemas import Page
from app.specs import service
from app.specs.schemas import SPEC_EXAMPLE, SpecListItem, SpecRead

router = APIRouter(prefix="/v1/specs", tags=["specs"],
                   responses=problems.responses(400, 404, 409, 422, 503))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=SpecRead)
def create_spec(
    caller: CallerDep, session: SessionDep, response: Response,
    body: Annotated[dict[str, Any], Body(examples=[SPEC_EXAMPLE])], key: IdempotentJsonDep,
) -> SpecRead | JSONResponse:
    """Validate a model spec, build it, and store it with its parameter count and summary."""

    def create() -> SpecRead:
        spec = service.create(session, caller.owner, body, actor=caller.actor)
        response.headers["Location"] = f"/v1/specs/{spec.id}"
        return SpecRead.model_validate(spec)

    return idempotency.once(session, key, response, create)


@router.get("", response_model=Page[SpecListItem])
def list_specs(
    caller: CallerDep, session: SessionDep,
    page: PageDep,
) -> Page[SpecListItem]:
    rows, total = service.list_(session, caller.owner, page.limit, page.offset)
    return page.of([SpecListItem.model_validate(r) for r in rows], total)


@router.get("/{spec_id}", response_model=SpecRead)
def get_spec(caller: CallerDep, session: SessionDep, spec_id: str) -> SpecRead:
    return SpecRead.model_validate(service.get(session, caller.owner, spec_id))
