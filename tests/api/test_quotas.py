"""Every quota and limit answers with its status and says what it is: 413 for sizes (stored
bytes, largest upload, predict rows, every route's body), 429 with Retry-After for queued
jobs, 422 for a fit job's epochs x rows; a tenant past its running-jobs quota waits, queued.
Each test has a tenant of its own, so no quota of one test touches another."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.core.state import fresh
from tests.helpers import (
    SEED_SPEC,
    assert_problem,
    make_key,
    npz_bytes,
    start_worker,
    stop_process,
    stored_files,
    table_counts,
    two_classes,
    wait_for_job,
)


@dataclass
class Tenant:
    """A fresh tenant and a key of its own (every scope), sending through the suite's client."""

    client: Any
    name: str
    key_name: str
    key: str

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kwargs)

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)

    def quotas(self, **values: int | None) -> dict[str, Any]:
        """Set this tenant's overrides with the suite's admin key (the client's default)."""
        r = self.client.put(f"/v1/tenants/{self.name}/quotas", json=values)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def upload(self, name: str, **arrays: np.ndarray) -> Any:
        return self.post("/v1/datasets", files={"file": (f"{name}.npz", npz_bytes(**arrays))},
                         data={"name": name})

    def spec(self) -> str:
        r = self.post("/v1/specs", json=SEED_SPEC)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def fit(self, spec_id: str, dataset_id: str, **extra: Any) -> Any:
        return self.post("/v1/jobs", json={
            "type": "fit", "spec_id": spec_id, "dataset_id": dataset_id, "x": "x", "y": "y",
            "epochs": 1, "batch_size": 16, "model_name": "quota-m", **extra})


def new_tenant(client: Any) -> Tenant:
    name = f"q-{secrets.token_hex(4)}"
    key_name = f"{name}-key"
    # operator: every route (setting quotas included) takes this key.
    return Tenant(client, name, key_name,
                  make_key(name, key_name, ["read", "write", "predict", "operator"]))


@pytest.fixture
def tenant(client: Any) -> Tenant:
    return new_tenant(client)


@pytest.fixture
def setting(settings_env: Callable[..., None]) -> Callable[[str, str], None]:
    """Sets a KJ_* setting for this test only (conftest's settings_env)."""
    return lambda name, value: settings_env(**{name: value})


def _data(n: int = 50) -> dict[str, np.ndarray]:
    x, y = two_classes(seed=2, n=n)
    return {"x": x, "y": y}


# --- what GET /v1/tenants/{t}/quotas shows ---------------------------------------------------

def test_quotas_show_what_is_in_force_the_overrides_and_the_usage(
        client: Any, tenant: Tenant) -> None:
    from app.core.config import get_settings

    s = get_settings()
    fresh = client.get(f"/v1/tenants/{tenant.name}/quotas").json()
    assert fresh == {
        "tenant": tenant.name,
        "quota": {"max_running_jobs": s.quota_running_jobs,
                  "max_queued_jobs": s.quota_queued_jobs,
                  "max_stored_bytes": s.quota_stored_bytes,
                  "max_upload_bytes": s.max_upload_bytes},
        "overrides": dict.fromkeys(fresh["quota"]),
        "usage": {"running_jobs": 0, "queued_jobs": 0, "stored_bytes": 0}}
    ds = tenant.upload("usage", **_data()).json()
    shown = tenant.quotas(max_queued_jobs=7)
    assert shown["quota"]["max_queued_jobs"] == 7
    assert shown["quota"]["max_running_jobs"] == s.quota_running_jobs  # the default
    assert shown["overrides"]["max_queued_jobs"] == 7
    assert shown["overrides"]["max_stored_bytes"] is None
    assert shown["usage"]["stored_bytes"] == ds["stored_bytes"] > 0
    assert client.get(f"/v1/tenants/{tenant.name}/quotas").json() == shown
    # Nulls put the defaults back.
    assert tenant.quotas(max_queued_jobs=None)["quota"] == fresh["quota"]


