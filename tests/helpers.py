"""Helpers the tests share: the tutorial's data and spec, upload and polling shortcuts,
problem+json assertions, worker processes, and snapshots of what a test left behind."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def start_worker(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    """`keras-jobs worker ARGS` under ENV (over this process's environment), output to log_path."""
    full = {**os.environ, **env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "app.cli", "worker", *args], env=full,
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


def tutorial_fit(http: Any, spec_id: str, dataset_id: str, model_name: str,
                 **extra: Any) -> str:
    """Submit the tutorial's fit (5 epochs, batch 16, 30% held out, seed 1); the job's id."""
    r = http.post("/v1/jobs", json={
        "type": "fit", "spec_id": spec_id, "dataset_id": dataset_id, "x": "x", "y": "y",
        "epochs": 5, "batch_size": 16, "validation_split_shuffled": 0.3, "seed": 1,
        "model_name": model_name, **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


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


def cancel_jobs_since(since: datetime | None) -> datetime:
    """Cancels the jobs created since `since` that are still queued or running (none when
    `since` is None); returns now, the next call's `since`."""
    from sqlalchemy import select

    from app.core.db import session_scope
    from app.core.errors import DomainError
    from app.jobs import state
    from app.tables import Job, JobStatus
    from app.tables.base import utcnow

    now = utcnow()
    if since is None:
        return now
    with session_scope() as s:
        for job in s.scalars(select(Job).where(
                Job.created_at >= since,
                Job.status.in_((JobStatus.queued, JobStatus.running)))).all():
            with suppress(DomainError):  # it ended meanwhile
                state.request_cancel(s, job)
    return now


def stored_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def iter_events(http: Any, job_id: str, last_event_id: int | None = None,
                timeout: float = 180) -> Iterator[dict[str, Any]]:
    """The job's Server-Sent Events as they arrive, until the stream ends:
    {"id", "event", "data"} each."""
    import json

    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    current: dict[str, Any] = {}
    with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                     timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith(":"):
                continue  # keep-alive comment
            if not line:
                if current:
                    yield current
                current = {}
                continue
            field, _, value = line.partition(": ")
            current[field] = int(value) if field == "id" else (
                json.loads(value) if field == "data" else value)


def read_events(http: Any, job_id: str, last_event_id: int | None = None) -> list[dict[str, Any]]:
    return list(iter_events(http, job_id, last_event_id))


def check_event_stream(http: Any, job_id: str, epochs: int) -> None:
    """Every epoch once, in order, then the end; a resume from the middle repeats nothing."""
    events = read_events(http, job_id)
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)), ids
    epoch_numbers = [e["data"]["epoch"] for e in events if e["event"] == "epoch"]
    assert epoch_numbers == list(range(epochs)), events
    statuses = [e["data"]["status"] for e in events if e["event"] == "status"]
    assert statuses[0] == "queued" and "running" in statuses, statuses
    assert statuses[-1] == "succeeded" and events[-1]["event"] == "status", events[-1]
    assert events[-1]["data"]["result"]["metrics"]
    middle = events[len(events) // 2]["id"]
    rest = read_events(http, job_id, last_event_id=middle)
    assert [e["id"] for e in rest] == [i for i in ids if i > middle]


@contextmanager
def live_server() -> Iterator[str]:
    """A fresh app under a real uvicorn server in a thread (for clients that need real HTTP:
    tritonclient, streams read as they arrive); yields "127.0.0.1:port"."""
    import threading

    import uvicorn

    from app.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of the test's own on a free port (never the shared one), which the test
    may stop and start again: empty (no persistence) or with its data (`persist`: AOF)."""

    def __init__(self, folder: Path, persist: bool = False) -> None:
        self.folder, self.persist, self.port = folder, persist, free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.folder), "--appendonly", "yes" if self.persist else "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGKILL without persistence (what is in memory is lost), SIGTERM with it (Redis
        flushes its append-only file first)."""
        if self.proc is None:
            return
        self.proc.send_signal(15 if self.persist else 9)
        self.proc.wait(10)
        self.proc = None

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


@contextmanager
def temp_database(admin_url: str, prefix: str = "kj_test") -> Iterator[str]:
    """A fresh PostgreSQL database on the shared server, dropped afterwards; yields its URL."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def child_pids(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                found.append(int(entry.name))
    return found


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def make_key(tenant: str, name: str, scopes: list[str],
             expires_in_days: float | None = None) -> str:
    """An API key made on the current database (as `keras-jobs keys create` does)."""
    from app.auth import keys
    from app.core.db import session_scope

    with session_scope() as s:
        _row, raw = keys.create(s, tenant=tenant, name=name, scopes=scopes,
                                expires_in_days=expires_in_days, created_by="tests")
    return raw


def auth_headers() -> dict[str, str]:
    """The suite's admin key (made by the `client` fixture), for clients of live servers."""
    key = os.environ.get("KJ_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def keras_bytes(folder: Path) -> bytes:
    """A Dense(1) on input "x" of 2 features, saved untrained (no fit job needed)."""
    import keras

    model = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(1)])
    path = folder / "m.keras"
    model.save(path)
    return path.read_bytes()


def edited_keras_file(model: Any, folder: Path, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """`model` saved as a real `.keras` file whose config.json `edit` changed in place (an
    upload Keras itself would never write)."""
    import json
    import zipfile

    path = folder / "edited.keras"
    model.save(path)
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            dst.writestr(info.filename, data)
    return buf.getvalue()
