from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status
from fastapi.responses import JSONResponse

from app.api import idempotency
from app.api.deps import CallerDep, PageDep, SessionDep
from app.api.idempotency import IdempotentJsonDep
from app.api.schemas import Page
from app.jobs import service
from app.jobs.schemas import JobCreate, JobRead
from app.tables import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

FIT_EXAMPLE = {"type": "fit", "spec_id": "spec_...", "dataset_id": "ds_...", "x": "x", "y": "y",
               "epochs": 5, "batch_size": 16, "validation_split": 0.3, "seed": 1,
               "model_name": "seed-linear"}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def create_job(caller: CallerDep, session: SessionDep, response: Response,
               body: Annotated[JobCreate, Body(examples=[FIT_EXAMPLE])],
               key: IdempotentJsonDep) -> JobRead | JSONResponse:
    """Queue a fit or evaluate job; it is sent to a worker once this request has committed (a
    broker that cannot take it makes this answer 503). A replayed answer enqueues nothing."""

    def create() -> JobRead:
        job = service.create(session, caller.owner, body)
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return service.read(session, job)

    return idempotency.once(session, key, response, create)


@router.get("", response_model=Page[JobRead])
def list_jobs(
    caller: CallerDep, session: SessionDep, page: PageDep,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Page[JobRead]:
    """Jobs, newest first."""
    rows, total = service.list_(session, caller.owner, status, page.limit, page.offset)
    return page.of([service.read(session, j) for j in rows], total)


@router.get("/{job_id}", response_model=JobRead)
def get_job(caller: CallerDep, session: SessionDep, job_id: str) -> JobRead:
    return service.read(session, service.get(session, caller.owner, job_id))


@router.post("/{job_id}:cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def cancel_job(caller: CallerDep, session: SessionDep, job_id: str) -> JobRead:
    """Cancel a queued job (it never starts) or a running one (it stops at the next batch)."""
    return service.read(session, service.cancel(session, caller.owner, job_id))
