from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.api import problems
from app.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, StoreDep
from app.api.multipart import openapi_body, receive_file
from app.api.schemas import Page
from app.registry import service, upload
from app.registry.schemas import (
    ModelListItem,
    ModelVersionCreated,
    NameParam,
    VersionParam,
)

router = APIRouter(prefix="/v1/models", tags=["models"],
                   responses=problems.responses(400, 404, 409, 422, 503))



@router.get("", response_model=Page[ModelListItem])
def list_models(
    caller: CallerDep, session: SessionDep,
    page: PageDep,
) -> Page[ModelListItem]:
    rows, total = service.list_models(session, caller.owner, page.limit, page.offset)
    return page.of([ModelListItem(**r) for r in rows], total)


@router.get("/{name}/versions/{version}/download", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}}})
def download_version(caller: CallerDep, session: SessionDep, store: StoreDep, name: NameParam,
                     version: VersionParam) -> FileResponse:
    """The version's `.keras` file, as `keras.saving.load_model` reads it."""
    mv = service.resolve(session, caller.owner, name, version)
    return FileResponse(store.model_file(store.path(mv.artifact_key)), media_type="application/zip",
                        filename=f"{name}-{version}.keras")


@router.post("/{name}/versions", status_code=status.HTTP_201_CREATED,
             response_model=ModelVersionCreated, responses=problems.responses(413, 415),
             openapi_extra=openapi_body({}))
async def upload_version(
    request: Request, caller: CallerDep, session: SessionDep, store: StoreDep,
    settings: SettingsDep, response: Response, name: NameParam,
) -> ModelVersionCreated:
    """Upload a `.keras` file (multipart field `file`; `model.save("m.keras")`) as the next
    version of `name`. HDF5 (.h5) files are refused."""
    limit = await run_in_threadpool(service.upload_limit, session, caller.owner)
    with store.staging() as staging:
        received, _fields = await receive_file(request, store.model_file(staging), limit)

        mv = await run_in_threadpool(upload.create, session, store, caller.owner, name, staging,
                                     received, actor=caller.actor)
    response.headers["Location"] = f"/v1/models/{name}/versions/{mv.version}"
    return ModelVersionCreated.model_validate(mv)
