from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse

from app.api import idempotency, problems
from app.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, StoreDep
from app.api.idempotency import IdempotencyKeyDep
from app.api.json_depth import reads_own_body
from app.api.multipart import openapi_body, receive_file
from app.api.schemas import Page
from app.datasets import arrays, service
from app.datasets.ingest import NAME_RE
from app.datasets.schemas import DatasetRead

router = APIRouter(prefix="/v1/datasets", tags=["datasets"],
                   responses=problems.responses(400, 404, 409, 422, 503))


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetRead,
             responses=problems.responses(413, 415),
             openapi_extra=openapi_body({"name": "optional; defaults to the file name"}))
@reads_own_body
async def upload_dataset(
    request: Request, caller: CallerDep, session: SessionDep, store: StoreDep,
    settings: SettingsDep, response: Response, key: IdempotencyKeyDep,
) -> DatasetRead | JSONResponse:
    """Upload a `.npz` (named arrays), a `.npy` (one array, named `x`) or a CSV with a header
    row (one array per column), multipart field `file`, optional field `name`. The body is
    written to the artifact store as it arrives."""
    limit = await run_in_threadpool(service.upload_limit, session, caller.owner)
    with store.staging() as staging:
        received, fields = await receive_file(request, staging / "upload.bin", limit)

        def create() -> DatasetRead:
            dataset = service.create(session, store, caller.owner, staging, received,
                                     fields.get("name"), actor=caller.actor,
                                     max_csv_columns=settings.max_csv_columns)
            response.headers["Location"] = f"/v1/datasets/{dataset.id}"
            return DatasetRead.model_validate(dataset)

        upload = key.for_upload(received, fields) if key is not None else None
        return await run_in_threadpool(idempotency.once, session, upload, response, create)


@router.get("", response_model=Page[DatasetRead])
def list_datasets(
    caller: CallerDep, session: SessionDep,
    page: PageDep,
) -> Page[DatasetRead]:
    rows, total = service.list_(session, caller.owner, page.limit, page.offset)
    return page.of([DatasetRead.model_validate(r) for r in rows], total)


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(caller: CallerDep, session: SessionDep, dataset_id: str) -> DatasetRead:
    return DatasetRead.model_validate(service.get(session, caller.owner, dataset_id))


@router.get("/{dataset_id}/arrays/{array}", response_class=FileResponse,
            responses={200: {"content": {arrays.NPY: {}, arrays.JSON: {}}},
                       406: {"description": "JSON asked for an array too large for it, or of "
                             "a dtype JSON cannot hold",
                             "content": {problems.PROBLEM_JSON: {
                                 "schema": {"$ref": "#/components/schemas/Problem"}}}}})
def get_array(caller: CallerDep, session: SessionDep, store: StoreDep, dataset_id: str,
              array: Annotated[str, Path(pattern=NAME_RE.pattern)],
              accept: Annotated[str | None, Header()] = None) -> Response:
    """One array of the dataset (a batch-predict job's predictions, say): the stored `.npy`
    file, streamed (`np.load` reads it), or with `Accept: application/json`
    `{"name", "shape", "dtype", "data"}` for arrays up to 16 MiB (406 past that)."""
    dataset = service.get(session, caller.owner, dataset_id)
    found = arrays.stored_array(store, dataset.storage_key, dataset.arrays, array)
    if arrays.wants_json(accept):
        return Response(arrays.as_json(found), media_type=arrays.JSON)
    return FileResponse(found.path, media_type=arrays.NPY, filename=f"{array}.npy")


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(caller: CallerDep, session: SessionDep, store: StoreDep,
                   dataset_id: str) -> None:
    service.delete(session, store, caller.owner, dataset_id, actor=caller.actor)
