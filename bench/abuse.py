"""Abuse benchmark: the requests of issue 14 that each tried to take the whole server down, one
after another against a `keras-jobs serve` of its own, with what each cost the server.

Per case: the HTTP status, the seconds until the answer, the peak growth of the resident memory
of the server's process tree above its level just before the request (sampled every 20 ms from
/proc), the bytes those processes wrote to storage meanwhile (/proc/PID/io: a zip bomb costs
disk rather than memory), and the longest `/healthz` answer a side thread saw while the case ran
(it asks every 50 ms, giving up on one after 30 s). Target (issue 14): every bomb refused (a
4xx) in under 1 s with under 64 MB of memory growth, `/healthz` under 100 ms throughout; a quota
race accepts no more requests than its quota allows.

Memory is guarded: a case whose growth passes --rss-cap-gb (default 4) is aborted (the server's
process group is killed, and a fresh server on a fresh KJ_HOME serves the next case), reported
as "aborted at X GB"; one that has not answered after --case-timeout seconds likewise.

The server runs the code of this checkout, or with --before DIR also (first) the code of another
checkout (e.g. `git worktree add /tmp/base <commit>`): then the table has a before and an after
column. SQLite and the embedded broker in a temporary KJ_HOME by default; --postgres gives each
server a fresh PostgreSQL database instead (dropped when it stops), --broker-url a broker. No
worker runs: none of the cases needs one, and submitted jobs stay queued.
The quota races set their quota at start-up (KJ_QUOTA_*) and are tried --race-tries times
(default 3; a race is won or lost by timing), each try on a fresh server; they are skipped
against a server this bench did not start (--url, --before-url).
The server and the measuring live in bench/abuse_support/.

Cases (--cases a,b picks some; --list shows them):
  repeatvector-upload   14 KB `.keras` of RepeatVector(20_000_000) then Dense(1), uploaded
  repeatvector-predict  ... then one predict of one row (it was 115 s and 21.8 GB)
  repeatvector-spec     POST /v1/specs with RepeatVector(1e9)
  predict-json-60mb     a 60 MB JSON predict body of 10.5 M rows, on a small model
  predict-seq-60mb      a 60 MB JSON predict body of 7.5 M one-step sequences, on a model of
                        variable-length inputs (no bound from its shape: the rows are counted)
  infer-json-10m        an Open Inference Protocol body of one [10.5 M, 1] tensor
  labels-infer-300mb    a 300 MB chunked PUT /v1/models/x/labels/infer
  npz-1mb               a 1 MB .npz declaring 1 GiB of zeros
  npz-3mb               a 3.1 MB .npz declaring 3 GiB of zeros
  keras-assets          a 1 MB .keras with 64 assets/ members of 16 MiB of zeros each
  boundary-300          a multipart upload whose boundary has 300 characters
  quota-submits         30 job submits at once against a queued-jobs quota of 3
  quota-uploads         12 dataset uploads of ~8 KB at once against 2.5 uploads of headroom

Usage: python bench/abuse.py [--cases npz-1mb,keras-assets] [--before /tmp/base | --before-url URL]
                             [--url URL] [--api-key KEY] [--rss-cap-gb 4] [--case-timeout 180]
                             [--race-tries 3]
                             [--postgres ADMIN_URL] [--broker-url URL] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(ROOT))

from bench.abuse_support.measure import (  # noqa: E402
    Case,
    Request,
    Result,
    cell,
    print_table,
    run_case,
    worst,
)
from bench.abuse_support.server import ExternalServer, Server, log  # noqa: E402
from tests.archives import (  # noqa: E402  (byte-by-byte zip builders, shared with the tests)
    GiB,
    MiB,
    deflated,
    deflated_entry,
    npy_header,
    raw_zip,
    stored,
)

ROWS = 10_500_000  # one-value rows in a 60 MB JSON body
SEQUENCES = 7_500_000  # one-step sequences (8 bytes each) that fill the 64 MiB body limit
JSON_TYPE = {"Content-Type": "application/json"}

# --------------------------------------------------------------------------------------- cases


def _keras_bytes(model: Any) -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        model.save(path)
        return path.read_bytes()


def _keras_model(*layers: Any, shape: tuple[int | None, ...] = (1,)) -> Any:
    import keras

    return keras.Sequential([keras.Input(shape=shape, name="x"), *layers])


def repeatvector_keras() -> bytes:
    import keras

    return _keras_bytes(_keras_model(keras.layers.RepeatVector(20_000_000),
                                     keras.layers.Dense(1)))


def small_keras() -> bytes:
    import keras

    return _keras_bytes(_keras_model(keras.layers.Dense(1)))


def sequence_keras() -> bytes:
    import keras

    return _keras_bytes(_keras_model(keras.layers.GlobalAveragePooling1D(),
                                     keras.layers.Dense(1), shape=(None, 1)))


def _upload_model(http: httpx.Client, name: str, payload: bytes) -> None:
    r = http.post(f"/v1/models/{name}/versions", files={"file": ("m.keras", payload)},
                  timeout=600)
    if r.status_code != 201:
        raise RuntimeError(f"setup: uploading {name} -> {r.status_code} {r.text[:300]}")


def serving(name: str, payload: Callable[[], bytes], row: Any) -> Callable[[httpx.Client], None]:
    """A setup: model `name` uploaded (once per server) and loaded by one predict of `row`, so
    the case measures the request rather than the model's loading."""
    def setup(http: httpx.Client) -> None:
        if http.get(f"/v1/models/{name}").status_code == 200:
            return
        _upload_model(http, name, payload())
        r = http.post(f"/v1/models/{name}:predict", json={"instances": [row]}, timeout=600)
        if r.status_code != 200:
            raise RuntimeError(f"setup: predicting with {name} -> {r.status_code} {r.text[:300]}")
    return setup


