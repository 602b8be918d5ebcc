"""Progress on screen: one bar per epoch while a job trains (as `model.fit(verbose=1)` shows
it), an optional table of each epoch's metrics, and a bar for uploads.

`tqdm.auto` renders a widget in Jupyter and text in a terminal; when the caller hands a
`file` (a log, a test's StringIO) the plain text bar writes there instead, since the widget
ignores `file`."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import IO, Any

from tqdm.auto import tqdm as auto_tqdm
from tqdm.std import tqdm as text_tqdm

from keras_jobs.events import TERMINAL, Event


def fmt(value: Any) -> str:
    """A metric as Keras prints it (4 decimals), in exponent form where that says nothing."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value == 0 or 1e-3 <= abs(value) < 1e6:
        return f"{value:.4f}"
    return f"{value:.3e}"


def keras_order(names: Iterable[str]) -> list[str]:
    """Metric names in the order Keras prints them: loss, the other metrics, then their val_
    counterparts (the service's JSON may hold them sorted by name)."""
    names = list(names)
    return sorted(names, key=lambda n: (n.startswith("val_"),
                                        n.removeprefix("val_") != "loss", names.index(n)))


def bar_class(file: IO[str] | None) -> type[text_tqdm[Any]]:
    return auto_tqdm if file is None else text_tqdm


