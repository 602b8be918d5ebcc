"""Serving benchmark: keras-jobs' predict against the in-process limit and two plain servers.

In one run, one after another (never two servers loaded at once), per model:

- "in-process": the model in a compiled `tf.function` (fixed input signature, batch dim None)
  called in a loop in a fresh process, no HTTP: batch 1 (latency) and batch 64 (rows/s);
- "predict": FastAPI + uvicorn, the handler calls `model.predict(x)` (the tutorials' way);
- "compiled": FastAPI + uvicorn, the handler calls the compiled `tf.function`, no batching;
- "keras-jobs": `keras-jobs serve --no-worker` on a fresh KJ_HOME, the model uploaded as a
  `.keras` version and called at `POST /v1/models/{name}:predict`.

The baselines live in bench/predict_support/baseline_server.py. Models (random weights, seed 0):
"mlp" 784-256-256-10 (bound by HTTP) and "conv", a small Conv2D net on 32x32x3 (bound by
compute). Load comes from `wrk` (apt-get install wrk) with a Lua script; each cell is a short
warm-up run, then a measured one. Bodies: one row as JSON at every concurrency, and (MLP only:
1,024 conv rows as JSON are ~60 MB) 1,024 rows as JSON and as `.npy` (Content-Type and Accept
application/x-npy) at --big-concurrency. Before each cell one request is sent and its answer
checked against the model's own output; a cell whose request is not answered 200 shows n/a.
A measured run is lengthened (up to 6x --duration) when one request alone is so slow that
--duration would not hold 3 rounds of every connection's request, and the server is left to
finish what the warm-up run queued before it starts. Server CPU per request is the server's
process tree's utime+stime (/proc) over the measured run divided by the completed requests;
"mean batch" for keras-jobs is read from the `keras_jobs_predict_batch_rows` histogram
(`_sum`/`_count`) at GET /metrics. req/s and rows/s count 2xx answers only; after a run with
non-2xx answers a short diagnostic run (whose client reads every answer) says which statuses
and what the first one said. The load generator shares the machine with the server.

Prints progress to stderr, then a markdown table per model and the targets (PASS/MISS) to stdout.

Usage: python bench/predict.py [--models mlp,conv] [--servers inprocess,predict,compiled,keras-jobs]
       [--duration 10] [--concurrency 1,16,64] [--kj-workers N] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUPPORT = Path(__file__).resolve().parent / "predict_support"
NPY = "application/x-npy"
JSON = "application/json"
MODELS = ("mlp", "conv")
SERVERS = ("inprocess", "predict", "compiled", "keras-jobs")
BIG_MODELS = ("mlp",)  # models that get the 1,024-row JSON vs npy cells
INPROCESS_BATCHES = (1, 64)
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0
PROBE_TRIES = 5
ROUNDS = 3  # a measured run lasts at least this many rounds of every connection's request ...
STRETCH = 6  # ... but at most this many times --duration
PR_SET_PDEATHSIG = 1
# Inherited settings that would point keras-jobs away from its fresh KJ_HOME.
KJ_LOCATIONS = ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- models (children)

def build_model(kind: str) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    if kind == "mlp":
        return keras.Sequential([
            keras.Input(shape=(784,), name="x"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ], name="mlp")
    return keras.Sequential([
        keras.Input(shape=(32, 32, 3), name="x"),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, activation="softmax"),
    ], name="conv")


def input_shape(kind: str) -> tuple[int, ...]:
    return (784,) if kind == "mlp" else (32, 32, 3)


def child_build(folder: Path, models: list[str], rows: int) -> None:
    """Saves <model>.keras (uncompiled), <model>_x.npy (inputs) and <model>_y.npy (outputs)."""
    import keras
    import tensorflow as tf

    for kind in models:
        model = build_model(kind)
        model.save(folder / f"{kind}.keras")
        x = np.random.default_rng(1).random((rows, *input_shape(kind)), dtype=np.float32)
        np.save(folder / f"{kind}_x.npy", x)
        np.save(folder / f"{kind}_y.npy", np.asarray(model(x, training=False)))
    print(json.dumps({"tensorflow": tf.__version__, "keras": keras.__version__}))


def child_inprocess(model_path: Path, x_path: Path, duration: float, warmup: float) -> None:
    """The limit without HTTP: a compiled tf.function called in a loop on numpy input."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)
    spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype)
    fn = tf.function(lambda t: model(t, training=False), input_signature=[spec])
    x = np.load(x_path)
    results = []
    for batch in INPROCESS_BATCHES:
        xb = np.ascontiguousarray(x[:batch])
        end = time.perf_counter() + warmup
        while time.perf_counter() < end:
            fn(xb).numpy()
        times: list[float] = []
        cpu0, t0 = time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < duration:
            t = time.perf_counter()
            fn(xb).numpy()
            times.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        p50, p90, p99 = np.percentile(times, [50, 90, 99]) * 1000
        results.append({"batch": batch, "calls": len(times), "seconds": wall, "cpu_s": cpu,
                        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99})
    print(json.dumps(results))


