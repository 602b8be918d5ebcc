"""Nothing lost, nothing run twice: real PostgreSQL, a Redis of the module's own (so it can be
restarted) and real worker processes, killed the ways the fault-injection run killed them.

Each test starts its own workers (and stops them), so messages go only where the test says."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_ADMIN_URL
from tests.helpers import (
    ROOT,
    SEED_SPEC,
    PrivateRedis,
    make_key,
    parent_pid,
    reset_caches,
    start_worker,
    stop_process,
    temp_database,
    two_classes,
    upload,
    wait_for_job,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
# A sitecustomize that kills a worker in the middle of a checkpoint (see its docstring).
FAULTS = ROOT / "tests" / "faults"


@dataclass
class Iso:
    env: dict[str, str]
    http: Any
    redis: PrivateRedis
    logs: Path
    spec_id: str
    dataset_id: str

    @property
    def artifacts(self) -> Path:
        return Path(self.env["KJ_ARTIFACT_ROOT"])

    def worker(self, name: str, **overrides: str) -> subprocess.Popen[bytes]:
        return start_worker({**self.env, **overrides}, self.logs / f"{name}.log")

    def submit(self, **fields: Any) -> dict[str, Any]:
        body = {"type": "fit", "spec_id": self.spec_id, "dataset_id": self.dataset_id,
                "epochs": 2, "batch_size": 8, "seed": 1, **fields}
        r = self.http.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return dict(r.json())


@pytest.fixture(scope="module")
def iso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Iso]:
    """Its own database, Redis, queue and artifact store; this process's settings point at
    them for the module (and are put back afterwards)."""
    from fastapi.testclient import TestClient

    from app.main import create_app

    home = tmp_path_factory.mktemp("reliability")
    redis = PrivateRedis(home / "redis")
    with temp_database(PG_ADMIN_URL, "kj_reliability") as db_url:
        env = {"KJ_HOME": str(home), "KJ_DATABASE_URL": db_url, "KJ_BROKER_URL": redis.url,
               "KJ_ARTIFACT_ROOT": str(home / "artifacts"),
               "KJ_QUEUE": f"kj-rel-{secrets.token_hex(4)}", "KJ_CANCEL_POLL_S": "0.2",
               "KJ_HEARTBEAT_S": "1", "KJ_SWEEP_S": "1",
               # Above a fresh child's start, while its parent holds the next message.
               "KJ_REDISPATCH_AFTER_S": "30",
               "KJ_LOG_LEVEL": "INFO", "KJ_AUTH": "required"}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        reset_caches()
        try:
            with TestClient(create_app()) as http:
                # Keys live in the database: this one needs a key of its own.
                key = make_key("local", "reliability", ["admin"])
                http.headers["Authorization"] = f"Bearer {key}"
                x, y = two_classes(n=500)
                dataset = upload(http, "reliability", x=x, y=y)
                spec = http.post("/v1/specs", json=SEED_SPEC).json()
                logs = home / "logs"
                logs.mkdir()
                yield Iso(env, http, redis, logs, spec["id"], dataset["id"])
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            reset_caches()
            redis.stop()


def _row(job_id: str) -> Any:
    from app.core.db import session_scope
    from app.tables import Job

    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def _age_dispatch(*job_ids: str, seconds: float = 3600) -> None:
    """Pretend the jobs were sent long ago."""
    from sqlalchemy import update

    from app.core.db import session_scope
    from app.tables import Job
    from app.tables.base import utcnow

    with session_scope() as s:
        s.execute(update(Job).where(Job.id.in_(job_ids))
                  .values(dispatched_at=utcnow() - timedelta(seconds=seconds)))


def _drop_message(iso: Iso, job_id: str) -> None:
    """Take a job's message off the queue, as a task that was acked without running would."""
    from app.core.broker import job_of

    client = iso.redis.client()
    for key in client.keys(f"{iso.env['KJ_QUEUE']}*"):
        for raw in client.lrange(key, 0, -1):
            if job_of(json.loads(raw)) == job_id:
                assert client.lrem(key, 1, raw) == 1
                return
    raise AssertionError(f"no message for {job_id}")


def _succeeded_once(http: Any, job_id: str, epochs: int) -> dict[str, Any]:
    done = wait_for_job(http, job_id, timeout=90)
    assert done["status"] == "succeeded", done
    assert len(done["history"]["loss"]) == epochs
    return done


def _worker_pid(job: dict[str, Any]) -> int:
    return int(job["attempts"][-1]["worker"].rpartition(":")[2])


