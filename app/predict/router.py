"""TensorFlow Serving's REST API: predict (and the refused classify and regress), and model
metadata; and the request-body handling both serving protocols share (the Open Inference
Protocol v2 is app/predict/v2_router.py). A model's status, labels and serving settings, on
the same /v1/models URLs, are app/registry/router.py's.

Predict routes are `async` with no sync dependency and no database session: the version a
request names is resolved from a cache (see service.py), and only a cache miss or a model load
leaves the event loop. They are `@serving` routes (app/api/serving_route.py): called straight
from the route, around FastAPI's dependency solving and response handling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from app.api import problems
from app.api.deps import CallerDep
from app.api.json_depth import reads_own_body
from app.api.serving_route import ServingRoute, serving
from app.auth.access import MODEL_STATUS, PREDICT, requires
from app.core.config import get_settings
from app.core.errors import DomainError, bad_request
from app.predict import codec, npy
from app.predict.cache import LoadedModel
from app.predict.metrics import observed
from app.predict.rows import BodyWatch, check_json_body
from app.predict.service import Ref, loaded_model, row_limit, run
from app.predict.signature import TensorInfo
from app.registry.schemas import LabelParam, NameParam, VersionParam

router = APIRouter(tags=["predict"], route_class=ServingRoute,
                   responses=problems.responses(400, 404, 422, 503))
# JSON bodies and answers above these sizes are parsed and written on a thread: on the event
# loop they would hold up every other request for milliseconds.
OFF_LOOP_BYTES = 64 * 1024
OFF_LOOP_VALUES = 16 * 1024

PREDICT_EXAMPLE = {"instances": [[0.0, 3.0], [3.0, 0.0]]}
BINARY = {"schema": {"type": "string", "format": "binary"}}
# TF Serving's request: rows or columns (exactly one of them), of any nesting the model takes.
_PREDICT_SCHEMA = {"type": "object", "properties": {
    "instances": {"type": "array", "description": "rows: one value (or {input: value}) each"},
    "inputs": {"description": "columns: a tensor, or {input name: tensor}"},
    "signature_name": {"type": "string", "enum": [codec.SIGNATURE_NAME]}}}
PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": _PREDICT_SCHEMA, "example": PREDICT_EXAMPLE},
        npy.NPY: BINARY, npy.NPZ: BINARY}},
    "responses": {"200": {"description": "The predictions: JSON, or .npy/.npz as Accept asks",
                          "content": {npy.NPY: BINARY, npy.NPZ: BINARY}}}}
TOO_LARGE_OR_WRONG_TYPE = problems.responses(413, 415)


Headers = Mapping[str, str]  # lower-case names


def headers_of(request: Request) -> dict[str, str]:
    """The request's headers, by lower-case name: looked up several times per request, where
    Starlette's Headers scans its list on each lookup."""
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}


async def read_body(stream: AsyncIterator[bytes], headers: Headers,
                    watch: BodyWatch | None = None) -> bytes:
    """The request body, refused with 413 past KJ_PREDICT_MAX_BODY_BYTES (read no further),
    or as soon as `watch` finds more rows than a request may hold."""
    limit = check_declared(headers)
    declared = headers.get("content-length")
    if watch is not None and declared is not None and declared.isdigit() \
            and int(declared) < 2 * watch.limit:
        watch = None  # a row takes 2 bytes at least ("1,"): it cannot hold too many
    chunks, size = [], 0
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if watch is not None:
                watch.feed(chunk)
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer; not a server error
        raise bad_request("The client closed the connection before the body arrived.") from None
    return b"".join(chunks)


def check_declared(headers: Headers) -> int:
    """413 for a body declared past KJ_PREDICT_MAX_BODY_BYTES (before the model is looked up);
    the limit otherwise."""
    limit = get_settings().predict_max_body_bytes
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    return limit


def _too_large(limit: int) -> DomainError:
    return DomainError(413, "Request body too large", f"A predict body may hold at most {limit} "
                       "bytes; split the rows over several requests or run a batch prediction "
                       "job.", type="/problems/too-large")


# --- predict ----------------------------------------------------------------------------------

