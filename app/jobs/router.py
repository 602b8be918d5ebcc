from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from app.api import idempotency, problems
from app.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, StoreDep
from app.api.idempotency import IdempotentJsonDep
from app.api.schemas import Page
from app.core.db import session_scope
from app.jobs import events, service
from app.jobs.logs import read_tail
from app.jobs.schemas import JobCreate, JobRead
from app.tables import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"],
                   responses=problems.responses(400, 404, 409, 422, 503))

FIT_EXAMPLE = {"type": "fit", "spec_id": "spec_...", "dataset_id": "ds_...", "x": "x", "y": "y",
               "epochs": 5, "batch_size": 16, "validation_split": 0.3, "seed": 1,
               "model_name": "seed-linear"}


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead,
             responses=problems.responses(413))
def create_job(caller: CallerDep, session: SessionDep, response: Response,
               body: Annotated[JobCreate, Body(examples=[FIT_EXAMPLE])],
               key: IdempotentJsonDep) -> JobRead | JSONResponse:
    """Queue a fit, evaluate or (batch) predict job; it is sent to a worker once this request
    has committed (if the broker cannot take it, it stays queued and a worker's sweep sends it
    once the broker is back). A replayed answer enqueues nothing."""

    def create() -> JobRead:
        job = service.create(session, caller.owner, body, actor=caller.actor)
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


@router.get("/{job_id}/events", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "Server-Sent Events"}})
async def job_events(caller: CallerDep, job_id: str, request: Request,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    """The job's events as Server-Sent Events (`curl -N`): its past events first (status
    changes, one `epoch` event per epoch with its logs, `progress` every couple of seconds,
    the final status with the result or error), then live ones until the job ends. Each has an
    `id`; reconnect with `Last-Event-ID` to resume with no gap and no duplicate."""
    after = events.parse_last_event_id(last_event_id)
    await run_in_threadpool(_check_owned, caller.owner, job_id)
    return StreamingResponse(events.follow(job_id, after, request.is_disconnected),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _check_owned(owner: str, job_id: str) -> None:
    with session_scope() as s:
        service.get(s, owner, job_id)


@router.get("/{job_id}/logs", response_class=PlainTextResponse)
def job_logs(caller: CallerDep, session: SessionDep, store: StoreDep, settings: SettingsDep,
             job_id: str) -> PlainTextResponse:
    """What the job's process logged (warnings, the traceback of a failure): the newest
    KJ_JOB_LOG_BYTES of it."""
    job = service.get(session, caller.owner, job_id)
    text = read_tail(store.path(store.log_key(job_id)), settings.job_log_bytes)
    if not text:  # a blank page reads as broken: say why there is nothing
        text = (f"no log lines yet: the job is {job.status}\n"
                if job.status in ("queued", "running")
                else "no log lines were recorded for this job (it logged no warnings or errors)\n")
    return PlainTextResponse(text)


@router.post("/{job_id}:cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobRead)
def cancel_job(caller: CallerDep, session: SessionDep, job_id: str) -> JobRead:
    """Cancel a queued job (it never starts) or a running one (it stops at the next batch)."""
    job = service.cancel(session, caller.owner, job_id, actor=caller.actor)
    return service.read(session, job)
