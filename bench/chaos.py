"""Fault injection: fit jobs on two workers while processes, the broker and the database fail.

Starts everything of its own: a fresh database on the PostgreSQL server (dropped at the end)
reached through a TCP proxy that can freeze, a redis-server on a free port, the API
(`keras-jobs serve --no-worker`) and two `keras-jobs worker` processes. Submits N fit jobs,
then, while they run:

- every 12-25 s (for the first `--chaos-s` seconds) SIGKILLs a random pool child (mostly one
  running a job) or a whole worker (its children die with it) and starts that worker again;
- restarts Redis once with persistence (append-only file: its lists survive) and once without
  (everything in it is lost);
- freezes the database for 20 s (the proxy stops forwarding; connections stay open);
- SIGTERMs one worker (a deploy: its job is handed back) and starts it again.

Then it waits for every job to end and prints, from the database:

- submitted, succeeded, failed (with the reason: only `max_attempts` may fail a job), lost
  (never ended);
- duplicated epochs: an epoch a job had already finished (recorded) and that a later attempt
  trained again. Per attempt, `epoch_at_start` (epochs recorded when it began) minus
  `resumed_from_epoch` (the epoch its training began at), when positive; cross-checked with
  the epoch events (`job_events`: one per recorded epoch, so a second one for an epoch is a
  duplicate) and with the model versions (one per succeeded job, none for a failed one);
- resumed-from-epoch counts (attempts after the first: the epoch they began at) and attempt
  outcomes;
- recovery: for each kill that hit a running job, the time from the kill to that job's next
  finished epoch (or its end); the longest is printed with its kill.

Usage: python bench/chaos.py [--jobs 20] [--epochs 6] [--rows 8000] [--batch-size 8]
       [--kill-every 12 25] [--chaos-s 210] [--max-attempts 6] [--timeout 720] [--seed 0]
       [--keep]
Exit status 1 if a job was lost, an epoch trained twice, or a job failed for another reason.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("KJ_CHAOS_POSTGRES_URL",
                         "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
FREEZE_S = 20.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if fields[1] == str(pid):
                found.append(int(entry.name))
    return found


# -- the database, through a proxy that can freeze ------------------------------------------


class FreezingProxy:
    """TCP proxy in front of PostgreSQL. While frozen it forwards nothing in either direction
    but keeps every connection open (and accepts new ones): the database looks alive and
    silent, as behind a stuck network or pooler."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.flowing = threading.Event()
        self.flowing.set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


# -- Redis ----------------------------------------------------------------------------------


