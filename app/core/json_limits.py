"""Limits on the JSON users send and the service stores, checked before anything trips on them.

- Nesting depth. Python's json module, pydantic's serialiser and every recursive walker in the
  spec checker fail (RecursionError, "maximum serialization depth") somewhere between 500 and
  1,000 levels; no spec or job needs more than a few dozen. `too_deep` measures a raw JSON text
  without parsing it, so the check runs before anything recursive sees the body.
- Values the database cannot store. PostgreSQL's json type refuses NaN and ±Infinity (Python's
  json writes them as bare tokens, and reads `1e400` as infinity), and no PostgreSQL text may
  hold a NUL character. `check_storable` finds the first such value in a parsed body and names
  it with a JSON pointer.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from app.core.errors import FieldError, invalid

MAX_DEPTH = 64

# A JSON string token (escapes included), and the tokens that open, close or separate values.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},:]', re.DOTALL)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(raw: bytes | str, max_depth: int = MAX_DEPTH) -> str | None:
    """The JSON pointer of the first array or object nested deeper than `max_depth`, or None.

    Brackets inside strings do not count. Linear in the text and without recursion: the
    common case (few brackets) is two `count` calls; otherwise the brackets outside strings
    are summed in NumPy, and only a text that is too deep is walked token by token (up to
    the offending bracket) to say where."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return None
    brackets = np.frombuffer(_STRING.sub(b"", data).translate(None, _NOT_BRACKET), np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    if int(np.cumsum(steps, dtype=np.int64).max(initial=0)) <= max_depth:
        return None
    return _pointer_past(data, max_depth)


def _pointer_past(data: bytes, max_depth: int) -> str:
    # One entry per open container: the key (object) or index (array) of the value being read.
    path: list[str | int] = []
    last_string = b'""'
    for match in _TOKEN.finditer(data):
        token = match.group()
        if token.startswith(b'"'):
            last_string = token
        elif token in (b"[", b"{"):
            if len(path) == max_depth:
                return "".join("/" + pointer_token(str(p)) for p in path)
            path.append(0 if token == b"[" else "")
        elif token in (b"]", b"}"):
            if path:
                path.pop()
        elif token == b":" and path:
            path[-1] = _decode_key(last_string)
        elif token == b"," and path and isinstance(path[-1], int):
            path[-1] += 1
    return ""  # malformed text (e.g. an unterminated string); its parser will say so


def _decode_key(token: bytes) -> str:
    try:
        return str(json.loads(token))
    except ValueError:
        return token[1:-1].decode("utf-8", "replace")


def pointer_token(key: str) -> str:
    """One JSON pointer segment (RFC 6901: '~' and '/' are escaped)."""
    return key.replace("~", "~0").replace("/", "~1")


def check_depth(raw: bytes | str, pointer: str, max_depth: int = MAX_DEPTH) -> None:
    """422 when the JSON text `raw` (found at `pointer`) nests deeper than `max_depth`."""
    where = too_deep(raw, max_depth)
    if where is not None:
        raise invalid(f"The JSON is nested more than {max_depth} levels deep.",
                      [FieldError(pointer + where, f"nested more than {max_depth} levels deep")])


def unstorable(value: Any, pointer: str = "", max_abs: float | None = None) -> FieldError | None:
    """The first value (in document order) that the database cannot store: a NaN or infinite
    float, or a string or key holding a NUL character; with `max_abs`, also a number of a
    larger magnitude (one that would become infinite once stored narrower). None if none."""
    pending: list[tuple[str, Any]] = [(pointer, value)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return FieldError(where, "NaN and ±Infinity cannot be stored; send a finite number")
        if max_abs is not None and isinstance(item, int | float) and not isinstance(item, bool) \
                and abs(item) > max_abs:
            return FieldError(where, f"beyond ±{max_abs:.4g}, where it would become infinite")
        if isinstance(item, str) and "\x00" in item:
            return _nul(where)
        if isinstance(item, dict):
            children = []
            for key, child in item.items():
                child_pointer = f"{where}/{pointer_token(str(key))}"
                if "\x00" in str(key):
                    return _nul(child_pointer)
                children.append((child_pointer, child))
            pending.extend(reversed(children))
        elif isinstance(item, list | tuple):
            pending.extend(reversed([(f"{where}/{i}", child) for i, child in enumerate(item)]))
    return None


def _nul(pointer: str) -> FieldError:
    return FieldError(pointer, "text may not contain the NUL character (\\u0000)")


def check_storable(value: Any, pointer: str = "", max_abs: float | None = None) -> None:
    """422 naming the first value of `value` that the database cannot store (see unstorable)."""
    error = unstorable(value, pointer, max_abs)
    if error is not None:
        raise invalid(f"The request holds a value that cannot be stored: {error.pointer or '/'}: "
                      f"{error.detail}.", [error])
