"""Abuse benchmark: the requests of issue 14 that each tried to take the whole server down, one
after another against a `keras-jobs serve` of its own, with what each cost the server.

Per case: the HTTP status, the seconds until the answer, the peak growth of the resident memory
of the server's process tree above its level just before the request (sampled every 20 ms from
/proc), the bytes those processes wrote to storage meanwhile (/proc/PID/io: a zip bomb costs
disk rather than memory), and the longest `/healthz` answer a side thread saw while the case ran
(it asks every 50 ms, giving up on one after 30 s). Target (issue 14): every bomb refused (a
4xx) in under 1 s with under 64 MB of memory growth, `/healthz` under 100 ms throughout.

Memory is guarded: a case whose growth passes --rss-cap-gb (default 4) is aborted (the server's
process group is killed, and a fresh server on a fresh KJ_HOME serves the next case), reported
as "aborted at X GB"; one that has not answered after --case-timeout seconds likewise.

The server runs the code of this checkout, or with --before DIR also (first) the code of another
checkout (e.g. `git worktree add /tmp/base <commit>`): then the table has a before and an after
column. SQLite and the embedded broker in a temporary KJ_HOME by default; --database-url and
--broker-url point the server at PostgreSQL/Redis instead (use a database of its own: the
cases write rows). No worker runs: none of the cases needs one.

Cases (--cases a,b picks some; --list shows them):
  repeatvector-upload   14 KB `.keras` of RepeatVector(20_000_000) then Dense(1), uploaded
  repeatvector-predict  ... then one predict of one row (it was 115 s and 21.8 GB)
  repeatvector-spec     POST /v1/specs with RepeatVector(1e9)
  predict-json-60mb     a 60 MB JSON predict body of 10.5 M rows, on a small model
  labels-infer-300mb    a 300 MB chunked PUT /v1/models/x/labels/infer
  npz-1mb               a 1 MB .npz declaring 1 GiB of zeros
  npz-3mb               a 3.1 MB .npz declaring 3 GiB of zeros
  keras-assets          a 1 MB .keras with 64 assets/ members of 16 MiB of zeros each
  boundary-300          a multipart upload whose boundary has 300 characters

Usage: python bench/abuse.py [--cases npz-1mb,keras-assets] [--before /tmp/base | --before-url URL]
                             [--url URL] [--api-key KEY] [--rss-cap-gb 4] [--case-timeout 180]
                             [--database-url URL] [--broker-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(ROOT))

from tests.archives import (  # noqa: E402  (byte-by-byte zip builders, shared with the tests)
    GiB,
    MiB,
    deflated,
    deflated_entry,
    npy_header,
    raw_zip,
    stored,
)

TARGET_S = 1.0
TARGET_RSS = 64 * MiB
TARGET_HEALTHZ_S = 0.1
READY_TIMEOUT_S = 180.0
RSS_SAMPLE_S = 0.02
HEALTHZ_EVERY_S = 0.05
PROBE_TIMEOUT_S = 30.0
CELL = 58  # a table cell's width
PR_SET_PDEATHSIG = 1
# Inherited settings that would point the server away from its fresh KJ_HOME.
KJ_LOCATIONS = ("KJ_DATABASE_URL", "KJ_BROKER_URL", "KJ_ARTIFACT_ROOT", "KJ_API_KEY")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- the server

def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if this bench dies without cleaning up."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def group_pids(pgid: int) -> list[int]:
    """Live processes of process group `pgid` (the server's session)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat") as f:
                raw = f.read()
            if int(raw[raw.rindex(")") + 2:].split()[2]) == pgid:
                found.append(int(entry.name))
    return found


def rss_of(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return total


def written_by(pids: list[int]) -> int:
    """Bytes the processes caused to be written to storage (/proc/PID/io write_bytes)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


class Server:
    """`keras-jobs serve --no-worker` running `code`'s app, in its own session."""

    headers: dict[str, str] = {}  # open on loopback: no key needed

    def __init__(self, code: Path, args: argparse.Namespace, label: str) -> None:
        self.code, self.args, self.label = code, args, label
        self.proc: subprocess.Popen[bytes] | None = None
        self.home: Path | None = None
        self.port = 0
        self.base = ""
        self._log: io.BufferedWriter | None = None

    def start(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix=f"kj-abuse-{self.label}-"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in KJ_LOCATIONS}
        env.update({"PYTHONPATH": str(self.code), "KJ_HOME": str(self.home), "KJ_AUTH": "auto",
                    "KJ_LOG_LEVEL": "WARNING", "TF_CPP_MIN_LOG_LEVEL": "2",
                    "KJ_RATE_LIMIT_WRITES_PER_MIN": "0", "KJ_RATE_LIMIT_PREDICT_PER_MIN": "0"})
        if self.args.database_url:
            env["KJ_DATABASE_URL"] = self.args.database_url
        if self.args.broker_url:
            env["KJ_BROKER_URL"] = self.args.broker_url
        self._log = (self.home / "server.log").open("wb")
        cmd = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
               "serve", "--no-worker", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.code, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the {self.label} server exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the {self.label} server is not up after {READY_TIMEOUT_S:.0f} s")

    def pids(self) -> list[int]:
        return group_pids(self.proc.pid) if self.proc is not None else []

    def rss(self) -> int:
        return rss_of(self.pids())

    def written(self) -> int:
        return written_by(self.pids())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.home is None:
            return ""
        text = (self.home / "server.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None:
            for sig, wait in (((signal.SIGKILL, 10.0),) if kill else
                              ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0))):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, sig)  # its own session: pgid == pid
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None


