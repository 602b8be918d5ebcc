"""The client's parts without a service: Server-Sent Events parsing and resuming, problem
errors, array packing, epoch bars, the compile block of a Keras model, the CLI's options, and
the package's own import rules (no TensorFlow, no `app`)."""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from keras_jobs import KerasJobsError
from keras_jobs.arrays import decode, encode, fingerprint, named_arrays, split
from keras_jobs.errors import from_response
from keras_jobs.events import Event, follow, parse_sse
from keras_jobs.progress import EpochBars, fmt
from keras_jobs.transport import Transport, multipart

ROOT = Path(__file__).resolve().parents[2]


def sse(*events: tuple[int, str, str]) -> bytes:
    return b"".join(f"id: {i}\nevent: {kind}\ndata: {data}\n\n".encode()
                    for i, kind, data in events)


EVENTS = [(1, "status", '{"status":"queued"}'), (2, "status", '{"status":"running"}'),
          (3, "epoch", '{"epoch":0,"logs":{"loss":0.5}}'),
          (4, "status", '{"status":"succeeded","result":{}}')]


def test_parse_sse_reads_ids_types_multiline_data_and_skips_comments() -> None:
    lines = [": keep-alive", "", "id: 7", "event: epoch", 'data: {"epoch": 0,', 'data: "logs": {}}',
             "", "retry: 100", "data: 3", ""]
    events = list(parse_sse(lines))
    assert events[0] == Event("epoch", {"epoch": 0, "logs": {}}, 7)
    assert events[1].type == "message" and events[1].data == {"value": 3}


