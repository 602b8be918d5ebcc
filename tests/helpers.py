"""Helpers the tests share: the tutorial's data and spec, upload and polling shortcuts,
problem+json assertions, worker processes, and snapshots of what a test left behind."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def reset_caches() -> None:
    """Settings and everything built from them are cached per process."""
    from app.core import broker, config, db, storage
    from app.predict import service as predict

    for fn in (config.get_settings, db.get_engine, db.get_sessionmaker, broker.get_celery,
               storage.get_store,
               predict.get_serving):
        fn.cache_clear()


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=full,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    from app.cli import stop_worker

    stop_worker(proc, timeout=20)


def wait_for_job(http: Any, job_id: str, timeout: float = 180,
                 until: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
                 min_epoch: int = 0) -> dict[str, Any]:
    """Poll the job until its status is one of `until` and it has finished `min_epoch` epochs."""
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until and job["epoch"] >= min_epoch:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} at epoch {job['epoch']} "
                                 f"after {timeout}s: {job}")
        time.sleep(0.1)


# The tutorial's data: two Gaussian classes of 1000 points each.
def two_classes(seed: int = 0, n: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cov = [[1, 0.5], [0.5, 1]]
    neg = rng.multivariate_normal([0, 3], cov, size=n)
    pos = rng.multivariate_normal([3, 0], cov, size=n)
    x = np.vstack([neg, pos]).astype("float32")
    y = np.vstack([np.zeros((n, 1)), np.ones((n, 1))]).astype("float32")
    return x, y


SEED_SPEC: dict[str, Any] = {
    "name": "seed-linear",
    "inputs": [{"name": "x", "shape": [2]}],
    "layers": [{"type": "Dense", "units": 1}],
    "compile": {"optimizer": {"class_name": "RMSprop", "config": {"learning_rate": 0.1}},
                "loss": "mean_squared_error", "metrics": ["binary_accuracy"]},
}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def upload(http: Any, name: str, **arrays: np.ndarray) -> dict[str, Any]:
    r = http.post("/v1/datasets", files={"file": (f"{name}.npz", npz_bytes(**arrays))},
                  data={"name": name})
    assert r.status_code == 201, r.text
    return dict(r.json())


def assert_problem(r: httpx.Response, status: int, pointer: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if pointer is not None:
        pointers = [e["pointer"] for e in body.get("errors", [])]
        assert pointer in pointers, body
    return body


def table_counts() -> dict[str, int]:
    from sqlalchemy import func, select

    from app.core.db import session_scope
    from app.tables import Dataset, Job, ModelVersion, Spec

    with session_scope() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) or 0
                for m in (Dataset, Spec, Job, ModelVersion)}


def stored_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
