"""Quotas hold under concurrency: N requests sent at once against a real uvicorn server (real
threads, each request its own connection and transaction) never pass a quota, on PostgreSQL
(advisory lock per tenant) and SQLite (BEGIN IMMEDIATE). Before the lock, 30 submits against
a queued quota of 3 were 11-17 accepted."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.helpers import (
    SEED_SPEC,
    live_server,
    make_key,
    npz_bytes,
    reset_caches,
    stored_files,
)

SUBMITS = 30
UPLOADS = 12


@dataclass
class Served:
    """A live server, a fresh tenant with a key of its own, and the store's root."""

    url: str
    tenant: str
    headers: dict[str, str]
    root: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def set_quota(self, **values: int) -> None:
        # With the domain function: who may set a tenant's quotas over HTTP is another matter.
        from app.auth import quotas
        from app.core.db import session_scope

        with session_scope() as s:
            quotas.set_overrides(s, self.tenant, values, actor="tests")


@pytest.fixture(params=["postgresql", "sqlite"])
def served(request: pytest.FixtureRequest, service_env: dict[str, str], client: Any,
           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """PostgreSQL: the suite's database. SQLite: a file of this test's own, migrated by the
    server's start-up (the process-wide settings and engine are restored afterwards). Jobs go
    to a queue no worker reads, so they stay queued."""
    monkeypatch.setenv("KJ_QUEUE", f"kj-test-races-{secrets.token_hex(4)}")
    if request.param == "sqlite":
        monkeypatch.setenv("KJ_DATABASE_URL", f"sqlite:///{tmp_path / 'kj.db'}")
    reset_caches()
    try:
        with live_server() as address:
            tenant = f"race-{secrets.token_hex(4)}"
            key = make_key(tenant, f"{tenant}-key", ["read", "write"])
            yield Served(f"http://{address}", tenant, {"Authorization": f"Bearer {key}"},
                         Path(service_env["KJ_ARTIFACT_ROOT"]))
    finally:
        from app.auth import keys

        monkeypatch.undo()
        reset_caches()
        keys.KEYS.invalidate()  # it holds the keys of the database just left


def at_once(n: int, send: Callable[[httpx.Client], httpx.Response],
            make_client: Callable[[], httpx.Client]) -> list[httpx.Response]:
    """`send` from n threads, each on a connection of its own, released together."""
    clients = [make_client() for _ in range(n)]
    for c in clients:  # connected before the start, so the requests arrive together
        assert c.get("/v1/specs").status_code == 200
    start = threading.Barrier(n)
    answers: list[httpx.Response | BaseException] = [RuntimeError("not sent")] * n

    def run(i: int) -> None:
        start.wait()
        try:
            answers[i] = send(clients[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for c in clients:
        c.close()
    errors = [a for a in answers if not isinstance(a, httpx.Response)]
    assert not errors, errors
    return [a for a in answers if isinstance(a, httpx.Response)]


def _arrays(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    return {"x": rng.random((rows, 2), dtype=np.float32),
            "y": (rng.random((rows, 1)) > 0.5).astype(np.float32)}


def test_parallel_submits_never_pass_the_queued_quota(served: Served) -> None:
    with served.client() as http:
        spec = http.post("/v1/specs", json=SEED_SPEC)
        assert spec.status_code == 201, spec.text
        ds = http.post("/v1/datasets", files={"file": ("d.npz", npz_bytes(**_arrays(20)))})
        assert ds.status_code == 201, ds.text
    served.set_quota(max_queued_jobs=3)
    body = {"type": "fit", "spec_id": spec.json()["id"], "dataset_id": ds.json()["id"],
            "x": "x", "y": "y", "epochs": 1}
    answers = at_once(SUBMITS, lambda c: c.post("/v1/jobs", json=body), served.client)
    codes = sorted(r.status_code for r in answers)
    assert codes.count(202) == 3, codes
    assert codes.count(429) == SUBMITS - 3, [r.text for r in answers if r.status_code != 202]
    assert {r.json()["current"] for r in answers if r.status_code == 429} == {3}
    with served.client() as http:
        listed = http.get("/v1/jobs", params={"status": "queued"}).json()
        assert listed["total"] == 3
        for job in listed["items"]:
            assert http.post(f"/v1/jobs/{job['id']}:cancel").status_code == 202


def test_parallel_uploads_never_pass_the_stored_bytes_quota(served: Served) -> None:
    payload = npz_bytes(**_arrays(640))  # about 8 KB of arrays
    with served.client() as http:
        first = http.post("/v1/datasets", files={"file": ("d.npz", payload)})
        assert first.status_code == 201, first.text
    size = first.json()["stored_bytes"]
    limit = size + 2 * size + size // 2  # room for two and a half more
    served.set_quota(max_stored_bytes=limit)
    before = stored_files(served.root)
    answers = at_once(UPLOADS, lambda c: c.post("/v1/datasets", files={"file": ("d.npz",
                                                                                payload)}),
                      served.client)
    codes = sorted(r.status_code for r in answers)
    assert codes.count(201) == 2 and codes.count(413) == UPLOADS - 2, codes
    with served.client() as http:
        listed = http.get("/v1/datasets").json()
    assert listed["total"] == 3
    assert sum(d["stored_bytes"] for d in listed["items"]) <= limit
    # The refused uploads left no file: what is new belongs to the accepted ones.
    kept = {f"datasets/{r.json()['id']}" for r in answers if r.status_code == 201}
    new = stored_files(served.root) - before
    assert new and {str(Path(f).parent) for f in new} == kept, (new, kept)
