"""Serving over HTTP with real Keras models uploaded as `.keras` versions: dynamic batching,
labels, TF Serving's formats (JSON rows and columns, .npy/.npz), the Open Inference Protocol
v2 through tritonclient, errors that name the signature, model status and download."""

from __future__ import annotations

import io
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import assert_problem, auth_headers, live_server

pytestmark = pytest.mark.slow


def _save(model: Any, tmp: Path) -> bytes:
    path = tmp / f"{secrets.token_hex(4)}.keras"
    model.save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def keras_models() -> dict[str, Any]:
    import keras

    keras.utils.set_random_seed(3)
    mlp = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(8, "relu"),
                            keras.layers.Dense(3)])
    a, b = keras.Input(shape=(2,), name="a"), keras.Input(shape=(3,), name="b")
    joined = keras.layers.Concatenate()([a, b])
    multi = keras.Model([a, b], [keras.layers.Dense(2, activation="softmax", name="cls")(joined),
                                 keras.layers.Dense(1, name="reg")(joined)])
    image = keras.Input(shape=(64, 64, 3), name="image")
    h = keras.layers.Conv2D(32, 3, activation="relu")(image)
    h = keras.layers.Conv2D(32, 3, activation="relu")(h)
    slow = keras.Model(image, keras.layers.Dense(1)(keras.layers.GlobalAveragePooling2D()(h)))
    other = keras.Sequential([keras.Input(shape=(2,), name="x"), keras.layers.Dense(3)])
    return {"mlp": mlp, "multi": multi, "slow": slow, "other": other}


def publish(client: Any, name: str, model: Any, tmp: Path) -> int:
    r = client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", _save(model, tmp))})
    assert r.status_code == 201, r.text
    return int(r.json()["version"])


@pytest.fixture
def batching(settings_env: Callable[..., None]) -> Callable[[float, int], None]:
    """A fresh state (its own serving) with the batch timeout and queue bound a test asks
    for."""

    def configure(timeout_ms: float, queue_rows: int) -> None:
        settings_env(KJ_BATCH_TIMEOUT_MS=timeout_ms, KJ_BATCH_QUEUE_ROWS=queue_rows)

    return configure


def loaded(name: str, version: int) -> Any:
    from app.predict.service import get_serving

    found = [m for m in get_serving().cache.loaded() if (m.name, m.version) == (name, version)]
    assert found, f"{name}/{version} is not loaded"
    return found[0]


def test_concurrent_requests_merge_and_each_gets_its_rows(
        client: Any, keras_models: dict[str, Any], tmp_path: Path, batching: Any) -> None:
    batching(timeout_ms=30, queue_rows=4096)
    name = f"merge-{secrets.token_hex(3)}"
    version = publish(client, name, keras_models["mlp"], tmp_path)
    rng = np.random.default_rng(0)
    sizes = [1, 3, 7, 2, 5, 70, 1, 9, 130, 4] * 4  # odd sizes, and some above max_batch_size
    bodies = [rng.normal(size=(n, 2)).astype("float32") for n in sizes]
    assert client.post(f"/v1/models/{name}:predict",
                       json={"instances": [[0.0, 0.0]]}).status_code == 200
    model = loaded(name, version)
    traces = model.servable.traces

    def call(x: np.ndarray) -> np.ndarray:
        r = client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()})
        assert r.status_code == 200, r.text
        return np.array(r.json()["predictions"], dtype="float32")

    with ThreadPoolExecutor(max_workers=24) as pool:
        answers = list(pool.map(call, bodies))
    expected = [np.asarray(keras_models["mlp"](x)) for x in bodies]
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    stats = model.batcher.stats
    assert max(stats.batch_sizes) > 1, stats  # requests were merged
    assert set(stats.batch_sizes) <= {1, 2, 4, 8, 16, 32, 64}  # padded to the allowed sizes
    assert model.servable.traces == traces  # warm-up traced everything: no new trace


