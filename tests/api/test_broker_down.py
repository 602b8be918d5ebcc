"""A broker outage loses no job: submit is accepted (202, queued), /readyz reports the broker,
and the job runs once the broker is back (a worker's sweep sends its message)."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.state import fresh
from tests.helpers import (
    SEED_SPEC,
    auth_headers,
    two_classes,
    upload,
    wait_for_job,
)


@pytest.mark.slow
def test_submit_with_broker_down_runs_once_it_is_back(client: Any, worker: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from app.core.db import session_scope
    from app.main import create_app
    from app.tables import Job

    x, y = two_classes(n=20)
    dataset = upload(client, "broker-down", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    monkeypatch.setenv("KJ_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    try:
        with fresh(), TestClient(create_app(), headers=auth_headers()) as dead:
            r = dead.post("/v1/jobs", json={"type": "fit", "spec_id": spec["id"],
                                            "dataset_id": dataset["id"], "epochs": 2})
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["status"] == "queued" and job["error"] is None
            ready = dead.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["broker"].startswith("error")
            assert ready.json()["checks"]["database"] == "ok"
    finally:
        monkeypatch.undo()
    # The broker is back (the test's Redis): the worker's sweep sends the message (the failed
    # send left dispatched_at NULL: no message exists), and the job runs.
    done = wait_for_job(client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert len(done["history"]["loss"]) == 2
    assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
    with session_scope() as s:
        row = s.get(Job, job["id"])
        assert row is not None and row.dispatch_count == 2  # the failed send and the sweep's