class EpochBars:
    """Turns a job's events into a bar per epoch: `progress` events move it within an epoch
    (the service sends one every couple of seconds), the `epoch` event fills it and shows the
    epoch's logs, and the final status closes what is open.

    `table=True` also writes a row of metrics per epoch above the bar (the CLI's `watch`), to
    `table_file` (default: where the bars go)."""

    def __init__(self, epochs: int, steps: int | None = None, *, first_epoch: int = 0,
                 file: IO[str] | None = None, table: bool = False,
                 table_file: IO[str] | None = None, disable: bool = False) -> None:
        self.epochs = epochs
        self.steps = steps
        self.next_epoch = first_epoch
        self.file = file
        self.table = table
        self.table_file = table_file or file
        self.disable = disable
        self.bar: text_tqdm[Any] | None = None
        self.bar_epoch: int | None = None
        self.columns: list[str] | None = None
        self._cls = bar_class(file)
        # The service's clock, not ours: events replayed in a burst (attaching to a finished
        # job) would otherwise show rates like 300000 step/s. `_seen` is the recorded time of
        # the last event, `_began` when the open bar's epoch began by that clock.
        self._now: float | None = None
        self._seen: float | None = None
        self._began: float | None = None

    def handle(self, event: Event) -> None:
        data = event.data
        self._now = recorded_time(data)
        try:
            self._handle(event.type, data)
        finally:
            if self._now is not None:
                self._seen = self._now
            self._now = None

    def _handle(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "progress" and isinstance(data.get("epoch"), int):
            steps = data.get("steps")
            if isinstance(steps, int) and steps > 0:
                self.steps = steps
            batch = data.get("batch")
            bar = self._open(data["epoch"], batch if isinstance(batch, int) else 0)
            if isinstance(batch, int):
                self._move(bar, batch)
            self._postfix(bar, data.get("logs"))
        elif kind == "epoch" and isinstance(data.get("epoch"), int):
            epoch, logs = data["epoch"], data.get("logs") or {}
            bar = self._open(epoch)
            if bar.total:
                self._move(bar, int(bar.total))
            self._postfix(bar, logs)
            self._close(leave=True)
            if self.table:
                self._row(epoch, logs)
            self.next_epoch = epoch + 1
            if self.next_epoch < self.epochs:
                self._open(self.next_epoch, starts_now=True)  # the next epoch starting
        elif kind == "status":
            status = data.get("status")
            if status == "running" and self.next_epoch < self.epochs:
                self._open(self.next_epoch, starts_now=True)
            elif status == "queued" and data.get("reason"):
                self.write(f"job queued again: {data['reason']}")
            elif status in TERMINAL:
                self.close(status == "succeeded")

    def close(self, succeeded: bool = False) -> None:
        """Close the open bar: an epoch that never started (or a bar left over when
        EarlyStopping ended the job) is erased; a failed or cancelled epoch stays in view."""
        if self.bar is not None:
            self._close(leave=self.bar.n > 0 and not succeeded)

    def write(self, line: str, file: IO[str] | None = None) -> None:
        """A line above the bars (tqdm clears and redraws them around it)."""
        if not self.disable:
            self._cls.write(line, file=file or self.file)

    def _open(self, epoch: int, batch: int = 0, starts_now: bool = False) -> text_tqdm[Any]:
        if self.bar is not None and self.bar_epoch == epoch:
            if self.steps and self.bar.total != self.steps:
                self.bar.total = self.steps
                self.bar.refresh()
            self._clock(self.bar)
            return self.bar
        if self.bar is not None:
            self._close(leave=self.bar.n > 0)
        # smoothing=0: the rate is steps over elapsed time, which `_clock` sets from the
        # recorded times (tqdm's moving average would use our clock between updates).
        self.bar = self._cls(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}",
                             unit="step", file=self.file, leave=True, disable=self.disable,
                             dynamic_ncols=self.file is None, smoothing=0)
        self.bar_epoch = epoch
        # An epoch's first progress event comes a while after it began: at the event before.
        self._began = self._now if starts_now or self._seen is None else self._seen
        if self._seen is None and batch > 0:
            # Joined mid-epoch with no earlier event: count the rate from here on.
            self.bar.initial = self.bar.n = self.bar.last_print_n = batch
        self._clock(self.bar)
        return self.bar

    def _clock(self, bar: text_tqdm[Any]) -> None:
        """Elapsed time of the bar as the service recorded it (when the events carry it)."""
        if self._now is not None and self._began is not None and not self.disable:
            bar.start_t = bar.last_print_t = time.time() - max(0.0, self._now - self._began)

    def _move(self, bar: text_tqdm[Any], batch: int) -> None:
        if batch < bar.n:  # a resumed attempt starts the epoch again
            bar.reset(total=bar.total)
            self._began = self._now
            self._clock(bar)
        bar.update(batch - bar.n)

    @staticmethod
    def _postfix(bar: text_tqdm[Any], logs: Any) -> None:
        if isinstance(logs, dict) and logs:
            bar.set_postfix_str(", ".join(f"{k}={fmt(logs[k])}" for k in keras_order(logs)),
                                refresh=True)

    def _close(self, leave: bool) -> None:
        if self.bar is not None:
            self.bar.leave = leave
            self.bar.close()
        self.bar, self.bar_epoch = None, None

    def _row(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.columns is None:
            self.columns = keras_order(logs)
            self.write(_line(["epoch", *self.columns], ["epoch", *self.columns]),
                       self.table_file)
        self.columns += [k for k in logs if k not in self.columns]
        self.write(_line([str(epoch + 1), *(fmt(logs.get(k)) for k in self.columns)],
                         ["epoch", *self.columns]), self.table_file)


def _line(cells: list[str], header: list[str]) -> str:
    """Cells right-aligned under their column names (at least 10 wide: '0.1234' fits)."""
    return "  ".join(cell.rjust(len(name) if i == 0 else max(10, len(name)))
                     for i, (cell, name) in enumerate(zip(cells, header, strict=True)))


def recorded_time(data: dict[str, Any]) -> float | None:
    """When the service recorded the event (its `time`, ISO 8601), as a POSIX timestamp."""
    value = data.get("time")
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def upload_bar(total: int, desc: str, file: IO[str] | None = None,
               disable: bool = False) -> text_tqdm[Any]:
    """Bytes sent, in KiB/MiB/GiB; erased once the upload is done."""
    return bar_class(file)(total=total, desc=desc, unit="B", unit_scale=True,
                           unit_divisor=1024, file=file, leave=False, disable=disable,
                           dynamic_ncols=file is None)