@observed("tfserving")  # requests and latency (app/predict/metrics.py)
async def _predict(stream: AsyncIterator[bytes], headers: Headers, ref: Ref) -> Response:
    # The model first: its inputs and row limit bound the body while it arrives.
    check_declared(headers)
    model = await loaded_model(ref)
    inputs, outputs = model.servable.inputs, model.servable.outputs
    content_type = headers.get("content-type")
    max_rows = row_limit(model)  # counted before any array is built
    raw = await read_body(stream, headers, None if npy.is_npy_media(content_type)
                          else BodyWatch(inputs, *max_rows, rows=True))
    if npy.is_npy_media(content_type):
        arrays, fmt = npy.decode_npy(raw, inputs, content_type=content_type,
                                     max_bytes=get_settings().predict_max_body_bytes,
                                     max_rows=max_rows), "column"
    elif len(raw) > OFF_LOOP_BYTES:  # a large JSON body would stall every other request
        arrays, fmt = await run_in_threadpool(_decode_json, raw, inputs, max_rows)
    else:  # TF Serving reads JSON whatever the content type (curl -d sends a form type)
        arrays, fmt = _decode_json(raw, inputs, max_rows)
    results = await run(ref, model, arrays)
    if npy.wants_npy(headers.get("accept")):
        body, media = npy.encode_npy(results, outputs)
        return Response(body, media_type=media, headers=npy.converted_header(results, outputs))
    if sum(r.size for r in results) > OFF_LOOP_VALUES:
        body = await run_in_threadpool(codec.encode, results, outputs, fmt)
    else:
        body = codec.encode(results, outputs, fmt)
    return Response(body, media_type="application/json")


def _decode_json(raw: bytes, inputs: list[TensorInfo],
                 max_rows: tuple[int, str]) -> tuple[list[np.ndarray], str]:
    check_json_body(raw, inputs, *max_rows)  # on the bytes: before a value is parsed
    return codec.decode(codec.parse_json(raw), inputs)


@router.post("/v1/models/{name}:predict", openapi_extra=PREDICT_OPENAPI,
             responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
@serving
async def predict_latest(caller: CallerDep, name: NameParam, request: Request) -> Response:
    """TensorFlow Serving's predict: rows `{"instances": [...]}` → `{"predictions": ...}`,
    columns `{"inputs": ...}` → `{"outputs": ...}`; or a `.npy`/`.npz` body
    (`Content-Type: application/x-npy`), and `Accept: application/x-npy` for a binary answer."""
    return await _predict(request.stream(), headers_of(request), Ref(caller.owner, name))


@router.post("/v1/models/{name}/versions/{version}:predict", openapi_extra=PREDICT_OPENAPI,
             responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
@serving
async def predict_version(caller: CallerDep, name: NameParam, version: VersionParam,
                          request: Request) -> Response:
    return await _predict(request.stream(), headers_of(request),
                          Ref(caller.owner, name, version=version))


@router.post("/v1/models/{name}/labels/{label}:predict", openapi_extra=PREDICT_OPENAPI,
             responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
@serving
async def predict_label(caller: CallerDep, name: NameParam, label: LabelParam,
                        request: Request) -> Response:
    return await _predict(request.stream(), headers_of(request),
                          Ref(caller.owner, name, label=label))


def _unsupported(method: str) -> None:
    raise bad_request(f"':{method}' is for TensorFlow Estimator signatures, which Keras models "
                      "do not have; use ':predict'.")


@router.post("/v1/models/{name}:classify", status_code=400)
@router.post("/v1/models/{name}/versions/{version}:classify", status_code=400)
@router.post("/v1/models/{name}/labels/{label}:classify", status_code=400)
@requires(PREDICT)
@reads_own_body  # refused before its body is read
async def classify(name: NameParam) -> None:
    """Refused: Keras models have no classification signature."""
    _unsupported("classify")


@router.post("/v1/models/{name}:regress", status_code=400)
@router.post("/v1/models/{name}/versions/{version}:regress", status_code=400)
@router.post("/v1/models/{name}/labels/{label}:regress", status_code=400)
@requires(PREDICT)
@reads_own_body
async def regress(name: NameParam) -> None:
    """Refused: Keras models have no regression signature."""
    _unsupported("regress")


# --- metadata ---------------------------------------------------------------------------------

def _metadata(model: LoadedModel) -> dict[str, Any]:
    return {"name": model.name, "version": model.version,
            "inputs": [i.as_dict() for i in model.servable.inputs],
            "outputs": [o.as_dict() for o in model.servable.outputs]}


@router.get("/v1/models/{name}/metadata")
@requires(MODEL_STATUS)
async def get_metadata(caller: CallerDep, name: NameParam) -> dict[str, Any]:
    """Input and output names, shapes and dtypes of the latest version."""
    return _metadata(await loaded_model(Ref(caller.owner, name)))


@router.get("/v1/models/{name}/versions/{version}/metadata")
@requires(MODEL_STATUS)
async def get_version_metadata(caller: CallerDep, name: NameParam,
                               version: VersionParam) -> dict[str, Any]:
    return _metadata(await loaded_model(Ref(caller.owner, name, version=version)))


@router.get("/v1/models/{name}/labels/{label}/metadata")
@requires(MODEL_STATUS)
async def get_label_metadata(caller: CallerDep, name: NameParam,
                             label: LabelParam) -> dict[str, Any]:
    return _metadata(await loaded_model(Ref(caller.owner, name, label=label)))
