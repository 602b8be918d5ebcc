"""KJ_AUTH as a user meets it, with `keras-jobs serve` on the embedded default (a fresh KJ_HOME:
SQLite, local store): on a network address the service refuses to start open (KJ_AUTH=off) or
keyless (KJ_AUTH=auto, no key yet), and says how to make a key; once one exists it starts. On
127.0.0.1, "auto" is open until the first key is made (the running server notices at once),
and "required" is never open."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, free_port
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.slow


def _env(home: Path, auth: str) -> dict[str, str]:
    """The environment of a user with nothing configured but KJ_HOME and KJ_AUTH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KJ_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"KJ_HOME": str(home), "KJ_AUTH": auth, "TF_CPP_MIN_LOG_LEVEL": "2"})
    return env


def _cli(home: Path, auth: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`keras-jobs ARGS`, which must end by itself (a server that started would not)."""
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=_env(home, auth),
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def _create_key(home: Path, name: str) -> str:
    done = _cli(home, "auto", "keys", "create", "--tenant", "team", "--name", name)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


class Server(ServeProcess):
    """`keras-jobs serve --no-worker` of a user with KJ_HOME and KJ_AUTH; up once /healthz
    answers (no worker, so never ready)."""

    def __init__(self, home: Path, auth: str, host: str) -> None:
        super().__init__(_env(home, auth), home, "--no-worker", "--host", host,
                         ready="/healthz", timeout=180)

    def get(self, path: str, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=60)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """The servers a test starts; stopped at its end."""
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _refused(home: Path, auth: str) -> str:
    done = _cli(home, auth, "serve", "--no-worker", "--host", "0.0.0.0",
                "--port", str(free_port()))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "refusing to serve on 0.0.0.0" in done.stderr
    assert "keras-jobs keys create --tenant" in done.stderr
    return done.stderr


def test_auth_modes(tmp_path: Path, servers: list[Server]) -> None:
    network, auto, required = tmp_path / "network", tmp_path / "auto", tmp_path / "required"

    # On a network address: open (off) and keyless (auto without a key) are refused.
    assert "KJ_AUTH=off" in _refused(network, "off")
    assert "no API key exists yet" in _refused(network, "auto")
    # A key made, "auto" starts there (and "off" is still refused: it would let anyone in).
    key = _create_key(network, "first-admin")
    assert "KJ_AUTH=off" in _refused(network, "off")
    servers.append(Server(network, "auto", "0.0.0.0").start())
    servers.append(Server(auto, "auto", "127.0.0.1").start())
    servers.append(Server(required, "required", "127.0.0.1").start())
    on_network, local, strict = servers
    for server in servers:
        server.wait_ready()

    # Started on 0.0.0.0 with a key: keys are required.
    assert on_network.get("/v1/specs").status_code == 401
    assert on_network.get("/v1/specs", key).status_code == 200
    assert "API keys required (KJ_AUTH=auto)" in on_network.log()

    # "auto" on 127.0.0.1 with no key yet: open, and its log says so.
    assert local.get("/v1/specs").status_code == 200
    assert "authentication: open on 127.0.0.1 while no API key exists" in local.log()
    # The first key, made with the CLI while it runs: the next request without a key is a
    # 401 (every process re-reads the keys when the store's key generation changes).
    local_key = _create_key(auto, "local-admin")
    r = local.get("/v1/specs")
    assert r.status_code == 401, r.text
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "keras-jobs keys create" in r.json()["detail"]
    assert local.get("/v1/specs", local_key).status_code == 200
    # A key of another service's store is not a key here.
    assert local.get("/v1/specs", key).status_code == 401

    # "required" on 127.0.0.1, no key at all: closed.
    r = strict.get("/v1/specs")
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "API keys required (KJ_AUTH=required)" in strict.log()
    # Health stays public.
    assert strict.get("/healthz").status_code == 200
