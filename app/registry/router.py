from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from app.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, StoreDep
from app.api.multipart import openapi_body, receive_file
from app.api.schemas import Page
from app.core.errors import FieldError, bad_request
from app.jobs.schemas import MODEL_NAME_PATTERN
from app.predict import service as predict
from app.predict.service import MODEL_FILE
from app.registry import service, upload
from app.registry.schemas import (
    ModelListItem,
    ModelRead,
    ModelVersionCreated,
    ModelVersionRead,
)

router = APIRouter(prefix="/v1/models", tags=["models"])

NameParam = Annotated[str, Path(pattern=MODEL_NAME_PATTERN)]
VersionParam = Annotated[int, Path(ge=1)]
PREDICT_EXAMPLE = {"instances": [[0.0, 3.0], [3.0, 0.0]]}


@router.get("", response_model=Page[ModelListItem])
def list_models(
    caller: CallerDep, session: SessionDep,
    page: PageDep,
) -> Page[ModelListItem]:
    rows, total = service.list_models(session, caller.owner, page.limit, page.offset)
    return Page[ModelListItem](items=[ModelListItem(**r) for r in rows], total=total,
                               limit=page.limit, offset=page.offset)


@router.get("/{name}", response_model=ModelRead)
def get_model(caller: CallerDep, session: SessionDep, name: NameParam) -> ModelRead:
    versions = service.versions(session, caller.owner, name)
    return ModelRead(name=name, latest_version=versions[0].version,
                     versions=[ModelVersionRead.model_validate(v) for v in versions])


@router.get("/{name}/metadata")
def get_metadata(caller: CallerDep, session: SessionDep, store: StoreDep,
                 name: NameParam) -> dict[str, Any]:
    """Input and output names, shapes and dtypes of the latest version."""
    return predict.metadata(session, store, caller.owner, name, None)


@router.get("/{name}/versions/{version}/metadata")
def get_version_metadata(caller: CallerDep, session: SessionDep, store: StoreDep,
                         name: NameParam, version: VersionParam) -> dict[str, Any]:
    return predict.metadata(session, store, caller.owner, name, version)


PREDICT_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}, "example": PREDICT_EXAMPLE}}}}


async def _json_body(request: Request) -> Any:
    """TensorFlow Serving clients often send JSON without a JSON content type; accept it."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise bad_request(f"The body is not valid JSON: {exc}",
                          [FieldError("", "expected a JSON object")]) from exc


@router.post("/{name}:predict", openapi_extra=PREDICT_OPENAPI)
async def predict_latest(caller: CallerDep, session: SessionDep, store: StoreDep,
                         name: NameParam, request: Request) -> dict[str, Any]:
    """TensorFlow Serving's predict: rows `{"instances": [...]}` or columns `{"inputs": ...}`."""
    body = await _json_body(request)
    return await run_in_threadpool(predict.predict, session, store, caller.owner, name, None, body)


@router.post("/{name}/versions/{version}:predict", openapi_extra=PREDICT_OPENAPI)
async def predict_version(caller: CallerDep, session: SessionDep, store: StoreDep,
                          name: NameParam, version: VersionParam,
                          request: Request) -> dict[str, Any]:
    body = await _json_body(request)
    return await run_in_threadpool(predict.predict, session, store, caller.owner, name, version,
                                   body)


@router.post("/{name}/versions", status_code=status.HTTP_201_CREATED,
             response_model=ModelVersionCreated,
             openapi_extra=openapi_body({}))
async def upload_version(
    request: Request, caller: CallerDep, session: SessionDep, store: StoreDep,
    settings: SettingsDep, response: Response, name: NameParam,
) -> ModelVersionCreated:
    """Upload a `.keras` file (multipart field `file`; `model.save("m.keras")`) as the next
    version of `name`. HDF5 (.h5) files are refused."""
    with store.staging() as staging:
        received, _fields = await receive_file(request, staging / MODEL_FILE,
                                               settings.max_upload_bytes)
        mv = await run_in_threadpool(upload.create, session, store, caller.owner, name,
                                     staging, received)
    response.headers["Location"] = f"/v1/models/{name}/versions/{mv.version}"
    return ModelVersionCreated.model_validate(mv)