def run_child(args: list[str], timeout: float) -> Any:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------- processes

def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if this bench dies without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in clock ticks) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return int(fields[1]), sum(int(f) for f in fields[11:15])


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (field 5 of /proc/<pid>/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                raw = (entry / "stat").read_text()
                if int(raw[raw.rindex(")") + 2:].split()[2]) == pgid:
                    found.append(int(entry.name))
    return found


def tree_cpu_seconds(root: int) -> float:
    """CPU time of `root`, its live descendants and the children they have reaped."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _proc_stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    ticks, todo = 0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            ticks += stats[pid][1]
            todo.extend(children.get(pid, []))
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    """A server process in its own session (so its whole tree can be stopped at once)."""

    running: list[Server] = []

    def __init__(self, label: str, cmd: list[str], env: dict[str, str], log_path: Path,
                 port: int) -> None:
        self.label, self.cmd, self.env, self.log_path, self.port = label, cmd, env, log_path, port
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: io.BufferedWriter | None = None
        self.log_shown = False

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        Server.running.append(self)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, path: str = "/healthz") -> None:
        import httpx

        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.label} exited during start-up:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + path, timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"{self.label} not ready after {READY_TIMEOUT_S:.0f} s:\n"
                           f"{self.log_tail()}")

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return tree_cpu_seconds(self.proc.pid)

    def wait_idle(self, timeout: float = 120.0, busy: float = 0.05) -> None:
        """Until the server tree uses under `busy` of one core over 0.25 s (e.g. finishing the
        requests of a load run whose client has gone)."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.25)
            now = self.cpu_seconds()
            if now - last < busy * 0.25:
                return
            last = now
        log(f"  !! {self.label} still busy after {timeout:.0f} s; measuring anyway")

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)  # its own session: pgid == pid
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.proc is not None and group_members(self.proc.pid):
            # Anything of its group left behind (e.g. a worker that ignored SIGTERM).
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self in Server.running:
            Server.running.remove(self)


@contextlib.contextmanager
def serving(server: Server) -> Iterator[Server]:
    log(f"  starting {server.label} on port {server.port}")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        log(f"  stopped {server.label}")


# ------------------------------------------------------------------------------------- bodies

@dataclass(frozen=True)
class Body:
    kind: str  # "json" | "npy"
    rows: int
    path: Path
    script: Path  # the wrk Lua script that posts it
    diagnose: Path  # the same, also counting non-2xx answers by status (slower: not measured)

    @property
    def label(self) -> str:
        return f"{self.kind} x{self.rows}"

    @property
    def content_type(self) -> str:
        return NPY if self.kind == "npy" else JSON


LUA = r"""local f = assert(io.open([==[{path}]==], "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "{ctype}"
wrk.headers["Accept"] = "{ctype}"

function done(summary, latency, requests)
  local e = summary.errors
  local n = summary.requests
  local function pct(p) if n > 0 then return latency:percentile(p) else return 0 end end
  local mean = 0
  if n > 0 then mean = latency.mean end
  io.write(string.format('BENCHJSON {{"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "mean_us": %d, "max_us": %d}}\n', n, summary.duration,
    summary.bytes, e.connect, e.read, e.write, e.status, e.timeout, pct(50), pct(90), pct(99),
    mean, latency.max))
end
"""


