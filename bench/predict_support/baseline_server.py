"""The two baseline servers of bench/predict.py: one model, one process, no batching.

BENCH_MODEL: path of the `.keras` file. BENCH_MODE: "predict" (the tutorials' way: the handler
calls `model.predict(x)`) or "compiled" (the handler calls a `tf.function` with a fixed input
signature, batch dimension None). Same predict URL and bodies as keras-jobs: TF Serving rows
`{"instances": [...]}` as JSON, or with `Content-Type: application/x-npy` a `.npy` of the rows
(answered as `.npy` when the request's Accept asks for it).
Run: uvicorn --app-dir bench/predict_support baseline_server:create_app --factory
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

NPY = "application/x-npy"


def create_app() -> FastAPI:
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(os.environ["BENCH_MODEL"], compile=False)
    if os.environ.get("BENCH_MODE", "predict") == "compiled":
        fn = tf.function(lambda x: model(x, training=False), input_signature=[
            tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype)])

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(fn(x))
    else:
        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(model.predict(x, verbose=0))
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/models/{name}:predict", response_model=None)
    async def predict(name: str, request: Request) -> Response | dict[str, Any]:
        raw = await request.body()
        if request.headers.get("content-type", "").startswith(NPY):
            x = np.load(io.BytesIO(raw), allow_pickle=False).astype(np.float32, copy=False)
        else:
            x = np.asarray(json.loads(raw)["instances"], dtype=np.float32)
        y = await run_in_threadpool(run, x)
        if NPY in request.headers.get("accept", ""):
            buf = io.BytesIO()
            np.save(buf, y)
            return Response(buf.getvalue(), media_type=NPY)
        return {"predictions": y.tolist()}

    return app