class ExternalServer:
    """A server this bench did not start (--url/--before-url): measured, never stopped. Its
    processes are the process group of whichever process listens on the URL's port (found in
    /proc when this user may read it; else RSS and writes read 0). A case past the memory cap
    only stops being waited for: the server goes on with it, so leave such cases out
    (--cases) where that would hurt."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.base, self.headers = url.rstrip("/"), headers
        port = httpx.URL(self.base).port or 80
        pid = _listener_pid(port)
        self.pgid = os.getpgid(pid) if pid is not None else None
        if pid is None:
            log(f"  (no readable process listens on port {port}: RSS and writes read 0)")

    def start(self) -> None:
        httpx.get(self.base + "/healthz", timeout=10, headers=self.headers).raise_for_status()

    def pids(self) -> list[int]:
        return group_pids(self.pgid) if self.pgid is not None else []

    def alive(self) -> bool:
        return True

    def stop(self, kill: bool = False) -> None:
        return None


def _listener_pid(port: int) -> int | None:
    """The process holding a listening TCP socket on `port` (IPv4 or IPv6), from /proc."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                for fd in os.scandir(f"/proc/{entry.name}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(fd.path) in inodes:
                            return int(entry.name)
    return None


# --------------------------------------------------------------------------------------- cases

@dataclass
class Request:
    method: str
    path: str
    content: Any = None  # bytes, or an iterator of bytes (sent chunked)
    headers: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    data: dict[str, str] | None = None
    json: Any = None


@dataclass
class Case:
    name: str
    what: str
    build: Callable[[], Request]
    # Requests made (unmeasured) before the case on the same server; each must succeed.
    setup: Callable[[httpx.Client], None] | None = None


def _keras_bytes(model: Any) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        model.save(path)
        return path.read_bytes()


def _keras_model(*layers: Any, shape: tuple[int, ...] = (1,)) -> Any:
    import keras

    return keras.Sequential([keras.Input(shape=shape), *layers])


def repeatvector_keras() -> bytes:
    import keras

    return _keras_bytes(_keras_model(keras.layers.RepeatVector(20_000_000),
                                     keras.layers.Dense(1)))