# Appended to LUA for the diagnostic run: each thread counts non-2xx statuses and keeps the first
# such body; done() writes "status count" lines and that body to files.
LUA_DIAGNOSE = r"""
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) codes = {{}}; first = "" end
function response(status, headers, body)
  if status > 299 then
    codes[status] = (codes[status] or 0) + 1
    if first == "" then first = body or "" end
  end
end
local report = done
function done(summary, latency, requests)
  local out = assert(io.open([==[{codes}]==], "w"))
  local first_body = ""
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("codes")) do out:write(status, " ", n, "\n") end
    if first_body == "" then first_body = t:get("first") end
  end
  out:close()
  local b = assert(io.open([==[{first}]==], "wb"))
  b:write(first_body)
  b:close()
  report(summary, latency, requests)
end
"""


def make_body(folder: Path, model: str, kind: str, x: np.ndarray) -> Body:
    path = folder / f"{model}_{kind}_{len(x)}.{'npy' if kind == 'npy' else 'json'}"
    if kind == "npy":
        np.save(path, x)
    else:  # what a client sends: float32 rows through tolist(), full repr
        path.write_text(json.dumps({"instances": x.tolist()}))
    script = path.with_suffix(".lua")
    lua = LUA.format(path=path, ctype=NPY if kind == "npy" else JSON)
    script.write_text(lua)
    diagnose = path.with_suffix(".diagnose.lua")
    diagnose.write_text(lua + LUA_DIAGNOSE.format(codes=path.with_suffix(".codes"),
                                                  first=path.with_suffix(".first")))
    return Body(kind, len(x), path, script, diagnose)


def check_answer(status: int, content_type: str, content: bytes, body: Body,
                 expected: np.ndarray) -> tuple[bool, str]:
    """Whether a warm-up answer is usable (200), and what looked wrong in it."""
    snippet = content[:600].decode(errors="replace")
    if status != 200:
        with contextlib.suppress(ValueError, AttributeError):
            snippet = json.loads(content).get("detail") or snippet  # problem+json
        return False, f"HTTP {status}: {snippet}"
    try:
        if body.kind == "npy" and not content_type.startswith(NPY):
            return True, f"asked for {NPY}, answered {content_type!r}"
        if content_type.startswith(NPY):
            got = np.load(io.BytesIO(content), allow_pickle=False)
        else:
            got = np.asarray(json.loads(content)["predictions"], dtype=np.float32)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return True, f"cannot read the answer ({exc}): {snippet}"
    if got.shape != expected.shape:
        return True, f"answer shape {got.shape}, expected {expected.shape}"
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return True, f"answer differs from the model's output by up to " \
                     f"{float(np.max(np.abs(got - expected))):.3g}"
    return True, ""


# ----------------------------------------------------------------------------------- load (wrk)

def run_wrk(url: str, body: Body, conns: int, seconds: int,
            diagnose: bool = False) -> dict[str, float]:
    timeout = max(30, 3 * seconds)
    script = body.diagnose if diagnose else body.script
    cmd = ["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s",
           "--timeout", f"{timeout}s", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 60)
    for line in out.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            result: dict[str, float] = json.loads(line.removeprefix("BENCHJSON "))
            return result
    raise RuntimeError(f"wrk gave no result ({out.returncode}): {out.stdout[-1500:]}"
                       f"{out.stderr[-1500:]}")


def diagnose_errors(server: Server, url: str, body: Body, conns: int,
                    args: argparse.Namespace) -> str:
    """After a measured run with non-2xx answers: which statuses, and what the first one said
    (a separate, short run whose client looks at every answer)."""
    server.wait_idle()
    codes_file, first_file = body.path.with_suffix(".codes"), body.path.with_suffix(".first")
    for f in (codes_file, first_file):
        f.unlink(missing_ok=True)
    try:
        run_wrk(url, body, conns, max(1, args.warmup), diagnose=True)
        counts: dict[str, int] = {}
        for line in codes_file.read_text().splitlines():  # one line per thread and status
            code, n = line.split()
            counts[code] = counts.get(code, 0) + int(n)
        raw = first_file.read_bytes()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return f"(diagnostic run failed: {exc})"
    detail = raw[:300].decode(errors="replace")
    with contextlib.suppress(ValueError, AttributeError):
        detail = json.loads(raw).get("detail") or detail
    codes = ", ".join(f"{code} x{n}" for code, n in sorted(counts.items(),
                                                              key=lambda c: -c[1])) or "none"
    return f"(in a {max(1, args.warmup)} s diagnostic run: {codes}; first said: {detail!r})"