def test_full_queue_is_503_with_retry_after(client: Any, keras_models: dict[str, Any],
                                           tmp_path: Path, batching: Any) -> None:
    batching(timeout_ms=2, queue_rows=128)
    name = f"slow-{secrets.token_hex(3)}"
    publish(client, name, keras_models["slow"], tmp_path)
    x = np.zeros((64, 64, 64, 3), dtype="float32")
    buf = io.BytesIO()
    np.save(buf, x)
    url = f"/v1/models/{name}:predict"
    headers = {"Content-Type": "application/x-npy"}
    assert client.post(url, content=buf.getvalue(), headers=headers).status_code == 200
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: client.post(url, content=buf.getvalue(),
                                                      headers=headers), range(12)))
    codes = sorted(r.status_code for r in answers)
    assert 200 in codes and 503 in codes, codes
    refused = next(r for r in answers if r.status_code == 503)
    body = assert_problem(refused, 503)
    assert int(refused.headers["retry-after"]) >= 1 and body["error"]
    # A single request with more rows than the queue may ever hold can never succeed: 413.
    big = io.BytesIO()
    np.save(big, np.zeros((300, 64, 64, 3), dtype="float32"))
    assert_problem(client.post(url, content=big.getvalue(), headers=headers), 413)


def test_label_moves_under_load_and_a_broken_version_leaves_it(
        client: Any, keras_models: dict[str, Any], tmp_path: Path,
        service_env: dict[str, str]) -> None:
    name = f"labels-{secrets.token_hex(3)}"
    v1 = publish(client, name, keras_models["mlp"], tmp_path)
    v2 = publish(client, name, keras_models["other"], tmp_path)
    x = np.array([[0.5, -1.0]], dtype="float32")
    outputs = {v1: np.asarray(keras_models["mlp"](x)), v2: np.asarray(keras_models["other"](x))}
    r = client.put(f"/v1/models/{name}/labels/production", json={"version": v1})
    assert r.status_code == 200 and r.json() == {"name": name, "label": "production",
                                                 "version": v1}
    stop = threading.Event()
    seen: list[int] = []
    failures: list[str] = []

    def hammer() -> None:
        while not stop.is_set():
            r = client.post(f"/v1/models/{name}/labels/production:predict",
                            json={"instances": x.tolist()})
            if r.status_code != 200:
                failures.append(r.text)
                continue
            got = np.array(r.json()["predictions"], dtype="float32")
            match = [v for v, want in outputs.items() if np.allclose(got, want, atol=1e-5)]
            if len(match) != 1:
                failures.append(f"unexpected output {got}")
            seen.extend(match)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for version in (v2, v1, v2):
        time.sleep(0.3)
        assert client.put(f"/v1/models/{name}/labels/production",
                          json={"version": version}).status_code == 200
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    assert not failures, failures[:3]
    assert {v1, v2} <= set(seen)
    assert seen[-1] == v2  # the last move holds

    # A version whose file cannot be loaded: the label stays, and the reason is returned.
    v3 = publish(client, name, keras_models["other"], tmp_path)
    folder = Path(service_env["KJ_ARTIFACT_ROOT"]) / "models" / "local" / name / str(v3)
    (folder / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    r = client.put(f"/v1/models/{name}/labels/production", json={"version": v3})
    assert "could not be loaded" in assert_problem(r, 422)["detail"]
    model = client.get(f"/v1/models/{name}").json()
    assert model["labels"] == {"production": v2}
    status = {s["version"]: s["state"] for s in model["model_version_status"]}
    assert status[str(v3)] == "UNAVAILABLE" and status[str(v2)] == "AVAILABLE"
    pointed = client.get(f"/v1/models/{name}/labels/production").json()
    assert [v["version"] for v in pointed["versions"]] == [v2]
    assert pointed["model_version_status"][0]["state"] == "AVAILABLE"
    assert client.delete(f"/v1/models/{name}/labels/production").status_code == 204
    assert_problem(client.post(f"/v1/models/{name}/labels/production:predict",
                               json={"instances": x.tolist()}), 404)


def test_tf_serving_formats_and_binary_tensors(client: Any, keras_models: dict[str, Any],
                                               tmp_path: Path) -> None:
    name = f"tfs-{secrets.token_hex(3)}"
    version = publish(client, name, keras_models["mlp"], tmp_path)
    x = np.random.default_rng(1).normal(size=(5, 2)).astype("float32")
    want = np.asarray(keras_models["mlp"](x))
    rows = client.post(f"/v1/models/{name}:predict", json={"instances": x.tolist()}).json()
    np.testing.assert_allclose(rows["predictions"], want, atol=1e-5)
    cols = client.post(f"/v1/models/{name}/versions/{version}:predict",
                       json={"inputs": x.tolist()}).json()
    np.testing.assert_allclose(cols["outputs"], want, atol=1e-5)
    buf = io.BytesIO()
    np.save(buf, x)
    r = client.post(f"/v1/models/{name}:predict", content=buf.getvalue(),
                    headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy"
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), want, atol=1e-5)
    meta = client.get(f"/v1/models/{name}/metadata").json()
    assert meta["inputs"] == [{"name": "x", "shape": [None, 2], "dtype": "float32"}]
    for method in ("classify", "regress"):
        assert_problem(client.post(f"/v1/models/{name}:{method}", json={}), 400)