class Redis:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.persist = True

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, persist: bool, folder: Path) -> None:
        import redis

        self.persist = persist
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if persist else "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, graceful: bool) -> None:
        """graceful: SIGTERM (Redis flushes its append-only file); else SIGKILL."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            self.proc.wait(30)
            self.proc = None


# -- the service ----------------------------------------------------------------------------


@dataclass
class Worker:
    name: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "worker"],
                                         env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Kill:
    at: float  # time.time()
    kind: str
    pids: list[int]
    note: str = ""


@dataclass
class Chaos:
    workers: list[Worker]
    redis: Redis
    proxy: FreezingProxy
    db: Engine
    rng: random.Random
    kill_every: tuple[float, float]
    chaos_s: float
    home: Path
    events: list[Kill] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def running_pids(self) -> set[int]:
        with self.db.connect() as conn:
            rows = conn.execute(text(
                "SELECT a.worker FROM jobs j JOIN job_attempts a ON a.job_id = j.id "
                "AND a.number = j.attempt WHERE j.status = 'running'")).all()
        return {int(w.rpartition(":")[2]) for (w,) in rows}

    def run(self) -> None:
        start = time.monotonic()
        plan = [(25.0, self.redis_restart_persistent), (55.0, self.redis_restart_empty),
                (85.0, self.freeze_database), (125.0, self.deploy_one_worker)]
        next_kill = start + self.rng.uniform(*self.kill_every)
        while not self.done.is_set():
            now = time.monotonic()
            if plan and now - start >= plan[0][0]:
                _, action = plan.pop(0)
                threading.Thread(target=self._guard, args=(action,), daemon=True).start()
            if now >= next_kill and now - start < self.chaos_s:
                self._guard(self.kill_something)
                next_kill = now + self.rng.uniform(*self.kill_every)
            self.done.wait(0.5)

    def _guard(self, action: Any) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - chaos goes on
            log(f"chaos action {action.__name__} failed: {exc!r}")

    def kill_something(self) -> None:
        alive = [w for w in self.workers if w.alive()]
        if not alive:
            return
        if self.rng.random() < 0.7:
            busy = self.running_pids()
            pool = [(w, c) for w in alive for c in children(w.proc.pid)]  # type: ignore[union-attr]
            hits = [p for p in pool if p[1] in busy]
            if not pool:
                return
            worker, pid = self.rng.choice(hits if hits and self.rng.random() < 0.85 else pool)
            os.kill(pid, signal.SIGKILL)
            self.events.append(Kill(time.time(), "child", [pid], worker.name))
            log(f"SIGKILL pool child {pid} of {worker.name}{' (busy)' if pid in busy else ''}")
            return
        worker = self.rng.choice(alive)
        assert worker.proc is not None
        pids = [worker.proc.pid, *children(worker.proc.pid)]
        worker.proc.kill()
        worker.proc.wait()
        self.events.append(Kill(time.time(), "worker", pids, worker.name))
        log(f"SIGKILL worker {worker.name} (pids {pids}); restarting it")
        time.sleep(self.rng.uniform(1, 3))
        worker.start()

    def redis_restart_persistent(self) -> None:
        log("Redis: restart WITH persistence (SIGTERM, append-only file kept)")
        self.redis.stop(graceful=True)
        time.sleep(2)
        self.redis.start(persist=True, folder=self.home / "redis-aof")
        self.events.append(Kill(time.time(), "redis-persistent", []))

    def redis_restart_empty(self) -> None:
        log("Redis: restart WITHOUT persistence (SIGKILL, empty)")
        self.redis.stop(graceful=False)
        time.sleep(2)
        self.redis.start(persist=False, folder=self.home / "redis-empty")
        self.events.append(Kill(time.time(), "redis-empty", []))

    def freeze_database(self) -> None:
        log(f"database: frozen for {FREEZE_S:.0f} s (the proxy stops forwarding)")
        self.events.append(Kill(time.time(), "db-freeze", []))
        self.proxy.freeze()
        time.sleep(FREEZE_S)
        self.proxy.thaw()
        log("database: thawed")

    def deploy_one_worker(self) -> None:
        """SIGTERM a worker running a job (waiting a little for one to be), then restart it."""
        for _ in range(20):
            busy = self.running_pids()
            running = [w for w in self.workers if w.alive()
                       and busy & set(children(w.proc.pid))]  # type: ignore[union-attr]
            if running:
                break
            time.sleep(1)
        alive = [w for w in self.workers if w.alive()]
        if not alive:
            return
        worker = self.rng.choice(running or alive)
        assert worker.proc is not None
        pids = [worker.proc.pid, *children(worker.proc.pid)]
        began = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(60)
        took = time.monotonic() - began
        self.events.append(Kill(time.time(), "sigterm", pids, f"exited in {took:.1f}s"))
        log(f"SIGTERM worker {worker.name} (a deploy): exited in {took:.1f} s; restarting it")
        worker.start()


# -- set-up ---------------------------------------------------------------------------------


def dataset_bytes(rows: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 32)).astype("float32")
    w = rng.normal(size=32).astype("float32")
    y = (x @ w > 0).astype("float32").reshape(-1, 1)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    return buf.getvalue()


SPEC = {"name": "chaos-mlp", "inputs": [{"name": "x", "shape": [32]}],
        "layers": [{"type": "Dense", "units": 64, "activation": "relu"},
                   {"type": "Dense", "units": 64, "activation": "relu"},
                   {"type": "Dense", "units": 1, "activation": "sigmoid"}],
        "compile": {"optimizer": "adam", "loss": "binary_crossentropy",
                    "metrics": ["binary_accuracy"]}}


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.3)


def statuses(db: Engine) -> Counter[str]:
    with db.connect() as conn:
        return Counter(dict(conn.execute(text(
            "SELECT status, count(*) FROM jobs WHERE type = 'fit' GROUP BY status")).all()))


# -- the report -----------------------------------------------------------------------------


def report(db: Engine, events: list[Kill], epochs: int, submitted: int, wall_s: float) -> bool:
    with db.connect() as conn:
        jobs = conn.execute(text(
            "SELECT id, status, error, finished_at FROM jobs WHERE type = 'fit'")).all()
        attempts = conn.execute(text(
            "SELECT job_id, number, worker, started_at, ended_at, outcome, reason, "
            "epoch_at_start, resumed_from_epoch, warnings FROM job_attempts "
            "ORDER BY job_id, number")).all()
        epoch_rows = conn.execute(text("SELECT job_id, epoch FROM job_epochs")).all()
        epoch_events = conn.execute(text(
            "SELECT job_id, (data->>'epoch')::int, created_at FROM job_events "
            "WHERE type = 'epoch' ORDER BY created_at")).all()
        versions = Counter(job_id for (job_id,) in conn.execute(text(
            "SELECT job_id FROM model_versions WHERE job_id IS NOT NULL")).all())
        dispatches = conn.execute(text(
            "SELECT coalesce(sum(dispatch_count), 0) FROM jobs WHERE type = 'fit'")).scalar()
    by_status = Counter(j.status for j in jobs)
    failed = [j for j in jobs if j.status == "failed"]
    lost = [j for j in jobs if j.status in ("queued", "running")]
    # Duplicated epochs, two ways.
    dup_attempts = sum(max(0, a.epoch_at_start - a.resumed_from_epoch) for a in attempts
                       if a.resumed_from_epoch is not None)
    per_epoch = Counter((job_id, epoch) for job_id, epoch, _at in epoch_events)
    dup_events = sum(n - 1 for n in per_epoch.values())
    recorded = Counter(job_id for job_id, _epoch in epoch_rows)
    incomplete = [j.id for j in jobs if j.status == "succeeded" and recorded[j.id] != epochs]
    bad_versions = [j.id for j in jobs if versions[j.id] != (1 if j.status == "succeeded"
                                                             else 0)]
    resumes = Counter(a.resumed_from_epoch for a in attempts if a.number > 1)
    outcomes = Counter(a.outcome or "open" for a in attempts)
    warnings = [w for a in attempts for w in (a.warnings or [])]
    recoveries = recovery_times(events, attempts, epoch_events, jobs)

    print()
    print("=" * 78)
    print(f"chaos run: {wall_s:.0f} s wall, {len(events)} faults injected "
          f"({dict(Counter(e.kind for e in events))})")
    print(f"submitted           {submitted}")
    print(f"succeeded           {by_status['succeeded']}")
    print(f"failed              {len(failed)}")
    for j in failed:
        print(f"  {j.id}: {j.error}")
    print(f"lost                {len(lost)}  {[(j.id, j.status) for j in lost]}")
    print(f"duplicated epochs   {dup_attempts} (attempts: epoch_at_start - resumed_from_epoch), "
          f"{dup_events} (a second epoch event for the same epoch)")
    print(f"incomplete history  {len(incomplete)} succeeded job(s) without all {epochs} epochs")
    print(f"model versions      {sum(versions.values())} for {by_status['succeeded']} "
          f"succeeded job(s); jobs with a wrong count: {len(bad_versions)}")
    print(f"attempts            {len(attempts)}: {dict(outcomes)}")
    resumed = dict(sorted(resumes.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    print(f"resumed from epoch  {resumed}  (attempts after the first: the epoch they began at "
          "-> count)")
    print(f"messages sent       {dispatches} for {len(jobs)} jobs "
          f"({dispatches - len(jobs)} re-sent or requeued)")
    if warnings:
        print(f"attempt warnings    {len(warnings)}: {warnings[:3]}")
    if recoveries:
        longest = max(recoveries, key=lambda r: r[0])
        print(f"recovery            {len(recoveries)} kills hit a running job; kill -> next "
              f"epoch: median {statistics.median(r[0] for r in recoveries):.1f} s, "
              f"longest {longest[0]:.1f} s ({longest[1]}: {longest[2]})")
    print("=" * 78)
    failed_otherwise = [j for j in failed if "max_attempts" not in (j.error or "")]
    return not (lost or dup_attempts or dup_events or incomplete or bad_versions
                or failed_otherwise)


def recovery_times(events: list[Kill], attempts: list[Any], epoch_events: list[Any],
                   jobs: list[Any]) -> list[tuple[float, str, str]]:
    """For each kill of a process that was running a job: seconds until that job's next
    finished epoch after the kill (or its end, if no epoch was left)."""
    finished = {j.id: j.finished_at for j in jobs}
    epochs_at: dict[str, list[datetime]] = {}
    for job_id, _epoch, at in epoch_events:
        epochs_at.setdefault(job_id, []).append(at)
    out = []
    for kill in events:
        if kill.kind not in ("child", "worker", "sigterm"):
            continue
        when = datetime.fromtimestamp(kill.at).astimezone()
        for a in attempts:
            pid = int(a.worker.rpartition(":")[2])
            if pid not in kill.pids or a.started_at > when:
                continue
            if a.ended_at is not None and a.outcome not in ("died", "handed_back"):
                continue  # it had ended on its own before
            nxt = [t for t in epochs_at.get(a.job_id, []) if t > when]
            end = min(nxt) if nxt else finished.get(a.job_id)
            if end is not None:
                out.append(((end - when).total_seconds(), a.job_id,
                            f"{kill.kind} kill of pid {pid}"))
    return out


# -- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--rows", type=int, default=8000, help="rows of the training set")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(12.0, 25.0),
                        metavar=("MIN_S", "MAX_S"), help="seconds between random kills")
    parser.add_argument("--chaos-s", type=float, default=210.0,
                        help="random kills stop after this many seconds (the scheduled Redis "
                        "restarts, database freeze and deploy all come before)")
    parser.add_argument("--max-attempts", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=720.0,
                        help="give up waiting for the jobs after this many seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs)")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    home = Path(tempfile.mkdtemp(prefix="kj-chaos-"))
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    db_name = f"kj_chaos_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    url = make_url(PG_ADMIN).set(database=db_name)
    direct = create_engine(url)
    upstream = (url.host or "127.0.0.1", url.port or 5432)
    proxy = FreezingProxy(upstream)
    redis = Redis(home)
    redis.start(persist=True, folder=home / "redis-aof")
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KJ_HOME": str(home),
           "KJ_DATABASE_URL": via_proxy, "KJ_BROKER_URL": redis.url,
           "KJ_ARTIFACT_ROOT": str(home / "artifacts"), "KJ_QUEUE": "chaos",
           "KJ_SWEEP_S": "2", "KJ_HEARTBEAT_S": "1", "KJ_CANCEL_POLL_S": "0.5",
           # Longer than the freeze plus a statement's bound: a frozen database is not a death.
           "KJ_STALE_AFTER_S": "45", "KJ_REDISPATCH_AFTER_S": "20",
           "KJ_DB_STATEMENT_TIMEOUT_S": "5", "KJ_DB_CONNECT_TIMEOUT_S": "3",
           "KJ_LOG_LEVEL": "INFO"}
    api_port = free_port()
    logs = home / "logs"
    logs.mkdir()
    api = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--no-worker",
                            "--port", str(api_port)], env=env, cwd=ROOT,
                           stdout=(logs / "api.log").open("wb"), stderr=subprocess.STDOUT)
    workers = [Worker(f"w{i}", env, logs / f"w{i}.log") for i in range(2)]
    chaos = None
    ok = False
    try:
        base = f"http://127.0.0.1:{api_port}"
        wait_http(f"{base}/healthz", 120)
        http = httpx.Client(base_url=base, timeout=60)
        r = http.post("/v1/datasets", files={"file": ("chaos.npz",
                                                      dataset_bytes(args.rows, args.seed))},
                      data={"name": "chaos"})
        r.raise_for_status()
        dataset = r.json()["id"]
        r = http.post("/v1/specs", json=SPEC)
        r.raise_for_status()
        spec = r.json()["id"]
        for w in workers:
            w.start()
        began = time.monotonic()
        for i in range(args.jobs):
            r = http.post("/v1/jobs", json={
                "type": "fit", "spec_id": spec, "dataset_id": dataset, "epochs": args.epochs,
                "batch_size": args.batch_size, "validation_split": 0.1, "seed": i,
                "model_name": f"chaos-{i}", "max_attempts": args.max_attempts})
            r.raise_for_status()
        log(f"submitted {args.jobs} jobs ({args.epochs} epochs of {args.rows} rows, batch "
            f"{args.batch_size}); chaos starts")
        chaos = Chaos(workers, redis, proxy, direct, rng, tuple(args.kill_every), args.chaos_s,
                      home)
        threading.Thread(target=chaos.run, daemon=True, name="chaos").start()
        deadline = time.monotonic() + args.timeout
        last = ""
        while time.monotonic() < deadline:
            counts = statuses(direct)
            line = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            if line != last:
                log(line)
                last = line
            if not counts.get("queued") and not counts.get("running"):
                break
            time.sleep(1)
        chaos.done.set()
        ok = report(direct, chaos.events, args.epochs, args.jobs, time.monotonic() - began)
        leftovers = [p.name for p in (home / "artifacts" / "checkpoints").glob("*")]
        print(f"checkpoint folders left: {len(leftovers)}")
        ok = ok and not leftovers
    finally:
        if chaos is not None:
            chaos.done.set()
        proxy.thaw()
        for w in workers:
            w.stop()
        api.send_signal(signal.SIGTERM)
        try:
            api.wait(30)
        except subprocess.TimeoutExpired:
            api.kill()
        redis.stop(graceful=False)
        direct.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        if args.keep:
            print(f"logs kept in {logs}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
