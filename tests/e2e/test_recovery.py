"""No zombie "running" jobs: a job whose process died is found by the worker's sweep, queued
again and run; a job whose process is alive (fresh heartbeat) is never taken over."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.helpers import SEED_SPEC, two_classes, upload, wait_for_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("worker")]


def _running_job(spec_id: str, dataset_id: str, heartbeat_age_s: float,
                 cancel_requested: bool = False) -> str:
    """A job row as a worker leaves it mid-run: running, last heartbeat some time ago."""
    from app.core.db import session_scope
    from app.jobs.schemas import FitJobCreate
    from app.tables import Job, JobStatus, JobType
    from app.tables.base import utcnow

    params = FitJobCreate(type="fit", spec_id=spec_id, dataset_id=dataset_id, epochs=2,
                          seed=1).model_dump(mode="json")
    beat = utcnow() - timedelta(seconds=heartbeat_age_s)
    with session_scope() as s:
        job = Job(owner="local", type=JobType.fit, status=JobStatus.running, params=params,
                  spec_id=spec_id, dataset_id=dataset_id, model_name="recovered", epochs=2,
                  started_at=beat, heartbeat_at=beat, cancel_requested=cancel_requested)
        s.add(job)
        s.flush()
        return job.id


def test_stale_running_job_is_swept_and_a_live_one_is_left_alone(client: Any) -> None:
    from app.core.db import session_scope
    from app.jobs import recovery, state
    from app.tables import Job

    x, y = two_classes(n=50)
    dataset = upload(client, "recovery", x=x, y=y)
    spec = client.post("/v1/specs", json=SEED_SPEC).json()
    dead = _running_job(spec["id"], dataset["id"], heartbeat_age_s=3600)
    alive = _running_job(spec["id"], dataset["id"], heartbeat_age_s=1)
    dead_cancelled = _running_job(spec["id"], dataset["id"], heartbeat_age_s=3600,
                                  cancel_requested=True)
    try:
        # A message may take over only the job whose process stopped beating.
        assert state.claim(alive, recovery.this_process()) is None
        assert not recovery.take_over_if_dead(alive, stale_after_s=60)

        # The worker's sweep (every KJ_SWEEP_S) finds the dead job and queues it again.
        done = wait_for_job(client, dead, timeout=120)
        assert done["status"] == "succeeded", done
        assert len(done["history"]["loss"]) == 2
        assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
        assert client.get(f"/v1/jobs/{alive}").json()["status"] == "running"
        gone = client.get(f"/v1/jobs/{dead_cancelled}").json()
        assert gone["status"] == "cancelled" and gone["finished_at"], gone
    finally:
        with session_scope() as s:
            s.delete(s.get(Job, alive))