def test_multi_input_multi_output(client: Any, keras_models: dict[str, Any],
                                  tmp_path: Path) -> None:
    name = f"multi-{secrets.token_hex(3)}"
    publish(client, name, keras_models["multi"], tmp_path)
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(4, 2)).astype("float32"), rng.normal(size=(4, 3)).astype("float32")
    cls, reg = (np.asarray(t) for t in keras_models["multi"]([a, b]))
    rows = client.post(f"/v1/models/{name}:predict", json={"instances": [
        {"a": a[i].tolist(), "b": b[i].tolist()} for i in range(4)]}).json()["predictions"]
    np.testing.assert_allclose([r["cls"] for r in rows], cls, atol=1e-5)
    np.testing.assert_allclose([r["reg"] for r in rows], reg, atol=1e-5)
    cols = client.post(f"/v1/models/{name}:predict",
                       json={"inputs": {"a": a.tolist(), "b": b.tolist()}}).json()["outputs"]
    np.testing.assert_allclose(cols["reg"], reg, atol=1e-5)
    buf = io.BytesIO()
    np.savez(buf, a=a, b=b)
    r = client.post(f"/v1/models/{name}:predict", content=buf.getvalue(),
                    headers={"Content-Type": "application/x-npz", "Accept": "application/x-npy"})
    assert r.status_code == 200, r.text
    out = np.load(io.BytesIO(r.content))
    np.testing.assert_allclose(out["cls"], cls, atol=1e-5)
    np.testing.assert_allclose(out["reg"], reg, atol=1e-5)


def test_errors_name_the_expected_signature(client: Any, keras_models: dict[str, Any],
                                            tmp_path: Path) -> None:
    name = f"errors-{secrets.token_hex(3)}"
    publish(client, name, keras_models["mlp"], tmp_path)
    url = f"/v1/models/{name}:predict"
    body = assert_problem(client.post(url, json={"instances": [[1.0, 2.0, 3.0]]}), 400)
    assert "[None, 2] of float32" in body["detail"] and body["error"] == body["detail"]
    body = assert_problem(client.post(url, json={"instances": [["a", "b"]]}), 400)
    assert "float32" in body["detail"]
    body = assert_problem(client.post(url, content=b"{nope"), 400)
    assert body["error"]
    assert_problem(client.post(f"/v1/models/nope-{secrets.token_hex(3)}:predict",
                               json={"instances": [[1, 2]]}), 404)


