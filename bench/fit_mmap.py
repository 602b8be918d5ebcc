"""Peak memory of a fit job whose dataset is larger than it should hold.

Writes a synthetic dataset as .npy files (the artifact store's layout), then trains one epoch
in fresh processes two ways, and prints peak resident memory against the dataset size:

- baseline "memory": the arrays loaded and passed to model.fit (Keras's array path);
- "stream": the job's input="stream" path (app.training.stream over memory-mapped arrays).

Usage: python bench/fit_mmap.py [--rows 3000000] [--features 256] [--batch 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_dataset(folder: Path, rows: int, features: int) -> int:
    rng = np.random.default_rng(0)
    x = np.lib.format.open_memmap(folder / "x.npy", mode="w+", dtype=np.float32,
                                  shape=(rows, features))
    y = np.lib.format.open_memmap(folder / "y.npy", mode="w+", dtype=np.float32, shape=(rows,))
    w = rng.normal(size=features).astype(np.float32)
    step = 100_000
    for start in range(0, rows, step):
        block = rng.normal(size=(min(step, rows - start), features)).astype(np.float32)
        x[start:start + len(block)] = block
        y[start:start + len(block)] = (block @ w > 0).astype(np.float32)
    x.flush()
    y.flush()
    del x, y
    return sum(p.stat().st_size for p in folder.glob("*.npy"))


def high_water_mark() -> int:
    """Peak resident bytes of this process (VmHWM: unlike ru_maxrss, not inherited from the
    parent that wrote the dataset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(folder: Path, mode: str, batch: int) -> None:
    """One training epoch in this (fresh) process; prints peak RSS and time as JSON."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from app.training import stream

    x = np.load(folder / "x.npy", mmap_mode="r")
    y = np.load(folder / "y.npy", mmap_mode="r")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=x.shape[1:]), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.predict(np.zeros((1, *x.shape[1:]), np.float32), verbose=0)  # warm up
    before = high_water_mark()
    t0 = time.perf_counter()
    if mode == "memory":
        model.fit(np.asarray(x), np.asarray(y), batch_size=batch, epochs=1, verbose=0)
    else:
        ds = stream.dataset((x, y), np.arange(len(x)), batch, True, 0)
        model.fit(ds, epochs=1, verbose=0)
    seconds = time.perf_counter() - t0
    peak = high_water_mark()
    print(json.dumps({"mode": mode, "peak_rss": peak, "rss_before_fit": before,
                      "seconds": seconds}))


def run(folder: Path, mode: str, batch: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder),
                          "--batch", str(batch)], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--child")
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.child, args.batch)
        return
    gib = 1024**3
    with tempfile.TemporaryDirectory(dir=os.environ.get("KJ_BENCH_DIR")) as tmp:
        folder = Path(tmp)
        size = write_dataset(folder, args.rows, args.features)
        print(f"dataset: {args.rows} rows x {args.features} float32 = {size / gib:.2f} GiB")
        memory = run(folder, "memory", args.batch)
        streamed = run(folder, "stream", args.batch)
    for r in (memory, streamed):
        print(f"{r['mode']:>6}: peak RSS {r['peak_rss'] / gib:.2f} GiB "
              f"(process before fit {r['rss_before_fit'] / gib:.2f} GiB), "
              f"epoch {r['seconds']:.1f} s")
    grown = streamed["peak_rss"] - streamed["rss_before_fit"]
    print(f"stream: fit added {grown / gib:.2f} GiB to the process")
    print(f"stream peak RSS / dataset size      = {streamed['peak_rss'] / size:.3f}")
    print(f"stream peak RSS / memory peak RSS   = {streamed['peak_rss'] / memory['peak_rss']:.3f}")
    print(f"stream epoch time / memory epoch    = {streamed['seconds'] / memory['seconds']:.2f}")


if __name__ == "__main__":
    main()
