"""The service's Prometheus metrics, and their exposition across processes.

Names follow Prometheus's conventions: the `keras_jobs_` prefix, base units in the name
(`_seconds`; `_rows` for counts of rows), `_total` on counters (prometheus_client appends it).
What is known only at scrape time (jobs by status, queue depth) is computed then, by the API's
collector (app/api/metrics.py); everything here is observed where it happens:

- predict requests and their latency: the predict handlers (app/predict/metrics.py), however
  their route was reached;
- batches: each model's dynamic batcher, per batch (`batch_observer`);
- loaded models and cache evictions: the model cache;
- job and epoch durations: the worker (worker/observe.py, app/training/observe.py).

With several processes (uvicorn's `--workers`, the worker's pool) every process writes its
values to files in PROMETHEUS_MULTIPROC_DIR (app/core/metrics_dir.py) and a scrape adds them
up (`exposition`). That folder must be set before this module is first imported."""

from __future__ import annotations

import fcntl
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app.core.metrics_dir import current_dir, pid_alive

PREFIX = "keras_jobs_"
# The text format would add a `<name>_created` gauge per counter and histogram series; the
# multiprocess exposition has none, so one process's output looks like several processes'.
disable_created_metrics()  # type: ignore[no-untyped-call]
# One-row requests take a few milliseconds; a large body or a cold model up to seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
ROW_BUCKETS = tuple(float(1 << i) for i in range(13))  # 1 … 4096: batches are powers of two
JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 3 * 3600.0,
               6 * 3600.0, 12 * 3600.0, 24 * 3600.0, 3 * 24 * 3600.0)
EPOCH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 1800.0, 3600.0)

PREDICT_REQUESTS = Counter(
    "keras_jobs_predict_requests", "Predict requests answered, by model, protocol "
    "(tfserving, v2) and HTTP status code.", ["model", "protocol", "code"])
PREDICT_SECONDS = Histogram(
    "keras_jobs_predict_duration_seconds", "Time from a predict request's routing to its "
    "answer (body read, parse, queue, model call, encode).", ["model", "protocol"],
    buckets=LATENCY_BUCKETS)
BATCH_ROWS = Histogram(
    "keras_jobs_predict_batch_rows", "Rows per model call of the dynamic batcher (padding "
    "excluded).", ["model"], buckets=ROW_BUCKETS)
BATCH_PADDING = Counter(
    "keras_jobs_predict_batch_padding_rows", "Rows added to batches to reach an allowed batch "
    "size.", ["model"])
BATCH_SECONDS = Histogram(
    "keras_jobs_predict_batch_duration_seconds", "Time of one batched model call.", ["model"],
    buckets=LATENCY_BUCKETS)
LOADED_MODELS = Gauge(
    "keras_jobs_loaded_models", "Model versions loaded for serving (all API processes).",
    multiprocess_mode="livesum")
CACHE_EVICTIONS = Counter(
    "keras_jobs_model_cache_evictions", "Loaded versions dropped from a model cache to stay "
    "within KJ_MODEL_CACHE_SIZE / KJ_MODEL_CACHE_BYTES.")
JOB_SECONDS = Histogram(
    "keras_jobs_job_duration_seconds", "Jobs that ended, by type and final status: from "
    "first start to end (every attempt, and any wait between them).", ["type", "status"],
    buckets=JOB_BUCKETS)
EPOCH_SECONDS = Histogram(
    "keras_jobs_epoch_duration_seconds", "Training epochs, validation included.",
    buckets=EPOCH_BUCKETS)

BatchObserver = Callable[[int, int, float], None]


def batch_observer(model: str) -> BatchObserver:
    """The batcher's `on_batch(rows, padded_size, seconds)` for one model."""
    rows_seen, padding, seconds_seen = (BATCH_ROWS.labels(model), BATCH_PADDING.labels(model),
                                        BATCH_SECONDS.labels(model))

    def on_batch(rows: int, padded_size: int, seconds: float) -> None:
        rows_seen.observe(rows)
        if padded_size > rows:
            padding.inc(padded_size - rows)
        seconds_seen.observe(seconds)

    return on_batch


# --- exposition ------------------------------------------------------------------------------

class _Joined:
    """Several collectors as one (generate_latest takes one)."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


class Aggregated:
    """Every process's values in a multiprocess folder, summed (gauges of live processes only).
    Compacts first: the files of processes that have ended (a worker child per job, a
    restarted API process) are merged into one archive file per type, so a scrape reads a
    folder that stays small however many processes came and went."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterable[Metric]:
        # Two processes compacting at once could count a file twice, and a scrape reading a
        # file being merged could too: one scrape at a time per folder.
        with (self.path / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            compact(self.path)
            return list(MultiProcessCollector(None, str(self.path)).collect())  # type: ignore[no-untyped-call]


def compact(path: Path) -> None:
    """Merge the counter and histogram files of dead processes into `<type>_archive.db`, and
    drop their live-only gauges (prometheus_client's mark_process_dead). Values are sums of
    raw (per bucket) numbers, so adding them up key by key keeps every total."""
    merged: dict[str, dict[str, float]] = {}
    done: list[Path] = []
    for file in path.glob("*.db"):
        parts = file.stem.split("_")
        pid = parts[-1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue  # an archive, or a live process's
        if parts[0] == "gauge":
            if parts[1].startswith("live"):
                file.unlink(missing_ok=True)
            continue
        values = merged.setdefault(parts[0], {})
        for key, value, _time, _pos in MmapedDict.read_all_values_from_file(str(file)):  # type: ignore[no-untyped-call]
            values[key] = values.get(key, 0.0) + value
        done.append(file)
    for typ, values in merged.items():
        archive = MmapedDict(str(path / f"{typ}_archive.db"))  # type: ignore[no-untyped-call]
        try:
            for key, value in values.items():
                archive.write_value(key, archive.read_value(key)[0] + value, 0.0)  # type: ignore[no-untyped-call]
        finally:
            archive.close()  # type: ignore[no-untyped-call]
    for file in done:
        file.unlink(missing_ok=True)


def exposition(*extra: Collector) -> bytes:
    """The text format of this process's metrics, or of every process sharing its folder, plus
    `extra` collectors (computed now, in this process)."""
    path = current_dir()
    base: Collector = REGISTRY if path is None else Aggregated(path)
    return generate_latest(_Joined(base, *extra))
