"""Serving routes, every protocol: TensorFlow Serving's REST API (predict, model status,
metadata, labels) and the Open Inference Protocol v2 (KServe, Triton) under /v2.

Predict routes are `async` with no sync dependency and no database session: the version a
request names is resolved from a cache (see service.py), and only a cache miss or a model load
leaves the event loop."""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import problems
from app.api.deps import CALLER_STATE, Caller, CallerDep, SessionDep
from app.api.route_access import found_route
from app.auth.access import MODEL_STATUS, PREDICT, requires
from app.core.config import get_settings
from app.core.db import on_commit, session_scope
from app.core.errors import DomainError, bad_request
from app.predict import codec, npy, oip
from app.predict.cache import LoadedModel
from app.predict.metrics import observed
from app.predict.rows import BodyWatch, check_json_body
from app.predict.schemas import ServingSettings
from app.predict.service import (
    Ref,
    get_serving,
    loaded_model,
    row_limit,
    run,
    serving_settings,
    set_serving_settings,
)
from app.predict.signature import TensorInfo
from app.registry import service as registry
from app.registry.schemas import (
    LABEL_NAME,
    MAX_VERSION,
    MODEL_NAME,
    LabelParam,
    LabelRead,
    LabelSet,
    ModelRead,
    ModelVersionRead,
    NameParam,
    VersionParam,
    VersionStatus,
)

router = APIRouter(tags=["predict"],
                   responses=problems.responses(400, 404, 422, 503))
# JSON bodies and answers above these sizes are parsed and written on a thread: on the event
# loop they would hold up every other request for milliseconds.
OFF_LOOP_BYTES = 64 * 1024
OFF_LOOP_VALUES = 16 * 1024

PREDICT_EXAMPLE = {"instances": [[0.0, 3.0], [3.0, 0.0]]}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# TF Serving's request: rows or columns (exactly one of them), of any nesting the model takes.
_PREDICT_SCHEMA = {"type": "object", "properties": {
    "instances": {"type": "array", "description": "rows: one value (or {input: value}) each"},
    "inputs": {"description": "columns: a tensor, or {input name: tensor}"},
    "signature_name": {"type": "string", "enum": [codec.SIGNATURE_NAME]}}}
PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": _PREDICT_SCHEMA, "example": PREDICT_EXAMPLE},
        npy.NPY: _BINARY, npy.NPZ: _BINARY}},
    "responses": {"200": {"description": "The predictions: JSON, or .npy/.npz as Accept asks",
                          "content": {npy.NPY: _BINARY, npy.NPZ: _BINARY}}}}
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
                          "content": {oip.BINARY_MEDIA: _BINARY}}}}
TOO_LARGE_OR_WRONG_TYPE = problems.responses(413, 415)


Headers = Mapping[str, str]  # lower-case names


async def _body(stream: AsyncIterator[bytes], headers: Headers,
                watch: BodyWatch | None = None) -> bytes:
    """The request body, refused with 413 past KJ_PREDICT_MAX_BODY_BYTES (read no further),
    or as soon as `watch` finds more rows than a request may hold."""
    limit = _check_declared(headers)
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


def _check_declared(headers: Headers) -> int:
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


# --- TensorFlow Serving REST ---------------------------------------------------------------

