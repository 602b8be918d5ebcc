"""Fixtures: a private PostgreSQL database and Redis queue per test session, the API in-process
(TestClient) and a real Celery worker process, started here and stopped here."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("KJ_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KJ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]


def reset_caches() -> None:
    """Settings and everything built from them are cached per process."""
    from app.core import broker, config, db
    from app.predict import service as predict

    for fn in (config.get_settings, db.get_engine, db.get_sessionmaker, broker.get_celery,
               predict.get_cache):
        fn.cache_clear()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    name = f"kj_test_{secrets.token_hex(4)}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def service_env(pg_database: str,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """KJ_* settings for PostgreSQL + Redis, applied to this process and handed to workers."""
    home = tmp_path_factory.mktemp("kj-home")
    env = {
        "KJ_HOME": str(home),
        "KJ_DATABASE_URL": pg_database,
        "KJ_BROKER_URL": REDIS_URL,
        "KJ_ARTIFACT_ROOT": str(home / "artifacts"),
        "KJ_QUEUE": f"kj-test-{secrets.token_hex(4)}",  # private queue: parallel runs never mix
        "KJ_CANCEL_POLL_S": "0.2",
        "KJ_SWEEP_S": "1",
        "KJ_LOG_LEVEL": "INFO",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    reset_caches()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    reset_caches()


@pytest.fixture(scope="session")
def client(service_env: dict[str, str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as c:  # lifespan runs the migrations
        yield c


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    full = {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker"], env=full,
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    from app.cli import stop_worker

    stop_worker(proc, timeout=20)


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], client: Any,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.Popen[bytes]]:
    """A real `keras-jobs worker` process on the test queue (after the API migrated the DB)."""
    log_path = tmp_path_factory.mktemp("logs") / "worker.log"
    proc = start_worker(service_env, log_path)
    yield proc
    stop_process(proc)
    if proc.returncode not in (0, -15):
        print(log_path.read_text()[-5000:])


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
    import io

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
    from app.models import Dataset, Job, ModelVersion, Spec

    with session_scope() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) or 0
                for m in (Dataset, Spec, Job, ModelVersion)}


def stored_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def unchanged(client: Any, service_env: dict[str, str]) -> Iterator[None]:
    """Asserts the test left the database and the artifact store as it found them."""
    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    root.mkdir(parents=True, exist_ok=True)
    before_rows, before_files = table_counts(), stored_files(root)
    yield
    assert table_counts() == before_rows
    assert stored_files(root) == before_files
