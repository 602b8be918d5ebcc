"""The one exception the client raises for what the service (or a job) refused or could not do.

The service answers errors as RFC 9457 problem+json (`type`, `title`, `status`, `detail`, and for
bad input `errors: [{"pointer", "detail"}]`); the pointers are the useful part (which layer,
which argument), so `str()` lists them one per line.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class KerasJobsError(Exception):
    """A refused request, an unreachable service, or a job that failed or was cancelled.

    `status` is the HTTP status (None when no answer came, or for a job's own failure),
    `title` and `detail` the problem's, `errors` its field list (`[{"pointer", "detail"}]`),
    `job` the job JSON when a job ended badly, `problem` the whole problem body."""

    def __init__(self, title: str, detail: str = "", *, status: int | None = None,
                 errors: list[dict[str, Any]] | None = None, type: str | None = None,
                 job: dict[str, Any] | None = None,
                 problem: dict[str, Any] | None = None) -> None:
        super().__init__(title)
        self.title = title
        self.detail = detail
        self.status = status
        self.errors = list(errors or [])
        self.type = type
        self.job = job
        self.problem = dict(problem or {})  # the whole problem body (e.g. a 413's "limit")

    @property
    def pointers(self) -> list[str]:
        return [str(e.get("pointer", "")) for e in self.errors]

    def __str__(self) -> str:
        head = f"{self.status} {self.title}" if self.status is not None else self.title
        lines = [f"{head}: {self.detail}" if self.detail and self.detail != self.title
                 else head]
        lines += [f"  {e.get('pointer') or '/'}: {e.get('detail', '')}" for e in self.errors]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"KerasJobsError(status={self.status!r}, title={self.title!r}, "
                f"detail={self.detail!r}, errors={self.errors!r})")


def from_response(response: httpx.Response) -> KerasJobsError:
    """The error an unsuccessful answer stands for. problem+json is read field by field; any
    other body (a proxy's HTML page, TF Serving's `{"error"}`) becomes the detail."""
    body: Any = None
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        pass
    if isinstance(body, dict) and ("title" in body or "detail" in body or "error" in body):
        errors = body.get("errors")
        return KerasJobsError(
            str(body.get("title") or response.reason_phrase or "Error"),
            str(body.get("detail") or body.get("error") or ""),
            status=response.status_code,
            errors=[e for e in errors if isinstance(e, dict)] if isinstance(errors, list)
            else None,
            type=body.get("type") if isinstance(body.get("type"), str) else None,
            problem=body)
    text = response.text.strip() if response.content else ""
    return KerasJobsError(response.reason_phrase or "Error", text[:1000],
                          status=response.status_code)