BATCH_HISTOGRAM = "keras_jobs_predict_batch_rows"
METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def batch_histogram(base: str) -> tuple[float, float] | None:
    """(sum, count) over every series of the batch-rows histogram."""
    import httpx

    try:
        r = httpx.get(base + "/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    total = count = 0.0
    found = False
    for line in r.text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or not m.group(1).startswith(BATCH_HISTOGRAM):
            continue
        with contextlib.suppress(ValueError):
            if m.group(1).endswith("_sum"):
                total += float(m.group(3))
                found = True
            elif m.group(1).endswith("_count"):
                count += float(m.group(3))
    return (total, count) if found else None


# ------------------------------------------------------------------------------------ results

@dataclass
class Row:
    server: str
    body: str
    conns: int
    rps: float | None = None
    rows_s: float | None = None
    p50: float | None = None  # ms
    p90: float | None = None
    p99: float | None = None
    batch: float | str | None = None
    cpu_ms: float | None = None
    note: str = ""


def run_seconds(args: argparse.Namespace, one_request_s: float, conns: int) -> int:
    """--duration, lengthened (up to STRETCH x) so the run holds ROUNDS rounds of every
    connection's request: with slow requests (1,024 JSON rows) a short run sees none finish."""
    need = math.ceil(ROUNDS * one_request_s * conns)
    duration: int = args.duration
    return max(duration, min(need, STRETCH * duration))


def measure(server: Server, url: str, body: Body, conns: int, args: argparse.Namespace,
            batch: float | str, one_request_s: float) -> Row:
    run_wrk(url, body, conns, args.warmup)
    server.wait_idle()  # requests the warm-up left queued must not run into the measured run
    hist0 = batch_histogram(server.base) if server.label == "keras-jobs" else None
    seconds = run_seconds(args, one_request_s, conns)
    cpu0 = server.cpu_seconds()
    r = run_wrk(url, body, conns, seconds)
    cpu1 = server.cpu_seconds()
    if server.label == "keras-jobs":
        hist1 = batch_histogram(server.base)
        batch = "n/a"
        # (With several server processes each may keep its own histogram: a negative
        # difference means two processes answered, and the cell says n/a.)
        if hist0 is not None and hist1 is not None and hist1[1] > hist0[1] \
                and hist1[0] >= hist0[0]:
            batch = (hist1[0] - hist0[0]) / (hist1[1] - hist0[1])
    elapsed = r["duration_us"] / 1e6
    done, bad = int(r["requests"]), int(r["status"])
    ok = done - bad
    socket_errors = int(r["connect"] + r["read"] + r["write"] + r["timeout"])
    notes = []
    if seconds > args.duration:
        notes.append(f"run lengthened to {seconds} s (one request alone: "
                     f"{one_request_s * 1000:,.0f} ms)")
    if not done:
        notes.append(f"no answer within the {seconds} s run")
    if bad:
        notes.append(f"{bad} non-2xx of {done} {diagnose_errors(server, url, body, conns, args)}")
    if socket_errors:
        notes.append(f"socket errors: connect {int(r['connect'])}, read {int(r['read'])}, "
                     f"write {int(r['write'])}, timeout {int(r['timeout'])}")
    return Row(server.label, body.label, conns, rps=ok / elapsed, rows_s=ok * body.rows / elapsed,
               p50=r["p50_us"] / 1000 if done else None,
               p90=r["p90_us"] / 1000 if done else None,
               p99=r["p99_us"] / 1000 if done else None,
               batch=batch, cpu_ms=(cpu1 - cpu0) * 1000 / done if done else None,
               note="; ".join(notes))


def retry_after_s(value: str | None) -> float:
    try:
        return min(max(float(value or 1), 0.1), 10.0)
    except ValueError:  # an HTTP date
        return 1.0


def bench_http(server: Server, model: str, bodies: list[tuple[Body, list[int]]],
               expected: np.ndarray, args: argparse.Namespace, rows: list[Row]) -> None:
    """Warm-up request per body (skipping bodies not answered 200), then the wrk cells, whose
    rows are appended to `rows` as they finish."""
    import httpx

    url = f"{server.base}/v1/models/{model}:predict"
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        for body, conns_list in bodies:
            content = body.path.read_bytes()
            headers = {"Content-Type": body.content_type, "Accept": body.content_type}
            one_request_s = 0.0
            server.wait_idle()  # e.g. what the previous cell's clients left queued
            try:
                for _ in range(PROBE_TRIES):  # a busy server may still say 503 + Retry-After
                    r = client.post(url, content=content, headers=headers)
                    if r.status_code != 503:
                        break
                    time.sleep(retry_after_s(r.headers.get("retry-after")))
                ok, note = check_answer(r.status_code, r.headers.get("content-type", ""),
                                        r.content, body, expected[:body.rows])
                if ok:  # the first one may have loaded the model: time the next ones
                    times = []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        client.post(url, content=content, headers=headers)
                        times.append(time.perf_counter() - t0)
                    one_request_s = min(times)
            except httpx.HTTPError as exc:
                ok, note = False, f"request failed: {exc!r}"
            if note:
                log(f"  !! {server.label} {body.label}: {note}")
            if note.startswith("HTTP 5") and not server.log_shown:
                server.log_shown = True
                log(f"  !! {server.label}'s log ends:\n{server.log_tail()}")
            if not ok:
                rows += [Row(server.label, body.label, c, note=f"skipped: {note[:120]}")
                         for c in conns_list]
                continue
            for conns in conns_list:
                if not server.alive():
                    rows.append(Row(server.label, body.label, conns, note="server died"))
                    continue
                server.wait_idle()
                row = measure(server, url, body, conns, args, body.rows, one_request_s)
                if note:
                    row.note = "; ".join(filter(None, [row.note, note[:120]]))
                log(f"  {server.label:>10} {body.label:<9} c={conns:<3} {fmt(row.rps)} req/s, "
                    f"{fmt(row.rows_s)} rows/s, p50 {fmt(row.p50)} ms, p99 {fmt(row.p99)} ms, "
                    f"CPU {fmt(row.cpu_ms)} ms/req {row.note}")
                rows.append(row)


def inprocess_rows(folder: Path, model: str, args: argparse.Namespace) -> list[Row]:
    log("  in-process tf.function loop")
    res = run_child(["inprocess", "--folder", str(folder), "--model-name", model,
                     "--duration", str(args.duration), "--warmup", str(args.warmup)],
                    timeout=10 * (args.duration + args.warmup) + 300)
    rows = []
    for r in res:
        calls = r["calls"] / r["seconds"]
        rows.append(Row("in-process", f"tensor x{r['batch']}", 1, rps=calls,
                        rows_s=calls * r["batch"], p50=r["p50_ms"], p90=r["p90_ms"],
                        p99=r["p99_ms"], batch=r["batch"], cpu_ms=r["cpu_s"] * 1000 / r["calls"]))
        log(f"  in-process batch {r['batch']}: p50 {r['p50_ms']:.3f} ms, "
            f"{calls * r['batch']:.0f} rows/s")
    return rows


# ------------------------------------------------------------------------------------ servers

def baseline_server(mode: str, folder: Path, model: str) -> Server:
    port = free_port()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BENCH_MODE": mode,
           "BENCH_MODEL": str(folder / f"{model}.keras")}
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(SUPPORT),
           "baseline_server:create_app", "--factory", "--host", "127.0.0.1", "--port", str(port)]
    return Server(mode, cmd, env, folder / f"{mode}-{model}.log", port)


