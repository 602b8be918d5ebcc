"""A broker outage is visible: 503 on submit, the job recorded failed (not queued forever),
/readyz reports the broker."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import SEED_SPEC, assert_problem, reset_caches, two_classes, upload


def test_submit_with_broker_down(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    x, y = two_classes(n=20)
    dataset = upload(client, "broker-down", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    monkeypatch.setenv("KJ_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    reset_caches()
    try:
        with TestClient(create_app()) as dead:
            r = dead.post("/v1/jobs", json={"type": "fit", "spec_id": spec["id"],
                                            "dataset_id": dataset["id"]})
            body = assert_problem(r, 503)
            assert "broker" in body["detail"]
            ready = dead.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["broker"].startswith("error")
            assert ready.json()["checks"]["database"] == "ok"
    finally:
        monkeypatch.undo()
        reset_caches()
    failed = client.get("/v1/jobs", params={"status": "failed", "limit": 500}).json()["items"]
    assert any(j["dataset_id"] == dataset["id"] and "could not be queued" in j["error"]
               for j in failed)
