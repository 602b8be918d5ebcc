"""HTTP to the service: one `httpx.Client` with the base URL and the API key, every error as
a KerasJobsError, and a streamed multipart upload that reports its progress."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import httpx

from keras_jobs.errors import KerasJobsError, from_response

DEFAULT_URL = "http://127.0.0.1:8000"
CHUNK = 1 << 20
# Long enough for a large predict or a model download; the event stream sets its own (the
# service sends a keep-alive comment every 15 s, so a read that waits a minute is a dead link).
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


def unreachable(method: str, url: str, exc: Exception) -> KerasJobsError:
    return KerasJobsError("Cannot reach the service", f"{method} {url}: "
                          f"{type(exc).__name__}: {exc}".rstrip(": "))


class Transport:
    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 http: httpx.Client | None = None) -> None:
        from keras_jobs import __version__

        self.url = url.rstrip("/")
        headers = {"User-Agent": f"keras-jobs-client/{__version__}"}
        api_key = api_key or os.environ.get("KJ_API_KEY")  # as the CLI's --api-key
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = http or httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, read; a KerasJobsError for an error status or no answer at all."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(method, self.url + path, exc) from exc
        if response.is_error:
            raise from_response(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed answer, checked before the caller reads it. Errors while it is read
        (a dropped connection) reach the caller as httpx errors: only it knows whether to
        resume (the event stream does)."""
        with self.http.stream(method, path, **kwargs) as response:
            if response.is_error:
                response.read()
                raise from_response(response)
            yield response

    def upload(self, path: str, file: IO[bytes], size: int, filename: str,
               fields: dict[str, str] | None = None,
               on_chunk: Callable[[int], object] | None = None) -> Any:
        """POST `file` as the `file` part of a multipart form, streamed from a generator (so
        a dataset larger than memory uploads) that reports each chunk it hands to httpx."""
        body, content_type, length = multipart(file, size, filename, fields or {}, on_chunk)
        return self.json("POST", path, content=body,
                         headers={"Content-Type": content_type,
                                  "Content-Length": str(length)})


def multipart(file: IO[bytes], size: int, filename: str, fields: dict[str, str],
              on_chunk: Callable[[int], object] | None
              ) -> tuple[Iterator[bytes], str, int]:
    """A multipart/form-data body (RFC 7578) as chunks, its Content-Type and its length."""
    boundary = secrets.token_hex(16)
    safe_name = filename.replace("\\", "_").replace('"', "%22").replace("\r", "") \
        .replace("\n", "")
    head = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
                    f"{value}\r\n".encode() for key, value in fields.items())
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
             ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size:
            chunk = file.read(min(CHUNK, size - sent))
            if not chunk:
                raise KerasJobsError("Upload failed", f"{filename} ended after {sent} of "
                                     f"{size} bytes (was it changed while being sent?)")
            sent += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
            yield chunk
        yield tail

    return (chunks(), f"multipart/form-data; boundary={boundary}",
            len(head) + size + len(tail))
