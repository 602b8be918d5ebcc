"""Rows of a predict body, counted before it is parsed.

Parsing JSON builds a Python object per value: a 60 MB body of 10 M one-value rows takes
1.5 GB and many seconds before any row limit could look at it. So a JSON body is measured on
its bytes first, in bounded memory, and refused (413) when it holds more than a request may:

- `too_many_values`: a model whose inputs have fixed shapes takes a known number of values
  per row, so a body can hold at most (rows limit) x (values per row) of them; the commas in
  the body bound its values, and counting them is one pass in C;
- `json_rows`: the rows themselves, from the brackets: the elements of each array that is a
  value of the top-level object (`instances`, or `inputs` as one tensor) or of an object there
  (`inputs` as {name: tensor}). Strings are cut out first (a bracket in a string is text), the
  depth of every bracket comes from a cumulative sum in NumPy, 256 KiB at a time, and the
  scan stops as soon as an array passes the limit.
A .npy body says its shape in its header (app.predict.npy), an Open Inference Protocol tensor
in its `shape` (app.predict.oip): both are checked before any data is read.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from app.core.errors import DomainError
from app.predict.signature import TensorInfo

CHUNK = 256 << 10
EARLY_SCAN_BYTES = 1 << 20
# Room for what a body holds besides its values: keys, the signature name, OIP's shapes.
SLACK_VALUES = 1024
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b"[]{},")
# An OIP tensor's declared shape, and its first dimension (a key "shape" cannot occur inside
# a string: its quotes would be escaped there). Tensors past the model's inputs are not read.
_SHAPE = re.compile(rb'"shape"\s*:\s*\[\s*([0-9]{1,20})?')
MAX_EXTRA_SHAPES = 16
_OPEN_ARRAY, _OPEN_OBJECT, _CLOSE_ARRAY, _CLOSE_OBJECT, _COMMA = b"[{]},"


def too_many_rows(rows: int, limit: int, why: str = "a request may hold") -> DomainError:
    return DomainError(413, "Too many rows", f"{rows:,} rows in one request; {why} at most "
                       f"{limit:,}. Split the rows over several requests or run a batch "
                       "prediction job.", type="/problems/too-large",
                       extra={"limit": limit, "current": rows})


def values_per_row(inputs: list[TensorInfo]) -> int | None:
    """The values one row of every input takes together; None when a shape is not fixed
    (a variable-length dimension) or an input takes strings (whose text may hold commas)."""
    total = 0
    for info in inputs:
        if any(d is None for d in info.shape[1:]) or info.dtype in ("string", "object"):
            return None
        total += math.prod(int(d) for d in info.shape[1:] if d is not None)
    return total


def check_json_body(raw: bytes, inputs: list[TensorInfo], limit: int,
                    why: str = "a request may hold") -> None:
    """413 when the JSON body `raw` holds more than `limit` rows for a model of `inputs`,
    decided without parsing it (see the module's doc). Cheap when it holds fewer commas
    than the limit: it cannot hold more rows than that."""
    commas = raw.count(b",")
    if commas < limit:
        return
    _check_values(commas, inputs, limit, why)
    rows = json_rows(raw, limit)
    if rows > limit:
        raise too_many_rows(rows, limit, why)


def check_infer_header(header: bytes, inputs: list[TensorInfo], limit: int,
                       why: str = "a request may hold") -> None:
    """The same for an Open Inference Protocol request's JSON: each tensor declares its shape,
    whose first dimension is its rows (read before the data), and its values are bounded as
    above."""
    for match in itertools.islice(_SHAPE.finditer(header), len(inputs) + MAX_EXTRA_SHAPES):
        first = match.group(1)
        if first is not None and int(first) > limit:
            raise too_many_rows(int(first), limit, why)
    commas = header.count(b",")
    if commas >= limit:
        _check_values(commas, inputs, limit, why)


def _check_values(commas: int, inputs: list[TensorInfo], limit: int, why: str) -> None:
    per_row = values_per_row(inputs)
    if per_row is None:
        return
    most = limit * (per_row + len(inputs)) + SLACK_VALUES
    if commas + 1 > most:
        raise DomainError(
            413, "Too many values", f"The body holds about {commas + 1:,} values; {limit:,} "
            f"rows of this model's {per_row:,} values each ({why} at most {limit:,} rows) "
            f"hold at most {most:,}. Split the rows over several requests or run a batch "
            "prediction job.", type="/problems/too-large",
            extra={"limit": most, "current": commas + 1})


class BodyWatch:
    """The same checks on a JSON body while it arrives, so that a bomb is refused at its first
    megabyte instead of after all of it is held: `feed` each chunk (it raises the 413).

    Its values are bounded as the commas come in (one C pass per chunk). Its rows are scanned
    over the first EARLY_SCAN_BYTES only (on the event loop, which a longer scan would hold
    up): rows of a few bytes each pass the limit well within it, and a body of longer rows is
    counted in full once received, off the loop (check_json_body)."""

    def __init__(self, inputs: list[TensorInfo], limit: int, why: str, *, rows: bool) -> None:
        self.inputs, self.limit, self.why = inputs, limit, why
        self.commas = 0
        self.scanned = 0
        self.scan: _Scan | None = _Scan() if rows else None
        self.tail = b""  # a string cut at the end of the last chunk

    def feed(self, chunk: bytes) -> None:
        self.commas += chunk.count(b",")
        if self.commas >= self.limit:
            _check_values(self.commas, self.inputs, self.limit, self.why)
        for start in range(0, len(chunk), CHUNK):  # a server may hand over megabytes at once
            if self.scan is None:
                return
            self._scan(self.scan, chunk[start:start + CHUNK])

    def _scan(self, scan: _Scan, chunk: bytes) -> None:
        data = self.tail + chunk
        cut = _open_string(data)
        piece, self.tail = (data, b"") if cut is None else (data[:cut], data[cut:])
        self.scanned += len(chunk)
        scan.feed(np.frombuffer(_STRING.sub(b"", piece).translate(None, _NOT_STRUCTURAL),
                                np.uint8))
        if scan.most > self.limit:
            raise too_many_rows(scan.most, self.limit, self.why)
        if self.scanned > EARLY_SCAN_BYTES or len(self.tail) > EARLY_SCAN_BYTES:
            self.scan = None  # the rest is counted once the body is in


def json_rows(raw: bytes, stop_after: int) -> int:
    """The most elements of an array at depth 2 (a value of the top-level object) or at depth
    3 under an object at depth 2; the scan stops once one passes `stop_after` (that count is
    returned: a lower bound, enough to refuse)."""
    scan = _Scan()
    for piece in _pieces(raw):
        scan.feed(np.frombuffer(piece, np.uint8))
        if scan.most > stop_after:
            break
    return scan.most


class _Scan:
    """Depth and element counts carried from one piece of structural bytes to the next."""

    def __init__(self) -> None:
        self.depth = 0
        self.most = 0
        self.kind2 = 0  # the opening bracket of the current depth-2 container (0: none yet)
        self.commas2 = 0  # commas seen in it so far
        self.counted3 = False  # the current depth-3 container is an array under an object
        self.commas3 = 0

    def feed(self, s: np.ndarray[Any, Any]) -> None:
        if not s.size:
            return
        opens = (s == _OPEN_ARRAY) | (s == _OPEN_OBJECT)
        step = opens.astype(np.int32) - ((s == _CLOSE_ARRAY) | (s == _CLOSE_OBJECT))
        depth = np.cumsum(step, dtype=np.int32) + np.int32(self.depth)
        commas = s == _COMMA
        # Depth 2: each opener at depth 2 starts a container; its commas follow it.
        open2 = np.flatnonzero(opens & (depth == 2))
        kinds2 = np.concatenate(([self.kind2], s[open2]))
        counts2 = self._counts(open2, np.flatnonzero(commas & (depth == 2)), self.commas2)
        arrays2 = kinds2 == _OPEN_ARRAY
        if arrays2.any():
            self.most = max(self.most, int(counts2[arrays2].max()) + 1)
        # Depth 3: counted when an array whose parent (the depth-2 container) is an object.
        open3 = np.flatnonzero(opens & (depth == 3))
        parents = kinds2[np.searchsorted(open2, open3, side="right")]
        counted3 = np.concatenate(([self.counted3], (s[open3] == _OPEN_ARRAY)
                                   & (parents == _OPEN_OBJECT)))
        counts3 = self._counts(open3, np.flatnonzero(commas & (depth == 3)), self.commas3)
        if counted3.any():
            self.most = max(self.most, int(counts3[counted3].max()) + 1)
        self.depth = int(depth[-1])
        self.kind2, self.commas2 = int(kinds2[-1]), int(counts2[-1])
        self.counted3, self.commas3 = bool(counted3[-1]), int(counts3[-1])

    @staticmethod
    def _counts(openers: np.ndarray[Any, Any], commas: np.ndarray[Any, Any],
                carried: int) -> np.ndarray[Any, Any]:
        """Commas per container: [the one carried in, then one per opener of this piece]."""
        owner = np.searchsorted(openers, commas, side="right")  # 0: the carried container
        counts = np.bincount(owner, minlength=len(openers) + 1)
        counts[0] += carried
        return counts


def _pieces(raw: bytes) -> Iterator[bytes]:
    """The body's structural bytes ([]{},) outside strings, about CHUNK bytes of body at a
    time; each piece starts outside a string and ends before any string it would cut."""
    n, pos = len(raw), 0
    while pos < n:
        end = min(n, pos + CHUNK)
        piece = raw[pos:end]
        cut = _open_string(piece) if end < n else None
        if cut == 0:  # one string longer than a piece: skip it whole
            match = _STRING.match(raw, pos)
            if match is None:
                return  # unterminated: the parser says so
            pos = match.end()
            continue
        if cut is not None:
            piece, end = piece[:cut], pos + cut
        yield _STRING.sub(b"", piece).translate(None, _NOT_STRUCTURAL)
        pos = end


def _open_string(piece: bytes) -> int | None:
    """Where a string that `piece` (starting outside any string) does not close begins."""
    if b"\\" not in piece:  # no escapes: quotes alternate, opening and closing
        return piece.rfind(b'"') if piece.count(b'"') % 2 else None
    last = 0
    for match in _STRING.finditer(piece):
        last = match.end()
    quote = piece.find(b'"', last)
    return None if quote == -1 else quote