def test_model_status_and_download(client: Any, keras_models: dict[str, Any],
                                   tmp_path: Path) -> None:
    import keras

    name = f"status-{secrets.token_hex(3)}"
    version = publish(client, name, keras_models["mlp"], tmp_path)
    model = client.get(f"/v1/models/{name}").json()
    assert model["model_version_status"] == [{"version": str(version), "state": "AVAILABLE",
                                               "status": {"error_code": "OK",
                                                          "error_message": ""}}]
    one = client.get(f"/v1/models/{name}/versions/{version}").json()
    assert [v["version"] for v in one["versions"]] == [version]
    r = client.get(f"/v1/models/{name}/versions/{version}/download")
    assert r.status_code == 200
    path = tmp_path / "downloaded.keras"
    path.write_bytes(r.content)
    x = np.ones((1, 2), dtype="float32")
    np.testing.assert_allclose(keras.saving.load_model(path)(x), keras_models["mlp"](x),
                               atol=1e-6)
    assert_problem(client.get(f"/v1/models/{name}/versions/{version + 1}/download"), 404)


@pytest.fixture(scope="module")
def live_url(client: Any) -> Iterator[str]:
    with live_server() as url:
        yield url


def test_open_inference_protocol_with_tritonclient(client: Any, live_url: str,
                                                   keras_models: dict[str, Any],
                                                   tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    # Models only this server's event loop serves (a batcher serves one loop).
    single, multi = f"oip-{secrets.token_hex(3)}", f"oip-multi-{secrets.token_hex(3)}"
    publish(client, single, keras_models["mlp"], tmp_path)
    publish(client, multi, keras_models["multi"], tmp_path)
    triton = httpclient.InferenceServerClient(live_url)
    key = auth_headers()  # health is public; models answer only with a key
    assert triton.is_server_live()
    deadline = time.monotonic() + 60
    while not triton.is_server_ready() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert triton.is_server_ready() and triton.is_model_ready(single, headers=key)
    assert not triton.is_model_ready(single)  # 401 without the key
    meta = triton.get_model_metadata(single, headers=key)
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}]

    x = np.random.default_rng(4).normal(size=(3, 2)).astype("float32")
    for binary in (False, True):
        inp = httpclient.InferInput("x", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        result = triton.infer(single, [inp], model_version="1", headers=key)
        out_name = meta["outputs"][0]["name"]
        np.testing.assert_allclose(result.as_numpy(out_name), keras_models["mlp"](x), atol=1e-5)

    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 2)).astype("float32"), rng.normal(size=(2, 3)).astype("float32")
    ins = [httpclient.InferInput("a", [2, 2], "FP32"), httpclient.InferInput("b", [2, 3], "FP32")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(b, binary_data=False)
    result = triton.infer(multi, ins, outputs=[httpclient.InferRequestedOutput("reg")],
                          headers=key)
    np.testing.assert_allclose(result.as_numpy("reg"), keras_models["multi"]([a, b])[1],
                               atol=1e-5)
    assert result.as_numpy("cls") is None  # only the requested output came back
    bad = httpclient.InferInput("x", [1, 2], "INT32")
    bad.set_data_from_numpy(np.zeros((1, 2), dtype="int32"))
    with pytest.raises(Exception, match="FP32"):
        triton.infer(single, [bad], headers=key)


def test_per_model_batching_settings(client: Any, keras_models: dict[str, Any],
                                     tmp_path: Path) -> None:
    name = f"tuned-{secrets.token_hex(3)}"
    publish(client, name, keras_models["mlp"], tmp_path)
    url = f"/v1/models/{name}:predict"
    rows = {"instances": np.zeros((20, 2)).tolist()}
    assert client.post(url, json=rows).status_code == 200
    assert client.get(f"/v1/models/{name}/serving").json() == {
        "max_batch_size": None, "batch_timeout_ms": None, "max_queued_rows": None}
    r = client.put(f"/v1/models/{name}/serving", json={"max_batch_size": 8,
                                                      "max_queued_rows": 16})
    assert r.status_code == 200, r.text
    assert_problem(client.post(url, json=rows), 413)  # the new queue bound holds at once
    assert client.post(url, json={"instances": np.zeros((16, 2)).tolist()}).status_code == 200
    assert_problem(client.put(f"/v1/models/{name}/serving",
                              json={"max_batch_size": 64, "max_queued_rows": 8}), 422)
    assert_problem(client.put(f"/v1/models/{name}/serving", json={"threads": 4}), 422)
    assert_problem(client.get(f"/v1/models/nope-{secrets.token_hex(3)}/serving"), 404)


def test_another_process_sees_a_new_version_without_a_query_per_request(
        client: Any, keras_models: dict[str, Any], tmp_path: Path) -> None:
    """Two serving states over one store stand for two API processes: resolutions are cached
    (no query per request) until the registry's generation file changes."""
    from app.core.storage import get_store
    from app.predict.cache import ModelCache
    from app.predict.service import Ref, Serving

    name = f"gen-{secrets.token_hex(3)}"
    publish(client, name, keras_models["mlp"], tmp_path)
    other = Serving(get_store(), ModelCache(2, 1 << 30))
    ref = Ref("local", name)
    assert other.cached(ref) is None
    assert other.resolve(ref).version == 1
    assert other.cached(ref) is not None and other.cached(ref).version == 1  # type: ignore[union-attr]
    publish(client, name, keras_models["other"], tmp_path)  # "another process" publishes
    assert other.cached(ref) is None
    assert other.resolve(ref).version == 2
    client.put(f"/v1/models/{name}/labels/stable", json={"version": 1})
    assert other.cached(ref) is None  # a label move drops the cache too


def test_predict_requests_are_answered_from_their_route() -> None:
    """:predict and /infer are found through the route table and handed their endpoint's
    arguments as FastAPI would pass them; anything odd goes on to FastAPI's routing."""
    from starlette.routing import Match

    from app.api.deps import CALLER_STATE, OPEN_CALLER
    from app.api.serving_route import ARGUMENTS_STATE
    from app.main import create_app
    from app.predict import router, v2_router

    app = create_app()

    def route(path: str, method: str = "POST") -> Any:
        match, child = app.routes[0].matches({
            "type": "http", "method": method, "path": path, "root_path": "", "app": app,
            "state": {CALLER_STATE: OPEN_CALLER}})
        return (child["endpoint"], child[ARGUMENTS_STATE]) if match is Match.FULL else None

    assert route("/v1/models/m-1/labels/prod:predict") == (
        router.predict_label, {"caller": OPEN_CALLER, "name": "m-1", "label": "prod"})
    assert route("/v1/models/m/versions/3:predict")[1]["version"] == 3
    assert route("/v2/models/m/versions/2/infer") == (
        v2_router.v2_infer_version, {"caller": OPEN_CALLER, "name": "m", "version": 2})
    for odd in ("/v1/models/-bad:predict", "/v1/models/m/versions/0:predict",
                "/v1/models/m/versions/99999999999:predict", "/v1/models/m/labels/1x:predict",
                "/v1/models/m:classify", "/v1/models/m"):
        assert route(odd) is None, odd
    assert route("/v1/models/m:predict", method="GET") is None


def test_what_the_route_does_not_answer_fastapi_does(client: Any, keras_models: dict[str, Any],
                                                     tmp_path: Path) -> None:
    """A malformed name or version is FastAPI's 422 naming it; with dependency overrides set,
    the same endpoint answers through FastAPI's handling, and the override applies."""
    from app.api.deps import Caller, get_caller

    name = f"door-{secrets.token_hex(3)}"
    publish(client, name, keras_models["mlp"], tmp_path)
    rows = {"instances": [[0.0, 3.0]]}
    answer = client.post(f"/v1/models/{name}:predict", json=rows)
    assert answer.status_code == 200, answer.text
    for path, pointer in (("/v1/models/-bad:predict", "/path/name"),
                          (f"/v1/models/{name}/versions/0:predict", "/path/version"),
                          (f"/v2/models/{name}/versions/99999999999/infer", "/path/version")):
        body = assert_problem(client.post(path, json=rows), 422)
        assert [e["pointer"] for e in body["errors"]] == [pointer], body
    client.app.dependency_overrides[get_caller] = lambda: Caller(owner="someone-else")
    try:
        assert_problem(client.post(f"/v1/models/{name}:predict", json=rows), 404)
    finally:
        client.app.dependency_overrides.pop(get_caller)
    assert client.post(f"/v1/models/{name}:predict", json=rows).json() == answer.json()
