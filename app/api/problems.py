"""RFC 9457 problem+json for every error the API returns."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.db import database_unavailable
from app.core.errors import DomainError
from app.core.text import plain_text

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
# A database outage answers 503 with this Retry-After: about the connect and pool timeouts.
DB_RETRY_AFTER_S = 5


# Serving protocols whose clients read `{"error": "..."}` (TF Serving, KServe/Triton).
SERVING_PREFIXES = ("/v1/models", "/v2")


class ProblemField(BaseModel):
    """One thing wrong with the request: where (a JSON pointer into the body, or /path/…,
    /query/…, /header/… for parameters) and what."""

    pointer: str
    detail: str


class Problem(BaseModel):
    """An RFC 9457 problem: the body of every error the API answers."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="A URI naming the kind of problem (about:blank for none).")
    title: str
    status: int
    detail: str
    instance: str = Field(description="The path of the request.")
    errors: list[ProblemField] | None = Field(None, description="Bad input, field by field.")
    error: str | None = Field(None, description="The detail again, for TensorFlow Serving and "
                              "KServe clients (serving routes only).")


# What each status means in this API, for the OpenAPI document.
PROBLEM_DESCRIPTIONS = {
    400: "Malformed request (unparsable or too deeply nested body, bad header)",
    401: "No API key, or a wrong, revoked or expired one (WWW-Authenticate: Bearer)",
    403: "The API key lacks the scope this route needs",
    404: "No such resource",
    409: "Conflict with the current state (in use, Idempotency-Key reused or in progress)",
    413: "Body too large",
    415: "Unsupported content type",
    422: "The request is well-formed but its content cannot be used",
    429: "A rate limit or a job quota was reached; see Retry-After",
    503: "A dependency is unavailable or overloaded (database, broker, model); see Retry-After",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a router or route: each status as an application/problem+json
    `Problem` (whose schema `add_problem_schemas` puts into the document's components)."""
    ref = {"$ref": "#/components/schemas/Problem"}
    return {status: {"description": PROBLEM_DESCRIPTIONS[status],
                     "content": {PROBLEM_JSON: {"schema": ref}}} for status in statuses}


def add_problem_schemas(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add `Problem` (and what it refers to) to the document's components: the `responses`
    above refer to it by name, so FastAPI never sees it as a model of its own."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["Problem"] = schema
    return openapi


def problem(status: int, title: str, detail: str, instance: str, *,
            type_: str = "about:blank", errors: list[dict[str, str]] | None = None,
            extra: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status, "detail": detail,
                            "instance": instance}
    if errors:
        body["errors"] = errors
    body.update(extra or {})
    if instance.startswith(SERVING_PREFIXES):
        body.setdefault("error", detail)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _pointer(loc: tuple[Any, ...] | list[Any], body: Any = None) -> str:
    """FastAPI's error location ('body', 'layers', 1, 'units') as a JSON pointer."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "form", "cookie"):
        where = parts.pop(0)
        if where != "body" and parts:
            return f"/{where}/" + "/".join(str(p) for p in parts)
        # A discriminated union puts its tag ("fit") into the location; it is not in the body.
        if parts and isinstance(body, dict) and parts[0] == body.get("type"):
            parts.pop(0)
    escaped = [str(p).replace("~", "~0").replace("/", "~1") for p in parts]
    return "/" + "/".join(escaped) if escaped else ""


def domain_problem(exc: DomainError, instance: str) -> JSONResponse:
    # Details may quote Keras/TensorFlow messages, written for a terminal.
    return problem(exc.status, exc.title, plain_text(exc.detail), instance, type_=exc.type,
                   errors=[{"pointer": e.pointer, "detail": plain_text(e.detail)}
                           for e in exc.errors], extra=exc.extra, headers=exc.headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        return domain_problem(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"pointer": _pointer(e.get("loc", ()), exc.body)
                   + ("/type" if e.get("type", "").startswith("union_tag_") else ""),
                   "detail": e.get("msg", "invalid")}
                  for e in exc.errors()]
        summary = "; ".join(f"{e['pointer'] or '/'}: {e['detail']}" for e in errors[:5])
        return problem(422, "Invalid request", f"The request does not match the schema: {summary}",
                       request.url.path, type_="/problems/invalid-input", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), str(exc.detail), request.url.path)

    @app.exception_handler(sqlalchemy.exc.DBAPIError)
    @app.exception_handler(sqlalchemy.exc.TimeoutError)
    @app.exception_handler(psycopg.OperationalError)
    async def _database(request: Request, exc: Exception) -> JSONResponse:
        # Handled here, so uvicorn sends a normal response and keeps the connection alive.
        if not database_unavailable(exc):
            raise exc  # a wrong statement is a bug: the generic 500 below, logged
        cause = getattr(exc, "orig", None) or exc
        log.warning("database unavailable on %s: %s: %s", request.url.path,
                    type(cause).__name__, str(cause).strip())
        return problem(503, "Database unavailable", "The database is unreachable or did not "
                       f"answer in time; try again in {DB_RETRY_AFTER_S} seconds.",
                       request.url.path, type_="/problems/database-unavailable",
                       headers={"Retry-After": str(DB_RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem(500, "Internal server error", "An unexpected error occurred; it has been "
                       "logged.", request.url.path)
