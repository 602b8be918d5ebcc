"""Progress on screen: one bar per epoch while a job trains (as `model.fit(verbose=1)` shows
it), an optional table of each epoch's metrics, and a bar for uploads.

`tqdm.auto` renders a widget in Jupyter and text in a terminal; when the caller hands a
`file` (a log, a test's StringIO) the plain text bar writes there instead, since the widget
ignores `file`."""

from __future__ import annotations

from collections.abc import Iterable
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

    def handle(self, event: Event) -> None:
        data = event.data
        if event.type == "progress" and isinstance(data.get("epoch"), int):
            steps = data.get("steps")
            if isinstance(steps, int) and steps > 0:
                self.steps = steps
            bar = self._open(data["epoch"])
            batch = data.get("batch")
            if isinstance(batch, int):
                self._move(bar, batch)
            self._postfix(bar, data.get("logs"))
        elif event.type == "epoch" and isinstance(data.get("epoch"), int):
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
                self._open(self.next_epoch)  # shows the next epoch starting
        elif event.type == "status":
            status = data.get("status")
            if status == "running" and self.next_epoch < self.epochs:
                self._open(self.next_epoch)
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

    def _open(self, epoch: int) -> text_tqdm[Any]:
        if self.bar is not None and self.bar_epoch == epoch:
            if self.steps and self.bar.total != self.steps:
                self.bar.total = self.steps
                self.bar.refresh()
            return self.bar
        if self.bar is not None:
            self._close(leave=self.bar.n > 0)
        self.bar = self._cls(total=self.steps, desc=f"Epoch {epoch + 1}/{self.epochs}",
                             unit="step", file=self.file, leave=True, disable=self.disable,
                             dynamic_ncols=self.file is None)
        self.bar_epoch = epoch
        return self.bar

    @staticmethod
    def _move(bar: text_tqdm[Any], batch: int) -> None:
        if batch < bar.n:  # a resumed attempt starts the epoch again
            bar.reset(total=bar.total)
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


def upload_bar(total: int, desc: str, file: IO[str] | None = None,
               disable: bool = False) -> text_tqdm[Any]:
    """Bytes sent, in KiB/MiB/GiB; erased once the upload is done."""
    return bar_class(file)(total=total, desc=desc, unit="B", unit_scale=True,
                           unit_divisor=1024, file=file, leave=False, disable=disable,
                           dynamic_ncols=file is None)
