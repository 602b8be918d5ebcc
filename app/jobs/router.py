from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from app.api.deps import CallerDep, PageDep, SessionDep
from app.api.schemas import Page
from app.jobs import service
from app.jobs.schemas import JobCreate, JobRead
from app.models import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

FIT_EXAMPLE = {"type": "fit", "spec_id": "spec_...", "dataset_id": "ds_...", "x": "x", "y": "y",
               "epochs": 5, "batch_size": 16, "validation_split": 0.3, "seed": 1,
               "model_name": "seed-linear"}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def create_job(caller: CallerDep, session: SessionDep, response: Response,
               body: Annotated[JobCreate, Body(examples=[FIT_EXAMPLE])]) -> JobRead:
    """Queue a fit or evaluate job; a worker picks it up once this request has committed."""
    job = service.create(session, caller.owner, body)
    # Commit here rather than when the request ends: the job is enqueued once its row is
    # durable, and a broker failure must still become this request's answer (503).
    session.commit()
    service.enqueue(job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return service.read(session, job)


@router.get("", response_model=Page[JobRead])
def list_jobs(
    caller: CallerDep, session: SessionDep, page: PageDep,
    status: Annotated[JobStatus | None, Query()] = None,
) -> Page[JobRead]:
    """Jobs, newest first."""
    rows, total = service.list_(session, caller.owner, status, page.limit, page.offset)
    return Page[JobRead](items=[service.read(session, j) for j in rows], total=total,
                         limit=page.limit, offset=page.offset)


@router.get("/{job_id}", response_model=JobRead)
def get_job(caller: CallerDep, session: SessionDep, job_id: str) -> JobRead:
    return service.read(session, service.get(session, caller.owner, job_id))


@router.post("/{job_id}:cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def cancel_job(caller: CallerDep, session: SessionDep, job_id: str) -> JobRead:
    """Cancel a queued job (it never starts) or a running one (it stops at the next batch)."""
    return service.read(session, service.cancel(session, caller.owner, job_id))