def small_keras() -> bytes:
    import keras

    return _keras_bytes(_keras_model(keras.layers.Dense(1)))


def _upload_model(http: httpx.Client, name: str, payload: bytes) -> None:
    r = http.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", payload)},
                  timeout=600)
    if r.status_code != 201:
        raise RuntimeError(f"setup: uploading {name} -> {r.status_code} {r.text[:300]}")


def keras_upload(name: str, payload: Callable[[], bytes]) -> Callable[[], Request]:
    return lambda: Request("POST", f"/v1/models/{name}/versions",
                           files={"file": ("m.keras", payload())})


def repeatvector_spec() -> Request:
    return Request("POST", "/v1/specs", json={
        "name": "repeatvector-1e9", "inputs": [{"name": "x", "shape": [1]}],
        "layers": [{"type": "RepeatVector", "n": 1_000_000_000}, {"type": "Dense", "units": 1}],
        "compile": {"optimizer": "sgd", "loss": "mean_squared_error"}})


def predict_json_60mb() -> Request:
    rows = 10_500_000
    body = b'{"instances":[' + b"[0.5]," * (rows - 1) + b"[0.5]]}"
    return Request("POST", "/v1/models/small:predict", content=body,
                   headers={"Content-Type": "application/json"})


def labels_infer_300mb() -> Request:
    def chunks() -> Iterator[bytes]:
        yield b'{"version": 1, "pad": ['
        block = b"0," * (512 * 1024)  # 1 MiB
        for _ in range(300):
            yield block
        yield b"0]}"

    return Request("PUT", "/v1/models/small/labels/infer", content=chunks(),
                   headers={"Content-Type": "application/json"})


def npz_bomb(size: int) -> Callable[[], Request]:
    def build() -> Request:
        member = deflated(npy_header((size,)), size)
        payload = raw_zip([deflated_entry("x.npy", member)])
        return Request("POST", "/v1/datasets", files={"file": ("bomb.npz", payload)},
                       data={"name": "bomb"})
    return build


def keras_assets() -> bytes:
    with zipfile.ZipFile(io.BytesIO(small_keras())) as zf:
        members = [stored(i.filename, zf.read(i)) for i in zf.infolist()]
    asset = deflated(b"", 16 * MiB)
    return raw_zip(members + [deflated_entry(f"assets/a{i}.txt", asset) for i in range(64)])


def boundary_300() -> Request:
    boundary = "b" * 300
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"x.npy\"\r\n\r\nxx\r\n--{boundary}--\r\n").encode()
    return Request("POST", "/v1/datasets", content=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})


def _setup_small(http: httpx.Client) -> None:
    _upload_model(http, "small", small_keras())


def _setup_repeatvector(http: httpx.Client) -> None:
    r = http.post("/v1/models/repeatvector/versions",
                  files={"file": ("m.keras", repeatvector_keras())}, timeout=600)
    if r.status_code != 201:  # refused at upload (the fix): predict answers for a missing model
        log(f"    (setup: the RepeatVector upload is refused: {r.status_code})")


CASES = [
    Case("repeatvector-upload", "14 KB .keras, RepeatVector(2e7)+Dense(1): upload",
         keras_upload("repeatvector-up", repeatvector_keras)),
    Case("repeatvector-predict", "... its first predict (1 row)",
         lambda: Request("POST", "/v1/models/repeatvector:predict",
                         json={"instances": [[0.5]]}), _setup_repeatvector),
    Case("repeatvector-spec", "POST /v1/specs RepeatVector(1e9)", repeatvector_spec),
    Case("predict-json-60mb", "60 MB JSON predict body, 10.5 M rows", predict_json_60mb,
         _setup_small),
    Case("labels-infer-300mb", "300 MB chunked PUT .../labels/infer", labels_infer_300mb,
         _setup_small),
    Case("npz-1mb", "1 MB .npz declaring 1 GiB", npz_bomb(GiB)),
    Case("npz-3mb", "3.1 MB .npz declaring 3 GiB", npz_bomb(3 * GiB)),
    Case("keras-assets", "1 MB .keras, 64 assets x 16 MiB", keras_upload("assets", keras_assets)),
    Case("boundary-300", "multipart boundary of 300 chars", boundary_300),
]


