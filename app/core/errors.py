"""Domain errors. Services raise these; one HTTP handler renders them as RFC 9457 problem+json."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with the input: where (a JSON pointer into the request) and what."""

    pointer: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "detail": self.detail}


@dataclass
class DomainError(Exception):
    status: int = 400
    title: str = "Bad request"
    detail: str = ""
    errors: list[FieldError] = field(default_factory=list)
    type: str = "about:blank"
    extra: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail or self.title)

    def __str__(self) -> str:
        parts = [self.detail or self.title]
        parts += [f"{e.pointer}: {e.detail}" for e in self.errors]
        return "; ".join(parts)


def invalid(detail: str, errors: list[FieldError] | None = None,
            title: str = "Invalid input") -> DomainError:
    """422: the request is well-formed but its content cannot be used."""
    return DomainError(422, title, detail, errors or [], type="/problems/invalid-input")


def not_found(kind: str, ident: str) -> DomainError:
    return DomainError(404, f"{kind} not found", f"No {kind.lower()} with id or name '{ident}'.",
                       type="/problems/not-found")


def conflict(detail: str) -> DomainError:
    return DomainError(409, "Conflict", detail, type="/problems/conflict")


def bad_request(detail: str, errors: list[FieldError] | None = None) -> DomainError:
    return DomainError(400, "Bad request", detail, errors or [], type="/problems/bad-request")


def unsupported_media(detail: str) -> DomainError:
    return DomainError(415, "Unsupported media type", detail,
                       type="/problems/unsupported-media-type")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' — did you mean 'X'?' for the closest choice (case-insensitive as a fallback), or ''."""
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in options}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=1,
                                                                cutoff=0.6)]
    return f" — did you mean '{close[0]}'?" if close else ""
