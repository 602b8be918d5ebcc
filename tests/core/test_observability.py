"""Observability without a server: metric names and types, the scrape-time collector (jobs by
status, queue depth on both brokers, a dead broker), multiprocess sums and their compaction,
the batcher's hook, JSON log lines, X-Request-ID, and zone-aware timestamps on SQLite.
(tests/e2e/test_observability.py runs the same against real processes.)"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import Receive, Scope, Send

from app.api.metrics import JobsCollector
from app.api.request_id import RequestId
from app.core import metrics
from app.core.logs import JsonFormatter, request_id, set_job_id
from app.core.state import fresh
from app.predict.batcher import Batcher, BatchPolicy
from app.predict.metrics import observe
from tests.conftest import REDIS_URL
from tests.helpers import ROOT

# What the service exports, by name (the parser drops `_total`) and type.
EXPORTED = {
    "keras_jobs_jobs": "gauge",
    "keras_jobs_queue_messages": "gauge",
    "keras_jobs_predict_requests": "counter",
    "keras_jobs_predict_duration_seconds": "histogram",
    "keras_jobs_predict_batch_rows": "histogram",
    "keras_jobs_predict_batch_padding_rows": "counter",
    "keras_jobs_predict_batch_duration_seconds": "histogram",
    "keras_jobs_loaded_models": "gauge",
    "keras_jobs_model_cache_evictions": "counter",
    "keras_jobs_job_duration_seconds": "histogram",
    "keras_jobs_epoch_duration_seconds": "histogram",
}


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The embedded default (SQLite database and broker) in a fresh KJ_HOME, migrated."""
    from app.core.migrate import upgrade

    for key in list(os.environ):
        if key.startswith("KJ_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("KJ_HOME", str(tmp_path))
    monkeypatch.setenv("KJ_QUEUE", f"kj-metrics-{secrets.token_hex(4)}")
    # As `keras-jobs serve` on 127.0.0.1 says (TestClient's "testserver" is no loopback
    # address): open while no key exists.
    monkeypatch.setenv("KJ_BIND_HOST", "127.0.0.1")
    with fresh():
        upgrade(f"sqlite:///{tmp_path / 'keras-jobs.db'}")
        yield tmp_path


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family: Any, sample: str, **labels: str) -> float:
    found = [s.value for s in family.samples
             if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (sample, labels, family.samples)
    return float(found[0])


def _add_job(status: str) -> str:
    from app.core.db import session_scope
    from app.tables import Job, JobStatus, JobType

    with session_scope() as s:
        job = Job(owner="local", type=JobType.fit, status=JobStatus(status), params={},
                  epochs=1)
        s.add(job)
        s.flush()
        return job.id


def test_metric_names_follow_prometheus_conventions(embedded: Path) -> None:
    observe("m", "tfserving", 200, 0.003)
    metrics.batch_observer("m")(3, 4, 0.001)
    metrics.LOADED_MODELS.set(1)
    metrics.CACHE_EVICTIONS.inc()
    metrics.JOB_SECONDS.labels("fit", "succeeded").observe(12.0)
    metrics.EPOCH_SECONDS.observe(0.5)
    families = _families(metrics.exposition(JobsCollector()).decode())
    ours = {name: f.type for name, f in families.items() if name.startswith("keras_jobs")}
    assert ours == EXPORTED
    for name, family in families.items():
        if not name.startswith("keras_jobs"):
            continue
        assert re.fullmatch(r"keras_jobs_[a-z0-9_]+", name), name
        assert family.documentation, f"{name} has no help text"
        assert not name.endswith(("_total", "_count", "_sum", "_bucket")), name
        assert not re.search(r"_(ms|milliseconds|minutes|hours|bytes_total)$", name), name
        samples = {s.name for s in family.samples}
        if family.type == "counter":
            assert f"{name}_total" in samples, samples
        if family.type == "histogram":
            assert name.endswith(("_seconds", "_rows")), f"{name}: a unit suffix"
            assert {f"{name}_bucket", f"{name}_sum", f"{name}_count"} <= samples


def test_jobs_by_status_and_queue_depth_on_the_embedded_broker(embedded: Path) -> None:
    from app.core.broker import enqueue_job

    for status in ("queued", "queued", "succeeded"):
        _add_job(status)
    before = _families(metrics.exposition(JobsCollector()).decode())
    queue = os.environ["KJ_QUEUE"]
    assert _value(before["keras_jobs_queue_messages"], "keras_jobs_queue_messages",
                  queue=queue) == 0  # no message table yet: nothing was ever sent
    enqueue_job("job_metrics_a")
    enqueue_job("job_metrics_b", dispatch=1)
    families = _families(metrics.exposition(JobsCollector()).decode())
    jobs = families["keras_jobs_jobs"]
    assert {s.labels["status"]: s.value for s in jobs.samples} == {
        "queued": 2, "running": 0, "succeeded": 1, "failed": 0, "cancelled": 0}
    assert _value(families["keras_jobs_queue_messages"], "keras_jobs_queue_messages",
                  queue=queue) == 2


def test_queue_depth_on_redis_counts_every_priority_list(embedded: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    from app.core.broker import PRIORITY_FIRST, enqueue_job

    monkeypatch.setenv("KJ_BROKER_URL", REDIS_URL)
    queue = os.environ["KJ_QUEUE"]
    try:
        with fresh():
            enqueue_job("job_metrics_new")
            enqueue_job("job_metrics_first", priority=PRIORITY_FIRST)
            families = _families(metrics.exposition(JobsCollector()).decode())
        assert _value(families["keras_jobs_queue_messages"], "keras_jobs_queue_messages",
                      queue=queue) == 2
    finally:
        client = redis.Redis.from_url(REDIS_URL)  # the shared server: leave nothing behind
        client.delete(*client.keys(f"*{queue}*"))  # the lists and kombu's bindings


def test_a_dead_broker_leaves_the_queue_out_not_the_scrape(
        embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KJ_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    start = time.monotonic()
    with fresh():
        families = _families(metrics.exposition(JobsCollector()).decode())
    assert time.monotonic() - start < 5
    assert "keras_jobs_queue_messages" not in families
    assert "keras_jobs_jobs" in families


def test_metrics_endpoint_serves_the_text_format(embedded: Path) -> None:
    from app.main import create_app

    r = TestClient(create_app()).get("/metrics")  # no lifespan: nothing of TensorFlow
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "keras_jobs_jobs" in _families(r.text)
    assert r.headers["x-request-id"]


# --- several processes ----------------------------------------------------------------------

_CHILD = """
import sys
from app.core import metrics
for _ in range(int(sys.argv[1])):
    metrics.PREDICT_REQUESTS.labels("m", "tfserving", "200").inc()
metrics.PREDICT_SECONDS.labels("m", "tfserving").observe(0.002)
metrics.LOADED_MODELS.set(1)
"""


def _child(folder: Path, n: int) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    subprocess.run([sys.executable, "-c", _CHILD, str(n)], env=env, cwd=ROOT, check=True,
                   timeout=60)


def test_processes_add_up_and_compaction_keeps_the_totals(tmp_path: Path) -> None:
    folder = tmp_path / "prom"
    folder.mkdir()
    _child(folder, 3)
    _child(folder, 4)
    assert len(list(folder.glob("counter_*.db"))) == 2

    def scrape() -> dict[str, Any]:
        return {f.name: f for f in metrics.Aggregated(folder).collect()}

    families = scrape()
    requests = families["keras_jobs_predict_requests"]
    assert _value(requests, "keras_jobs_predict_requests_total", model="m") == 7
    latency = families["keras_jobs_predict_duration_seconds"]
    assert _value(latency, "keras_jobs_predict_duration_seconds_count", model="m") == 2
    # Both processes have ended: their files were merged into one archive per type, and
    # their live-only gauge is gone.
    assert sorted(p.name for p in folder.glob("*.db")) == ["counter_archive.db",
                                                          "histogram_archive.db"]
    loaded = families.get("keras_jobs_loaded_models")
    assert loaded is None or not any(s.value for s in loaded.samples)
    _child(folder, 1)
    again = scrape()
    assert _value(again["keras_jobs_predict_requests"], "keras_jobs_predict_requests_total",
                  model="m") == 8
    assert _value(again["keras_jobs_predict_duration_seconds"],
                  "keras_jobs_predict_duration_seconds_bucket", model="m", le="0.0025") == 3


def test_use_fresh_dir_empties_and_names_by_host_and_pid(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from app.core.metrics_dir import ENV, use_fresh_dir

    monkeypatch.delenv(ENV, raising=False)
    stale = tmp_path / "metrics" / f"serve-{os.uname().nodename}-999999999"
    stale.mkdir(parents=True)
    path = use_fresh_dir(tmp_path, "serve")
    try:
        assert path.name.endswith(f"-{os.getpid()}") and path.is_dir()
        assert os.environ[ENV] == str(path)
        assert not stale.exists()  # its process is gone
    finally:
        import prometheus_client.values as values

        os.environ.pop(ENV, None)  # set by use_fresh_dir, not by monkeypatch
        values.ValueClass = values.get_value_class()  # back to in-memory values here


# --- the batcher's hook, the predict hook's cost -----------------------------------------------

def test_batcher_tells_on_batch_after_answering() -> None:
    seen: list[tuple[int, int, float]] = []

    def broken(rows: int, size: int, seconds: float) -> None:
        seen.append((rows, size, seconds))
        raise RuntimeError("an observer's bug")

    batcher = Batcher(lambda xs: [xs[0] * 2], BatchPolicy(max_batch_size=8), name="hook",
                      on_batch=broken)

    async def main() -> list[np.ndarray]:
        try:
            return await batcher.predict([np.ones((3, 2))])
        finally:
            await batcher.close()

    (y,) = asyncio.run(main())
    np.testing.assert_array_equal(y, np.full((3, 2), 2.0))  # answered despite the bug
    assert [(rows, size) for rows, size, _ in seen] == [(3, 4)]
    assert seen[0][2] >= 0


def test_unknown_model_names_share_one_series() -> None:
    name = f"never-served-{secrets.token_hex(3)}"
    observe(name, "v2", 404, 0.001)
    observe(name, "v2", 404, 0.001)
    text = metrics.exposition().decode()
    assert 'keras_jobs_predict_requests_total{code="404",model="",protocol="v2"}' in text
    assert name not in text
    observe(name, "v2", 200, 0.001)
    observe(name, "v2", 400, 0.001)  # served once: its errors count under its name
    assert f'code="400",model="{name}"' in metrics.exposition().decode()


def test_hot_path_cost_is_microseconds() -> None:
    """The predict hook and the request-id middleware together, per request (a loose bound
    for a loaded machine; typically 5-10 µs, see docs/observability.md)."""
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})

    wrapped = RequestId(app)
    scope: dict[str, Any] = {"type": "http", "headers": [(b"content-type", b"x")]}

    async def nothing(_message: Any) -> None:
        return None

    async def receive() -> Any:
        return {}

    async def loop(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await wrapped(scope, receive, nothing)
            observe("cost", "tfserving", 200, 0.001)
        return (time.perf_counter() - start) / n

    async def bare(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            await app(scope, receive, nothing)
        return (time.perf_counter() - start) / n

    asyncio.run(loop(200))
    added = min(asyncio.run(loop(2000)) - asyncio.run(bare(2000)) for _ in range(3))
    assert added < 50e-6, f"{added * 1e6:.1f} µs per request"


# --- logs ------------------------------------------------------------------------------------

def _record(message: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("app.test", logging.WARNING, __file__, 1, message, ("x",),
                             exc_info)


def test_json_lines_carry_the_ids() -> None:
    formatter = JsonFormatter()
    plain = json.loads(formatter.format(_record("hello %s")))
    assert plain["message"] == "hello x" and plain["level"] == "WARNING"
    assert plain["logger"] == "app.test" and "request_id" not in plain and "job_id" not in plain
    assert datetime.fromisoformat(plain["time"]).tzinfo is not None
    token = request_id.set("req-1")
    set_job_id("job_1")
    try:
        line = json.loads(formatter.format(_record("failed %s", exc=True)))
    finally:
        request_id.reset(token)
        set_job_id(None)
    assert line["request_id"] == "req-1" and line["job_id"] == "job_1"
    assert "ValueError: boom" in line["exc_info"]


def test_the_job_id_reaches_threads_the_job_starts() -> None:
    import threading

    formatter = JsonFormatter()
    set_job_id("job_2")
    lines: list[dict[str, Any]] = []
    try:
        thread = threading.Thread(target=lambda: lines.append(
            json.loads(formatter.format(_record("from a thread %s")))))
        thread.start()
        thread.join()
    finally:
        set_job_id(None)
    assert lines[0]["job_id"] == "job_2"


def test_request_id_is_kept_or_made_and_seen_by_the_logs() -> None:
    logged: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        logged.append(request_id.get())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    client = TestClient(RequestId(app))
    r = client.get("/", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123" and logged[-1] == "abc-123"
    made = client.get("/").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", made) and logged[-1] == made
    odd = client.get("/", headers={"X-Request-ID": 'a b"\x7f'}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", odd)  # not a sane token: replaced
    assert request_id.get() is None


# --- timestamps ------------------------------------------------------------------------------

def test_sqlite_reads_back_zoned_timestamps(embedded: Path) -> None:
    from app.core.db import session_scope
    from app.main import create_app
    from app.tables import Dataset, Job, Spec

    before = datetime.now(UTC)
    with session_scope() as s:
        spec = Spec(owner="local", name="z", spec={}, keras_config={}, summary={"layers": []},
                    total_params=0, trainable_params=0)
        dataset = Dataset(owner="local", name="z", filename="z.npz", format="npz", sha256="0",
                          size_bytes=0, num_rows=0, arrays={}, storage_key="datasets/z")
        s.add_all([spec, dataset])
        s.flush()
        ids = spec.id, dataset.id
    job_id = _add_job("queued")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.created_at.tzinfo is UTC
        assert job.created_at >= before  # comparable with aware values: no TypeError
    http = TestClient(create_app())  # no lifespan: nothing of TensorFlow
    for path in (f"/v1/specs/{ids[0]}", f"/v1/datasets/{ids[1]}", f"/v1/jobs/{job_id}"):
        r = http.get(path)
        assert r.status_code == 200, r.text
        stamp = r.json()["created_at"]
        assert stamp.endswith(("Z", "+00:00")), f"{path}: {stamp}"
        assert datetime.fromisoformat(stamp) >= before
