from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.api.deps import CallerDep, PageDep, SessionDep, SettingsDep, StoreDep
from app.api.schemas import Page
from app.datasets import service
from app.datasets.schemas import DatasetRead

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetRead)
def upload_dataset(
    caller: CallerDep, session: SessionDep, store: StoreDep, settings: SettingsDep,
    response: Response,
    file: Annotated[UploadFile, File(description=".npz (named arrays), .npy, or .csv "
                                     "with a header row")],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetRead:
    dataset = service.create(session, store, caller.owner, file.file, file.filename or "upload",
                             name, settings.max_upload_bytes)
    response.headers["Location"] = f"/v1/datasets/{dataset.id}"
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=Page[DatasetRead])
def list_datasets(
    caller: CallerDep, session: SessionDep,
    page: PageDep,
) -> Page[DatasetRead]:
    rows, total = service.list_(session, caller.owner, page.limit, page.offset)
    return Page[DatasetRead](items=[DatasetRead.model_validate(r) for r in rows], total=total,
                             limit=page.limit, offset=page.offset)


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(caller: CallerDep, session: SessionDep, dataset_id: str) -> DatasetRead:
    return DatasetRead.model_validate(service.get(session, caller.owner, dataset_id))


@router.delete("/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_dataset(caller: CallerDep, session: SessionDep, store: StoreDep,
                   dataset_id: str) -> None:
    service.delete(session, store, caller.owner, dataset_id)
