"""Fixtures: a private PostgreSQL database and Redis queue per test process (pytest-xdist runs
several), the API in-process (TestClient) and a real Celery worker process, started here and
stopped here."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from app.core.state import fresh
from tests.helpers import (
    cancel_jobs_since,
    keras_bytes,
    make_key,
    start_worker,
    stop_process,
    stored_files,
    table_counts,
    temp_database,
)

PG_ADMIN_URL = os.environ.get("KJ_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("KJ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: KJ_TEST_PROCESSES, else two per core (at most 4): every process has its own
    database, queue and worker, and spends most of its time waiting on them."""
    wanted = os.environ.get("KJ_TEST_PROCESSES")
    return int(wanted) if wanted else min(4, 2 * (os.cpu_count() or 1))


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    with temp_database(PG_ADMIN_URL, "kj_test") as url:
        yield url


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
        # Every request of the suite carries a key (the `client` fixture makes it); the rate
        # limits are tested on their own (tests/e2e/test_rate_limit.py).
        "KJ_AUTH": "required",
        "KJ_RATE_LIMIT_WRITES_PER_MIN": "0",
        "KJ_RATE_LIMIT_PREDICT_PER_MIN": "0",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    with fresh():  # the session's application state; the one before it comes back after
        yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def client(service_env: dict[str, str]) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app()) as c:  # lifespan runs the migrations
        # An operator key (of the "local" tenant) for every request of the suite; live servers and
        # the notebook client find it in KJ_API_KEY.
        key = make_key("local", "suite-admin", ["operator"])
        c.headers["Authorization"] = f"Bearer {key}"
        os.environ["KJ_API_KEY"] = key
        yield c
        os.environ.pop("KJ_API_KEY", None)


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


@pytest.fixture
def settings_env(service_env: dict[str, str],
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """`settings_env(KJ_NAME=value, ...)` sets KJ_* variables for this test and installs a
    fresh application state that reads them (the session's app serves from it too); after
    the test, the state before it (with its loaded models) is current again."""
    with ExitStack() as states:

        def set_(**env: object) -> None:
            for name, value in env.items():
                monkeypatch.setenv(name, str(value))
            states.enter_context(fresh())

        yield set_
    monkeypatch.undo()


@pytest.fixture
def unchanged(client: Any, service_env: dict[str, str]) -> Iterator[None]:
    """Asserts the test left the database and the artifact store as it found them."""
    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    root.mkdir(parents=True, exist_ok=True)
    before_rows, before_files = table_counts(), stored_files(root)
    yield
    assert table_counts() == before_rows
    assert stored_files(root) == before_files


@pytest.fixture(scope="session")
def keras_file(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A small, valid `.keras` model: Dense(1) on 2 inputs named x."""
    return keras_bytes(tmp_path_factory.mktemp("keras-file"))


@pytest.fixture(autouse=True)
def _jobs_end_with_their_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Cancels what a test leaves queued or running: the process's one worker would otherwise
    train it on the next test's time (the validation and auth tests accept hundreds of jobs
    they never run). Jobs of module fixtures are older than the test and left alone."""
    if "client" not in request.fixturenames:
        yield
        return
    since = cancel_jobs_since(None)
    yield
    cancel_jobs_since(since)
