"""What a killed upload left in the staging area is removed when an API process starts: only
folders untouched for KJ_STAGING_MAX_AGE_S (an upload another API process is receiving right
now stays), and never a job's (the workers remove those once the job has ended)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.core.state import fresh


def _staging(root: Path, name: str, age_s: float) -> Path:
    folder = root / "tmp" / name
    folder.mkdir(parents=True)
    (folder / "upload.bin").write_bytes(b"half an upload")
    then = time.time() - age_s
    for path in (folder / "upload.bin", folder):
        os.utime(path, (then, then))
    return folder


def test_api_start_removes_stale_upload_staging(client: Any, service_env: dict[str, str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    root = Path(service_env["KJ_ARTIFACT_ROOT"])
    killed = _staging(root, uuid.uuid4().hex, age_s=7200)
    receiving = _staging(root, uuid.uuid4().hex, age_s=7200)
    (receiving / "upload.bin").write_bytes(b"still arriving")  # written to just now
    young = _staging(root, uuid.uuid4().hex, age_s=5)
    # A queued job's (a session worker's sweep removes the folders of jobs that do not exist).
    job_id = _queued_job()
    job = _staging(root, f"{job_id}.{uuid.uuid4().hex}", age_s=7200)
    monkeypatch.setenv("KJ_STAGING_MAX_AGE_S", "3600")
    try:
        with fresh(), TestClient(create_app()) as http:
            assert http.get("/healthz").status_code == 200
        assert not killed.exists()
        assert receiving.exists() and young.exists() and job.exists()
    finally:
        monkeypatch.undo()
        for folder in (killed, receiving, young, job):
            _remove(folder)
        _delete_job(job_id)


def _queued_job() -> str:
    from app.core.db import session_scope
    from app.tables import Job, JobStatus, JobType
    from app.tables.base import utcnow

    with session_scope() as s:
        # dispatched just now: no sweep sends it within the test
        job = Job(owner="stale-staging", type=JobType.fit, status=JobStatus.queued, params={},
                  dispatched_at=utcnow(), dispatch_count=1)
        s.add(job)
        s.flush()
        return job.id


def _delete_job(job_id: str) -> None:
    from sqlalchemy import delete

    from app.core.db import session_scope
    from app.tables import Job

    with session_scope() as s:
        s.execute(delete(Job).where(Job.id == job_id))


def _remove(folder: Any) -> None:
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
