"""Batch predict and evaluate jobs against Keras's own `model.predict` / `model.evaluate`.

Writes a synthetic dataset as memory-mapped `.npy` files (the artifact store's layout) and a
saved `.keras` model, then times, in this one process, on the same model and rows:

- job: the code a worker runs for a predict job (`batch_predict.predict_job`: rows read from
  the memory-mapped files in chunks, outputs written to `.npy` files) and for an evaluate job
  (`runner.evaluate_rows`), with the model loaded as the job loads it;
- keras: `model.predict(x, batch_size)` / `model.evaluate(x, y, batch_size)` on the arrays
  already in memory (what a notebook does).

Each is run once to warm up (tracing), then job and keras are timed in turn `--repeat` times
(alternating, so a busy machine slows both alike); the best of each counts. Prints rows/s and
the ratio job / keras.
On code without those functions (an older commit) the job side falls back to what its runner
did then: `model.predict` per chunk of `chunk_rows`, and `model.evaluate` on arrays loaded whole.

Usage: python bench/jobs.py [--rows 1000000] [--eval-rows 1000000] [--features 32]
                            [--batch 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def write_dataset(folder: Path, rows: int, features: int) -> None:
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, features))
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, 1))
    w = rng.normal(size=(features, 1)).astype(np.float32)
    step = 100_000
    for start in range(0, rows, step):
        block = rng.normal(size=(min(step, rows - start), features)).astype(np.float32)
        x[start:start + len(block)] = block
        y[start:start + len(block)] = block @ w
    x.flush()
    y.flush()
    del x, y


def save_model(path: Path, features: int) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(features,)),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    model.save(path)


def job_predict(model: Any, arrays: dict[str, np.ndarray], out: Path, batch: int) -> None:
    from app.training import batch_predict

    out.mkdir()
    if hasattr(batch_predict, "predict_job"):
        batch_predict.predict_job(model, arrays, "x", out, batch_size=batch,
                                  output_name="predictions", check_cancel=lambda: None)
        return
    # The runner before predict_job: one model.predict per chunk of chunk_rows rows.
    batch_predict.predict_to_files(
        arrays, "x", lambda x: model.predict(x, batch_size=batch, verbose=0), out,
        output_name="predictions", output_names=list(getattr(model, "output_names", None) or []),
        chunk=batch_predict.chunk_rows(batch, batch_predict.row_bytes(arrays, "x")),
        check_cancel=lambda: None)


def job_evaluate(model: Any, arrays: dict[str, np.ndarray], batch: int) -> dict[str, float]:
    from app.training import data, runner

    if hasattr(runner, "evaluate_rows"):
        result: dict[str, float] = runner.evaluate_rows(model, arrays, "x", "y", batch, [])
        return result
    # The runner before evaluate_rows: the arrays loaded whole, then model.evaluate.
    x = data.select(arrays, "x", "/x")
    y = data.select(arrays, "y", "/y")
    logs: dict[str, float] = model.evaluate(data.in_memory(x), data.in_memory(y),
                                            batch_size=batch, return_dict=True, verbose=0)
    return logs


def paired(job: Callable[[], Any], keras: Callable[[], Any],
           repeat: int) -> tuple[float, Any, float, Any]:
    """Best time and last result of each; the two alternate, so a busy machine slows both."""
    job()  # warm-up: traces the functions once, as a long job amortises it
    keras()
    best = [float("inf"), float("inf")]
    results: list[Any] = [None, None]
    for _ in range(repeat):
        for i, fn in enumerate((job, keras)):
            t0 = time.perf_counter()
            results[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best[0], results[0], best[1], results[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--eval-rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import keras

    with tempfile.TemporaryDirectory(dir=os.environ.get("KJ_BENCH_DIR")) as tmp:
        folder = Path(tmp)
        write_dataset(folder, args.rows, args.features)
        save_model(folder / "m.keras", args.features)
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in ("x", "y")}
        x_mem, y_mem = np.asarray(arrays["x"]).copy(), np.asarray(arrays["y"]).copy()
        # As the jobs load it: predict without compiling, evaluate with the saved compile.
        predict_model = keras.saving.load_model(folder / "m.keras", compile=False)
        eval_model = keras.saving.load_model(folder / "m.keras", compile=True)
        n_eval = min(args.eval_rows, args.rows)
        eval_arrays = {n: a[:n_eval] for n, a in arrays.items()}
        runs = iter(range(1_000_000))

        def job_p() -> None:
            job_predict(predict_model, arrays, folder / f"out{next(runs)}", args.batch)

        rows: list[tuple[str, int, float, float]] = []
        job_s, _, keras_s, expected = paired(job_p, lambda: predict_model.predict(
            x_mem, batch_size=args.batch, verbose=0), args.repeat)
        got = np.load(folder / "out1" / "predictions.npy")
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        rows.append(("predict", args.rows, job_s, keras_s))

        job_s, job_logs, keras_s, keras_logs = paired(
            lambda: job_evaluate(eval_model, eval_arrays, args.batch),
            lambda: eval_model.evaluate(x_mem[:n_eval], y_mem[:n_eval], batch_size=args.batch,
                                        return_dict=True, verbose=0), args.repeat)
        for k, v in keras_logs.items():
            assert abs(job_logs[k] - v) <= 1e-4 * max(1.0, abs(v)), (k, job_logs[k], v)
        rows.append(("evaluate", n_eval, job_s, keras_s))

    print(f"batch {args.batch}, {args.features} features, MLP 64-64-1; best of {args.repeat}")
    print(f"{'job':<9} {'rows':>9} {'job s':>8} {'job rows/s':>11} {'keras s':>8} "
          f"{'keras rows/s':>13} {'job/keras':>9}")
    for name, n, js, ks in rows:
        print(f"{name:<9} {n:>9} {js:>8.2f} {n / js:>11.0f} {ks:>8.2f} {n / ks:>13.0f} "
              f"{ks / js:>9.2f}")


if __name__ == "__main__":
    main()
