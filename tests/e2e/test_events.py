"""The live event stream of a job on PostgreSQL + Redis (pub/sub), read while the job runs,
and its logs. (The embedded default's stream is checked in test_embedded.py.)"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from tests.helpers import (
    SEED_SPEC,
    auth_headers,
    check_event_stream,
    iter_events,
    live_server,
    two_classes,
    upload,
    wait_for_job,
)

pytestmark = pytest.mark.slow


def _submit(client: Any, epochs: int, **extra: Any) -> str:
    x, y = two_classes(n=400)
    dataset = upload(client, "events", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    r = client.post("/v1/jobs", json={"type": "fit", "spec_id": spec["id"],
                                      "dataset_id": dataset["id"], "epochs": epochs,
                                      "batch_size": 8, "seed": 1, "model_name": "events",
                                      **extra})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_stream_follows_a_running_job(client: Any, worker: Any) -> None:
    with live_server() as url, httpx.Client(base_url=f"http://{url}",
                                            headers=auth_headers()) as http:
        job_id = _submit(client, epochs=4)
        arrivals: list[tuple[float, dict[str, Any]]] = []

        def read() -> None:
            for event in iter_events(http, job_id):
                arrivals.append((time.monotonic(), event))

        reader = threading.Thread(target=read)
        reader.start()  # opened while the job is queued: what follows arrives live
        reader.join(180)
        assert not reader.is_alive()
        live = [e for _, e in arrivals]
        assert [e["data"]["epoch"] for e in live if e["event"] == "epoch"] == [0, 1, 2, 3]
        assert live[-1]["data"]["status"] == "succeeded"
        first_epoch = next(t for t, e in arrivals if e["event"] == "epoch")
        assert arrivals[-1][0] - first_epoch > 0.2  # the first epoch came before the end
        check_event_stream(http, job_id, epochs=4)  # replayed after the end, and resumed


def test_logs_keep_the_reason_of_a_failure(client: Any, worker: Any) -> None:
    job_id = _submit(client, epochs=2, callbacks=[{"type": "EarlyStopping",
                                                    "monitor": "val_loss"}])
    job = wait_for_job(client, job_id)
    assert job["status"] == "succeeded"
    logs = client.get(f"/v1/jobs/{job_id}/logs")
    assert logs.status_code == 200 and logs.headers["content-type"].startswith("text/plain")
    # EarlyStopping on a metric the job does not compute warns; the warning is kept.
    assert "val_loss" in logs.text, logs.text
    assert client.get("/v1/jobs/job_nope/logs").status_code == 404
    assert client.get("/v1/jobs/job_nope/events").status_code == 404
