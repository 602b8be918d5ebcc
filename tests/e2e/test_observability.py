"""Observability of a real `keras-jobs serve --workers 2` (the embedded default, JSON logs, the
worker's metrics port): predict counters that add up whichever API process answered, the
worker's job and epoch histograms, scrape-time job gauges, JSON log lines with request and job
ids, zone-aware timestamps on SQLite, and TensorBoard over a fit job's event files."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, SEED_SPEC, free_port, two_classes, upload, wait_for_job
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.slow
MODEL = "obs-linear"
N_REST, N_V2, N_UNKNOWN = 40, 20, 3
EPOCHS = 2


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KJ_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"KJ_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float,
               ok: Any = lambda r: r.status_code == 200) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            if ok(httpx.get(url, timeout=10)):
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer in {timeout} s"
        time.sleep(0.5)


@dataclass
class Run:
    home: Path
    base: str
    worker_metrics: str
    log: Path
    job: dict[str, Any]
    dataset: dict[str, Any]
    spec: dict[str, Any]
    answers: list[httpx.Response]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    home = tmp_path_factory.mktemp("obs") / "kj"
    home.mkdir()
    worker_port = free_port()
    env = _env(home, KJ_LOG_FORMAT="json", KJ_WORKER_METRICS_PORT=str(worker_port))
    with ServeProcess(env, home, "--workers", "2", stop_signal=signal.SIGINT) as server:
        base, log = server.url, server.log_path
        http = httpx.Client(base_url=base, timeout=60)
        x, y = two_classes(n=100)
        dataset = upload(http, "obs", x=x, y=y)
        spec = http.post("/v1/specs", json=SEED_SPEC).json()
        r = http.post("/v1/jobs", json={
            "type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"],
            "epochs": EPOCHS, "batch_size": 16, "validation_split_shuffled": 0.25, "seed": 1,
            "model_name": MODEL, "tensorboard": True})
        assert r.status_code == 202, r.text
        job = wait_for_job(http, r.json()["id"], timeout=300)
        assert job["status"] == "succeeded", job
        http.close()
        answers = _predict_from_many_connections(base)
        yield Run(home, base, f"http://127.0.0.1:{worker_port}", log, job, dataset, spec,
                  answers)
    assert not list((home / "metrics").glob("serve-*")), "serve left its metrics folder"


def _predict_from_many_connections(base: str) -> list[httpx.Response]:
    """Every request on a connection of its own, several at once, so that both API processes
    take some (the kernel hands each new connection to one of them)."""
    def one(i: int) -> httpx.Response:
        headers = {"X-Request-ID": f"obs-{i}", "Connection": "close"}
        with httpx.Client(base_url=base, timeout=120, headers=headers) as c:
            if i < N_REST:
                return c.post(f"/v1/models/{MODEL}:predict", json={"instances": [[0, 3]]})
            if i < N_REST + N_V2:
                return c.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
                    {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [3, 0]}]})
            return c.post(f"/v1/models/no-such-{i}:predict", json={"instances": [[0, 3]]})

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, range(N_REST + N_V2 + N_UNKNOWN)))


def _scrape(url: str) -> dict[str, Any]:
    r = httpx.get(url, headers={"Connection": "close"}, timeout=30)
    assert r.status_code == 200, r.text
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _sample(families: dict[str, Any], name: str, **labels: str) -> float:
    family = families[name.removesuffix("_total").removesuffix("_count")
                      .removesuffix("_sum")]
    found = [s.value for s in family.samples
             if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, family.samples)
    return float(found[0])


def _log_lines(run: Run) -> list[dict[str, Any]]:
    lines = [line for line in run.log.read_text(errors="replace").splitlines() if line.strip()]
    parsed, other = [], []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            other.append(line)
    # Not log records: TensorFlow's C++ runtime writes to stderr on its own (absl), and
    # Celery prints its shutdown notice.
    assert all("absl" in line or re.match(r"[IWE]\d{4} ", line)
               or line.startswith("worker: Warm shutdown") for line in other), other[:10]
    return parsed


def test_predict_counters_add_up_across_api_processes(run: Run) -> None:
    codes = [r.status_code for r in run.answers]
    assert codes == [200] * (N_REST + N_V2) + [404] * N_UNKNOWN, codes
    assert [r.headers["x-request-id"] for r in run.answers] == [
        f"obs-{i}" for i in range(len(run.answers))]
    pids = {line["pid"] for line in _log_lines(run)
            if line.get("logger") == "uvicorn.access" and MODEL in line["message"]
            and str(line.get("request_id", "")).startswith("obs-")}
    assert len(pids) >= 2, f"one API process answered everything ({pids}): nothing to add up"
    for _ in range(4):  # each scrape on a new connection: either process may answer
        families = _scrape(f"{run.base}/metrics")
        requests = "keras_jobs_predict_requests_total"
        assert _sample(families, requests, model=MODEL, protocol="tfserving",
                       code="200") == N_REST
        assert _sample(families, requests, model=MODEL, protocol="v2", code="200") == N_V2
        assert _sample(families, requests, model="", protocol="tfserving",
                       code="404") == N_UNKNOWN
        assert _sample(families, "keras_jobs_predict_duration_seconds_count", model=MODEL,
                       protocol="tfserving") == N_REST
        rows = _sample(families, "keras_jobs_predict_batch_rows_sum", model=MODEL)
        assert rows == N_REST + N_V2  # one row each, however they were batched
        assert _sample(families, "keras_jobs_loaded_models") == len(pids)
        jobs = {s.labels["status"]: s.value for s in families["keras_jobs_jobs"].samples}
        assert jobs == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0,
                        "cancelled": 0}
        queue = families["keras_jobs_queue_messages"].samples
        assert [s.value for s in queue] == [0]


def test_worker_exports_job_and_epoch_durations(run: Run) -> None:
    families = _scrape(f"{run.worker_metrics}/metrics")
    count = _sample(families, "keras_jobs_job_duration_seconds_count", type="fit",
                    status="succeeded")
    assert count == 1
    took = _sample(families, "keras_jobs_job_duration_seconds_sum", type="fit",
                   status="succeeded")
    started = datetime.fromisoformat(run.job["started_at"])
    finished = datetime.fromisoformat(run.job["finished_at"])
    assert took == pytest.approx((finished - started).total_seconds(), abs=0.01)
    assert _sample(families, "keras_jobs_epoch_duration_seconds_count") == EPOCHS
    assert 0 < _sample(families, "keras_jobs_epoch_duration_seconds_sum") < took


def test_log_lines_are_json_with_request_and_job_ids(run: Run) -> None:
    lines = _log_lines(run)
    assert len(lines) > 20
    for line in lines:
        assert {"time", "level", "logger", "message", "pid"} <= set(line), line
        assert datetime.fromisoformat(line["time"]).tzinfo is not None
    job_lines = [line for line in lines if line.get("job_id") == run.job["id"]]
    assert any("succeeded" in line["message"] for line in job_lines), job_lines[-5:]
    assert {line["logger"] for line in lines} >= {"uvicorn.access", "uvicorn.error",
                                                  "celery.worker.strategy"}


def test_timestamps_read_back_from_sqlite_carry_a_zone(run: Run) -> None:
    http = httpx.Client(base_url=run.base, timeout=30)
    for path, fields in ((f"/v1/jobs/{run.job['id']}", ("created_at", "started_at",
                                                        "finished_at")),
                         (f"/v1/datasets/{run.dataset['id']}", ("created_at",)),
                         (f"/v1/specs/{run.spec['id']}", ("created_at",))):
        body = http.get(path).json()
        for field in fields:
            assert body[field].endswith(("Z", "+00:00")), (path, field, body[field])
    http.close()


def test_tensorboard_serves_the_jobs_scalars(run: Run) -> None:
    folder = run.home / "artifacts" / "tensorboard" / run.job["id"]
    assert {p.name for p in folder.iterdir()} >= {"train", "validation"}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "tensorboard", "--port",
                             str(port)], env=_env(run.home), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    train = f"{run.job['id']}/train"
    try:
        _wait_http(f"{base}/data/runs", proc, 180, ok=lambda r: train in r.json())
        tags = httpx.get(f"{base}/data/plugin/scalars/tags").json()
        assert "epoch_loss" in tags[train], tags
        points = httpx.get(f"{base}/data/plugin/scalars/scalars",
                           params={"run": train, "tag": "epoch_loss"}).json()
        assert [step for _time, step, _value in points] == list(range(EPOCHS))
        losses = [value for _time, _step, value in points]
        assert losses == pytest.approx(run.job["history"]["loss"], rel=1e-5)
    finally:
        proc.terminate()
        proc.wait(30)
