"""Plain-text tables for the CLI (what `--json` prints instead is the service's JSON)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras_jobs.progress import fmt, keras_order


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join("None" if v is None else str(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; numbers right-aligned."""
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(header)]
    numeric = [all(isinstance(row[i], int | float) and not isinstance(row[i], bool)
                   for row in rows) and bool(rows) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    return "\n".join([line(list(header)), *(line(r) for r in cells)])


def pairs(items: Sequence[tuple[str, Any]]) -> str:
    """`key: value` lines, the keys aligned."""
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(v)}" for k, v in items)


def history_table(history: dict[str, list[Any]], first_epoch: int = 0) -> str:
    names = keras_order(history)
    epochs = max((len(v) for v in history.values()), default=0)
    rows = [[first_epoch + i + 1, *(history[n][i] if i < len(history[n]) else None
                                    for n in names)] for i in range(epochs)]
    return table(["epoch", *names], rows)