# ----------------------------------------------------------------------------------- measuring

@dataclass
class Result:
    case: str
    status: str  # the HTTP status, or what happened instead
    seconds: float
    rss_growth: int
    healthz_max_s: float
    aborted: bool = False
    written: int = 0  # bytes written to storage by the server meanwhile

    def ok(self) -> bool:
        return (not self.aborted and self.status.isdigit() and 400 <= int(self.status) < 500
                and self.seconds < TARGET_S and self.rss_growth < TARGET_RSS
                and self.healthz_max_s < TARGET_HEALTHZ_S)


class HealthProbe:
    """Asks /healthz every HEALTHZ_EVERY_S on its own connection; the longest answer (an
    unanswered probe counts until it is given up or the probe stops)."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        self.base, self.headers = base, headers
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=PROBE_TIMEOUT_S,
                          headers=self.headers) as http:
            while not self._stop.is_set():
                start = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    http.get("/healthz")
                self.longest = max(self.longest, time.perf_counter() - start)
                self._stop.wait(HEALTHZ_EVERY_S)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(PROBE_TIMEOUT_S + 5)


def run_case(server: Server | ExternalServer, case: Case, args: argparse.Namespace) -> Result:
    request = case.build()
    if case.setup is not None:
        with httpx.Client(base_url=server.base, timeout=600, headers=server.headers) as http:
            case.setup(http)
    time.sleep(0.5)  # let the server settle after the setup
    pids = server.pids()  # the tree is looked up once: sampling /proc/PID is cheap
    base_rss, base_written = rss_of(pids), written_by(pids)
    answer: dict[str, Any] = {}

    def send() -> None:
        with httpx.Client(base_url=server.base, timeout=args.case_timeout,
                          headers=server.headers) as http:
            try:
                r = http.request(request.method, request.path, content=request.content,
                                 headers=request.headers, files=request.files,
                                 data=request.data, json=request.json)
                answer["status"] = str(r.status_code)
                answer["body"] = r.text[:300]
            except httpx.HTTPError as exc:
                answer["status"] = type(exc).__name__
        answer["seconds"] = time.perf_counter() - start

    cap = int(args.rss_cap_gb * GiB)
    peak, aborted, status, written = 0, False, "", 0
    with HealthProbe(server.base, server.headers) as probe:
        start = time.perf_counter()
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        while sender.is_alive():
            peak = max(peak, rss_of(pids) - base_rss)
            elapsed = time.perf_counter() - start
            if peak > cap or elapsed > args.case_timeout:
                aborted = True
                status = (f"aborted at {peak / GiB:.1f} GB" if peak > cap
                          else f"no answer in {elapsed:.0f} s")
                written = written_by(pids) - base_written
                server.stop(kill=True)
                break
            time.sleep(RSS_SAMPLE_S)
        sender.join(30)
        seconds = answer.get("seconds", time.perf_counter() - start)
        if not aborted:
            peak = max(peak, rss_of(pids) - base_rss)
            written = written_by(pids) - base_written
    if not aborted:
        status = answer.get("status", "?")
        if status.startswith("5") or not status.isdigit():
            log(f"    {case.name}: {status} {answer.get('body', '')}")
    return Result(case.name, status, seconds, max(peak, 0), probe.longest, aborted,
                  max(written, 0))


def run_all(code: Path | str, label: str, cases: list[Case], args: argparse.Namespace
            ) -> dict[str, Result]:
    """The cases against a server of `code` (a checkout), or the one at `code` (a URL)."""
    results: dict[str, Result] = {}
    server: Server | ExternalServer
    if isinstance(code, str):
        log(f"== {label}: the server at {code}")
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        server = ExternalServer(code, headers)
        server.start()
    else:
        log(f"== {label}: the server runs {code}")
        server = Server(code, args, label)
    try:
        for case in cases:
            if not server.alive():
                server.stop()
                server.start()
            log(f"  {case.name}: {case.what}")
            try:
                result = run_case(server, case, args)
            except Exception as exc:  # a setup that failed: report, and go on
                log(f"    {case.name}: {exc}")
                result = Result(case.name, f"error: {type(exc).__name__}", 0.0, 0, 0.0, True)
                server.stop(kill=True)
            results[case.name] = result
            log(f"    -> {_cell(result)}")
            if result.aborted:
                server.stop(kill=True)  # a fresh server (and KJ_HOME) for the next case
    finally:
        server.stop()
    return results


def _cell(r: Result | None) -> str:
    if r is None:
        return "-"
    healthz = (f">{PROBE_TIMEOUT_S * 1000:.0f}" if r.healthz_max_s >= PROBE_TIMEOUT_S
               else f"{r.healthz_max_s * 1000:.0f}")
    return (f"{r.status:<17} {r.seconds:6.2f} s {r.rss_growth / MiB:5.0f} MB "
            f"{r.written / MiB:5.0f} MB {healthz:>6} ms {'ok' if r.ok() else 'MISS'}")


def print_table(cases: list[Case], before: dict[str, Result] | None,
                after: dict[str, Result]) -> None:
    width = max(len(c.name) for c in cases)
    head = f"{'case':<{width}}  "
    if before is not None:
        head += f"{'before':<{CELL}}  "
    print(head + "after")
    for case in cases:
        line = f"{case.name:<{width}}  "
        if before is not None:
            line += f"{_cell(before.get(case.name)):<{CELL}}  "
        print(line + _cell(after.get(case.name)))
    print("cells: status, seconds to the answer, peak RSS growth of the server's processes, "
          "bytes they wrote to storage, longest /healthz, ok/MISS against the target")
    print(f"target: a 4xx in < {TARGET_S:g} s, < {TARGET_RSS // MiB} MB RSS growth, /healthz "
          f"< {TARGET_HEALTHZ_S * 1000:.0f} ms throughout")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--before", type=Path, help="a checkout whose code gives the before "
                        "column (run first)")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout for the after "
                        "column (default: this one)")
    parser.add_argument("--before-url", help="a running server for the before column instead "
                        "(measured, never stopped: see ExternalServer)")
    parser.add_argument("--url", help="a running server for the after column instead")
    parser.add_argument("--api-key", default=os.environ.get("KJ_API_KEY", ""),
                        help="key (write and predict scopes) for --url/--before-url servers")
    parser.add_argument("--rss-cap-gb", type=float, default=4.0)
    parser.add_argument("--case-timeout", type=float, default=180.0)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--broker-url", default="")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.list:
        for case in CASES:
            print(f"{case.name:<22} {case.what}")
        return 0
    names = [n for n in args.cases.split(",") if n]
    unknown = sorted(set(names) - {c.name for c in CASES})
    if unknown:
        parser.error(f"unknown cases {unknown}; --list shows them")
    cases = [c for c in CASES if not names or c.name in names]
    if args.before and args.before_url:
        parser.error("--before and --before-url: one or the other")
    before_code = args.before_url or (args.before.resolve() if args.before else None)
    before = run_all(before_code, "before", cases, args) if before_code else None
    after = run_all(args.url or args.code.resolve(), "after", cases, args)
    print_table(cases, before, after)
    if args.json:
        args.json.write_text(json.dumps({
            "before": {k: asdict(v) for k, v in (before or {}).items()},
            "after": {k: asdict(v) for k, v in after.items()}}, indent=2))
    return 0 if all(r.ok() for r in after.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
