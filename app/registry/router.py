"""The model resources under /v1/models: list, models, versions and labels (with TF Serving's
`model_version_status`), serving settings, download, upload and delete. The serving protocols
on the same URLs (`:predict`, `/metadata`) are app/predict/router.py's.

What these routes show and change of this process's serving (a version's load status, warming
a version before a label moves to it, forgetting a deleted one, a model's batching) they ask of
`Served`, which app.main hands over: the registry cannot import predict, which builds on it."""

from __future__ import annotations

from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from app.api import problems
from app.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, StoreDep
from app.api.json_depth import reads_own_body
from app.api.multipart import openapi_body, receive_file
from app.api.schemas import Page
from app.auth.access import MODEL_STATUS, requires
from app.core.db import on_commit, session_scope
from app.core.errors import DomainError
from app.core.storage import get_store
from app.registry import service, upload
from app.registry.schemas import (
    LabelParam,
    LabelRead,
    LabelSet,
    ModelListItem,
    ModelRead,
    ModelVersionCreated,
    ModelVersionRead,
    NameParam,
    ServingSettings,
    VersionParam,
    VersionStatus,
)

router = APIRouter(prefix="/v1/models", tags=["models"],
                   responses=problems.responses(400, 404, 422, 503))


class Served(Protocol):
    """This process's serving, as the model routes show and change it (app/predict/served.py)."""

    def status(self, version_id: str, version: int) -> VersionStatus: ...

    async def warm(self, owner: str, name: str, version: int) -> None:
        """Loads the version here; a DomainError 503 when it cannot be served."""

    def forget(self, version_id: str) -> None: ...

    def settings(self, session: Session, owner: str, name: str) -> ServingSettings: ...

    def set_settings(self, session: Session, owner: str, name: str,
                     settings: ServingSettings, *, actor: str) -> ServingSettings: ...


def use_served(app: FastAPI, served: Served) -> None:
    """Hands the routes below the serving they show (app.main)."""
    app.state.served_models = served


def _served(request: Request) -> Served:
    served: Served = request.app.state.served_models
    return served


ServedDep = Annotated[Served, Depends(_served)]


@router.get("", response_model=Page[ModelListItem])
def list_models(
    caller: CallerDep, session: SessionDep,
    page: PageDep,
) -> Page[ModelListItem]:
    rows, total = service.list_models(session, caller.owner, page.limit, page.offset)
    return page.of([ModelListItem(**r) for r in rows], total)


# --- a model, a version, a label ------------------------------------------------------------

def _model_read(session: Session, served: Served, owner: str, name: str,
                version: int | None) -> ModelRead:
    versions = service.versions(session, owner, name)
    shown = [v for v in versions if version is None or v.version == version]
    if not shown:
        service.resolve(session, owner, name, version)  # the 404
    return ModelRead(name=name, latest_version=versions[0].version,
                     versions=[ModelVersionRead.model_validate(v) for v in shown],
                     labels=service.labels(session, owner, name),
                     model_version_status=[served.status(v.id, v.version) for v in shown])


@router.get("/{name}", response_model=ModelRead)
@requires(MODEL_STATUS)
def get_model(caller: CallerDep, session: SessionDep, served: ServedDep,
              name: NameParam) -> ModelRead:
    """A model's versions (newest first), labels, and TF Serving's `model_version_status`."""
    return _model_read(session, served, caller.owner, name, None)


@router.get("/{name}/versions/{version}", response_model=ModelRead)
@requires(MODEL_STATUS)
def get_model_version(caller: CallerDep, session: SessionDep, served: ServedDep,
                      name: NameParam, version: VersionParam) -> ModelRead:
    return _model_read(session, served, caller.owner, name, version)


@router.get("/{name}/labels/{label}", response_model=ModelRead)
@requires(MODEL_STATUS)
def get_model_label(caller: CallerDep, session: SessionDep, served: ServedDep,
                    name: NameParam, label: LabelParam) -> ModelRead:
    """The version `label` points at, with its TF Serving status."""
    version = service.resolve(session, caller.owner, name, None, label).version
    return _model_read(session, served, caller.owner, name, version)


@router.put("/{name}/labels/{label}", response_model=LabelRead)
async def put_label(caller: CallerDep, served: ServedDep, name: NameParam, label: LabelParam,
                    body: LabelSet) -> LabelRead:
    """Point `label` at a version. The version is loaded and warmed in this process first; if
    it cannot be loaded the label stays where it was (422 with the reason)."""
    service.check_label(label)  # before any load
    try:
        await served.warm(caller.owner, name, body.version)
    except DomainError as exc:
        if exc.status != 503:
            raise
        raise DomainError(422, "Version cannot be served", f"{exc.detail} The label '{label}' "
                          "was not moved.", type="/problems/invalid-input") from exc

    def move() -> None:
        with session_scope() as s:
            service.set_label(s, get_store(), caller.owner, name, label, body.version,
                              actor=caller.actor)

    await run_in_threadpool(move)
    return LabelRead(name=name, label=label, version=body.version)


@router.delete("/{name}/labels/{label}", status_code=status.HTTP_204_NO_CONTENT)
def delete_label(caller: CallerDep, session: SessionDep, store: StoreDep, name: NameParam,
                 label: LabelParam) -> None:
    service.delete_label(session, store, caller.owner, name, label, actor=caller.actor)


# --- per-model batching ---------------------------------------------------------------------

@router.get("/{name}/serving", response_model=ServingSettings)
def get_serving_settings(caller: CallerDep, session: SessionDep, served: ServedDep,
                         name: NameParam) -> ServingSettings:
    """This model's own batching settings (null: the server's KJ_BATCH_* default)."""
    return served.settings(session, caller.owner, name)


@router.put("/{name}/serving", response_model=ServingSettings)
def put_serving_settings(caller: CallerDep, session: SessionDep, served: ServedDep,
                         name: NameParam, body: ServingSettings) -> ServingSettings:
    """Set this model's batching; every API process applies it on its next request."""
    return served.set_settings(session, caller.owner, name, body, actor=caller.actor)


# --- a version's file: download, upload, delete ---------------------------------------------

@router.get("/{name}/versions/{version}/download", response_class=FileResponse,
            responses={200: {"content": {"application/zip": {}}}})
def download_version(caller: CallerDep, session: SessionDep, store: StoreDep, name: NameParam,
                     version: VersionParam) -> FileResponse:
    """The version's `.keras` file, as `keras.saving.load_model` reads it."""
    mv = service.resolve(session, caller.owner, name, version)
    return FileResponse(store.model_file(store.path(mv.artifact_key)), media_type="application/zip",
                        filename=f"{name}-{version}.keras")


@router.post("/{name}/versions", status_code=status.HTTP_201_CREATED,
             response_model=ModelVersionCreated, responses=problems.responses(409, 413, 415),
             openapi_extra=openapi_body({}))
@reads_own_body
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


@router.delete("/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT,
               responses=problems.responses(409))
def delete_version(caller: CallerDep, session: SessionDep, store: StoreDep, served: ServedDep,
                   name: NameParam, version: VersionParam) -> None:
    """Delete a version: its file and its stored bytes. 409 while a label points at it (move
    the label first) or a queued or running job uses it."""
    mv = service.delete_version(session, store, caller.owner, name, version, actor=caller.actor)
    version_id = mv.id
    on_commit(session, lambda: served.forget(version_id))  # no longer served here
