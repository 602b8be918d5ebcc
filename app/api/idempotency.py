"""Idempotency-Key on the create routes: a client that retries a POST whose answer it never got
(timeout, dropped connection) gets the first answer again instead of a second row.

The key (1-200 printable ASCII characters) belongs to the caller and the route. Inside the
route's transaction the record is inserted before the work and completed with the answer
(status, JSON body, Location) after it, so it commits together with what was created, and a
failed request (its transaction rolls back) leaves nothing to replay. A retry with the same
request gets the stored answer; the same key with another request is a 409. On PostgreSQL a
transaction-scoped advisory lock on the key is taken without waiting: while the first request
is still running, a second one with that key is answered 409 "in progress" at once, instead of
blocking on the first one's uncommitted row. Records older than KJ_IDEMPOTENCY_TTL_S are
ignored, and removed when their key comes back or, a batch at a time, after each keyed create.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import ColumnElement, delete, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.deps import CallerDep
from app.core.config import get_settings
from app.core.db import on_commit, on_commit_callback_failure, session_scope
from app.core.errors import DomainError, FieldError, bad_request
from app.core.storage import ReceivedFile
from app.tables import IdempotencyRecord
from app.tables.base import utcnow

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
POINTER = "/header/Idempotency-Key"
MAX_KEY_LENGTH = 200
PRUNE_BATCH = 100  # expired records removed after each keyed create, at most

ModelT = TypeVar("ModelT", bound=BaseModel)


@dataclass(frozen=True)
class IdempotencyKey:
    """A create request's key, before the request's content is known."""

    owner: str
    route: str  # "POST /v1/specs": the same key on two routes is two keys
    key: str
    status_code: int  # the route's success status, stored with the answer
    method_path: str

    def for_body(self, body: bytes) -> IdempotentRequest:
        """The request identified by method, path and raw body (JSON routes)."""
        return self._with(body)

    def for_upload(self, file: ReceivedFile, fields: dict[str, str]) -> IdempotentRequest:
        """An upload identified by its file's content and name and its form fields: the raw
        body would not do, as clients draw a new multipart boundary for each retry."""
        return self._with(file.sha256.encode(), file.filename.encode(),
                          json.dumps(fields, sort_keys=True).encode())

    def _with(self, *parts: bytes) -> IdempotentRequest:
        digest = hashlib.sha256(self.method_path.encode())
        for part in parts:  # length-prefixed, so moving bytes between parts changes the hash
            digest.update(len(part).to_bytes(8, "big") + part)
        return IdempotentRequest(self, digest.hexdigest())


@dataclass(frozen=True)
class IdempotentRequest:
    id: IdempotencyKey
    request_hash: str


async def idempotency_key(
    request: Request, caller: CallerDep,
    key: Annotated[str | None, Header(
        alias=HEADER, description="1-200 printable ASCII characters; a retry with the same key "
        "and body gets the first answer (kept 24 h), without creating anything again")] = None,
) -> IdempotencyKey | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in key):
        raise bad_request(f"{HEADER} must be 1-{MAX_KEY_LENGTH} printable ASCII characters.",
                          [FieldError(POINTER, f"1-{MAX_KEY_LENGTH} printable ASCII "
                                      "characters")])
    route = request.scope["route"]
    return IdempotencyKey(caller.owner, f"{request.method} {route.path}", key, route.status_code,
                          f"{request.method} {request.url.path}\n")


async def json_request(request: Request,
                       key: Annotated[IdempotencyKey | None, Depends(idempotency_key)]
                       ) -> IdempotentRequest | None:
    # FastAPI has already read the body for the route's own parameters; this reuses it.
    return key.for_body(await request.body()) if key is not None else None


IdempotencyKeyDep = Annotated[IdempotencyKey | None, Depends(idempotency_key)]
IdempotentJsonDep = Annotated[IdempotentRequest | None, Depends(json_request)]


def once(session: Session, request: IdempotentRequest | None, response: Response,
         create: Callable[[], ModelT]) -> ModelT | JSONResponse:
    """`create()` in the route's transaction, its answer recorded under the request's key; or,
    for a key already answered, that answer again without calling `create`."""
    if request is None:
        return create()
    claimed = _claim(session, request)
    if isinstance(claimed, JSONResponse):
        return claimed
    result = create()
    claimed.status_code = response.status_code or request.id.status_code
    claimed.response_body = jsonable_encoder(result)
    claimed.location = response.headers.get("location")
    # An after-commit step that raises fails the request: then the answer must not be replayed
    # either. (A job the broker would not take is not such a step: it stays queued for the
    # sweep, and the recorded answer stands.)
    on_commit_callback_failure(session, lambda: _forget(request.id))
    on_commit(session, _prune)
    return result


def _claim(session: Session, request: IdempotentRequest) -> IdempotencyRecord | JSONResponse:
    """The stored answer to replay, or a new in-progress record for this request."""
    key = request.id
    _lock(session, key)
    cutoff = utcnow() - timedelta(seconds=get_settings().idempotency_ttl_s)
    session.execute(delete(IdempotencyRecord).where(
        *_is(key), IdempotencyRecord.created_at < cutoff))  # expired: the key starts over
    record = session.get(IdempotencyRecord, (key.owner, key.route, key.key))
    if record is not None:
        return _replay(record, request)
    record = IdempotencyRecord(owner=key.owner, route=key.route, key=key.key,
                               request_hash=request.request_hash)
    session.add(record)
    try:
        session.flush()
    except IntegrityError as exc:  # SQLite: another request took the key meanwhile
        raise _in_progress() from exc
    return record


def _lock(session: Session, key: IdempotencyKey) -> None:
    """PostgreSQL: hold the key for this transaction, or answer 409 at once if another one
    holds it. (On SQLite writers take turns on the whole database anyway.)"""
    if session.get_bind().dialect.name != "postgresql":
        return
    name = "\0".join((key.owner, key.route, key.key)).encode()
    lock_id = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
    if not session.scalar(select(func.pg_try_advisory_xact_lock(lock_id))):
        raise _in_progress()


def _replay(record: IdempotencyRecord, request: IdempotentRequest) -> JSONResponse:
    if record.request_hash != request.request_hash:
        raise DomainError(409, "Idempotency key reused",
                          f"This {HEADER} was used for a different request; use a new key for a "
                          "new request.", [FieldError(POINTER, "used for a different request")],
                          type="/problems/idempotency-key-reused")
    if record.status_code is None:
        raise _in_progress()
    headers = {"Idempotent-Replayed": "true"}
    if record.location:
        headers["Location"] = record.location
    return JSONResponse(record.response_body, status_code=record.status_code, headers=headers)


def _in_progress() -> DomainError:
    return DomainError(409, "Request in progress",
                       f"A request with this {HEADER} is still being processed; retry once it "
                       "has finished to get its answer.",
                       [FieldError(POINTER, "a request with this key is in progress")],
                       type="/problems/idempotency-key-in-progress",
                       headers={"Retry-After": "1"})


def _is(key: IdempotencyKey) -> tuple[ColumnElement[bool], ...]:
    return (IdempotencyRecord.owner == key.owner, IdempotencyRecord.route == key.route,
            IdempotencyRecord.key == key.key)


def _forget(key: IdempotencyKey) -> None:
    try:
        with session_scope() as s:
            s.execute(delete(IdempotencyRecord).where(*_is(key)))
    except Exception:  # the request fails anyway; the record expires in time
        log.warning("could not forget the answer to %s %r", key.route, key.key, exc_info=True)


def _prune() -> None:
    """Remove a batch of expired records, in a transaction of its own that skips rows another
    one holds (so it never waits)."""
    cutoff = utcnow() - timedelta(seconds=get_settings().idempotency_ttl_s)
    pk = (IdempotencyRecord.owner, IdempotencyRecord.route, IdempotencyRecord.key)
    expired = (select(*pk).where(IdempotencyRecord.created_at < cutoff).limit(PRUNE_BATCH)
               .with_for_update(skip_locked=True))
    try:
        with session_scope() as s:
            s.execute(delete(IdempotencyRecord).where(tuple_(*pk).in_(expired)))
    except Exception:  # housekeeping: never fails the request that triggered it
        log.warning("could not remove expired idempotency records", exc_info=True)
