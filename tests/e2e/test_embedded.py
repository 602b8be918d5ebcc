"""The embedded default, as a user runs it: `keras-jobs serve` with nothing configured but
KJ_HOME (SQLite, a local artifact folder, the SQLAlchemy broker and its own worker process)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import (
    SEED_SPEC,
    check_event_stream,
    npz_bytes,
    read_events,
    two_classes,
    upload,
    wait_for_job,
)
from tests.scenario import run_tutorial
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.slow


class Served(ServeProcess):
    """`keras-jobs serve` with nothing configured but KJ_HOME, up once /readyz answers; stopped
    the way a user stops it (Ctrl-C)."""

    def __init__(self, home: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KJ_")}
        env.update({"KJ_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2"})
        super().__init__(env, home, *extra, timeout=90, stop_signal=signal.SIGINT)
        self.start()
        self.wait_ready()
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def stop(self, timeout: float = 60) -> int:
        self.http.close()
        return super().stop(timeout)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "kj"


def _worker_children(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False)
    return out.stdout.split()


def _running(pid: str) -> bool:
    """Whether the process exists and is not a zombie (ended, not yet reaped)."""
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except FileNotFoundError:
        return False


def test_embedded_serve_runs_the_tutorial(home: Path) -> None:
    served = Served(home)
    try:
        worker_pids = _worker_children(served.proc.pid)
        assert worker_pids, "serve started no worker process"
        done = run_tutorial(served.http, "seed-linear-embedded")
        # The embedded default's event stream (polled from SQLite): replay, then resume.
        check_event_stream(served.http, done["fit"]["id"], epochs=5)
    finally:
        served.stop()
    assert (home / "keras-jobs.db").exists() and (home / "broker.db").exists()
    assert list((home / "artifacts" / "models").rglob("model.keras"))
    # Stopping serve stops its worker too (within a few seconds of serve's own end).
    deadline = time.monotonic() + 10
    while alive := [pid for pid in worker_pids if _running(pid)]:
        assert time.monotonic() < deadline, f"workers {alive} outlived serve"
        time.sleep(0.1)


def test_queued_job_survives_restart(home: Path) -> None:
    api_only = Served(home, "--no-worker")
    try:
        x, y = two_classes(n=100)
        dataset = upload(api_only.http, "restart", x=x, y=y)
        spec = api_only.http.post("/v1/specs", json=SEED_SPEC).json()
        r = api_only.http.post("/v1/jobs", json={
            "type": "fit", "spec_id": spec["id"], "dataset_id": dataset["id"], "epochs": 2,
            "model_name": "restart"})
        assert r.status_code == 202, r.text
        job: dict[str, Any] = r.json()
        # A body of many chunks, over a real socket: streamed, hashed and stored intact.
        big = np.random.default_rng(0).normal(size=(40_000, 32)).astype("float32")
        payload = npz_bytes(x=big, y=np.zeros(len(big), "float32"))
        r = api_only.http.post("/v1/datasets", files={"file": ("big.npz", payload)})
        assert r.status_code == 201, r.text
        assert r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
        assert r.json()["size_bytes"] == len(payload)
        stored = home / "artifacts" / "datasets" / r.json()["id"] / "x.npy"
        np.testing.assert_array_equal(np.load(stored), big)
        time.sleep(1)  # the thing tested: a second in which no worker takes the job
        assert api_only.http.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    finally:
        api_only.stop()
    served = Served(home)
    try:
        # Followed live on the embedded default (the stream polls SQLite): both epochs, once.
        live = read_events(served.http, job["id"])
        assert [e["data"]["epoch"] for e in live if e["event"] == "epoch"] == [0, 1]
        assert live[-1]["data"]["status"] == "succeeded"
        done = wait_for_job(served.http, job["id"], timeout=180)
        assert done["status"] == "succeeded", done
        assert len(done["history"]["loss"]) == 2
    finally:
        served.stop()
