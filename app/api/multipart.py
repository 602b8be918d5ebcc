"""Receive a multipart/form-data upload straight into a folder of the artifact store.

Starlette's form parser spools each file to the system temp directory first; for multi-GB
datasets that is a second full write, on a disk that may not have room. Here the `file` part
is hashed and written to its destination as the request body arrives, in the chunks the
server hands over, and the small text fields are kept in memory (bounded).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.auth.quotas import upload_too_large
from app.core.errors import DomainError, FieldError, bad_request, unsupported_media
from app.core.storage import ReceivedFile

MAX_FIELD_BYTES = 4096
FILE_FIELD = "file"
# RFC 2046 §5.1.1: a boundary is 1 to 70 characters of these (a space, but not at the end).
MAX_BOUNDARY = 70
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


@dataclass
class Received:
    path: Path
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    has_file: bool = False


def openapi_body(fields: dict[str, str]) -> dict[str, Any]:
    """The OpenAPI requestBody of such a route: a binary `file` plus optional text fields."""
    props: dict[str, Any] = {FILE_FIELD: {"type": "string", "format": "binary"}}
    props.update({name: {"type": "string", "description": desc} for name, desc in fields.items()})
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": [FILE_FIELD], "properties": props}}}}}


class _Parts:
    """python-multipart callbacks: route each part's bytes to the file or to a text field."""

    def __init__(self, received: Received, max_bytes: int) -> None:
        self.received = received
        self.max_bytes = max_bytes
        self.digest = hashlib.sha256()
        self.out: IO[bytes] | None = None
        self.header_name = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.field: str | None = None
        self.value = bytearray()

    def on_part_begin(self) -> None:
        self.headers, self.field, self.value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get(b"content-disposition", b""))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name == FILE_FIELD and b"filename" in params:
            if self.received.has_file:
                raise bad_request("Send one file.", [FieldError("/file", "more than one file")])
            self.received.has_file = True
            self.received.filename = params[b"filename"].decode("utf-8", "replace")
            self.out = self.received.path.open("wb")
        else:
            self.field = name

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.out is not None:
            self.received.size += len(chunk)
            if self.received.size > self.max_bytes:
                raise upload_too_large(self.max_bytes, self.received.size)
            self.digest.update(chunk)
            self.out.write(chunk)
        elif self.field is not None:
            self.value += chunk
            if len(self.value) > MAX_FIELD_BYTES:
                raise bad_request(f"Form field '{self.field}' is too long.",
                                  [FieldError(f"/{self.field}", f"at most {MAX_FIELD_BYTES} "
                                              "bytes")])

    def on_part_end(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None
        elif self.field:
            self.received.fields[self.field] = self.value.decode("utf-8", "replace")

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


async def receive_file(request: Request, path: Path, max_bytes: int
                       ) -> tuple[ReceivedFile, dict[str, str]]:
    """Parse the request body, writing the `file` part to `path`; the file and the text
    fields."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise unsupported_media("Send the upload as multipart/form-data with the file in the "
                                "field 'file' (curl -F file=@data.npz).")
    _check_boundary(params[b"boundary"])
    received = Received(path)
    parts = _Parts(received, max_bytes)
    callbacks: Any = {name: getattr(parts, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
        "on_headers_finished", "on_part_data", "on_part_end")}
    parser = MultipartParser(params[b"boundary"], callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except DomainError:
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        raise bad_request(f"The multipart body could not be parsed: {exc}",
                          [FieldError("", "malformed multipart/form-data")]) from exc
    finally:
        parts.close()
    if not received.has_file:
        raise DomainError(422, "Invalid request", "The upload needs a file in the field 'file'.",
                          [FieldError("/file", "Field required")], type="/problems/invalid-input")
    file = ReceivedFile(path, received.filename, received.size, parts.digest.hexdigest())
    return file, received.fields


def _check_boundary(boundary: bytes) -> None:
    """400 for a boundary RFC 2046 does not allow (the parser refuses those past 256 bytes with
    an error of its own, raised before any byte is read)."""
    if 0 < len(boundary) <= MAX_BOUNDARY and set(boundary) <= _BCHARS \
            and not boundary.endswith(b" "):
        return
    if not boundary or len(boundary) > MAX_BOUNDARY:
        what = f"is {len(boundary)} characters long; 1 to {MAX_BOUNDARY} are allowed"
    else:
        what = "holds characters RFC 2046 does not allow in a boundary"
    raise bad_request(
        f"The multipart boundary in Content-Type {what} (RFC 2046: 1 to {MAX_BOUNDARY} "
        "letters, digits, spaces or '()+_,-./:=? characters, not ending in a space). Let the "
        "HTTP client choose the boundary (curl -F file=@data.npz).",
        [FieldError("/headers/content-type", f"a boundary of 1 to {MAX_BOUNDARY} allowed "
                    "characters")])