@observed("tfserving")  # requests and latency (app/predict/metrics.py), both doors
async def _predict(stream: AsyncIterator[bytes], headers: Headers, ref: Ref) -> Response:
    # The model first: its inputs and row limit bound the body while it arrives.
    _check_declared(headers)
    model = await loaded_model(ref)
    inputs, outputs = model.servable.inputs, model.servable.outputs
    content_type = headers.get("content-type")
    max_rows = row_limit(model)  # counted before any array is built
    raw = await _body(stream, headers, None if npy.is_npy_media(content_type)
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
async def predict_latest(caller: CallerDep, name: NameParam, request: Request) -> Response:
    """TensorFlow Serving's predict: rows `{"instances": [...]}` → `{"predictions": ...}`,
    columns `{"inputs": ...}` → `{"outputs": ...}`; or a `.npy`/`.npz` body
    (`Content-Type: application/x-npy`), and `Accept: application/x-npy` for a binary answer."""
    return await _predict(request.stream(), request.headers, Ref(caller.owner, name))


@router.post("/v1/models/{name}/versions/{version}:predict", openapi_extra=PREDICT_OPENAPI,
             responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
async def predict_version(caller: CallerDep, name: NameParam, version: VersionParam,
                          request: Request) -> Response:
    return await _predict(request.stream(), request.headers,
                          Ref(caller.owner, name, version=version))


@router.post("/v1/models/{name}/labels/{label}:predict", openapi_extra=PREDICT_OPENAPI,
             responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
async def predict_label(caller: CallerDep, name: NameParam, label: LabelParam,
                        request: Request) -> Response:
    return await _predict(request.stream(), request.headers, Ref(caller.owner, name, label=label))


def _unsupported(method: str) -> None:
    raise bad_request(f"':{method}' is for TensorFlow Estimator signatures, which Keras models "
                      "do not have; use ':predict'.")


@router.post("/v1/models/{name}:classify", status_code=400)
@router.post("/v1/models/{name}/versions/{version}:classify", status_code=400)
@router.post("/v1/models/{name}/labels/{label}:classify", status_code=400)
@requires(PREDICT)
async def classify(name: NameParam) -> None:
    """Refused: Keras models have no classification signature."""
    _unsupported("classify")


@router.post("/v1/models/{name}:regress", status_code=400)
@router.post("/v1/models/{name}/versions/{version}:regress", status_code=400)
@router.post("/v1/models/{name}/labels/{label}:regress", status_code=400)
@requires(PREDICT)
async def regress(name: NameParam) -> None:
    """Refused: Keras models have no regression signature."""
    _unsupported("regress")


def _version_status(version_id: str, version: int) -> VersionStatus:
    """AVAILABLE: loaded here, or loads on the first request; LOADING: being loaded by this
    process now; UNAVAILABLE: its last load here failed (with the reason)."""
    cache = get_serving().cache
    failure = cache.stats.failures.get(version_id)
    if cache.loading(version_id):
        return VersionStatus(version=str(version), state="LOADING",
                             status={"error_code": "OK", "error_message": ""})
    if failure is not None:
        return VersionStatus(version=str(version), state="UNAVAILABLE",
                             status={"error_code": "UNKNOWN", "error_message": failure})
    return VersionStatus(version=str(version), state="AVAILABLE",
                         status={"error_code": "OK", "error_message": ""})


def _model_read(session: Any, owner: str, name: str, version: int | None) -> ModelRead:
    versions = registry.versions(session, owner, name)
    shown = [v for v in versions if version is None or v.version == version]
    if not shown:
        registry.resolve(session, owner, name, version)  # the 404
    return ModelRead(name=name, latest_version=versions[0].version,
                     versions=[ModelVersionRead.model_validate(v) for v in shown],
                     labels=registry.labels(session, owner, name),
                     model_version_status=[_version_status(v.id, v.version) for v in shown])


@router.get("/v1/models/{name}", response_model=ModelRead, tags=["models"])
@requires(MODEL_STATUS)
def get_model(caller: CallerDep, session: SessionDep, name: NameParam) -> ModelRead:
    """A model's versions (newest first), labels, and TF Serving's `model_version_status`."""
    return _model_read(session, caller.owner, name, None)


@router.get("/v1/models/{name}/versions/{version}", response_model=ModelRead, tags=["models"])
@requires(MODEL_STATUS)
def get_model_version(caller: CallerDep, session: SessionDep, name: NameParam,
                      version: VersionParam) -> ModelRead:
    return _model_read(session, caller.owner, name, version)


@router.get("/v1/models/{name}/labels/{label}", response_model=ModelRead, tags=["models"])
@requires(MODEL_STATUS)
def get_model_label(caller: CallerDep, session: SessionDep, name: NameParam,
                    label: LabelParam) -> ModelRead:
    """The version `label` points at, with its TF Serving status."""
    version = registry.resolve(session, caller.owner, name, None, label).version
    return _model_read(session, caller.owner, name, version)


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


# --- per-model batching ------------------------------------------------------------------

@router.get("/v1/models/{name}/serving", response_model=ServingSettings, tags=["models"])
def get_serving_settings(caller: CallerDep, session: SessionDep,
                         name: NameParam) -> ServingSettings:
    """This model's own batching settings (null: the server's KJ_BATCH_* default)."""
    return serving_settings(session, caller.owner, name)


@router.put("/v1/models/{name}/serving", response_model=ServingSettings, tags=["models"])
def put_serving_settings(caller: CallerDep, session: SessionDep, name: NameParam,
                         body: ServingSettings) -> ServingSettings:
    """Set this model's batching; every API process applies it on its next request."""
    return set_serving_settings(session, caller.owner, name, body, actor=caller.actor)


# --- labels ----------------------------------------------------------------------------------

@router.put("/v1/models/{name}/labels/{label}", response_model=LabelRead, tags=["models"])
async def put_label(caller: CallerDep, name: NameParam, label: LabelParam,
                    body: LabelSet) -> LabelRead:
    """Point `label` at a version. The version is loaded and warmed in this process first; if
    it cannot be loaded the label stays where it was (422 with the reason)."""
    registry.check_label(label)  # before any load
    try:
        await loaded_model(Ref(caller.owner, name, version=body.version))
    except DomainError as exc:
        if exc.status != 503:
            raise
        raise DomainError(422, "Version cannot be served", f"{exc.detail} The label '{label}' "
                          "was not moved.", type="/problems/invalid-input") from exc

    def move() -> None:
        with session_scope() as s:
            registry.set_label(s, get_serving().store, caller.owner, name, label, body.version,
                               actor=caller.actor)

    await run_in_threadpool(move)
    return LabelRead(name=name, label=label, version=body.version)


@router.delete("/v1/models/{name}/labels/{label}", status_code=status.HTTP_204_NO_CONTENT,
               tags=["models"])
def delete_label(caller: CallerDep, session: SessionDep, name: NameParam,
                 label: LabelParam) -> None:
    registry.delete_label(session, get_serving().store, caller.owner, name, label,
                          actor=caller.actor)


@router.delete("/v1/models/{name}/versions/{version}", status_code=status.HTTP_204_NO_CONTENT,
               tags=["models"], responses=problems.responses(409))
def delete_version(caller: CallerDep, session: SessionDep, name: NameParam,
                   version: VersionParam) -> None:
    """Delete a version: its file and its stored bytes. 409 while a label points at it (move
    the label first) or a queued or running job uses it."""
    serving = get_serving()
    mv = registry.delete_version(session, serving.store, caller.owner, name, version,
                                 actor=caller.actor)
    version_id = mv.id
    on_commit(session, lambda: serving.cache.drop(version_id))  # no longer served here


# --- Open Inference Protocol v2 (KServe, Triton) ------------------------------------------

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
    _check_declared(headers)
    model = await loaded_model(ref)
    inputs, outputs = model.servable.inputs, model.servable.outputs
    header_length = oip.parse_header_length(headers.get(oip.HEADER_LENGTH.lower()))
    # A JSON-only request's values are bounded as it arrives (binary data holds any bytes).
    raw = await _body(stream, headers, None if header_length is not None
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
async def v2_infer(caller: CallerDep, name: NameParam, request: Request) -> Response:
    """Inference in the Open Inference Protocol v2 (JSON, or its binary tensor extension)."""
    return await _infer(request.stream(), request.headers, Ref(caller.owner, name))


@router.post("/v2/models/{name}/versions/{version}/infer", tags=["v2"],
             openapi_extra=INFER_OPENAPI, responses=TOO_LARGE_OR_WRONG_TYPE)
@requires(PREDICT)
async def v2_infer_version(caller: CallerDep, name: NameParam, version: VersionParam,
                           request: Request) -> Response:
    return await _infer(request.stream(), request.headers, Ref(caller.owner, name, version=version))


# --- the fast path --------------------------------------------------------------------------

# Checked here as FastAPI's route checks them; anything else goes on to that route's 422.
_NAME = re.compile(MODEL_NAME)
_LABEL = re.compile(LABEL_NAME)
_VERSION = re.compile(r"[0-9]{1,10}")
log = logging.getLogger(__name__)


class PredictFastPath:
    """ASGI middleware: requests the route table routes to a predict or infer route go straight
    to the serving code above, around FastAPI's dependency solving and response handling: for
    a one-row request that machinery costs as much CPU as everything else together. The route
    is the one app.api.route_access found (and remembered) for authentication. The FastAPI
    routes stay (the OpenAPI schema, and any request this path does not take, e.g. a malformed
    name, which they answer with the usual 422)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _fast_route(scope)
        if route is None:
            await self.app(scope, receive, send)
            return
        handler, ref = route
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            caller: Caller = scope["state"][CALLER_STATE]  # app.api.auth.Authenticate's
            response = await handler(_receive_body(receive), headers,
                                     dataclasses.replace(ref, owner=caller.owner))
        except DomainError as exc:
            response = problems.domain_problem(exc, scope["path"])
        await response(scope, receive, send)


# The routes the fast path answers, by endpoint, and the serving code each one calls.
_FAST: dict[Any, Any] = {predict_latest: _predict, predict_version: _predict,
                         predict_label: _predict, v2_infer: _infer, v2_infer_version: _infer}


def _fast_route(scope: Scope) -> tuple[Any, Ref] | None:
    """The serving call and model a request names, when the route table routes it to one of
    the routes above (app.api.route_access: the same table and match FastAPI uses), so this
    path answers nothing those routes would not."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    found = found_route(scope)
    handler = _FAST.get(found.endpoint)
    if handler is None:
        return None
    name: str = found.params["name"]
    version: str | None = found.params.get("version")
    label: str | None = found.params.get("label")
    if not _NAME.fullmatch(name) or (label is not None and not _LABEL.fullmatch(label)) or (
            version is not None and not (_VERSION.fullmatch(version)
                                         and 1 <= int(version) <= MAX_VERSION)):
        return None  # FastAPI's route answers with its 422
    return handler, Ref("", name, version=int(version) if version else None, label=label)


async def _receive_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return
