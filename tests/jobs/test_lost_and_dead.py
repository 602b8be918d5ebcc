"""A queued job whose message the broker lost is sent again by the next sweep (it waited
KJ_REDISPATCH_AFTER_S, 132 s, after a broker wipe), on Redis and on the embedded broker, while
one whose message waits is not; a cancel of a running job whose worker is gone ends it even
when no worker is left to sweep (it stayed `running` until a worker came back)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from app.core.state import fresh
from tests.helpers import SEED_SPEC, two_classes, upload

SENT_AGO_S = 7


@pytest.fixture
def job_inputs(client: Any) -> tuple[str, str]:
    x, y = two_classes(n=20)
    dataset = upload(client, "lost-and-dead", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    return spec["id"], dataset["id"]


@pytest.fixture(params=["redis", "embedded"])
def private_queue(request: pytest.FixtureRequest, client: Any, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A queue no worker reads (on the suite's Redis, or an embedded broker of this test's
    own): jobs submitted now stay queued, and the test may empty it. Yields the broker."""
    monkeypatch.setenv("KJ_QUEUE", f"kj-test-lost-{secrets.token_hex(4)}")
    if request.param == "embedded":
        monkeypatch.setenv("KJ_BROKER_URL", f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    with fresh():
        try:
            yield request.param
        finally:
            _wipe()
    monkeypatch.undo()


def _wipe() -> None:
    """The queue's messages gone, as after a broker restarted empty."""
    from sqlalchemy import create_engine, text

    from app.core.broker import PRIORITY_STEPS, REDIS_PRIORITY_SEP
    from app.core.config import get_settings

    settings = get_settings()
    url, queue = settings.resolved_broker_url, settings.queue
    if url.startswith("redis://"):
        import redis

        client = redis.Redis.from_url(url)
        client.delete(queue, *[f"{queue}{REDIS_PRIORITY_SEP}{step}" for step in PRIORITY_STEPS])
        client.close()
        return
    engine = create_engine(url.removeprefix("sqla+"))
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM kombu_message"))
    engine.dispose()


def _age_dispatch(seconds: float, *job_ids: str) -> None:
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.tables import Job
    from app.tables.base import utcnow

    with session_scope() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids))
                  .values(dispatched_at=utcnow() - timedelta(seconds=seconds)))


def test_a_lost_message_is_sent_again_by_the_next_sweep(
        client: Any, job_inputs: tuple[str, str], private_queue: str) -> None:
    from app.core.broker import enqueue_job, waiting_messages
    from app.core.config import get_settings
    from app.jobs import recovery

    spec_id, dataset_id = job_inputs
    body = {"type": "fit", "spec_id": spec_id, "dataset_id": dataset_id, "epochs": 1}
    waiting, lost = (client.post("/v1/jobs", json=body).json()["id"] for _ in range(2))
    try:
        _wipe()
        enqueue_job(waiting, dispatch=1)  # this one's message is back in the queue
        # Sent seconds ago, far less than KJ_REDISPATCH_AFTER_S.
        _age_dispatch(SENT_AGO_S, waiting, lost)
        assert get_settings().redispatch_after_s >= 60
        assert recovery.redispatch_lost(get_settings().redispatch_after_s) == [lost]
        assert recovery.redispatch_lost(get_settings().redispatch_after_s) == []
        found = waiting_messages()
        assert found is not None and set(found.waiting) == {waiting, lost}
        # A sweep runs every KJ_SWEEP_S: a lost message is sent again within that and the
        # few seconds a send is given to land (LOST_AFTER_S).
        assert recovery.LOST_AFTER_S < SENT_AGO_S
        assert get_settings().sweep_s + recovery.LOST_AFTER_S <= 15
    finally:
        for job_id in (waiting, lost):
            client.post(f"/v1/jobs/{job_id}:cancel")


def _running_job(spec_id: str, dataset_id: str, worker: str, host_key: str) -> str:
    """A job as its worker left it mid-run, beating a moment ago, its attempt opened by
    `worker` ("host:pid") on `host_key`."""
    from app.core.db import session_scope
    from app.jobs.schemas import FitJobCreate
    from app.tables import Job, JobAttempt, JobStatus, JobType
    from app.tables.base import utcnow

    params = FitJobCreate(type="fit", spec_id=spec_id, dataset_id=dataset_id,
                          epochs=2).model_dump(mode="json")
    now = utcnow()
    with session_scope() as s:
        job = Job(owner="local", type=JobType.fit, status=JobStatus.running, params=params,
                  spec_id=spec_id, dataset_id=dataset_id, model_name="gone", epochs=2,
                  started_at=now, heartbeat_at=now, attempt=1)
        s.add(job)
        s.flush()
        s.add(JobAttempt(job_id=job.id, number=1, worker=worker, host_key=host_key,
                         started_at=now, epoch_at_start=0, warnings=[]))
        return job.id


def _wait_for_status(client: Any, job_id: str, status: str, timeout: float) -> float:
    started = time.monotonic()
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == status:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, job
        time.sleep(0.1)


def test_a_cancel_ends_a_job_whose_worker_is_gone(
        client: Any, job_inputs: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No worker runs: only the API can end these jobs. One ran on this host as a process that
    is gone (certain at once); one on another host, whose heartbeat stops now (dead once it
    is KJ_STALE_AFTER_S old)."""
    from app.jobs import recovery

    exited = subprocess.Popen(["true"])
    exited.wait()
    here = _running_job(*job_inputs, f"{socket.gethostname()}:{exited.pid}",
                        recovery.host_key())
    elsewhere = _running_job(*job_inputs, "elsewhere:4242", "another-boot/another-ns")
    monkeypatch.setenv("KJ_STALE_AFTER_S", "2")
    with fresh():
        for job_id in (here, elsewhere):
            r = client.post(f"/v1/jobs/{job_id}:cancel")
            assert r.status_code == 202, r.text
        assert os.path.exists("/proc/self/ns/pid")  # a pid is only meaningful with one
        took_here = _wait_for_status(client, here, "cancelled", timeout=5)
        took_elsewhere = _wait_for_status(client, elsewhere, "cancelled", timeout=2 + 5)
        print(f"\ncancelled: same host after {took_here:.2f}s, "
              f"elsewhere after {took_elsewhere:.2f}s (stale after 2 s)")
        for job_id in (here, elsewhere):
            job = client.get(f"/v1/jobs/{job_id}").json()
            assert job["finished_at"] and job["attempts"][-1]["outcome"] == "died", job
    monkeypatch.undo()
