"""Thin task shells: fetch by id, call the domain runner."""

from __future__ import annotations

from typing import Any

from app.core.broker import RUN_JOB_TASK
from worker.celery_app import app


@app.task(name=RUN_JOB_TASK, bind=True)  # type: ignore[untyped-decorator]
def run_job(self: Any, job_id: str) -> None:
    from app.training.runner import run_job as run

    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    run(job_id, redelivered=redelivered)
