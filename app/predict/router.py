"""Serving routes: TensorFlow Serving's REST predict and model metadata."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import CallerDep, SessionDep, StoreDep
from app.core.errors import FieldError, bad_request
from app.predict import service
from app.registry.schemas import NameParam, VersionParam

router = APIRouter(prefix="/v1/models", tags=["predict"])

PREDICT_EXAMPLE = {"instances": [[0.0, 3.0], [3.0, 0.0]]}
PREDICT_OPENAPI: dict[str, Any] = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object"}, "example": PREDICT_EXAMPLE}}}}


@router.get("/{name}/metadata")
def get_metadata(caller: CallerDep, session: SessionDep, store: StoreDep,
                 name: NameParam) -> dict[str, Any]:
    """Input and output names, shapes and dtypes of the latest version."""
    return service.metadata(session, store, caller.owner, name, None)


@router.get("/{name}/versions/{version}/metadata")
def get_version_metadata(caller: CallerDep, session: SessionDep, store: StoreDep,
                         name: NameParam, version: VersionParam) -> dict[str, Any]:
    return service.metadata(session, store, caller.owner, name, version)


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
                         name: NameParam, request: Request) -> Response:
    """TensorFlow Serving's predict: rows `{"instances": [...]}` or columns `{"inputs": ...}`."""
    body = await _json_body(request)
    return Response(await run_in_threadpool(service.predict, session, store, caller.owner, name,
                                            None, body), media_type="application/json")


@router.post("/{name}/versions/{version}:predict", openapi_extra=PREDICT_OPENAPI)
async def predict_version(caller: CallerDep, session: SessionDep, store: StoreDep,
                          name: NameParam, version: VersionParam,
                          request: Request) -> Response:
    body = await _json_body(request)
    return Response(await run_in_threadpool(service.predict, session, store, caller.owner, name,
                                            version, body), media_type="application/json")
