"""The Open Inference Protocol v2 (KServe, Triton) under /v2: server and model health,
model metadata, and inference (JSON, or the binary tensor extension). Its infer routes are
`@serving` routes, like TF Serving's predict (app/predict/router.py, whose body handling they
share)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api import problems
from app.api.deps import CallerDep
from app.api.serving_route import ServingRoute, serving
from app.auth.access import MODEL_STATUS, PREDICT, requires
from app.core.db import session_scope
from app.predict import codec, oip
from app.predict.metrics import observed
from app.predict.router import (
    BINARY,
    OFF_LOOP_BYTES,
    TOO_LARGE_OR_WRONG_TYPE,
    Headers,
    check_declared,
    headers_of,
    read_body,
)
from app.predict.rows import BodyWatch
from app.predict.service import Ref, get_serving, loaded_model, row_limit, run
from app.registry import service as registry
from app.registry.schemas import NameParam, VersionParam

router = APIRouter(tags=["predict"], route_class=ServingRoute,
                   responses=problems.responses(400, 404, 422, 503))

# The Open Inference Protocol's inference request (JSON form).
_TENSOR_SCHEMA = {"type": "object", "required": ["name", "shape", "datatype"],
                  "properties": {"name": {"type": "string"},
                                 "shape": {"type": "array", "items": {"type": "integer"}},
                                 "datatype": {"type": "string"}, "data": {"type": "array"},
                                 "parameters": {"type": "object", "description": "e.g. "
                                                "binary_data_size, for the binary extension"}}}
_INFER_SCHEMA = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "items": _TENSOR_SCHEMA},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                           "properties": {"name": {"type": "string"},
                                                          "parameters": {"type": "object"}}}}}}
INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": _INFER_SCHEMA, "example": {"inputs": [
            {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [0.0, 3.0]}]}}}},
    "responses": {"200": {"description": "The outputs: JSON, or the binary tensor extension",
                          "content": {oip.BINARY_MEDIA: BINARY}}}}


@router.get("/v2/health/live", tags=["v2"])
async def v2_live() -> dict[str, bool]:
    return {"live": True}


@router.get("/v2/health/ready", tags=["v2"], responses={503: {
    "description": "Not ready yet: {\"ready\": false}",
    "content": {"application/json": {"schema": {"type": "object"}}}}})
async def v2_ready() -> Response:
    """Ready once TensorFlow is imported and the recently served models are loaded."""
    ready = get_serving().ready.is_set()
    return Response(codec.dumps({"ready": ready}, []), media_type="application/json",
                    status_code=200 if ready else 503)


@router.get("/v2", tags=["v2"])
async def v2_server() -> dict[str, Any]:
    from app import __version__

    return {"name": "keras-jobs", "version": __version__, "extensions": ["binary_tensor_data"]}


async def _v2_metadata(ref: Ref) -> dict[str, Any]:
    model = await loaded_model(ref)

    def versions() -> list[int]:
        with session_scope() as s:
            return [v.version for v in registry.versions(s, ref.owner, ref.name)]

    return oip.model_metadata(model.name, await run_in_threadpool(versions), "keras",
                              model.servable.inputs, model.servable.outputs)


@router.get("/v2/models/{name}", tags=["v2"])
@requires(MODEL_STATUS)
async def v2_model(caller: CallerDep, name: NameParam) -> dict[str, Any]:
    return await _v2_metadata(Ref(caller.owner, name))


@router.get("/v2/models/{name}/versions/{version}", tags=["v2"])
@requires(MODEL_STATUS)
async def v2_model_version(caller: CallerDep, name: NameParam,
                           version: VersionParam) -> dict[str, Any]:
    return await _v2_metadata(Ref(caller.owner, name, version=version))


async def _v2_ready(ref: Ref) -> dict[str, Any]:
    model = await loaded_model(ref)
    return {"name": model.name, "version": str(model.version), "ready": True}


@router.get("/v2/models/{name}/ready", tags=["v2"])
@requires(MODEL_STATUS)
async def v2_model_ready(caller: CallerDep, name: NameParam) -> dict[str, Any]:
    return await _v2_ready(Ref(caller.owner, name))


@router.get("/v2/models/{name}/versions/{version}/ready", tags=["v2"])
@requires(MODEL_STATUS)
async def v2_model_version_ready(caller: CallerDep, name: NameParam,
                                 version: VersionParam) -> dict[str, Any]:
    return await _v2_ready(Ref(caller.owner, name, version=version))


@observed("v2")
async def _infer(stream: AsyncIterator[bytes], headers: Headers, ref: Ref) -> Response:
    check_declared(headers)
    model = await loaded_model(ref)
    inputs, outputs = model.servable.inputs, model.servable.outputs
    header_length = oip.parse_header_length(headers.get(oip.HEADER_LENGTH.lower()))
    # A JSON-only request's values are bounded as it arrives (binary data holds any bytes).
    raw = await read_body(stream, headers, None if header_length is not None
                          else BodyWatch(inputs, *row_limit(model), rows=False))
    decode = functools.partial(oip.decode_infer, raw, header_length, inputs, outputs=outputs,
                               max_rows=row_limit(model))
    # A large header holds JSON data: measured and parsed off the event loop.
    arrays, requested, binary, request_id = (
        await run_in_threadpool(decode) if (header_length or len(raw)) > OFF_LOOP_BYTES
        else decode())
    results = await run(ref, model, arrays)
    body, headers = oip.encode_infer(model.name, model.version, results, outputs, requested,
                                     binary, request_id)
    return Response(body, headers=headers)


@router.post("/v2/models/{name}/infer", tags=["v2"], openapi_extra=INFER_OPENAPI,
             responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
@serving
async def v2_infer(caller: CallerDep, name: NameParam, request: Request) -> Response:
    """Inference in the Open Inference Protocol v2 (JSON, or its binary tensor extension)."""
    return await _infer(request.stream(), headers_of(request), Ref(caller.owner, name))


@router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"],
             openapi_extra=INFER_OPENAPI, responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
@serving
async def v2_infer_version(caller: CallerDep, name: NameParam, version: VersionParam,
                           request: Request) -> Response:
    return await _infer(request.stream(), headers_of(request),
                        Ref(caller.owner, name, version=version))
