"""What the HTTP layer costs a one-row predict, in process: the whole ASGI app called as a
server calls it, one request after another, with the model replaced by an echo (no
TensorFlow, no batcher). What is measured is everything around the model: the middlewares,
routing, reading the body, JSON in and out, the metrics hook. A malformed name (FastAPI's 422)
is measured too: it takes FastAPI's full route handling.

No database, broker or store is touched (KJ_AUTH=off; the model lookup is the echo), so this
runs against any checkout: `PYTHONPATH=<checkout> python bench/predict_dispatch.py`.

Usage: python bench/predict_dispatch.py [--number 3000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

os.environ["KJ_AUTH"] = "off"
os.environ.setdefault("KJ_HOME", tempfile.mkdtemp(prefix="kj-bench-dispatch-"))

from app.main import create_app  # noqa: E402  (after the environment above)
from app.predict import router as predict_router  # noqa: E402
from app.predict.signature import TensorInfo  # noqa: E402

BODY = b'{"instances": [[' + b", ".join(b"0.5" for _ in range(16)) + b"]]}"
CASES = {
    "POST /v1/models/m:predict": ("/v1/models/m:predict", 200),
    "POST /v1/models/m/versions/3:predict": ("/v1/models/m/versions/3:predict", 200),
    "POST /v1/models/-bad:predict (422)": ("/v1/models/-bad:predict", 422),
}


def echo_model() -> Any:
    """What the serving code reads of a loaded model; `run` below answers for its batcher."""
    inputs = [TensorInfo("x", (None, 16), "float32")]
    outputs = [TensorInfo("y", (None, 16), "float32")]
    return SimpleNamespace(name="m", version=1, servable=SimpleNamespace(inputs=inputs,
                                                                         outputs=outputs),
                           batcher=SimpleNamespace(policy=SimpleNamespace(max_queued_rows=4096)))


def install_echo() -> None:
    model = echo_model()

    async def loaded_model(_ref: Any) -> Any:
        return model

    async def run(_ref: Any, _model: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return arrays

    predict_router.loaded_model = loaded_model  # type: ignore[assignment]
    predict_router.run = run  # type: ignore[assignment]


async def call(app: Any, path: str) -> int:
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 50000), "state": {},
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(BODY)).encode())]}
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def measure(app: Any, path: str, expect: int, number: int, rounds: int) -> float:
    """CPU µs per request (this thread's CPU time, so other processes on the machine do not
    count): the fastest of `rounds` rounds."""
    status = await call(app, path)
    assert status == expect, (path, status)
    best = float("inf")
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(number):
            await call(app, path)
        best = min(best, (time.thread_time() - start) / number)
    return best * 1e6


async def main_async(number: int, rounds: int) -> None:
    install_echo()
    app = create_app()
    print("| request (echo model, in process) | CPU µs per request |\n|---|---|")
    for label, (path, expect) in CASES.items():
        print(f"| {label} | {await measure(app, path, expect, number, rounds):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--number", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    asyncio.run(main_async(args.number, args.rounds))


if __name__ == "__main__":
    main()
