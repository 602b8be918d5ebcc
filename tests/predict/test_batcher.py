"""The dynamic batcher on its own: plain numpy callables (and one real tf.function), no
database, worker or network. Timing assertions only have wide margins."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest

from app.predict.batcher import Batcher, BatcherClosed, BatchPolicy, Overloaded

T = TypeVar("T")


def run(make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await make()

    return asyncio.run(main())


class Recorder:
    """fn wrapper that records the batch sizes it saw and optionally sleeps."""

    def __init__(self, fn: Callable[[list[np.ndarray]], list[np.ndarray]],
                 sleep_s: float = 0.0) -> None:
        self.fn = fn
        self.sleep_s = sleep_s
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, xs: list[np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            self.sizes.append(len(xs[0]))
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return self.fn(xs)


def unique_rows(start: int, n: int, cols: int = 3) -> np.ndarray:
    """Rows whose values identify them, so any mix-up between callers shows."""
    return (np.arange(start, start + n, dtype=np.float64)[:, None] * 10
            + np.arange(cols, dtype=np.float64))


ODD_SIZES = (1, 3, 7, 5, 11, 9, 13, 1, 3)


def test_concurrent_requests_merge_and_get_their_own_rows() -> None:
    fn = Recorder(lambda xs: [xs[0] * 2 + 1], sleep_s=0.02)
    batcher = Batcher(fn, BatchPolicy(max_batch_size=64), name="merge")
    sizes = [ODD_SIZES[i % len(ODD_SIZES)] for i in range(50)]
    starts = np.cumsum([0, *sizes[:-1]])

    async def one(i: int) -> None:
        if i % 2:  # half arrive together, half trickle in while batches run
            await asyncio.sleep(random.uniform(0, 0.05))
        x = unique_rows(int(starts[i]), sizes[i])
        (y,) = await batcher.predict([x])
        np.testing.assert_array_equal(y, x * 2 + 1)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(50)))
        await batcher.close()

    run(main)
    assert max(fn.sizes) > 1
    assert len(fn.sizes) < 50
    stats = batcher.stats
    assert stats.rows == sum(sizes)
    assert stats.batches == len(fn.sizes) == sum(stats.batch_sizes.values())
    assert stats.mean_batch_size > 1
    assert batcher.queued_rows == 0


def test_two_inputs_two_outputs() -> None:
    def two(xs: list[np.ndarray]) -> list[np.ndarray]:
        a, b = xs
        return [a + b[:, :1], b * 3]

    fn = Recorder(two, sleep_s=0.01)
    batcher = Batcher(fn, BatchPolicy(max_batch_size=16))
    sizes = [ODD_SIZES[i % len(ODD_SIZES)] for i in range(30)]
    starts = np.cumsum([0, *sizes[:-1]])

    async def one(i: int) -> None:
        a = unique_rows(int(starts[i]), sizes[i], cols=4)
        b = (np.arange(sizes[i] * 2, dtype=np.int64).reshape(-1, 2) + int(starts[i]) * 100)
        y1, y2 = await batcher.predict([a, b])
        np.testing.assert_array_equal(y1, a + b[:, :1])
        np.testing.assert_array_equal(y2, b * 3)
        assert y2.dtype == np.int64

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(30)))
        await batcher.close()

    run(main)
    assert max(fn.sizes) > 1
    assert set(fn.sizes) <= set(batcher.policy.allowed_batch_sizes)


def test_request_larger_than_max_batch_size_is_chunked() -> None:
    fn = Recorder(lambda xs: [xs[0] - 5])
    batcher = Batcher(fn, BatchPolicy(max_batch_size=64))
    x = unique_rows(0, 150)

    async def main() -> list[np.ndarray]:
        out = await batcher.predict([x])
        await batcher.close()
        return out

    (y,) = run(main)
    np.testing.assert_array_equal(y, x - 5)
    assert max(fn.sizes) <= 64
    assert sum(fn.sizes) >= 150
    assert batcher.stats.rows == 150


def test_lone_request_runs_at_once() -> None:
    batcher = Batcher(lambda xs: [xs[0]], BatchPolicy(max_batch_size=8, batch_timeout_ms=500))

    async def main() -> float:
        await batcher.predict([unique_rows(0, 1)])  # first call binds the loop
        await asyncio.sleep(0.01)  # model idle again
        t = time.perf_counter()
        (y,) = await batcher.predict([unique_rows(7, 3)])
        elapsed = time.perf_counter() - t
        np.testing.assert_array_equal(y, unique_rows(7, 3))
        await batcher.close()
        return elapsed

    assert run(main) < 0.25  # the timeout is 0.5 s: it did not wait for company


def test_padding_to_allowed_sizes() -> None:
    fn = Recorder(lambda xs: [xs[0] * 10])
    policy = BatchPolicy(max_batch_size=16, allowed_batch_sizes=(4, 10, 16))
    batcher = Batcher(fn, policy)
    requests = [unique_rows(i * 100, n) for i, n in enumerate((1, 3, 5, 6, 2, 13, 7, 16))]

    async def main() -> list[list[np.ndarray]]:
        out = list(await asyncio.gather(*(batcher.predict([x]) for x in requests)))
        out.append(await batcher.predict([requests[0]]))  # alone: 1 row padded to 4
        await batcher.close()
        return out

    outs = run(main)
    for x, (y,) in zip([*requests, requests[0]], outs, strict=True):
        assert y.shape == x.shape
        np.testing.assert_array_equal(y, x * 10)
    assert set(fn.sizes) <= {4, 10, 16}
    stats = batcher.stats
    assert stats.padded_rows == sum(fn.sizes) - stats.rows > 0
    assert set(stats.batch_sizes) <= {4, 10, 16}


def test_no_new_trace_after_warm_up() -> None:
    tf = pytest.importorskip("tensorflow")
    traces = 0

    def body(x: Any) -> Any:
        nonlocal traces
        traces += 1  # Python side effect: runs once per trace, not per call
        return x * 2.0

    compiled = tf.function(body)  # no input_signature: every new shape retraces

    def fn(xs: list[np.ndarray]) -> list[np.ndarray]:
        return [compiled(xs[0]).numpy()]

    batcher = Batcher(fn, BatchPolicy(max_batch_size=16, max_queued_rows=10_000))
    batcher.warm_up([np.ones((3, 4), np.float32)])
    after_warm_up = traces
    assert after_warm_up == len(batcher.policy.allowed_batch_sizes)
    rng = random.Random(0)
    xs = [np.full((rng.randint(1, 40), 4), i, np.float32) for i in range(60)]

    async def main() -> list[list[np.ndarray]]:
        out = list(await asyncio.gather(*(batcher.predict([x]) for x in xs)))
        for x in xs[:10]:  # and some one by one
            out.append(await batcher.predict([x]))
        await batcher.close()
        return out

    outs = run(main)
    for x, (y,) in zip([*xs, *xs[:10]], outs, strict=True):
        np.testing.assert_array_equal(y, x * 2)
    assert traces == after_warm_up


def test_full_queue_raises_overloaded_at_once() -> None:
    release = threading.Event()

    def blocked(xs: list[np.ndarray]) -> list[np.ndarray]:
        release.wait(10)
        return [xs[0] + 1]

    batcher = Batcher(blocked, BatchPolicy(max_batch_size=4, max_queued_rows=8))

    async def main() -> None:
        try:
            running = asyncio.ensure_future(batcher.predict([unique_rows(0, 4)]))
            await asyncio.sleep(0.02)  # the first batch is in fn now, the queue is empty
            queued = [asyncio.ensure_future(batcher.predict([unique_rows(10 * i, 4)]))
                      for i in (1, 2)]
            await asyncio.sleep(0.01)
            assert batcher.queued_rows == 8
            t = time.perf_counter()
            with pytest.raises(Overloaded) as info:
                await batcher.predict([unique_rows(99, 1)])
            assert time.perf_counter() - t < 0.5
            assert info.value.retry_after_s > 0
        finally:
            release.set()
        (y,) = await running
        np.testing.assert_array_equal(y, unique_rows(0, 4) + 1)
        for i, fut in zip((1, 2), queued, strict=True):
            (y,) = await fut
            np.testing.assert_array_equal(y, unique_rows(10 * i, 4) + 1)
        (y,) = await batcher.predict([unique_rows(99, 1)])  # room again
        np.testing.assert_array_equal(y, unique_rows(99, 1) + 1)
        await batcher.close()

    run(main)


def test_fn_error_reaches_its_batch_and_batcher_keeps_serving() -> None:
    def picky(xs: list[np.ndarray]) -> list[np.ndarray]:
        if (xs[0] < 0).any():
            raise ArithmeticError("negative input")
        return [xs[0] * 2]

    fn = Recorder(picky)
    batcher = Batcher(fn, BatchPolicy(max_batch_size=32))

    async def main() -> None:
        # Arriving together, the three form one batch: the bad one fails all of them.
        results = await asyncio.gather(
            batcher.predict([unique_rows(0, 2)]), batcher.predict([-unique_rows(5, 1)]),
            batcher.predict([unique_rows(9, 3)]), return_exceptions=True)
        assert fn.sizes == [8]  # 6 rows, padded
        assert all(isinstance(r, ArithmeticError) for r in results)
        (y,) = await batcher.predict([unique_rows(0, 2)])
        np.testing.assert_array_equal(y, unique_rows(0, 2) * 2)
        await batcher.close()

    run(main)
    assert batcher.stats.errors == 1
    assert batcher.stats.batches == 1


def test_wrong_output_rows_is_an_error() -> None:
    batcher = Batcher(lambda xs: [xs[0][:1]], BatchPolicy(max_batch_size=4))

    async def main() -> None:
        with pytest.raises(ValueError, match="rows"):
            await batcher.predict([unique_rows(0, 3)])
        await batcher.close()

    run(main)
    with pytest.raises(ValueError, match="rows"):
        batcher.warm_up([unique_rows(0, 1)])


def test_threads_run_batches_at_once() -> None:
    running = peak = 0
    lock = threading.Lock()

    def slow(xs: list[np.ndarray]) -> list[np.ndarray]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return [xs[0]]

    batcher = Batcher(slow, BatchPolicy(max_batch_size=4, threads=2))

    async def main() -> None:
        await asyncio.gather(*(batcher.predict([unique_rows(i, 4)]) for i in range(4)))
        await batcher.close()

    run(main)
    assert peak == 2


def test_close_fails_queued_requests() -> None:
    release = threading.Event()

    def blocked(xs: list[np.ndarray]) -> list[np.ndarray]:
        release.wait(10)
        return [xs[0]]

    batcher = Batcher(blocked, BatchPolicy(max_batch_size=2))

    async def main() -> None:
        try:
            first = asyncio.ensure_future(batcher.predict([unique_rows(0, 2)]))
            await asyncio.sleep(0.01)
            pending = asyncio.ensure_future(batcher.predict([unique_rows(5, 2)]))
            await asyncio.sleep(0.01)
            batcher.shutdown()
            with pytest.raises(BatcherClosed):
                await pending
            with pytest.raises(BatcherClosed):
                await batcher.predict([unique_rows(0, 1)])
        finally:
            release.set()
        (y,) = await first  # already running: it still completes
        np.testing.assert_array_equal(y, unique_rows(0, 2))
        await batcher.close()

    run(main)


def test_rebinds_to_a_new_loop_after_the_old_one_closed() -> None:
    batcher = Batcher(lambda xs: [xs[0] + 1], BatchPolicy(max_batch_size=8))
    for _ in range(2):
        (y,) = asyncio.run(batcher.predict([unique_rows(0, 2)]))
        np.testing.assert_array_equal(y, unique_rows(0, 2) + 1)
    batcher.shutdown()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"batch_timeout_ms": -1}, "batch_timeout_ms"),
    ({"batch_timeout_ms": float("nan")}, "batch_timeout_ms"),
    ({"threads": 0}, "threads"),
    ({"max_batch_size": 8, "allowed_batch_sizes": (1, 4)}, "must equal max_batch_size"),
    ({"max_batch_size": 8, "allowed_batch_sizes": (4, 2, 8)}, "strictly increasing"),
    ({"max_batch_size": 8, "allowed_batch_sizes": (0, 8)}, "positive"),
    ({"max_batch_size": 8, "max_queued_rows": 4}, "max_queued_rows"),
])
def test_policy_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_defaults_and_build() -> None:
    p = BatchPolicy()
    assert p.allowed_batch_sizes == (1, 2, 4, 8, 16, 32, 64)
    assert p.max_queued_rows == 16 * 64
    assert BatchPolicy(max_batch_size=48).allowed_batch_sizes == (1, 2, 4, 8, 16, 32, 48)
    assert BatchPolicy(max_batch_size=1).allowed_batch_sizes == (1,)
    b = BatchPolicy.build(max_batch_size=32, allowed_batch_sizes="32, 8,1", max_queued_rows=100)
    assert b.allowed_batch_sizes == (1, 8, 32)
    assert b.max_queued_rows == 100
    assert BatchPolicy.build(max_batch_size=16) == BatchPolicy(max_batch_size=16)
    with pytest.raises(ValueError, match="comma-separated"):
        BatchPolicy.build(allowed_batch_sizes="1,x,64")


def test_oversized_and_malformed_requests() -> None:
    batcher = Batcher(lambda xs: [xs[0]], BatchPolicy(max_batch_size=4, max_queued_rows=8))

    async def main() -> None:
        with pytest.raises(ValueError, match="never fit"):
            await batcher.predict([unique_rows(0, 9)])
        with pytest.raises(ValueError, match="same number of rows"):
            await batcher.predict([unique_rows(0, 2), unique_rows(0, 3)])
        (y,) = await batcher.predict([unique_rows(0, 8)])  # two chunks, exactly the bound
        np.testing.assert_array_equal(y, unique_rows(0, 8))
        await batcher.close()

    run(main)
