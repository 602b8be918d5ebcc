"""A sick database is a 503 with Retry-After, never a hang: the API runs under a real uvicorn
server (real thread pool, real keep-alive) against PostgreSQL behind a TCP proxy that forwards,
refuses (no listener, connections reset) or freezes (accepts, keeps sockets open, forwards
nothing)."""

from __future__ import annotations

import asyncio
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.state import fresh
from tests.conftest import PG_ADMIN_URL
from tests.helpers import (
    SEED_SPEC,
    assert_problem,
    auth_headers,
    make_key,
    start_worker,
    stop_process,
    temp_database,
    two_classes,
    upload,
    wait_for_job,
)

TIMEOUT_S = 2  # each of the three database timeouts, in this test
STUCK = 50  # concurrent requests while frozen: more than the 40 threads of the pool


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of `target`, one thread per direction and connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.listen()

    def listen(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def forward(self) -> None:
        if self._listener is None:
            self.listen()
        self.forwarding.set()

    def freeze(self) -> None:
        """Accept connections and keep every socket open, but pass no byte either way."""
        self.forwarding.clear()

    def refuse(self) -> None:
        """Stop listening (new connections are refused) and reset the open ones."""
        if self._listener is not None:  # (already refusing: only the open ones are reset)
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._sockets:
                try:  # closed with linger 0: a reset (the shutdown wakes a pump blocked on it)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
                sock.close()
            self._sockets.clear()

    def close(self) -> None:
        self.refuse()
        self.forwarding.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by refuse()
                return
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._track(client)
        self.forwarding.wait()  # frozen: the client waits for a greeting that never comes
        try:
            upstream = socket.create_connection(self.target)
        except OSError:
            client.close()
            return
        self._track(upstream)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.forwarding.wait()  # frozen: hold the bytes
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with self._lock:
                    self._sockets.discard(sock)
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
                sock.close()


@dataclass
class Server:
    url: str
    proxy: Proxy


@pytest.fixture
def server(client: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The API under uvicorn in a thread of this process, its database through a Proxy, every
    database timeout TIMEOUT_S. The settings (and the engine built from them) are
    process-wide: restored afterwards."""
    for name in ("CONNECT", "STATEMENT", "POOL"):
        monkeypatch.setenv(f"KJ_DB_{name}_TIMEOUT_S", str(TIMEOUT_S))
    yield from _serve(pg_database, monkeypatch)


@pytest.fixture
def default_server(client: Any, pg_database: str,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """The same with the default database timeouts."""
    for name in ("CONNECT", "STATEMENT", "POOL", "PING"):
        monkeypatch.delenv(f"KJ_DB_{name}_TIMEOUT_S", raising=False)
    yield from _serve(pg_database, monkeypatch)


def _serve(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    url = make_url(pg_database)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    monkeypatch.setenv("KJ_DATABASE_URL", proxied.render_as_string(hide_password=False))
    try:
        with fresh():
            yield from _run(proxy)
    finally:
        proxy.close()
        monkeypatch.undo()


def _run(proxy: Proxy) -> Iterator[Server]:
    """A uvicorn server of the current state, in a thread of this process."""
    import uvicorn

    from app.main import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                       log_level="warning", timeout_keep_alive=30))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not uv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield Server(f"http://127.0.0.1:{port}", proxy)
    finally:
        proxy.forward()
        uv.should_exit = True
        thread.join(30)


def local_port(r: httpx.Response) -> int:
    """The client side's port of the connection that carried `r`."""
    return int(r.extensions["network_stream"].get_extra_info("client_addr")[1])


def assert_unavailable(r: httpx.Response) -> None:
    body = assert_problem(r, 503)
    assert body["title"] == "Database unavailable"
    assert r.headers["retry-after"] == "5"
    assert "postgres" not in body["detail"] and "127.0.0.1" not in body["detail"]


def test_refused_database_is_a_503_on_a_kept_connection(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30, headers=auth_headers()) as http:
        assert http.get("/v1/specs").status_code == 200  # the pool now holds a connection
        server.proxy.refuse()
        started = time.monotonic()
        r = http.get("/v1/specs")
        took = time.monotonic() - started
        assert_unavailable(r)
        assert took < 1.5, f"a refused database took {took:.2f}s to report"
        again = http.get("/v1/specs")
        assert_unavailable(again)
        assert local_port(again) == local_port(r), "the 503 closed the keep-alive connection"
        print(f"\nrefused: 503 in {took:.3f}s")
        server.proxy.forward()
        assert http.get("/v1/specs").status_code == 200


def test_frozen_database_is_a_503_within_the_timeouts(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=30, headers=auth_headers()) as http:
        assert http.get("/v1/specs").status_code == 200
    server.proxy.freeze()
    stuck, health, pending = asyncio.run(_storm(server.url))
    took = [t for _, t in stuck]
    for r, _ in stuck:
        assert_unavailable(r)
    # Each request waits at most for a pool slot, then for a pooled connection's answer and a
    # new connection: a few timeouts, never an unbounded hang.
    bound = 3 * TIMEOUT_S + 1 + 1.5
    assert max(took) < bound, f"slowest 503 after {max(took):.2f}s"
    assert max(t for _, t in health) < 0.5, health
    assert all(status == 200 for status, _ in health), health
    assert min(pending) >= STUCK - 5, f"requests had already finished: {pending}"
    print(f"\nfrozen: {STUCK} requests answered 503 in {min(took):.2f}-{max(took):.2f}s; "
          f"/healthz meanwhile in at most {max(t for _, t in health) * 1000:.0f} ms "
          f"with {min(pending)}-{max(pending)} requests pending")
    server.proxy.forward()
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30, headers=auth_headers()) as http:
        assert http.get("/v1/specs").status_code == 200
    print(f"forwarding again: 200 after {time.monotonic() - started:.2f}s")


def test_frozen_database_answers_within_5_s_with_the_default_settings(
        default_server: Server) -> None:
    """A pooled connection's pre-ping, a new connection and /readyz's probe each give up on a
    silent database within seconds (they took 36 s, 5 s and 13.9 s, /readyz then saying the
    database was "ok")."""
    bound = 5.0
    with httpx.Client(base_url=default_server.url, timeout=60, headers=auth_headers()) as http:
        assert http.get("/v1/specs").status_code == 200  # the pool now holds a connection
        default_server.proxy.freeze()
        took = {}
        for what, path in (("pooled", "/v1/specs"), ("new", "/v1/datasets"),
                           ("readyz", "/readyz")):
            started = time.monotonic()
            r = http.get(path)
            took[what] = time.monotonic() - started
            if what == "readyz":
                body = assert_problem(r, 503)
                assert body["checks"]["database"].startswith("error"), body
            else:
                assert_unavailable(r)
        print(f"\nfrozen, default settings: {', '.join(f'{k} {v:.2f}s' for k, v in took.items())}")
        assert max(took.values()) < bound, took
        stuck, _health, _pending = asyncio.run(_storm(default_server.url))
        slowest = max(t for _, t in stuck)
        for r, _ in stuck:
            assert_unavailable(r)
        print(f"{STUCK} concurrent requests: 503 within {slowest:.2f}s")
        assert slowest < bound, slowest
        default_server.proxy.forward()
        assert http.get("/v1/specs").status_code == 200


def test_a_request_waiting_on_the_database_is_a_503_within_5_s(client: Any) -> None:
    """A statement that gets no answer (here: waiting on a table another transaction locked)
    holds a request KJ_DB_REQUEST_WAIT_S, not the statement timeout (30 s)."""
    from sqlalchemy import text

    from app.core.db import session_scope

    with session_scope() as locker:
        locker.execute(text("LOCK TABLE specs IN ACCESS EXCLUSIVE MODE"))
        started = time.monotonic()
        r = client.get("/v1/specs")
        took = time.monotonic() - started
    assert_unavailable(r)
    print(f"\nwaiting on a lock: 503 after {took:.2f}s")
    assert took < 5, took
    assert client.get("/v1/specs").status_code == 200


async def _storm(url: str) -> tuple[list[tuple[httpx.Response, float]],
                                    list[tuple[int, float]], list[int]]:
    """STUCK concurrent GET /v1/specs; meanwhile /healthz, on connections of its own."""
    limits = httpx.Limits(max_connections=STUCK + 10)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                 headers=auth_headers()) as http, \
            httpx.AsyncClient(base_url=url, timeout=60) as probe:

        async def timed_get() -> tuple[httpx.Response, float]:
            started = time.monotonic()
            r = await http.get("/v1/specs")
            return r, time.monotonic() - started

        tasks = [asyncio.create_task(timed_get()) for _ in range(STUCK)]
        await asyncio.sleep(0.3)  # all sent, every thread taken
        health: list[tuple[int, float]] = []
        pending: list[int] = []
        for _ in range(5):
            started = time.monotonic()
            r = await probe.get("/healthz")
            health.append((r.status_code, time.monotonic() - started))
            pending.append(sum(not t.done() for t in tasks))
            await asyncio.sleep(0.2)
        return await asyncio.gather(*tasks), health, pending