# --- queued jobs: 429 with Retry-After ------------------------------------------------------

def test_queued_jobs_past_the_quota_are_429_with_retry_after(client: Any, tenant: Tenant) -> None:
    # No job of this tenant may run (a worker of the session may be up): they stay queued.
    tenant.quotas(max_queued_jobs=1, max_running_jobs=0)
    spec_id, ds = tenant.spec(), tenant.upload("queued", **_data()).json()
    first = tenant.fit(spec_id, ds["id"])
    assert first.status_code == 202, first.text
    try:
        r = tenant.fit(spec_id, ds["id"])
        body = assert_problem(r, 429)
        assert int(r.headers["Retry-After"]) > 0
        assert body["type"] == "/problems/quota"
        assert body["limit"] == 1 and body["current"] == 1
        assert "1 queued jobs (limit 1)" in body["detail"]
        assert "max_queued_jobs" in body["detail"]
        usage = client.get(f"/v1/tenants/{tenant.name}/quotas").json()["usage"]
        assert usage["queued_jobs"] == 1
        # Another tenant is not held up by this one's queue.
        other = new_tenant(client)
        other_ds = other.upload("other", **_data()).json()
        other_job = other.fit(other.spec(), other_ds["id"])
        assert other_job.status_code == 202, other_job.text
        assert other.post(f"/v1/jobs/{other_job.json()['id']}:cancel").status_code == 202
    finally:
        assert tenant.post(f"/v1/jobs/{first.json()['id']}:cancel").status_code == 202
    # Cancelled, it no longer counts.
    again = tenant.fit(spec_id, ds["id"])
    assert again.status_code == 202, again.text
    tenant.post(f"/v1/jobs/{again.json()['id']}:cancel")


# --- stored bytes: 413, nothing kept ---------------------------------------------------------