class Dropping(httpx.SyncByteStream):
    """A stream that hands over `body` and then loses the connection."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        raise httpx.ReadError("connection reset by peer")


def mock(handler: Any) -> Transport:
    return Transport(http=httpx.Client(transport=httpx.MockTransport(handler),
                                       base_url="http://test"))


def test_a_dropped_stream_resumes_after_the_last_event_id() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("last-event-id"))
        if len(seen) == 1:
            return httpx.Response(200, stream=Dropping(sse(*EVENTS[:2])))
        if len(seen) == 2:
            raise httpx.ConnectError("connection refused")  # the service restarting
        return httpx.Response(200, content=sse(*EVENTS[2:]))

    waits: list[float] = []
    events = list(follow(mock(handler), "job_1", sleep=waits.append))
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert seen == [None, "2", "2"]
    assert waits == [0.5, 1.0]  # growing waits between reconnects
    assert events[-1].terminal


def test_a_stream_closed_early_is_reopened_unless_the_job_ended() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/events"):
            body = sse(*EVENTS[:2]) if len(calls) == 1 else b""
            return httpx.Response(200, content=body)
        status = "running" if len(calls) == 2 else "cancelled"
        return httpx.Response(200, json={"id": "job_1", "status": status})

    events = list(follow(mock(handler), "job_1", sleep=lambda _s: None))
    assert [e.id for e in events] == [1, 2]
    assert calls == ["/v1/jobs/job_1/events", "/v1/jobs/job_1",
                     "/v1/jobs/job_1/events", "/v1/jobs/job_1"]


def test_reconnects_give_up_and_refusals_are_not_retried() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(KerasJobsError, match="Lost the job's event stream"):
        list(follow(mock(down), "job_1", retries=2, sleep=lambda _s: None))

    def missing(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"type": "/problems/not-found", "title": "Not found",
                                         "status": 404, "detail": "Job job_1 not found."})

    with pytest.raises(KerasJobsError) as info:
        list(follow(mock(missing), "job_1", sleep=lambda _s: None))
    assert info.value.status == 404 and info.value.detail == "Job job_1 not found."


def test_problem_errors_show_their_pointers() -> None:
    problem = {"type": "/problems/invalid-input", "title": "Invalid input", "status": 422,
               "detail": "The spec cannot be built.",
               "errors": [{"pointer": "/keras_config/config/layers/0/class_name",
                           "detail": "layer 'Lambda' is not allowed"}]}
    error = from_response(httpx.Response(422, json=problem))
    assert error.status == 422 and error.title == "Invalid input"
    assert error.pointers == ["/keras_config/config/layers/0/class_name"]
    assert str(error).splitlines() == [
        "422 Invalid input: The spec cannot be built.",
        "  /keras_config/config/layers/0/class_name: layer 'Lambda' is not allowed"]
    proxy = from_response(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert proxy.status == 502 and proxy.title == "Bad Gateway" and "html" in proxy.detail
    served = from_response(httpx.Response(400, json={"error": "bad input"}))
    assert served.detail == "bad input"


def test_the_api_key_is_sent_as_a_bearer_token() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={})

    t = Transport("http://test", api_key="kj_secret")
    t.http._transport = httpx.MockTransport(handler)
    t.json("GET", "/v1/jobs")
    assert seen == ["Bearer kj_secret"]


def test_multipart_body_streams_the_file_and_counts_its_bytes() -> None:
    data = bytes(range(256)) * 9000  # more than one chunk
    counted: list[int] = []
    chunks, content_type, length = multipart(io.BytesIO(data), len(data), 'a"b.npz',
                                             {"name": "n"}, counted.append)
    body = b"".join(chunks)
    assert len(body) == length and sum(counted) == len(data) and len(counted) == 3
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode()) and data in body
    assert b'filename="a%22b.npz"' in body and body.endswith(f"--{boundary}--\r\n".encode())


def test_named_arrays_and_selectors() -> None:
    x = np.zeros((4, 2), "float32")
    arrays, selector = named_arrays("x", x)
    assert selector == "x" and list(arrays) == ["x"] and arrays["x"] is x
    arrays, selector = named_arrays("x", {"a": x, "b b": x[:, :1]})
    assert selector == {"a": "x.a", "b b": "x.1"} and set(arrays) == {"x.a", "x.1"}
    arrays, selector = named_arrays("y", [x, x], ["cls", "reg"])
    assert selector == {"cls": "y.cls", "reg": "y.reg"}
    with pytest.raises(ValueError, match="3 arrays"):
        named_arrays("x", [x, x, x], ["a", "b"])
    assert fingerprint({"x": x}) == fingerprint({"x": x.copy()})
    assert fingerprint({"x": x}) != fingerprint({"x": x + 1})


def test_predict_bodies_round_trip_and_split() -> None:
    x = np.arange(10, dtype="float32").reshape(5, 2)
    body, media = encode(x)
    assert media == "application/x-npy"
    np.testing.assert_array_equal(decode(body), x)
    body, media = encode({"a": x, "b": x[:, 0]})
    assert media == "application/x-npz"
    decoded = decode(body)
    assert isinstance(decoded, dict) and set(decoded) == {"a", "b"}
    parts = split({"a": x, "b": x[:, 0]}, 2)
    assert [len(p["a"]) for p in parts if isinstance(p, dict)] == [2, 2, 1]


def test_epoch_bars_and_the_metrics_table() -> None:
    bars_out, table_out = io.StringIO(), io.StringIO()
    bars = EpochBars(3, 10, file=bars_out, table=True, table_file=table_out)
    for event in [Event("status", {"status": "running"}),
                  Event("progress", {"epoch": 0, "batch": 4, "steps": 10,
                                     "logs": {"loss": 0.9}}),
                  Event("epoch", {"epoch": 0, "logs": {"loss": 0.5, "val_loss": None}}),
                  Event("status", {"status": "queued", "reason": "worker lost"}),
                  Event("epoch", {"epoch": 1, "logs": {"loss": 0.25, "val_loss": 0.3}}),
                  Event("status", {"status": "succeeded"})]:  # stopped early at 2 of 3
        bars.handle(event)
    text = bars_out.getvalue()
    assert "Epoch 1/3" in text and "4/10" in text and "loss=0.9000" in text
    assert "10/10" in text and "Epoch 2/3" in text and "loss=0.2500, val_loss=0.3000" in text
    assert "job queued again: worker lost" in text
    assert bars.bar is None
    assert table_out.getvalue().splitlines() == ["epoch        loss    val_loss",
                                                 "    1      0.5000           -",
                                                 "    2      0.2500      0.3000"]
    assert fmt(1e30) == "1.000e+30" and fmt(0) == "0.0000" and fmt(None) == "-"


def test_compile_block_of_a_keras_model() -> None:
    import keras

    from keras_jobs.spec import compile_block, model_spec

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compile the model first"):
        compile_block(model)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.MeanSquaredError(),
                  metrics=[keras.metrics.BinaryAccuracy(), "mae"], jit_compile=True)
    block = compile_block(model)
    assert set(block) == {"optimizer", "loss", "metrics", "jit_compile"}
    assert block["jit_compile"] is True  # given explicitly: the job compiles with it
    assert block["optimizer"]["class_name"] == "Adam"
    assert block["optimizer"]["config"]["learning_rate"] == pytest.approx(0.01)
    assert block["loss"]["class_name"] == "MeanSquaredError"
    assert block["metrics"][0]["class_name"] == "BinaryAccuracy" and block["metrics"][1] == "mae"
    spec = model_spec(model, "m")
    assert spec["name"] == "m" and '"class_name": "Sequential"' in spec["keras_config"]
    assert "compile_config" not in spec["keras_config"]


def test_cli_options_go_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from keras_jobs.cli import add_commands

    monkeypatch.setenv("KJ_URL", "http://env:1")
    monkeypatch.setenv("KJ_API_KEY", "k")
    parser = argparse.ArgumentParser()
    add_commands(parser, parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["jobs", "list"])
    assert (args.url, args.api_key, args.json) == ("http://env:1", "k", False)
    args = parser.parse_args(["--url", "http://a", "--json", "jobs", "list"])
    assert (args.url, args.json) == ("http://a", True)
    args = parser.parse_args(["models", "predict", "m", "x.npy", "--url", "http://b", "--json",
                              "--version", "2"])
    assert (args.url, args.json, args.version) == ("http://b", True, 2)


def test_cli_reports_an_unreachable_service(capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main

    with socket_port() as port:
        status = main(["--url", f"http://127.0.0.1:{port}", "jobs", "list"])
    assert status == 1
    assert "Cannot reach the service" in capsys.readouterr().err


class socket_port:
    """A local port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_exc: object) -> None:
        self.sock.close()


