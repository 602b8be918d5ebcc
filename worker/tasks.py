"""Thin task shells: fetch by id, call the domain runner."""

from __future__ import annotations

import logging
from typing import Any

from app.core.broker import RUN_JOB_TASK
from worker.celery_app import app

log = logging.getLogger(__name__)

# A message that arrives while the database is unreachable is tried again after 2, 4, 8, ...
# seconds, at most a minute apart, for about a day; then it fails (and is acked) and the job
# stays queued in the database.
DB_RETRY_FIRST_S = 2
DB_RETRY_MAX_S = 60
DB_RETRIES = 24 * 60
# A job whose tenant already runs its quota of jobs comes back every KJ_TENANT_BUSY_RETRY_S for
# as long as it takes.
TENANT_BUSY_RETRIES = 10**9


@app.task(name=RUN_JOB_TASK, bind=True, max_retries=DB_RETRIES)  # type: ignore[untyped-decorator]
def run_job(self: Any, job_id: str) -> None:
    from app.core.config import get_settings
    from app.core.db import database_unavailable
    from app.jobs.state import TenantBusy
    from app.training.runner import run_job as run

    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        run(job_id, redelivered=redelivered)
    except TenantBusy as exc:  # its tenant runs its quota of jobs: try again in a while
        wait_s = get_settings().tenant_busy_retry_s
        log.info("%s; trying again in %ss", exc, wait_s)
        raise self.retry(exc=exc, countdown=wait_s,
                         max_retries=TENANT_BUSY_RETRIES) from exc
    except Exception as exc:
        # Returning (or failing: acks_on_failure) would ack a message whose job was never
        # recorded as started. retry() first sends a copy with a countdown, then this message is
        # acked: the same on Redis and on the SQLAlchemy broker, with no redelivery storm (a
        # requeueing reject comes straight back). A job whose database error came after it was
        # claimed is left running: the copy skips it, and the orphan sweep queues it again once
        # its heartbeat is stale.
        if not database_unavailable(exc):
            raise
        countdown = min(DB_RETRY_MAX_S, DB_RETRY_FIRST_S * 2 ** self.request.retries)
        log.warning("job %s: database unavailable (%s); trying again in %ss", job_id,
                    type(exc).__name__, countdown)
        raise self.retry(exc=exc, countdown=countdown) from exc