def test_an_upload_past_the_stored_bytes_quota_is_413_and_leaves_nothing(
        client: Any, tenant: Tenant, service_env: dict[str, str], keras_file: bytes) -> None:
    data = _data()
    first = tenant.upload("fits", **data)
    assert first.status_code == 201, first.text
    size = first.json()["stored_bytes"]  # the arrays as stored: what the quota counts
    tenant.quotas(max_stored_bytes=size + size // 2)  # room for half another one
    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    before_rows, before_files = table_counts(), stored_files(root)

    r = tenant.upload("too-much", **data)
    body = assert_problem(r, 413)
    assert body["type"] == "/problems/quota"
    assert body["limit"] == size + size // 2
    assert body["current"] == size and body["requested"] == size
    assert "max_stored_bytes" in body["detail"]
    # A model version counts too.
    r = tenant.post("/v1/models/over/versions", files={"file": ("m.keras", keras_file)})
    assert_problem(r, 413)
    assert table_counts() == before_rows
    assert stored_files(root) == before_files
    listed = tenant.get("/v1/datasets").json()["items"]
    assert [d["name"] for d in listed] == ["fits"]

    # At the quota, a new job is refused too (it would store a model).
    tenant.quotas(max_stored_bytes=size)
    spec_id = tenant.spec()
    assert_problem(tenant.fit(spec_id, first.json()["id"]), 413)
    # With room again, the same upload is taken.
    tenant.quotas(max_stored_bytes=3 * size)
    assert tenant.upload("now-fits", **data).status_code == 201


# --- largest upload: 413 while it arrives ----------------------------------------------------

def test_an_upload_past_the_largest_upload_quota_is_413(
        client: Any, tenant: Tenant, service_env: dict[str, str], keras_file: bytes) -> None:
    payload = npz_bytes(**_data())
    tenant.quotas(max_upload_bytes=1024)
    assert len(payload) > 1024 and len(keras_file) > 1024
    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    before_rows, before_files = table_counts(), stored_files(root)
    r = tenant.post("/v1/datasets", files={"file": ("big.npz", payload)})
    body = assert_problem(r, 413, "/file")
    assert "1024 bytes" in body["detail"]
    r = tenant.post("/v1/models/big/versions", files={"file": ("m.keras", keras_file)})
    body = assert_problem(r, 413, "/file")
    assert "1024 bytes" in body["detail"]
    assert table_counts() == before_rows
    assert stored_files(root) == before_files
    # The quota is the tenant's own: the suite's tenant still uploads the same file.
    assert client.post("/v1/datasets", files={"file": ("big.npz", payload)}).status_code == 201
    # And raised, both are taken.
    tenant.quotas(max_upload_bytes=len(payload) + len(keras_file))
    assert tenant.post("/v1/datasets", files={"file": ("big.npz", payload)}).status_code == 201
    r = tenant.post("/v1/models/big/versions", files={"file": ("m.keras", keras_file)})
    assert r.status_code == 201, r.text


# --- a fit job's epochs x rows: 422 ----------------------------------------------------------

def test_a_fit_job_past_epochs_times_rows_is_422_naming_epochs(
        tenant: Tenant, setting: Callable[[str, str], None]) -> None:
    spec_id, ds = tenant.spec(), tenant.upload("work", **_data(n=50)).json()
    assert ds["num_rows"] == 100
    setting("KJ_MAX_FIT_EPOCH_ROWS", "1000")
    body = assert_problem(tenant.fit(spec_id, ds["id"], epochs=11), 422, "/epochs")
    assert "11 epochs x 100 rows = 1100" in body["detail"]
    assert "KJ_MAX_FIT_EPOCH_ROWS" in body["detail"]
    # Continuing from epoch 2 asks for 9 more: within the limit.
    ok = tenant.fit(spec_id, ds["id"], epochs=11, initial_epoch=2)
    assert ok.status_code == 202, ok.text
    tenant.post(f"/v1/jobs/{ok.json()['id']}:cancel")


# --- predict rows: 413 -----------------------------------------------------------------------

def test_a_predict_request_past_max_predict_rows_is_413(
        tenant: Tenant, keras_file: bytes, setting: Callable[[str, str], None]) -> None:
    r = tenant.post("/v1/models/rows/versions", files={"file": ("m.keras", keras_file)})
    assert r.status_code == 201, r.text
    setting("KJ_MAX_PREDICT_ROWS", "4")
    rows = [[0.0, 1.0]] * 5
    r = tenant.post("/v1/models/rows:predict", json={"instances": rows})
    body = assert_problem(r, 413)
    assert body["limit"] == 4 and body["current"] == 5
    assert "5 rows" in body["detail"] and "at most 4" in body["detail"]
    r = tenant.post("/v2/models/rows/infer", json={"inputs": [
        {"name": "x", "shape": [5, 2], "datatype": "FP32", "data": [0.0] * 10}]})
    assert_problem(r, 413)
    r = tenant.post("/v1/models/rows:predict", json={"instances": rows[:4]})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 4


# --- request bodies: every route that takes one ----------------------------------------------

def _body_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every POST/PUT/PATCH route of the app, whatever router holds it."""
    from fastapi.routing import iter_route_contexts

    found = []
    for route in iter_route_contexts(app.routes):
        for method in sorted((route.methods or set()) & {"POST", "PUT", "PATCH"}):
            found.append((method, str(route.path)))
    return found


def _fill(path: str, tenant: str) -> str:
    values = {"name": "m", "version": "1", "label": "prod", "job_id": "job_0", "tenant": tenant}
    return re.sub(r"\{(\w+)\}", lambda m: values[m[1]], path)


# Routes that answer every request the same without reading its body (Keras models have no
# classify or regress signature).
REFUSES_WITHOUT_READING = (":classify", ":regress")


def test_an_oversized_body_is_413_on_every_route_that_takes_one(
        client: Any, tenant: Tenant, setting: Callable[[str, str], None]) -> None:
    routes = _body_routes(client.app)
    assert ("POST", "/v1/specs") in routes and ("PUT", "/v1/models/{name}/labels/{label}") in routes
    media = {(m.upper(), p): list(op.get("requestBody", {}).get("content", {}))
             for p, ops in client.app.openapi()["paths"].items() for m, op in ops.items()}
    setting("KJ_MAX_JSON_BODY_BYTES", "1024")
    setting("KJ_PREDICT_MAX_BODY_BYTES", "1024")
    tenant.quotas(max_upload_bytes=1024)
    big = b'{"pad": "' + b"x" * 4096 + b'"}'
    seen: dict[str, list[str]] = {"json": [], "upload": [], "predict": [], "refused": []}
    for method, path in routes:
        url = _fill(path, tenant.name)
        if "multipart/form-data" in media.get((method, path), []):
            kind = "upload"
            r = tenant.request(method, url, files={"file": ("big.npz", big)})
        else:
            kind = ("refused" if path.endswith(REFUSES_WITHOUT_READING) else
                    "predict" if path.endswith((":predict", "/infer")) else "json")
            r = tenant.request(method, url, content=big,
                               headers={"Content-Type": "application/json"})
        seen[kind].append(f"{method} {path}")
        if kind == "refused":
            assert_problem(r, 400)
            continue
        body = assert_problem(r, 413)
        assert re.search(r"at most \d+ bytes|exceeds \d+ bytes", body["detail"]), (path, body)
        assert "1024" in body["detail"], (path, body)
    assert len(seen["json"]) >= 7 and len(seen["upload"]) == 2 and len(seen["predict"]) == 5, seen


def test_an_oversized_json_body_sent_in_chunks_is_413(
        tenant: Tenant, setting: Callable[[str, str], None]) -> None:
    """No Content-Length to go by: counted as it arrives, and refused once past the limit."""
    setting("KJ_MAX_JSON_BODY_BYTES", "1024")

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked", "pad": "'
        for _ in range(16):
            yield b"x" * 256
        yield b'"}'

    r = tenant.post("/v1/specs", content=chunks(), headers={"Content-Type": "application/json"})
    body = assert_problem(r, 413)
    assert body["limit"] == 1024
    # Within the limit, a body gets through to the route.
    r = tenant.post("/v1/specs", json=SEED_SPEC)
    assert r.status_code == 201, r.text


# --- running jobs: the tenant's next job waits, queued ---------------------------------------

@pytest.fixture
def two_slot_worker(service_env: dict[str, str], client: Any, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A worker that runs two jobs at once, on a queue of this test's own (so the session's
    worker, which runs one, is not what holds a job back); yields its log file."""
    queue = f"kj-test-quota-{secrets.token_hex(4)}"
    monkeypatch.setenv("KJ_QUEUE", queue)
    log_path = tmp_path / "worker.log"
    proc = start_worker({**service_env, "KJ_QUEUE": queue, "KJ_TENANT_BUSY_RETRY_S": "1"},
                        log_path, "--concurrency", "2")
    try:
        with fresh():
            yield log_path
    finally:
        stop_process(proc)
        monkeypatch.undo()
        if proc.returncode not in (0, -15):
            print(log_path.read_text()[-5000:])


def _wait_for_line(path: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, path.read_text(errors="replace"))
        if match:
            return match[0]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} in the worker's log after {timeout}s:\n"
                         f"{path.read_text(errors='replace')[-3000:]}")