def keras_upload(name: str, payload: Callable[[], bytes]) -> Callable[[], Request]:
    return lambda: Request("POST", f"/v1/models/{name}/versions",
                           files={"file": ("m.keras", payload())})


def repeatvector_spec() -> Request:
    return Request("POST", "/v1/specs", json={
        "name": "repeatvector-1e9", "inputs": [{"name": "x", "shape": [1]}],
        "layers": [{"type": "RepeatVector", "n": 1_000_000_000}, {"type": "Dense", "units": 1}],
        "compile": {"optimizer": "sgd", "loss": "mean_squared_error"}})


def predict_json_60mb() -> Request:
    body = b'{"instances":[' + b"[0.5]," * (ROWS - 1) + b"[0.5]]}"
    return Request("POST", "/v1/models/small:predict", content=body, headers=JSON_TYPE)


def predict_seq_60mb() -> Request:
    body = b'{"instances":[' + b"[[0.5]]," * (SEQUENCES - 1) + b"[[0.5]]]}"
    return Request("POST", "/v1/models/seq:predict", content=body, headers=JSON_TYPE)


def infer_json_10m() -> Request:
    body = (b'{"inputs": [{"name": "x", "shape": [%d, 1], "datatype": "FP32", "data": [%s]}]}'
            % (ROWS, b"0.5," * (ROWS - 1) + b"0.5"))
    return Request("POST", "/v2/models/small/infer", content=body, headers=JSON_TYPE)


def labels_infer_300mb() -> Request:
    def chunks() -> Iterator[bytes]:
        yield b'{"version": 1, "pad": ['
        block = b"0," * (512 * 1024)  # 1 MiB
        for _ in range(300):
            yield block
        yield b"0]}"

    return Request("PUT", "/v1/models/small/labels/infer", content=chunks(), headers=JSON_TYPE)


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


def _setup_repeatvector(http: httpx.Client) -> None:
    r = http.post("/v1/models/repeatvector/versions",
                  files={"file": ("m.keras", repeatvector_keras())}, timeout=600)
    if r.status_code != 201:  # refused at upload (the fix): predict answers for a missing model
        log(f"    (setup: the RepeatVector upload is refused: {r.status_code})")


def _npz(rows: int) -> bytes:
    rng = np.random.default_rng(rows)
    buf = io.BytesIO()
    np.savez(buf, x=rng.random((rows, 2), dtype=np.float32),
             y=(rng.random((rows, 1)) > 0.5).astype(np.float32))
    return buf.getvalue()


# The race's upload: 640 rows, about 8 KB stored (the arrays, no larger than the file), against
# a stored-bytes quota of two and a half of them: at most two fit.
RACE_UPLOAD = _npz(640)
RACE_STORED_LIMIT = len(RACE_UPLOAD) * 5 // 2
_race_ids: dict[str, str] = {}


