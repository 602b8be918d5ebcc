"""Every dtype a Keras model takes or gives is served: a `mixed_bfloat16` and a `float16`
model (outputs bfloat16 / float16) and a TextVectorization model (string input), each made with
plain Keras, uploaded as `.keras`, and asked over TF Serving JSON, `.npy` and OIP v2 (JSON and
binary, parsed by tritonclient): the answers are Keras's own predictions."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from app.predict.oip import HEADER_LENGTH

WORDS = np.array([["good movie"], ["bad film"], ["great good fun"], ["awful bad"]])


@dataclass(frozen=True)
class Served:
    name: str
    x: np.ndarray
    expected: np.ndarray  # model.predict(x) in this process, in the model's dtype


def _save(model: Any, folder: Path, name: str, x: np.ndarray, client: Any) -> Served:
    path = folder / f"{name}.keras"
    model.save(path)
    expected = np.asarray(model.predict(x, verbose=0))
    r = client.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", path.read_bytes())})
    assert r.status_code == 201, r.text
    return Served(name, x, expected)


@pytest.fixture(scope="module")
def models(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    import keras
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("dtypes")
    x = np.random.default_rng(3).normal(size=(5, 3)).astype("float32")
    served: dict[str, Served] = {}
    for policy in ("mixed_bfloat16", "float16"):
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input(shape=(3,)),
                                  keras.layers.Dense(4, activation="relu", dtype=policy),
                                  keras.layers.Dense(2, dtype=policy)])
        model.compile(optimizer="adam", loss="mse")
        served[policy] = _save(model, folder, policy.replace("_", "-"), x, client)
    text = keras.layers.TextVectorization(max_tokens=20, output_mode="multi_hot")
    text.adapt(WORDS)
    inp = keras.Input(shape=(1,), dtype="string")
    keras.utils.set_random_seed(3)
    model = keras.Model(inp, keras.layers.Dense(1)(text(inp)))
    model.compile(optimizer="adam", loss="mse")
    path = folder / "text.keras"
    model.save(path)
    expected = np.asarray(model.predict(tf.constant(WORDS), verbose=0))
    r = client.post("/v1/models/text/versions", files={"file": ("m.keras", path.read_bytes())})
    assert r.status_code == 201, r.text
    served["text"] = Served("text", WORDS, expected)
    yield served
    from app.predict.service import get_serving

    get_serving().cache.clear()  # these models leave no memory held behind them


@pytest.mark.parametrize(("policy", "dtype"), [("mixed_bfloat16", "bfloat16"),
                                                ("float16", "float16")])
def test_half_precision_outputs_over_json_npy_and_oip(client: Any, models: dict[str, Served],
                                                      policy: str, dtype: str) -> None:
    m = models[policy]
    assert m.expected.dtype.name == dtype
    want = m.expected.astype("float32")
    meta = client.get(f"/v1/models/{m.name}/metadata").json()
    assert meta["outputs"][0]["dtype"] == dtype

    # JSON: float32 numbers, exactly the half-precision values.
    r = client.post(f"/v1/models/{m.name}:predict", json={"instances": m.x.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.array(r.json()["predictions"], "float32"), want)

    # .npy: float16 as itself; bfloat16 (which NumPy lacks) as float32, said in a header.
    buf = io.BytesIO()
    np.save(buf, m.x)
    r = client.post(f"/v1/models/{m.name}:predict", content=buf.getvalue(),
                    headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"})
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content), allow_pickle=False)
    if dtype == "float16":
        assert got.dtype == np.float16 and "x-converted-dtypes" not in r.headers
    else:
        assert got.dtype == np.float32
        assert r.headers["x-converted-dtypes"] == f"{meta['outputs'][0]['name']}=" \
                                                  "bfloat16->float32"
    np.testing.assert_array_equal(got.astype("float32"), want)

    # OIP v2: BF16 / FP16, in binary (tritonclient's default) and in JSON.
    datatype = {"bfloat16": "BF16", "float16": "FP16"}[dtype]
    out_name = meta["outputs"][0]["name"]
    for binary in (True, False):
        inp = InferInput(meta["inputs"][0]["name"], list(m.x.shape), "FP32")
        inp.set_data_from_numpy(m.x, binary_data=binary)
        body, size = InferenceServerClient.generate_request_body(
            [inp], outputs=[InferRequestedOutput(out_name, binary_data=binary)])
        headers = {HEADER_LENGTH: str(size)} if size is not None else {}
        r = client.post(f"/v2/models/{m.name}/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        res = InferenceServerClient.parse_response_body(
            r.content, header_length=r.headers.get(HEADER_LENGTH))
        assert res.get_output(out_name)["datatype"] == datatype
        np.testing.assert_array_equal(res.as_numpy(out_name).astype("float32"), want)
    v2 = client.get(f"/v2/models/{m.name}").json()
    assert v2["outputs"][0]["datatype"] == datatype


def test_string_input_over_json_npy_and_oip(client: Any, models: dict[str, Served]) -> None:
    m = models["text"]
    r = client.post("/v1/models/text:predict", json={"instances": m.x.tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], m.expected, rtol=1e-6)

    for arr in (m.x, m.x.astype("S")):  # text (<U) and bytes (S) arrays
        buf = io.BytesIO()
        np.save(buf, arr)
        r = client.post("/v1/models/text:predict", content=buf.getvalue(),
                        headers={"Content-Type": "application/x-npy",
                                 "Accept": "application/x-npy"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.load(io.BytesIO(r.content)), m.expected, rtol=1e-6)

    meta = client.get("/v2/models/text").json()
    assert meta["inputs"][0]["datatype"] == "BYTES"
    for binary in (True, False):
        inp = InferInput(meta["inputs"][0]["name"], list(m.x.shape), "BYTES")
        inp.set_data_from_numpy(m.x.astype(object), binary_data=binary)
        body, size = InferenceServerClient.generate_request_body([inp])
        headers = {HEADER_LENGTH: str(size)} if size is not None else {}
        r = client.post("/v2/models/text/infer", content=body, headers=headers)
        assert r.status_code == 200, r.text
        res = InferenceServerClient.parse_response_body(
            r.content, header_length=r.headers.get(HEADER_LENGTH))
        out = res.get_response()["outputs"][0]["name"]
        np.testing.assert_allclose(res.as_numpy(out), m.expected, rtol=1e-6)

    # Numbers for a string input: a 400 that says what the model takes.
    r = client.post("/v1/models/text:predict", json={"instances": [[1.0]]})
    assert r.status_code == 400
    assert "of string" in r.json()["detail"]


def test_string_outputs_and_bfloat16_inputs_without_a_server() -> None:
    """A string output (a TensorFlow string tensor: an object array of bytes) is text in JSON,
    `S` bytes in .npy and BYTES over OIP; a bfloat16 input takes JSON numbers and FP32-valued
    arrays when no value overflows it."""
    import ml_dtypes

    from app.predict import codec, npy, oip
    from app.predict.signature import TensorInfo, check_array

    words = TensorInfo("w", (None, 1), "string")
    out = np.array([[b"caf\xc3\xa9"], [b"x"]], dtype=object)
    assert codec.encode([out], [words], "row") == '{"predictions":[["café"],["x"]]}'.encode()
    body, media = npy.encode_npy([out], [words])
    assert np.load(io.BytesIO(body), allow_pickle=False).tolist() == [[b"caf\xc3\xa9"], [b"x"]]
    payload, headers = oip.encode_infer("m", 1, [out], [words], None, True, None)
    res = InferenceServerClient.parse_response_body(payload,
                                                    header_length=headers.get(HEADER_LENGTH))
    assert res.as_numpy("w").tolist() == [[b"caf\xc3\xa9"], [b"x"]]
    assert res.get_output("w")["datatype"] == "BYTES"

    half = TensorInfo("h", (None, 2), "bfloat16")
    arr = check_array(np.array([[1.5, -2.0]]), half, "")
    assert arr.dtype == ml_dtypes.bfloat16 and arr.astype("float32").tolist() == [[1.5, -2.0]]
    with pytest.raises(Exception, match="beyond the range of bfloat16"):
        check_array(np.array([[1e39, 0.0]]), half, "/instances")