@pytest.mark.slow
def test_past_the_running_jobs_quota_the_next_job_waits_queued_then_runs(
        client: Any, tenant: Tenant, two_slot_worker: Path) -> None:
    tenant.quotas(max_running_jobs=1)
    spec_id, ds = tenant.spec(), tenant.upload("running", **_data()).json()
    long_job = tenant.fit(spec_id, ds["id"], epochs=100_000, batch_size=4,
                          model_name="long").json()
    running = wait_for_job(tenant, long_job["id"], until=("running",), timeout=120)
    short_job = tenant.fit(spec_id, ds["id"], epochs=1, model_name="short").json()
    # The worker has a free slot and takes the message, but the tenant runs its one job.
    _wait_for_line(two_slot_worker, rf"runs 1 jobs \(limit 1\); job {short_job['id']} waits",
                   timeout=60)
    assert tenant.get(f"/v1/jobs/{short_job['id']}").json()["status"] == "queued"
    assert tenant.get(f"/v1/jobs/{long_job['id']}").json()["status"] == "running"
    usage = client.get(f"/v1/tenants/{tenant.name}/quotas").json()["usage"]
    assert usage["running_jobs"] == 1 and usage["queued_jobs"] == 1
    assert tenant.post(f"/v1/jobs/{long_job['id']}:cancel").status_code == 202
    done = wait_for_job(tenant, long_job["id"], timeout=60)
    assert done["status"] == "cancelled" and running["started_at"]
    # Its message comes back (every second here) and finds the slot free.
    short = wait_for_job(tenant, short_job["id"], timeout=120)
    assert short["status"] == "succeeded", short
    assert short["started_at"] >= done["finished_at"]


