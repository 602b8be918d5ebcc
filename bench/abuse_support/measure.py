"""What an abuse case is, and what it cost: one request (or a burst of the same request at once)
against a server, its answer, its seconds, the peak growth of the server's resident memory
(sampled from /proc), the bytes it wrote, and the longest /healthz a side thread saw meanwhile."""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from bench.abuse_support.server import log, rss_of, written_by
from tests.archives import GiB, MiB

TARGET_S = 1.0
TARGET_RSS = 64 * MiB
TARGET_HEALTHZ_S = 0.1
RSS_SAMPLE_S = 0.02
HEALTHZ_EVERY_S = 0.05
PROBE_TIMEOUT_S = 30.0
CELL = 58  # a table cell's width


class Served(Protocol):
    base: str
    headers: dict[str, str]

    def pids(self) -> list[int]: ...

    def stop(self, kill: bool = False) -> None: ...


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
    # A quota race: the request sent this many times at once, each on a connection of its own;
    # the case holds when at most `allowed` are accepted (a 2xx).
    burst: int = 1
    allowed: int = 0
    # KJ_* settings the case needs: it gets a server (and KJ_HOME) of its own started with them.
    settings: dict[str, str] = field(default_factory=dict)


@dataclass
class Result:
    case: str
    status: str  # the HTTP status, the statuses of a burst, or what happened instead
    seconds: float
    rss_growth: int
    healthz_max_s: float
    aborted: bool = False
    written: int = 0  # bytes written to storage by the server meanwhile
    accepted: int | None = None  # a burst's 2xx answers; None for a single request
    allowed: int = 0
    failed: int = 0  # a burst's 5xx answers and requests with no answer

    def ok(self) -> bool:
        if self.aborted or self.healthz_max_s >= TARGET_HEALTHZ_S:
            return False
        if self.accepted is not None:  # a quota race: never past the quota, never a 5xx
            return self.accepted <= self.allowed and not self.failed
        return (self.status.isdigit() and 400 <= int(self.status) < 500
                and self.seconds < TARGET_S and self.rss_growth < TARGET_RSS)


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


def _send(http: httpx.Client, request: Request) -> tuple[str, str]:
    """The status (or the error's name) and the start of the body."""
    try:
        r = http.request(request.method, request.path, content=request.content,
                         headers=request.headers, files=request.files, data=request.data,
                         json=request.json)
        return str(r.status_code), r.text[:300]
    except httpx.HTTPError as exc:
        return type(exc).__name__, ""


def _sender(server: Served, case: Case, request: Request, timeout: float,
            answer: dict[str, Any]) -> Callable[[], None]:
    """What the sending thread runs: `case.burst` requests released together, each on a
    connection opened beforehand (so they arrive together); fills `answer`."""
    clients = [httpx.Client(base_url=server.base, timeout=timeout, headers=server.headers)
               for _ in range(case.burst)]
    for http in clients:
        http.get("/healthz")
    statuses: list[tuple[str, str]] = [("not sent", "")] * case.burst
    go = threading.Barrier(case.burst + 1)

    def one(i: int) -> None:
        go.wait()
        statuses[i] = _send(clients[i], request)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(case.burst)]
    for t in threads:
        t.start()

    def run() -> None:
        go.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        answer["seconds"] = time.perf_counter() - start
        for http in clients:
            http.close()
        answer["statuses"] = statuses

    return run


def run_case(server: Served, case: Case, args: argparse.Namespace) -> Result:
    if case.setup is not None:
        with httpx.Client(base_url=server.base, timeout=600, headers=server.headers) as http:
            case.setup(http)
    request = case.build()  # after the setup: a request may name what the setup made
    time.sleep(0.5)  # let the server settle after the setup
    answer: dict[str, Any] = {}
    send = _sender(server, case, request, args.case_timeout, answer)
    pids = server.pids()  # the tree is looked up once: sampling /proc/PID is cheap
    base_rss, base_written = rss_of(pids), written_by(pids)
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
    accepted, failed = None, 0
    if not aborted:
        statuses: list[tuple[str, str]] = answer.get("statuses", [("?", "")])
        for code, body in dict(statuses).items():
            if code.startswith("5") or not code.isdigit():
                log(f"    {case.name}: {code} {body}")
        if case.burst == 1:
            status = statuses[0][0]
        else:
            counts = Counter(code for code, _ in statuses)
            status = " ".join(f"{n}x{code}" for code, n in sorted(counts.items()))
            accepted = sum(n for code, n in counts.items() if code.startswith("2"))
            failed = sum(n for code, n in counts.items()
                         if code.startswith("5") or not code.isdigit())
    return Result(case.name, status, seconds, max(peak, 0), probe.longest, aborted,
                  max(written, 0), accepted, case.allowed, failed)


def worst(tries: list[Result]) -> Result:
    """One result for the tries of a case: the first that misses the target (else the last),
    with every try's 2xx count when there were several (a quota race: "2xx 3,3,3 /30")."""
    result = next((r for r in tries if not r.ok()), tries[-1])
    counts = [r.accepted for r in tries]
    if len(tries) > 1 and all(n is not None for n in counts):
        burst = sum(int(part.split("x")[0]) for part in result.status.split())
        result.status = f"2xx {','.join(map(str, counts))} /{burst}"
        result.accepted = max(n for n in counts if n is not None)
        result.seconds = max(r.seconds for r in tries)
        result.rss_growth = max(r.rss_growth for r in tries)
        result.healthz_max_s = max(r.healthz_max_s for r in tries)
        result.failed = sum(r.failed for r in tries)
    return result


def cell(r: Result | None) -> str:
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
            line += f"{cell(before.get(case.name)):<{CELL}}  "
        print(line + cell(after.get(case.name)))
    print("cells: status, seconds to the answer, peak RSS growth of the server's processes, "
          "bytes they wrote to storage, longest /healthz, ok/MISS against the target")
    print(f"target: a 4xx in < {TARGET_S:g} s, < {TARGET_RSS // MiB} MB RSS growth, /healthz "
          f"< {TARGET_HEALTHZ_S * 1000:.0f} ms throughout; a quota race (its 2xx count in "
          "each try, of the burst) accepts no more than its quota allows")