def test_a_lost_message_is_sent_again_first_and_a_waiting_one_is_not(iso: Iso) -> None:
    """A task that was acked without running (here: its message taken off the queue) leaves
    its job queued with no message: the sweep sends it again, at the head of the queue. A job
    whose message is still waiting in the queue, however long, gets no copy."""
    from app.jobs import recovery

    waiting = iso.submit()
    lost = iso.submit()
    _drop_message(iso, lost["id"])
    _age_dispatch(waiting["id"], lost["id"])
    assert recovery.redispatch_lost(redispatch_after_s=60) == [lost["id"]]
    assert recovery.redispatch_lost(redispatch_after_s=60) == []  # just sent: not again
    assert (_row(waiting["id"]).dispatch_count, _row(lost["id"]).dispatch_count) == (1, 2)

    worker = iso.worker("lost-message")
    try:
        first = _succeeded_once(iso.http, lost["id"], 2)
        second = _succeeded_once(iso.http, waiting["id"], 2)
    finally:
        stop_process(worker)
    # The re-sent job went before the one that was waiting ahead of it.
    assert first["attempts"][0]["started_at"] < second["attempts"][0]["started_at"]
    for done in (first, second):
        assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
    assert _row(waiting["id"]).dispatch_count == 1


def test_broker_restarted_empty_loses_no_job(iso: Iso) -> None:
    """Redis restarted without persistence: the queued message is gone, and a job submitted
    while it was down was accepted (202) with no message at all. Both run once a worker's
    sweep finds them: the first once its send is older than KJ_REDISPATCH_AFTER_S (made so
    here), the second at once."""
    before = iso.submit()
    iso.redis.stop()
    during = iso.submit()
    assert during["status"] == "queued"
    assert _row(during["id"]).dispatched_at is None
    iso.redis.start()  # empty
    _age_dispatch(before["id"])
    worker = iso.worker("broker-restarted")
    try:
        for job in (before, during):
            done = _succeeded_once(iso.http, job["id"], 2)
            assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
            assert _row(job["id"]).dispatch_count == 2
    finally:
        stop_process(worker)


HOLDER = """
import sys, time
from app.core.broker import get_celery
from app.core.config import get_settings
with get_celery().connection_for_read() as conn:
    queue = conn.SimpleQueue(get_settings().queue)
    message = queue.get(block=True, timeout=20)  # taken, never acked
    print(message.headers["id"], flush=True)
    time.sleep(600)
"""


def test_message_held_by_a_killed_consumer_is_sent_again(iso: Iso) -> None:
    """A consumer that took the message and was killed before the job was claimed: Redis
    would give the message back only after the visibility timeout (7 days). The sweep sees
    it held for longer than KJ_REDISPATCH_AFTER_S and sends the job again. The held message is
    made an hour old and the bound is 60 s: the message sent again is never old enough to be sent a
    third time, however long the new worker takes to claim it on a busy machine."""
    from app.jobs import recovery

    job = iso.submit()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], cwd=ROOT,
                              env={**os.environ, **iso.env}, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().decode().startswith(job["id"])
        _age_dispatch(job["id"])
        # Held for less than the bound: a live worker may be about to claim it.
        assert recovery.redispatch_lost(redispatch_after_s=30) == []
    finally:
        holder.kill()
        holder.wait()
    client = iso.redis.client()
    assert client.hlen("unacked") == 1 and _row(job["id"]).status == "queued"
    held = client.zrange("unacked_index", 0, -1)
    client.zadd("unacked_index", {tag: time.time() - 3600 for tag in held})  # taken an hour ago
    worker = iso.worker("held-message", KJ_REDISPATCH_AFTER_S="60")
    try:
        done = _succeeded_once(iso.http, job["id"], 2)
    finally:
        stop_process(worker)
    assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
    assert _row(job["id"]).dispatch_count == 2


def test_kill_in_the_middle_of_a_checkpoint_resumes_from_the_one_before(iso: Iso) -> None:
    """The worker's child kills itself while writing the checkpoint of 2 finished epochs,
    after the temporary folder is written and before its rename (tests/faults/sitecustomize.py,
    loaded by this worker only). The next attempt resumes from the checkpoint of epoch 1,
    repeats no recorded epoch, and the folder is removed once the job has succeeded."""
    path = os.pathsep.join(p for p in (str(FAULTS), os.environ.get("PYTHONPATH")) if p)
    worker = iso.worker("checkpoint-kill", PYTHONPATH=path, KJ_FAULT_KILL_IN_CHECKPOINT="2")
    try:
        job = iso.submit(epochs=4)
        done = _succeeded_once(iso.http, job["id"], 4)
    finally:
        stop_process(worker)
    died, ok = done["attempts"]
    assert died["outcome"] == "died" and "is gone" in died["reason"], died
    assert ok["outcome"] == "succeeded" and ok["warnings"] == []
    assert ok["resumed_from_epoch"] == 1 and ok["epoch_at_start"] == 1, ok
    assert "killing this process" in (iso.logs / "checkpoint-kill.log").read_text()
    assert not (iso.artifacts / "checkpoints" / job["id"]).exists()