def test_the_package_imports_without_tensorflow_numpy_or_the_service() -> None:
    code = ("import sys, keras_jobs, keras_jobs.cli; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'app', 'tensorflow', 'keras', 'numpy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT / "tests", check=True)
    assert out.stdout.strip() == "[]", out


def test_the_client_never_imports_the_service() -> None:
    found = []
    for path in (ROOT / "keras_jobs").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("app", "worker")]
    assert found == []


def test_fit_arrays_become_dataset_arrays() -> None:
    from keras_jobs.inputs import pack_arrays

    x, y = np.zeros((6, 2), "float32"), np.ones((6, 1), "float32")
    packed = pack_arrays(x, y, np.arange(6.0), ["x"], ["dense"])
    assert (packed.x, packed.y, packed.sample_weight, packed.rows) == ("x", "y",
                                                                      "sample_weight", 6)
    assert packed.arrays is not None and set(packed.arrays) == {"x", "y", "sample_weight"}
    two = pack_arrays({"a": x, "b": x}, [y, y], None, ["a", "b"], ["c", "d"])
    assert two.x == {"a": "x.a", "b": "x.b"} and two.y == {"c": "y.c", "d": "y.d"}


def test_fit_maps_keras_callback_objects_and_refuses_user_code() -> None:
    import keras

    from keras_jobs.client import callback_options
    from keras_jobs.errors import KerasJobsError

    spec = {"type": "TerminateOnNaN"}
    options = callback_options([spec, keras.callbacks.EarlyStopping(patience=3)])
    assert options["callbacks"][0] == spec
    assert options["callbacks"][1]["type"] == "EarlyStopping"
    assert options["callbacks"][1]["patience"] == 3

    class Mine(keras.callbacks.Callback):
        pass

    with pytest.raises(KerasJobsError) as info:
        callback_options([Mine()])
    assert "callbacks[0]" in str(info.value) and "EarlyStopping" in str(info.value)
    assert callback_options(None) == {}