# --- what a job keeps: within the stored-bytes quota, checked before the work --------------

@pytest.mark.slow
@pytest.mark.usefixtures("worker")
def test_a_job_whose_result_would_pass_the_stored_bytes_quota_fails_naming_it(
        client: Any, tenant: Tenant, service_env: dict[str, str], keras_file: bytes) -> None:
    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    ds = tenant.upload("kept", **_data()).json()
    stored, spec_id = ds["stored_bytes"], tenant.spec()

    # Room for less than the model's weights (Dense(1) on 2 inputs: 3 float32s, 12 bytes): the
    # job is admitted (the tenant is under its quota) and fails before it trains.
    tenant.quotas(max_stored_bytes=stored + 4)
    early = wait_for_job(tenant, tenant.fit(spec_id, ds["id"], epochs=2).json()["id"])
    assert early["status"] == "failed" and early["epoch"] == 0, early
    assert f"would store {stored + 12} bytes (the job's model" in early["error"]
    assert "max_stored_bytes" in early["error"]

    # Room for the weights, not for the `.keras` file: trained, then refused when saved.
    tenant.quotas(max_stored_bytes=stored + 1000)
    late = wait_for_job(tenant, tenant.fit(spec_id, ds["id"], epochs=2).json()["id"])
    assert late["status"] == "failed" and late["epoch"] == 2, late
    assert f"(the model of job {late['id']} adds" in late["error"]
    assert "max_stored_bytes" in late["error"] and late["model_version"] is None
    assert tenant.get("/v1/models").json()["items"] == []
    assert not (root / "models" / tenant.name).exists()

    # A predict job's output: computed, then refused when recorded; nothing kept.
    tenant.quotas(max_stored_bytes=None)
    r = tenant.post("/v1/models/kept/versions", files={"file": ("m.keras", keras_file)})
    assert r.status_code == 201, r.text
    stored = client.get(f"/v1/tenants/{tenant.name}/quotas").json()["usage"]["stored_bytes"]
    tenant.quotas(max_stored_bytes=stored + 100)  # 100 rows x 4 bytes do not fit
    datasets_before = set((root / "datasets").iterdir())
    predict = {"type": "predict", "model": "kept", "dataset_id": ds["id"], "x": "x"}
    refused = wait_for_job(tenant, tenant.post("/v1/jobs", json=predict).json()["id"])
    assert refused["status"] == "failed", refused
    assert f"(the output of job {refused['id']} adds" in refused["error"]
    assert set((root / "datasets").iterdir()) == datasets_before
    assert [d["name"] for d in tenant.get("/v1/datasets").json()["items"]] == ["kept"]
    assert client.get(f"/v1/tenants/{tenant.name}/quotas").json()["usage"]["stored_bytes"] == stored
