"""Dynamic batching for model inference (the TF Serving / Triton idea, per loaded model).

Concurrent `predict` calls queue up and are merged into one call of `fn` of at most
`max_batch_size` rows, padded to one of `allowed_batch_sizes` so that a shape-specialised
compiled function only ever sees a few shapes (all traced by `warm_up`). `fn` runs in a thread
pool owned by the batcher, so inference never blocks the event loop; the loop only queues
requests and hands the results back.

Event loop binding: a batcher may be created anywhere (no loop needed). It binds to the running
loop at the first `predict` call and serves that loop only; if that loop has been closed (e.g. a
test client's portal loop), the next `predict` from a new loop rebinds to it.

Knows nothing about FastAPI, the database or Keras: `fn(inputs) -> outputs` takes one array per
model input (same number of rows each) and returns one array per output with as many rows.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
BatchFn = Callable[[list[np.ndarray]], Sequence[np.ndarray]]
Outputs = list[np.ndarray]


class Overloaded(Exception):
    """The queue is full: the caller should answer 503/429 with a Retry-After header."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatcherClosed(RuntimeError):
    """The batcher was shut down before (or while) this request was queued."""


def _powers_of_two(limit: int) -> tuple[int, ...]:
    sizes = [1 << i for i in range(limit.bit_length()) if 1 << i < limit]
    return (*sizes, limit)


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are merged. `allowed_batch_sizes=()` means powers of two up to
    `max_batch_size` (plus `max_batch_size` itself); `max_queued_rows=0` means 16 batches."""

    max_batch_size: int = 64
    batch_timeout_ms: float = 2.0  # max wait for company, counted from the oldest request
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queued_rows: int = 0
    threads: int = 1  # batches running at once

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not (self.batch_timeout_ms >= 0 and math.isfinite(self.batch_timeout_ms)):
            raise ValueError(
                f"batch_timeout_ms must be a finite number >= 0, got {self.batch_timeout_ms}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        # Frozen: derived defaults are filled in with object.__setattr__.
        sizes = tuple(self.allowed_batch_sizes) or _powers_of_two(self.max_batch_size)
        if any(s < 1 for s in sizes) or any(a >= b for a, b in itertools.pairwise(sizes)):
            raise ValueError(
                f"allowed_batch_sizes must be positive and strictly increasing, got {sizes}")
        if sizes[-1] != self.max_batch_size:
            raise ValueError(f"the last of allowed_batch_sizes {sizes} must equal "
                             f"max_batch_size ({self.max_batch_size})")
        object.__setattr__(self, "allowed_batch_sizes", sizes)
        queued = self.max_queued_rows or 16 * self.max_batch_size
        if queued < self.max_batch_size:
            raise ValueError(f"max_queued_rows ({queued}) must be >= max_batch_size "
                             f"({self.max_batch_size}), or 0 for the default")
        object.__setattr__(self, "max_queued_rows", queued)

    @classmethod
    def build(cls, max_batch_size: int = 64, batch_timeout_ms: float = 2.0,
              allowed_batch_sizes: str | Sequence[int] | None = None,
              max_queued_rows: int | None = None, threads: int = 1) -> BatchPolicy:
        """From settings-style values: sizes may be a string like "1,8,32,64" (any order)."""
        if isinstance(allowed_batch_sizes, str):
            parts = allowed_batch_sizes.replace(" ", "").split(",")
            try:
                allowed_batch_sizes = [int(p) for p in parts if p]
            except ValueError:
                raise ValueError(f"allowed_batch_sizes must be comma-separated integers, "
                                 f"got {allowed_batch_sizes!r}") from None
        sizes = tuple(sorted(set(allowed_batch_sizes or ())))
        return cls(max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms,
                   allowed_batch_sizes=sizes, max_queued_rows=max_queued_rows or 0,
                   threads=threads)


@dataclass(frozen=True)
class BatchStats:
    """A snapshot of what the batcher has served (warm-up calls are not counted)."""

    batches: int = 0
    rows: int = 0  # real rows, padding excluded
    padded_rows: int = 0
    errors: int = 0  # batches whose fn call raised
    batch_sizes: dict[int, int] = field(default_factory=dict)  # padded size -> batches

    @property
    def mean_batch_size(self) -> float:
        return self.rows / self.batches if self.batches else 0.0


class _Request:
    __slots__ = ("inputs", "rows", "future", "t0")

    def __init__(self, inputs: list[np.ndarray], rows: int, future: asyncio.Future[Outputs],
                 t0: float) -> None:
        self.inputs = inputs
        self.rows = rows
        self.future = future
        self.t0 = t0  # loop.time() when queued


class Batcher:
    """Merges concurrent `predict` calls into batched calls of `fn`; see the module docstring."""

    def __init__(self, fn: BatchFn, policy: BatchPolicy | None = None, *, name: str = "",
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        self.fn = fn
        self.policy = policy or BatchPolicy()
        self.name = name
        # Told (rows, padded size, seconds of fn) after each batch that ran (metrics).
        self.on_batch = on_batch
        self._pool = ThreadPoolExecutor(max_workers=self.policy.threads,
                                        thread_name_prefix=f"batcher-{name}" if name else "batcher")
        self._timeout_s = self.policy.batch_timeout_ms / 1000.0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue: deque[_Request] = deque()
        self._queued_rows = 0
        self._in_flight: set[asyncio.Future[tuple[list[Outputs], float]]] = set()
        self._idle_since = -math.inf  # loop.time() when the last running batch finished
        # The dispatcher sleeps on `_waiter`; `predict` wakes it once queued rows >= _wake_rows.
        self._waiter: asyncio.Future[None] | None = None
        self._wake_rows = 0.0
        self._latency_s = 0.0  # moving average of fn's time per batch
        self._batches = self._rows = self._padded = self._errors = 0
        self._sizes: dict[int, int] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def stats(self) -> BatchStats:
        return BatchStats(self._batches, self._rows, self._padded, self._errors,
                          dict(self._sizes))

    async def predict(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run `inputs` (one array per model input) as part of a batch; returns this request's
        rows of every output, in order. Raises `Overloaded` at once when the queue is full."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        if self._closed:
            raise BatcherClosed(f"batcher {self.name!r} is closed")
        if not inputs:
            raise ValueError("predict needs at least one input array")
        n = len(inputs[0])
        if any(len(x) != n for x in inputs):
            raise ValueError(f"all inputs must have the same number of rows, got "
                             f"{[len(x) for x in inputs]}")
        if self._queued_rows + n > self.policy.max_queued_rows:
            if n > self.policy.max_queued_rows:
                raise ValueError(f"a request of {n} rows can never fit the queue of batcher "
                                 f"{self.name!r} (max_queued_rows={self.policy.max_queued_rows})")
            retry = self.retry_after_s()
            raise Overloaded(f"batcher {self.name!r} is overloaded: {self._queued_rows} rows "
                             f"queued (limit {self.policy.max_queued_rows}); retry in {retry:g}s",
                             retry)
        size = self.policy.max_batch_size
        if n <= size:
            future: asyncio.Future[Outputs] = loop.create_future()
            self._enqueue(_Request(inputs, n, future, loop.time()))
            return await future
        # Too big for one batch: chunks go through the queue like separate requests.
        futures: list[asyncio.Future[Outputs]] = []
        for start in range(0, n, size):
            future = loop.create_future()
            futures.append(future)
            self._enqueue(_Request([x[start:start + size] for x in inputs],
                                   min(size, n - start), future, loop.time()))
        try:
            parts = [await f for f in futures]
        except BaseException:
            for f in futures:
                if f.done() and not f.cancelled():
                    f.exception()  # mark retrieved: only the first error is raised
                else:
                    f.cancel()  # still queued: the dispatcher skips cancelled requests
            raise
        return [np.concatenate(ys) for ys in zip(*parts, strict=True)]

    def retry_after_s(self) -> float:
        """When a rejected caller may retry: time to drain the queue, whole seconds, >= 1."""
        batches = self._queued_rows / self.policy.max_batch_size + 1
        return float(max(1, math.ceil(self._latency_s * batches / self.policy.threads)))

    def warm_up(self, example: list[np.ndarray]) -> None:
        """Call `fn` once per allowed batch size (rows copied from the example's first row) so
        every shape is traced before traffic arrives. Sync: call it from a worker thread."""
        if not example or len(example[0]) == 0:
            raise ValueError("warm_up needs an example with at least one row per input")
        first = [x[:1] for x in example]
        for size in self.policy.allowed_batch_sizes:
            outputs = self.fn([np.repeat(x, size, axis=0) for x in first])
            _check_rows(outputs, size)

    def shutdown(self) -> None:
        """Stop taking requests and fail the queued ones with `BatcherClosed`; batches already
        running still finish. Non-blocking, callable from any thread (e.g. a cache eviction)."""
        if self._closed:
            return
        self._closed = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                if _running_loop() is loop:
                    self._stop()
                else:
                    loop.call_soon_threadsafe(self._stop)
            except RuntimeError:  # the loop closed meanwhile: nobody is waiting anymore
                pass
        self._pool.shutdown(wait=False)

    async def close(self) -> None:
        """`shutdown`, then wait for the running batches and the dispatcher to finish."""
        self.shutdown()
        if self._loop is not asyncio.get_running_loop():
            return
        waiting: list[asyncio.Future[Any]] = [*self._in_flight]
        if self._task is not None:
            waiting.append(self._task)
        if waiting:
            await asyncio.wait(waiting)

    # -- event loop side ----------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError(f"batcher {self.name!r} is bound to another event loop")
        # First use, or the old loop is gone (and with it everything queued on it).
        self._loop = loop
        self._queue.clear()
        self._queued_rows = 0
        self._in_flight = set()
        self._waiter = None
        self._idle_since = -math.inf
        if not self._closed:
            self._task = loop.create_task(self._dispatch(), name=f"batcher-{self.name}")

    def _enqueue(self, request: _Request) -> None:
        self._queue.append(request)
        self._queued_rows += request.rows
        if self._waiter is not None and self._queued_rows >= self._wake_rows:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _sleep(self, wake_rows: float, deadline: float | None = None) -> None:
        """Until `wake_rows` rows are queued (0: any request), a batch ends, or `deadline`."""
        assert self._loop is not None
        self._wake_rows = wake_rows  # math.inf: only a finished batch (or the timer) wakes it
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_at(deadline, self._wake) if deadline is not None else None
        try:
            await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    async def _dispatch(self) -> None:
        """The background task: form batches and start them whenever a thread is free."""
        loop = self._loop
        assert loop is not None
        p, queue = self.policy, self._queue
        try:
            while True:
                while not queue or len(self._in_flight) >= p.threads:
                    await self._sleep(math.inf if queue else 0)
                # A request that came while the model was idle runs at once; one that queued
                # behind a running batch waits (up to the timeout) for the batch to fill up.
                idle_arrival = not self._in_flight and queue[0].t0 >= self._idle_since
                if self._queued_rows < p.max_batch_size and not idle_arrival:
                    deadline = queue[0].t0 + self._timeout_s
                    while queue and self._queued_rows < p.max_batch_size \
                            and loop.time() < deadline:
                        await self._sleep(p.max_batch_size, deadline)
                self._launch()
        except asyncio.CancelledError:
            self._fail_queued()
            raise
        except BaseException as exc:  # a bug here must not leave callers waiting forever
            self._closed = True
            self._fail_queued(exc)
            raise

    def _launch(self) -> None:
        """Take up to max_batch_size rows from the queue (FIFO) and run them in the pool."""
        queue, limit = self._queue, self.policy.max_batch_size
        batch: list[_Request] = []
        rows = 0
        while queue and rows + queue[0].rows <= limit:
            request = queue.popleft()
            self._queued_rows -= request.rows
            if not request.future.done():  # done = cancelled by its caller
                batch.append(request)
                rows += request.rows
        if not batch:
            return
        sizes = self.policy.allowed_batch_sizes
        size = sizes[bisect.bisect_left(sizes, rows)]
        assert self._loop is not None
        try:
            future = self._loop.run_in_executor(self._pool, self._run, batch, rows, size)
        except BaseException as exc:  # e.g. the pool was shut down from another thread
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(
                        BatcherClosed(f"batcher {self.name!r} could not run a batch: {exc}"))
            raise
        self._in_flight.add(future)
        future.add_done_callback(partial(self._finish, batch, rows, size))

    def _finish(self, batch: list[_Request], rows: int, size: int,
                future: asyncio.Future[tuple[list[Outputs], float]]) -> None:
        self._in_flight.discard(future)
        if not self._in_flight:
            assert self._loop is not None
            self._idle_since = self._loop.time()
        self._wake()
        if future.cancelled():
            error: BaseException | None = BatcherClosed(f"batcher {self.name!r} was shut down")
        else:
            error = future.exception()
        if error is not None:
            self._errors += 1
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
            return
        results, elapsed = future.result()
        self._latency_s = elapsed if not self._batches else 0.8 * self._latency_s + 0.2 * elapsed
        self._batches += 1
        self._rows += rows
        self._padded += size - rows
        self._sizes[size] = self._sizes.get(size, 0) + 1
        for request, outputs in zip(batch, results, strict=True):
            if not request.future.done():
                request.future.set_result(outputs)
        if self.on_batch is not None:
            try:  # after the answers: an observer's failure must not keep anyone waiting
                self.on_batch(rows, size, elapsed)
            except Exception:  # noqa: BLE001
                log.warning("on_batch of batcher %r failed", self.name, exc_info=True)

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()  # its CancelledError handler fails what is queued
        self._fail_queued()

    def _fail_queued(self, cause: BaseException | None = None) -> None:
        error = BatcherClosed(f"batcher {self.name!r} was shut down before this request ran")
        error.__cause__ = cause
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(error)
        self._queued_rows = 0

    # -- worker thread side -------------------------------------------------------------------

    def _run(self, batch: list[_Request], rows: int, size: int) -> tuple[list[Outputs], float]:
        """Concatenate and pad, call fn, split: all off the event loop."""
        if len(batch) == 1 and rows == size:
            inputs = batch[0].inputs
        else:
            inputs = [_merge([r.inputs[i] for r in batch], size - rows)
                      for i in range(len(batch[0].inputs))]
        start = time.perf_counter()
        outputs = [np.asarray(y) for y in self.fn(inputs)]
        elapsed = time.perf_counter() - start
        _check_rows(outputs, size)
        results: list[Outputs] = []
        offset = 0
        for request in batch:
            end = offset + request.rows
            results.append([y[offset:end] for y in outputs])
            offset = end
        return results, elapsed


def _merge(parts: list[np.ndarray], pad: int) -> np.ndarray:
    """Concatenate the requests' rows, padded with copies of the last row (zeros if none) so
    the pad stays inside the input's domain (e.g. valid embedding ids)."""
    if pad:
        last = next((x for x in reversed(parts) if len(x)), None)
        if last is None:
            filler = np.zeros((pad, *parts[0].shape[1:]), parts[0].dtype)
        else:
            filler = np.broadcast_to(last[-1:], (pad, *last.shape[1:]))
        parts = [*parts, filler]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _check_rows(outputs: Sequence[np.ndarray], rows: int) -> None:
    if not outputs or any(len(y) != rows for y in outputs):
        raise ValueError(f"fn returned {[len(y) for y in outputs]} rows per output "
                         f"for a batch of {rows}")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
