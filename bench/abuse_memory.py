"""Memory bombs against a real server: status, seconds and RSS growth of the API process for each
request that used to take memory before any limit looked at it, and the slowest /healthz
answer while it ran.

Starts its own `keras-jobs serve --no-worker` (SQLite, a temporary KJ_HOME, open on loopback)
from this checkout and sends, one at a time:

- upload: a `.keras` of RepeatVector(20_000_000) then Dense(1) (3 parameters, 14 KB);
- spec: POST /v1/specs with RepeatVector(1e9);
- predict-json: a 60 MB body of 10.5 M one-value rows to a served Dense(1);
- predict-seq: a 60 MB body of 7.5 M rows of one one-step sequence to a model of
  variable-length inputs (no bound from its values: the rows themselves are counted);
- infer-json: the same rows as one Open Inference Protocol tensor of shape [10.5 M, 1];
- label-put: a 300 MB chunked JSON body to PUT /v1/models/m/labels/infer.
With --predict-bomb, a predict on the uploaded bomb too (when the upload was accepted: on a
server without the activation limit it takes minutes and tens of GB; off by default).

Peak RSS is the API process's VmHWM, reset before each bomb (/proc/PID/clear_refs).
Usage: python bench/abuse_memory.py [--port 0] [--predict-bomb]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
ROWS = 10_500_000


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class Healthz(threading.Thread):
    """Polls /healthz every 50 ms; the slowest answer since the last reset."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.worst, self.stop = url, 0.0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=120) as http:
            while not self.stop.is_set():
                start = time.perf_counter()
                try:
                    http.get(self.url + "/healthz")
                except httpx.HTTPError:
                    pass
                self.worst = max(self.worst, time.perf_counter() - start)
                time.sleep(0.05)


def _keras_bytes(model: Any) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        model.save(path)
        return path.read_bytes()


def _chunks(total: int) -> Iterator[bytes]:
    yield b'{"version": 1, "pad": "'
    block = b"x" * (1 << 20)
    for _ in range(total // len(block)):
        yield block
    yield b'"}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--predict-bomb", action="store_true")
    args = parser.parse_args()
    import socket

    import keras

    port = args.port
    if not port:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    home = tempfile.mkdtemp(prefix="kj-abuse-")
    env = {**os.environ, "KJ_HOME": home, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2",
           "KJ_LOG_LEVEL": "WARNING", "KJ_RATE_LIMIT_WRITES_PER_MIN": "0"}
    for key in ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT", "KJ_API_KEY"):
        env.pop(key, None)
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker",
                               "--port", str(port)], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    http = httpx.Client(base_url=url, timeout=600)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        small = keras.Sequential([keras.Input(shape=(1,), name="x"), keras.layers.Dense(1)])
        assert http.post("/v1/models/m/versions", files={
            "file": ("m.keras", _keras_bytes(small))}).status_code == 201
        assert http.post("/v1/models/m:predict", json={"instances": [[1.0]]}).status_code == 200
        ragged = keras.Sequential([keras.Input(shape=(None, 1), name="x"),
                                   keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
        assert http.post("/v1/models/r/versions", files={
            "file": ("m.keras", _keras_bytes(ragged))}).status_code == 201
        assert http.post("/v1/models/r:predict",
                         json={"instances": [[[1.0]]]}).status_code == 200
        bomb = keras.Sequential([keras.Input(shape=(1,), name="x"),
                                 keras.layers.RepeatVector(20_000_000), keras.layers.Dense(1)])
        bomb_bytes = _keras_bytes(bomb)
        rows = b'{"instances": [' + b",".join([b"[1.5]"] * ROWS) + b"]}"
        # 8 bytes a row: 7.5 M rows fill the 64 MiB body limit.
        sequences = b'{"instances": [' + b",".join([b"[[1.5]]"] * 7_500_000) + b"]}"
        data = b",".join([b"1.5"] * ROWS)
        infer = (b'{"inputs": [{"name": "x", "shape": [%d, 1], "datatype": "FP32", "data": [%s]}]}'
                 % (ROWS, data))
        json_type = {"content-type": "application/json"}
        bombs: list[tuple[str, Callable[[], httpx.Response]]] = [
            ("upload", lambda: http.post("/v1/models/bomb/versions", files={
                "file": ("bomb.keras", bomb_bytes)})),
            ("spec", lambda: http.post("/v1/specs", json={
                "name": "bomb", "inputs": [{"name": "x", "shape": [1]}],
                "layers": [{"type": "RepeatVector", "n": 10**9}, {"type": "Dense", "units": 1}],
                "compile": {"optimizer": "adam", "loss": "mse"}})),
            ("predict-json", lambda: http.post("/v1/models/m:predict", content=rows,
                                               headers=json_type)),
            ("predict-seq", lambda: http.post("/v1/models/r:predict", content=sequences,
                                              headers=json_type)),
            ("infer-json", lambda: http.post("/v2/models/m/infer", content=infer,
                                             headers=json_type)),
            ("label-put", lambda: http.put("/v1/models/m/labels/infer",
                                           content=_chunks(300 << 20), headers=json_type)),
        ]
        if args.predict_bomb:
            bombs.append(("predict-bomb", lambda: http.post(
                "/v1/models/bomb:predict", json={"instances": [[1.0]]})))
        health = Healthz(url)
        health.start()
        print(f"{'bomb':<14}{'status':>7}{'seconds':>9}{'RSS before':>12}{'peak +MB':>10}"
              f"{'healthz max s':>15}")
        for name, send in bombs:
            pid = server.pid
            before = _status(pid)["VmRSS"]
            _reset_peak(pid)
            health.worst = 0.0
            start = time.perf_counter()
            r = send()
            seconds = time.perf_counter() - start
            peak = _status(pid)["VmHWM"]
            print(f"{name:<14}{r.status_code:>7}{seconds:>9.2f}{before / 2**20:>11.0f}M"
                  f"{(peak - before) / 2**20:>10.1f}{health.worst:>15.3f}", flush=True)
        health.stop.set()
    finally:
        http.close()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