def kj_executable() -> str:
    local = Path(sys.executable).with_name("keras-jobs")
    found = str(local) if local.exists() else shutil.which("keras-jobs")
    if not found:
        raise RuntimeError("no `keras-jobs` console script next to this Python or on PATH")
    return found


def kj_server(folder: Path, model: str, workers: int | None) -> Server:
    port = free_port()
    home = Path(tempfile.mkdtemp(prefix=f"kj-home-{model}-", dir=folder))
    env = {k: v for k, v in os.environ.items() if k not in KJ_LOCATIONS}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "KJ_HOME": str(home)})
    cmd = [kj_executable(), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"]
    if workers:
        cmd += ["--workers", str(workers)]
    return Server("keras-jobs", cmd, env, folder / f"keras-jobs-{model}.log", port)


def kj_supports_workers() -> bool:
    out = subprocess.run([kj_executable(), "serve", "--help"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return "--workers" in out.stdout


def kj_upload(server: Server, folder: Path, model: str) -> None:
    import httpx

    with (folder / f"{model}.keras").open("rb") as f:
        r = httpx.post(f"{server.base}/v1/models/{model}/versions", timeout=REQUEST_TIMEOUT_S,
                       files={"file": (f"{model}.keras", f, "application/octet-stream")})
    if r.status_code != 201:
        detail = r.text[:600]
        with contextlib.suppress(ValueError, AttributeError):
            detail = r.json().get("detail") or detail
        log(f"  !! upload answered {r.status_code}; {server.label}'s log ends:\n"
            f"{server.log_tail()}")
        raise RuntimeError(f"upload of {model} answered HTTP {r.status_code}: {detail}")
    log(f"  uploaded {model}: {r.text[:200]}")


# ------------------------------------------------------------------------------------- report

def fmt(value: float | str | None, digits: int | None = None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if digits is None:
        digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f}"


def table(rows: list[Row]) -> str:
    head = ["server", "body", "conns", "req/s", "rows/s", "p50 ms", "p90 ms", "p99 ms",
            "mean batch", "CPU ms/req"]
    cells = [[r.server, r.body, str(r.conns), fmt(r.rps), fmt(r.rows_s), fmt(r.p50),
              fmt(r.p90), fmt(r.p99), fmt(r.batch), fmt(r.cpu_ms)] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" if i > 1 else "-" * (w + 2)
                            for i, w in enumerate(widths)) + "|"]
    for c in cells:
        lines.append("| " + " | ".join(v.rjust(w) if i > 1 else v.ljust(w)
                                       for i, (v, w) in enumerate(zip(c, widths, strict=True)))
                     + " |")
    notes = [f"- {r.server} {r.body} c={r.conns}: {r.note}" for r in rows if r.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def find(results: dict[str, list[Row]], model: str, server: str, body: str,
         conns: int) -> Row | None:
    for r in results.get(model, []):
        if (r.server, r.body, r.conns) == (server, body, conns):
            return r
    return None


def why(*cells: tuple[str, Row | None]) -> str:
    """Why a target could not be judged: the missing cells, or their notes."""
    reasons = [f"{what}: " + ("no such cell" if row is None else row.note or "no value")
               for what, row in cells if row is None or row.rps is None or row.p50 is None]
    return "; ".join(reasons) or "not measured"


def caveat(*rows: Row | None) -> str:
    """A warning for a target judged on cells where some answers were errors."""
    bad = [f"{r.server} {r.body} c={r.conns}" for r in rows if r and "non-2xx" in r.note]
    return f" (caution: non-2xx answers in {', '.join(bad)}; see the table)" if bad else ""


def at_least(label: str, value: float | None, bound: float | None, detail: str,
             missing: str) -> str:
    if value is None or bound is None:
        return f"[n/a ] {label}: {missing}"
    ratio = value / bound if bound else float("inf")
    verdict = "PASS" if value >= bound else "MISS"
    by = f"{(ratio - 1) * 100:+.0f}%" if bound else "bound 0"
    return f"[{verdict}] {label}: {detail} -> {ratio:.2f}x of the target ({by})"


def at_most(label: str, value: float | None, bound: float | None, detail: str,
            unit: str, missing: str) -> str:
    if value is None or bound is None:
        return f"[n/a ] {label}: {missing}"
    verdict = "PASS" if value <= bound else "MISS"
    side = "under" if value <= bound else "over"
    return (f"[{verdict}] {label}: {detail} -> {fmt(abs(bound - value))} {unit} {side} the "
            f"limit ({value / bound:.2f}x of it)")


def targets(results: dict[str, list[Row]], big: int, big_conns: int) -> list[str]:
    lines = []

    def why_not(model: str, *cells: tuple[str, Row | None]) -> str:
        return why(*cells) if model in results else f"{model} not in --models"

    kj = find(results, "mlp", "keras-jobs", "json x1", 64)
    comp = find(results, "mlp", "compiled", "json x1", 64)
    kj_rps = kj.rps if kj else None
    need = 3 * comp.rps if comp and comp.rps is not None else None
    lines.append(at_least("MLP json c=64: keras-jobs req/s >= 3x compiled server's", kj_rps,
                          need, f"{fmt(kj_rps)} vs 3 x {fmt(comp.rps if comp else None)} "
                          f"= {fmt(need)}", why_not("mlp", ("keras-jobs", kj), ("compiled", comp)))
                 + caveat(kj, comp))
    p99 = kj.p99 if kj else None
    lines.append(at_most("MLP json c=64: keras-jobs p99 <= 80 ms", p99, 80.0,
                         f"{fmt(p99)} ms", "ms", why_not("mlp", ("keras-jobs", kj))) + caveat(kj))
    limit = find(results, "conv", "in-process", "tensor x64", 1)
    need = 0.6 * limit.rows_s if limit and limit.rows_s is not None else None
    for body in ("json x1", "npy x1", "npy x16"):
        kj = find(results, "conv", "keras-jobs", body, 64)
        kj_rows = kj.rows_s if kj else None
        lines.append(at_least(f"conv {body} c=64: keras-jobs rows/s >= 60% of in-process "
                              "batch-64 rows/s", kj_rows, need, f"{fmt(kj_rows)} vs 0.6 x "
                              f"{fmt(limit.rows_s if limit else None)} = {fmt(need)}",
                              why_not("conv", ("keras-jobs", kj), ("in-process", limit)))
                     + caveat(kj))
    kj = find(results, "mlp", "keras-jobs", "json x1", 1)
    limit = find(results, "mlp", "in-process", "tensor x1", 1)
    bound = limit.p50 + 1 if limit and limit.p50 is not None else None
    p50 = kj.p50 if kj else None
    lines.append(at_most("MLP c=1: keras-jobs p50 <= in-process batch-1 p50 + 1 ms", p50, bound,
                         f"{fmt(p50)} ms vs {fmt(limit.p50 if limit else None)} + 1 "
                         f"= {fmt(bound)} ms", "ms",
                         why_not("mlp", ("keras-jobs", kj), ("in-process", limit))) + caveat(kj))
    npy = find(results, "mlp", "keras-jobs", f"npy x{big}", big_conns)
    js = find(results, "mlp", "keras-jobs", f"json x{big}", big_conns)
    need = 5 * js.rows_s if js and js.rows_s is not None else None
    npy_rows = npy.rows_s if npy else None
    lines.append(at_least(f"MLP {big} rows c={big_conns}: keras-jobs npy rows/s >= 5x JSON's",
                          npy_rows, need, f"{fmt(npy_rows)} vs 5 x "
                          f"{fmt(js.rows_s if js else None)} = {fmt(need)}",
                          why_not("mlp", ("keras-jobs npy", npy), ("keras-jobs json", js)))
                 + caveat(npy, js))
    return lines


# --------------------------------------------------------------------------------------- main

def bench_model(folder: Path, model: str, args: argparse.Namespace) -> list[Row]:
    x = np.load(folder / f"{model}_x.npy")
    expected = np.load(folder / f"{model}_y.npy")
    bodies = [(make_body(folder, model, "json", x[:1]), args.concurrency)]
    if model not in BIG_MODELS:  # images: as .npy too (what an image client would send), one
        # row and 16 rows a request (how far the per-request HTTP cost is what bounds rows/s)
        bodies += [(make_body(folder, model, "npy", x[:n]), [max(args.concurrency)])
                   for n in (1, 16)]
    if model in BIG_MODELS and args.big_rows:
        bodies += [(make_body(folder, model, kind, x[:args.big_rows]), [args.big_concurrency])
                   for kind in ("json", "npy")]
    for body, _ in bodies:
        log(f"  body {body.label}: {body.path.stat().st_size / 1024:,.0f} KiB")
    rows: list[Row] = []
    for name in args.servers:
        if name == "inprocess":
            try:
                rows += inprocess_rows(folder, model, args)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as exc:
                log(f"  !! in-process failed: {exc}")
                rows += [Row("in-process", f"tensor x{b}", 1, note="failed")
                         for b in INPROCESS_BATCHES]
            continue
        if name == "keras-jobs":
            server = kj_server(folder, model, args.kj_workers)
        else:
            server = baseline_server(name, folder, model)
        try:
            with serving(server):
                if name == "keras-jobs":
                    kj_upload(server, folder, model)
                bench_http(server, model, bodies, expected, args, rows)
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            log(f"  !! {name} failed: {exc}")
            done = {(r.body, r.conns) for r in rows if r.server == server.label}
            rows += [Row(server.label, b.label, c, note=f"failed: {str(exc).splitlines()[0]}")
                     for b, cs in bodies for c in cs if (b.label, c) not in done]
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def csv(value: str) -> list[str]:
        return [v.strip() for v in value.split(",") if v.strip()]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=csv, default=list(MODELS),
                        help="comma-separated, of: " + ",".join(MODELS))
    parser.add_argument("--servers", type=csv, default=list(SERVERS),
                        help="comma-separated, of: " + ",".join(SERVERS))
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per cell")
    parser.add_argument("--concurrency", type=lambda v: [int(c) for c in csv(v)],
                        default=[1, 16, 64], help="connections, comma-separated")
    parser.add_argument("--big-rows", type=int, default=1024,
                        help="rows of the JSON vs npy request (0: skip those cells)")
    parser.add_argument("--big-concurrency", type=int, default=16,
                        help="connections for the JSON vs npy cells")
    parser.add_argument("--kj-workers", type=int, default=None,
                        help="pass --workers N to keras-jobs serve (if it has the flag)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 s runs, 1 s warm-up, concurrency 1,64")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-name", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.concurrency = 2, 1, [1, 64]
    for value, allowed, what in ((args.models, MODELS, "model"),
                                 (args.servers, SERVERS, "server")):
        if bad := [v for v in value if v not in allowed]:
            parser.error(f"unknown {what}(s) {bad}; choose from {list(allowed)}")
    args.servers = [s for s in SERVERS if s in args.servers]  # the documented order
    if args.duration < 1 or args.warmup < 1 or not args.concurrency \
            or min(args.concurrency) < 1 or args.big_concurrency < 1:
        parser.error("durations and connection counts must be >= 1")
    return args


def _raise_interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def preamble(args: argparse.Namespace, versions: dict[str, str], out: TextIO) -> None:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    print(f"# keras-jobs serving benchmark ({time.strftime('%Y-%m-%d %H:%M')})", file=out)
    print(f"{os.cpu_count()} CPUs ({cpu}); TensorFlow {versions.get('tensorflow')}, Keras "
          f"{versions.get('keras')}; wrk, {args.duration} s runs after {args.warmup} s warm-up; "
          f"threads = min(connections, 2); server CPU = process tree utime+stime / requests; "
          f"keras-jobs {'--workers ' + str(args.kj_workers) if args.kj_workers else 'one process'}"
          f".", file=out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child == "build":
        child_build(args.folder, args.models, args.big_rows or 64)
        return 0
    if args.child == "inprocess":
        child_inprocess(args.folder / f"{args.model_name}.keras",
                        args.folder / f"{args.model_name}_x.npy", args.duration, args.warmup)
        return 0
    if shutil.which("wrk") is None and set(args.servers) - {"inprocess"}:
        log("wrk is not installed: apt-get install -y wrk")
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    if args.kj_workers and "keras-jobs" in args.servers and not kj_supports_workers():
        log(f"warning: `keras-jobs serve --help` lists no --workers; running keras-jobs "
            f"without --workers {args.kj_workers}")
        args.kj_workers = None
    folder = Path(tempfile.mkdtemp(prefix="kj-bench-predict-"))
    results: dict[str, list[Row]] = {}
    try:
        log(f"building models {args.models} in {folder}")
        versions = run_child(["build", "--folder", str(folder), "--models", ",".join(args.models),
                              "--big-rows", str(max(args.big_rows, 64))], timeout=600)
        for model in args.models:
            log(f"[{model}]")
            results[model] = bench_model(folder, model, args)
    except KeyboardInterrupt:
        log("interrupted: stopping servers")
        return 130
    finally:
        for server in list(Server.running):
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    preamble(args, versions, sys.stdout)
    for model in args.models:
        print(f"\n## {model}\n\n{table(results[model])}")
    print("\n## targets\n")
    for line in targets(results, args.big_rows or 1024, args.big_concurrency):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