def _setup_race_job(http: httpx.Client) -> None:
    spec = http.post("/v1/specs", json={
        "name": "race", "inputs": [{"name": "x", "shape": [2]}],
        "layers": [{"type": "Dense", "units": 1, "activation": "sigmoid"}],
        "compile": {"optimizer": "sgd", "loss": "binary_crossentropy"}})
    ds = http.post("/v1/datasets", files={"file": ("d.npz", _npz(20))})
    for what, r in (("spec", spec), ("dataset", ds)):
        if r.status_code != 201:
            raise RuntimeError(f"setup: the race's {what} -> {r.status_code} {r.text[:300]}")
    _race_ids.update(spec=spec.json()["id"], dataset=ds.json()["id"])


def race_submit() -> Request:
    return Request("POST", "/v1/jobs", json={
        "type": "fit", "spec_id": _race_ids["spec"], "dataset_id": _race_ids["dataset"],
        "x": "x", "y": "y", "epochs": 1})


_small = serving("small", small_keras, [0.5])
CASES = [
    Case("repeatvector-upload", "14 KB .keras, RepeatVector(2e7)+Dense(1): upload",
         keras_upload("repeatvector-up", repeatvector_keras)),
    Case("repeatvector-predict", "... its first predict (1 row)",
         lambda: Request("POST", "/v1/models/repeatvector:predict",
                         json={"instances": [[0.5]]}), _setup_repeatvector),
    Case("repeatvector-spec", "POST /v1/specs RepeatVector(1e9)", repeatvector_spec),
    Case("predict-json-60mb", "60 MB JSON predict body, 10.5 M rows", predict_json_60mb, _small),
    Case("predict-seq-60mb", "60 MB JSON predict body, 7.5 M sequences", predict_seq_60mb,
         serving("seq", sequence_keras, [[0.5]])),
    Case("infer-json-10m", "OIP infer body, one [10.5 M, 1] tensor", infer_json_10m, _small),
    Case("labels-infer-300mb", "300 MB chunked PUT .../labels/infer", labels_infer_300mb,
         _small),
    Case("npz-1mb", "1 MB .npz declaring 1 GiB", npz_bomb(GiB)),
    Case("npz-3mb", "3.1 MB .npz declaring 3 GiB", npz_bomb(3 * GiB)),
    Case("keras-assets", "1 MB .keras, 64 assets x 16 MiB", keras_upload("assets", keras_assets)),
    Case("boundary-300", "multipart boundary of 300 chars", boundary_300),
    Case("quota-submits", "30 job submits at once, queued quota 3", race_submit,
         _setup_race_job, burst=30, allowed=3, settings={"KJ_QUOTA_QUEUED_JOBS": "3"}),
    Case("quota-uploads", "12 ~8 KB uploads at once, room for 2.5",
         lambda: Request("POST", "/v1/datasets", files={"file": ("d.npz", RACE_UPLOAD)}),
         burst=12, allowed=2, settings={"KJ_QUOTA_STORED_BYTES": str(RACE_STORED_LIMIT)}),
]


def _one(server: Server | ExternalServer, case: Case, args: argparse.Namespace) -> Result:
    try:
        result = run_case(server, case, args)
    except Exception as exc:  # a setup that failed: report, and go on
        log(f"    {case.name}: {exc}")
        result = Result(case.name, f"error: {type(exc).__name__}", 0.0, 0, 0.0, True)
    log(f"    -> {cell(result)}")
    if result.aborted:
        server.stop(kill=True)  # a fresh server (and KJ_HOME) for the next case
    return result


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
            log(f"  {case.name}: {case.what}")
            if isinstance(server, ExternalServer) and case.settings:
                log("    skipped: it needs a server started with its settings")
                continue
            tries = []
            for _ in range(args.race_tries if case.burst > 1 else 1):
                if isinstance(server, Server) and (not server.alive() or case.burst > 1
                                                   or case.settings != server.settings):
                    server.stop()  # a race starts from nothing stored or queued
                    server = Server(server.code, args, label, case.settings)
                    server.start()
                tries.append(_one(server, case, args))
            results[case.name] = result = worst(tries)
            if len(tries) > 1:
                log(f"    -> {cell(result)}")
    finally:
        server.stop()
    return results


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
    parser.add_argument("--race-tries", type=int, default=3, help="tries of each quota race, "
                        "each on a fresh server (the cell shows every try's 2xx count)")
    parser.add_argument("--rss-cap-gb", type=float, default=4.0)
    parser.add_argument("--case-timeout", type=float, default=180.0)
    parser.add_argument("--postgres", default="", help="an admin URL of a PostgreSQL server "
                        "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres): each "
                        "server gets a fresh database there, dropped when it stops")
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