def test_sigterm_hands_the_job_back_to_another_worker(iso: Iso) -> None:
    """SIGTERM (a deploy) to the worker running a job: the job checkpoints at its next batch,
    is queued again at once, resumes on the other worker from that checkpoint, and the hand
    back is not a failed attempt. The stopped worker exits in seconds."""
    workers = [iso.worker("term-a"), iso.worker("term-b")]
    try:
        job = iso.submit(epochs=8)
        running = wait_for_job(iso.http, job["id"], until=("running",), min_epoch=2, timeout=60)
        owner = next(w for w in workers if w.pid == parent_pid(_worker_pid(running)))
        began = time.monotonic()
        owner.send_signal(signal.SIGTERM)
        owner.wait(30)
        assert time.monotonic() - began < 15
        done = _succeeded_once(iso.http, job["id"], 8)
    finally:
        for w in workers:
            stop_process(w)
    first, second = done["attempts"]
    assert first["outcome"] == "handed_back", first
    assert second["outcome"] == "succeeded" and second["worker"] != first["worker"]
    assert second["resumed_from_epoch"] >= 2
    assert second["resumed_from_epoch"] == second["epoch_at_start"]  # nothing trained twice
    assert done["error"] is None


def test_max_runtime_fails_the_job_and_saves_nothing(iso: Iso) -> None:
    worker = iso.worker("max-runtime")
    try:
        job = iso.submit(epochs=10_000, max_runtime_s=3, model_name="too-slow")
        done = wait_for_job(iso.http, job["id"], timeout=60)
    finally:
        stop_process(worker)
    assert done["status"] == "failed" and "max_runtime_s=3" in done["error"], done
    assert [a["outcome"] for a in done["attempts"]] == ["failed"]
    assert iso.http.get("/v1/models/too-slow").status_code == 404
    assert not (iso.artifacts / "checkpoints" / job["id"]).exists()


def test_a_job_that_keeps_dying_fails_with_the_reasons(iso: Iso) -> None:
    """max_attempts=2: the job's process is SIGKILLed twice; it resumes once, then fails with
    both reasons, and its checkpoint folder is removed."""
    worker = iso.worker("keeps-dying")
    try:
        job = iso.submit(epochs=10_000, max_attempts=2, model_name="doomed")
        for attempt in (1, 2):
            running = wait_for_job(iso.http, job["id"], until=("running",), min_epoch=attempt,
                                   timeout=60)
            while len(running["attempts"]) < attempt:
                running = iso.http.get(f"/v1/jobs/{job['id']}").json()
            os.kill(_worker_pid(running), signal.SIGKILL)
        done = wait_for_job(iso.http, job["id"], timeout=30)
        deadline = time.monotonic() + 10
        while (iso.artifacts / "checkpoints" / job["id"]).exists():
            assert time.monotonic() < deadline, "checkpoint folder of a failed job left behind"
            time.sleep(0.2)
    finally:
        stop_process(worker)
    assert done["status"] == "failed", done
    assert "gave up after 2 attempts" in done["error"], done["error"]
    assert done["error"].count("is gone") == 2
    assert [a["outcome"] for a in done["attempts"]] == ["died", "died"]
    assert done["attempts"][1]["resumed_from_epoch"] >= 1
    assert iso.http.get("/v1/models/doomed").status_code == 404


def test_folders_of_ended_jobs_are_removed_and_others_kept(iso: Iso) -> None:
    from app.core.storage import get_store
    from app.jobs import recovery

    queued = iso.submit()
    cancelled = iso.submit()
    iso.http.post(f"/v1/jobs/{cancelled['id']}:cancel")
    iso.http.post(f"/v1/jobs/{queued['id']}:cancel")  # cancelled too: no worker would skip it
    keep = iso.submit()
    store = get_store()
    for job in (cancelled, keep):
        (store.path(store.checkpoint_key(job["id"])) / "e000001-b000000").mkdir(parents=True)
        store.staging_dir(job["id"])
    (store.path(store.checkpoint_key("job_gone")) / "x").mkdir(parents=True)
    removed = recovery.remove_ended_job_folders(store)
    assert set(removed) == {cancelled["id"], "job_gone"}
    assert set(store.job_checkpoints()) == {keep["id"]}
    assert set(store.job_staging()) == {keep["id"]}
    iso.http.post(f"/v1/jobs/{keep['id']}:cancel")
    assert recovery.remove_ended_job_folders(store) == [keep["id"]]