def test_batches_of_a_generator_become_one_npz_without_holding_them_all() -> None:
    from keras_jobs.inputs import is_iterable_data, pack_batches

    x = np.arange(50, dtype="float32").reshape(25, 2)
    y = np.arange(25, dtype="int64")

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for i in range(0, 25, 10):
            yield x[i:i + 10], y[i:i + 10], np.ones(len(y[i:i + 10]), dtype="float32")

    assert is_iterable_data(batches()) and not is_iterable_data(x)
    assert not is_iterable_data({"a": x}) and not is_iterable_data([x, x])
    packed = pack_batches(batches(), [], [])
    try:
        assert (packed.rows, packed.batch_size, packed.x, packed.y) == (25, 10, "x", "y")
        assert packed.sample_weight == "sample_weight" and packed.path is not None
        with np.load(packed.path) as data:
            np.testing.assert_array_equal(data["x"], x)
            np.testing.assert_array_equal(data["y"], y)
            assert data["sample_weight"].shape == (25,)
    finally:
        packed.close()
    with pytest.raises(ValueError, match="rows of shape"):
        pack_batches(iter([(x[:2], y[:2]), (x[:2, :1], y[:2])]), [], [])
    with pytest.raises(ValueError, match="no batches"):
        pack_batches(iter([]), [], [])


def test_predict_halves_its_requests_after_a_413() -> None:
    from keras_jobs import Client

    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        rows = np.load(io.BytesIO(request.content), allow_pickle=False)
        sizes.append(len(rows))
        if len(rows) > 300:
            return httpx.Response(413, json={"title": "Too many rows", "detail": "…",
                                             "status": 413, "limit": 300})
        out = io.BytesIO()
        np.save(out, rows[:, :1] * 2)
        return httpx.Response(200, content=out.getvalue())

    kj = Client("http://test")
    kj.transport = mock(handler)
    x = np.arange(2000, dtype="float32").reshape(1000, 2)
    got = kj.predict("m", x)
    np.testing.assert_array_equal(got, x[:, :1] * 2)
    assert sizes[0] == 1000 and max(sizes[1:]) == 300 and sum(sizes[1:]) == 1000


def test_the_docs_client_calls_fit_the_clients_signatures() -> None:
    """The client example of docs/client-and-cli.md (not run: it needs a service and
    MobileNetV2's weights) calls only methods the client has, with arguments their signatures
    take."""
    import inspect
    import re

    from keras_jobs import Client

    text = (ROOT / "docs" / "client-and-cli.md").read_text()
    section = text[text.index("## Python client"):]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    calls = [node for node in ast.walk(ast.parse(block.group(1)))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "client"]
    assert {c.func.attr for c in calls} >= {"fit", "evaluate", "predict", "predict_job",  # type: ignore[attr-defined]
                                            "dataset", "load_model"}
    for call in calls:
        method = getattr(Client, call.func.attr)  # type: ignore[attr-defined]
        inspect.signature(method).bind(None, *call.args,
                                       **{k.arg: k.value for k in call.keywords if k.arg})


def test_a_reader_that_leaves_early_sees_no_broken_pipe_message() -> None:
    """`keras-jobs jobs list | head -1`: the first row, then silence on stderr."""
    code = ("import argparse, sys\n"
            "from keras_jobs.cli import run\n"
            "def rows(client, args):\n"
            "    for i in range(200_000):\n"
            "        print('row', i)\n"
            "    return 0\n"
            "sys.exit(run(rows, argparse.Namespace(url='http://127.0.0.1:9', api_key=None)))\n")
    shown = subprocess.run(f'"{sys.executable}" -c "$CODE" | head -1', shell=True,
                           env={**os.environ, "CODE": code}, capture_output=True, text=True,
                           timeout=60)
    assert shown.stdout == "row 0\n"
    assert shown.stderr == "", shown.stderr
