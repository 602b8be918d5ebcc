"""How soon a worker starts a job: this checkout's worker against Celery's stock prefork pool
with TensorFlow imported in each child (what the worker did before), in the same run.

Both run one pool slot on Redis (a private queue; `--broker embedded`: the SQLite broker of
`keras-jobs serve`) over a SQLite database and a local store of
their own, with jobs submitted through the API in this process. Measured from the jobs' own
timestamps (`created_at`, `started_at`, `finished_at`):

- warm slot: a job submitted while the slot is idle (the previous job ended a second ago; the
  baseline's next child may still be importing TensorFlow then, as after any short job):
  submit to running;
- back to back: `--burst` jobs submitted at once: one job's end to the next one's start.

Usage: python bench/job_start.py [--jobs 8] [--burst 8]
                                 [--broker redis://127.0.0.1:6379/0 | embedded]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"name": "tiny", "inputs": [{"name": "x", "shape": [2]}],
        "layers": [{"type": "Dense", "units": 1}],
        "compile": {"optimizer": "sgd", "loss": "mean_squared_error"}}
# The stock pool, and the parent left without TensorFlow: each child imports it in
# worker_process_init (the GPU memory-growth step imports it), and the embedded broker polled
# once a second, as the worker did before.
BASELINE = """
from app.core.state import rebuild
rebuild()
from celery.signals import worker_init
import worker.celery_app as w
worker_init.disconnect(w._load_tensorflow)
w.app.conf.worker_pool = "prefork"
from kombu.transport import sqlalchemy
sqlalchemy.Transport.polling_interval = 1.0  # kombu's own, on the embedded broker
from app.core.config import get_settings
w.app.worker_main(["worker", "-Q", get_settings().queue, "--pool", "prefork",
                   "--concurrency", "1", "--loglevel=INFO"])
"""


def _when(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _wait(http: Any, job_id: str) -> dict[str, Any]:
    while True:
        job: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} {job['status']}: {job.get('error')}")
            return job
        time.sleep(0.05)


def measure(kind: str, broker: str, jobs: int, burst: int) -> tuple[list[float], list[float]]:
    from fastapi.testclient import TestClient

    from app.core.state import fresh
    from app.main import create_app

    home = Path(tempfile.mkdtemp(prefix=f"kj-bench-start-{kind}-"))
    if broker == "embedded":  # the SQLite broker beside the database, as `serve` has it
        os.environ.pop("KJ_BROKER_URL", None)
    else:
        os.environ["KJ_BROKER_URL"] = broker
    env = {"KJ_HOME": str(home), "KJ_AUTH": "off",
           "KJ_QUEUE": f"kj-bench-{secrets.token_hex(4)}", "KJ_LOG_LEVEL": "INFO",
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    os.environ.update(env)
    log = (home / "worker.log").open("wb")
    with fresh(), TestClient(create_app()) as http:  # migrates the database first
        command = ([sys.executable, "-m", "app.cli", "worker"] if kind == "this"
                   else [sys.executable, "-c", BASELINE])
        worker = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            rng = np.random.default_rng(0)
            x = rng.normal(size=(64, 2)).astype(np.float32)
            buf = _npz(x=x, y=x.sum(axis=1, keepdims=True))
            ds = http.post("/v1/datasets", files={"file": ("d.npz", buf)},
                           data={"name": "d"}).json()
            spec = http.post("/v1/specs", json=SPEC).json()
            body = {"type": "fit", "spec_id": spec["id"], "dataset_id": ds["id"], "epochs": 1,
                    "batch_size": 64}

            def submit() -> str:
                r = http.post("/v1/jobs", json=body)
                assert r.status_code == 202, r.text
                return str(r.json()["id"])

            _wait(http, submit())  # the worker is up and has run one job
            warm = []
            for _ in range(jobs):
                time.sleep(1.0)  # the slot is idle, its next child forked
                job = _wait(http, submit())
                warm.append(_when(job["started_at"]) - _when(job["created_at"]))
            time.sleep(1.0)
            done = [_wait(http, i) for i in [submit() for _ in range(burst)]]
            done.sort(key=lambda j: _when(j["started_at"]))
            gaps = [_when(b["started_at"]) - _when(a["finished_at"])
                    for a, b in zip(done, done[1:], strict=False)]
            return warm, gaps
        finally:
            worker.terminate()
            worker.wait(60)
            log.close()


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    out = io.BytesIO()
    np.savez(out, **arrays)  # type: ignore[arg-type]
    return out.getvalue()


def _ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:7.0f} ms  max {max(values) * 1000:7.0f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    results = {kind: measure(kind, args.broker, args.jobs, args.burst)
               for kind in ("baseline", "this")}
    print(f"{'':<10} {'warm slot: submit to running':<34} {'back to back: end to next start'}")
    for kind, (warm, gaps) in results.items():
        print(f"{kind:<10} {_ms(warm):<34} {_ms(gaps)}")
    (b_warm, b_gaps), (t_warm, t_gaps) = results["baseline"], results["this"]
    warm_x = statistics.median(b_warm) / statistics.median(t_warm)
    gaps_x = statistics.median(b_gaps) / statistics.median(t_gaps)
    print(f"{'ratio':<10} baseline/this p50: warm {warm_x:.1f}x, back to back {gaps_x:.1f}x")


if __name__ == "__main__":
    main()