def test_statements_are_cancelled_by_the_server(pg_database: str) -> None:
    """statement_timeout reaches the server, and its cancellation counts as unavailable."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    from app.core.db import database_unavailable, make_engine
    from app.core.settings import Settings

    engine = make_engine(pg_database, Settings(db_statement_timeout_s=0.3))
    try:
        with engine.connect() as conn:
            assert conn.scalar(text("SHOW statement_timeout")) == "300ms"
            started = time.monotonic()
            with pytest.raises(OperationalError) as caught:
                conn.execute(text("SELECT pg_sleep(5)"))
        assert time.monotonic() - started < 1
        assert database_unavailable(caught.value)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_worker_keeps_a_job_until_the_database_is_back(
        service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """The job's message arrives while the worker cannot reach the database: it is not acked
    and lost but tried again, and the job runs once the database answers. Its own database,
    store and queue: the session's worker sweeps the session's database and store, and would
    send a queued job whose message it cannot see to its own queue and remove the folders of
    a job it does not know."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    queue = f"kj-test-db-down-{secrets.token_hex(4)}"  # this worker's own queue
    with temp_database(PG_ADMIN_URL, "kj_db_down") as db_url:
        own = {"KJ_DATABASE_URL": db_url, "KJ_QUEUE": queue, "KJ_HOME": str(tmp_path / "home"),
               "KJ_ARTIFACT_ROOT": str(tmp_path / "home" / "artifacts")}
        for name, value in own.items():
            monkeypatch.setenv(name, value)
        with fresh(), TestClient(create_app()) as http:  # its lifespan migrates the database
            http.headers["Authorization"] = f"Bearer {make_key('local', 'db-down', ['admin'])}"
            x, y = two_classes(n=20)
            dataset = upload(http, "db-down-worker", x=x, y=y)
            spec = http.post("/v1/specs", json=SEED_SPEC).json()
            _run_with_the_database_refused_first(http, {**service_env, **own}, tmp_path,
                                                 {"type": "fit", "spec_id": spec["id"],
                                                  "dataset_id": dataset["id"], "epochs": 1})
        monkeypatch.undo()


def _run_with_the_database_refused_first(http: Any, env: dict[str, str], tmp_path: Any,
                                         body: dict[str, Any]) -> None:
    url = make_url(env["KJ_DATABASE_URL"])
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.refuse()
    log_path = tmp_path / "worker.log"
    worker = start_worker({**env, "KJ_DB_CONNECT_TIMEOUT_S": "2",
                           "KJ_DATABASE_URL": url.set(host="127.0.0.1", port=proxy.port)
                           .render_as_string(hide_password=False)}, log_path)
    try:
        r = http.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 120
        while "database unavailable" not in log_path.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        assert http.get(f"/v1/jobs/{r.json()['id']}").json()["status"] == "queued"
        proxy.forward()
        job = wait_for_job(http, r.json()["id"], timeout=120)
        assert job["status"] == "succeeded", (job.get("error"), log_path.read_text()[-3000:])
    finally:
        stop_process(worker)
        proxy.close()
