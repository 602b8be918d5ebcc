"""Request/response predict in chunks: rows sent in requests that fit the service's limits on
rows and bytes, a 413 answered by sending smaller ones, and the answers joined back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keras_jobs.errors import KerasJobsError

if TYPE_CHECKING:
    from keras_jobs.arrays import Array
    from keras_jobs.transport import Transport

# What one predict request may hold by default (KJ_MAX_PREDICT_ROWS, KJ_PREDICT_MAX_BODY_BYTES
# less room for the .npz framing); a service configured lower answers 413 and is met there.
MAX_PREDICT_ROWS = 65_536
MAX_PREDICT_BYTES = 48 << 20


def predict_rows(transport: Transport, path: str, x: Array | dict[str, Array],
                 batch_size: int | None) -> Array | dict[str, Array]:
    """Requests of at most `batch_size` rows that fit the service's limits (65,536 rows
    and 64 MiB by default): a 413 halves the rows (or takes the limit it names) and sends
    that chunk again."""
    from keras_jobs.arrays import concat, decode, encode, rows

    n = rows(x) if isinstance(x, Mapping) else len(x)
    row_bytes = max(1, _nbytes(x) // max(n, 1))
    chunk = max(1, min(n, batch_size or n, MAX_PREDICT_ROWS,
                       MAX_PREDICT_BYTES // row_bytes))
    answers = []
    start = 0
    while start < n:
        part = ({k: v[start:start + chunk] for k, v in x.items()}
                if isinstance(x, Mapping) else x[start:start + chunk])
        body, media = encode(part)
        try:
            response = transport.request(
                "POST", f"{path}:predict", content=body,
                headers={"Content-Type": media,
                         "Accept": "application/x-npy, application/x-npz"})
        except KerasJobsError as exc:
            if exc.status != 413 or chunk == 1:
                raise
            limit = exc.problem.get("limit")
            chunk = (min(int(limit), chunk // 2) if isinstance(limit, int) and limit > 0
                     else chunk // 2) or 1
            continue
        answers.append(decode(response.content))
        start += chunk
    return concat(answers)


def _nbytes(x: Any) -> int:
    if isinstance(x, Mapping):
        return sum(int(v.nbytes) for v in x.values())
    return int(x.nbytes)
