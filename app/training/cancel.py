"""Cooperative cancel, with a backstop; and the job's heartbeat.

A thread polls the job's cancel flag in the database (works on every broker, including the
embedded one, which has no remote control). Once set, Keras stops at the next batch boundary
(see callbacks.CancelOnFlag). If the job is still going `grace_s` later (stuck inside one huge
batch or an op), the thread marks it cancelled and ends this process; the worker replaces the
child, and the redelivered message finds the job already cancelled.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from app.jobs import state
from app.tables import JobStatus

log = logging.getLogger(__name__)


class CancelWatcher:
    def __init__(self, job_id: str, poll_s: float, grace_s: float, heartbeat_s: float) -> None:
        self.job_id = job_id
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.heartbeat_s = heartbeat_s
        self.requested = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-{job_id}", daemon=True)

    def __enter__(self) -> CancelWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                if state.cancel_requested(self.job_id):
                    break
                if time.monotonic() - last_beat >= self.heartbeat_s:
                    state.heartbeat(self.job_id)
                    last_beat = time.monotonic()
            except Exception:  # a database hiccup must not kill training
                log.warning("cancel poll failed for %s", self.job_id, exc_info=True)
        else:
            return
        self.requested.set()
        if self._stop.wait(self.grace_s):
            return
        log.error("job %s did not stop within %.0fs of cancel; ending its process",
                  self.job_id, self.grace_s)
        state.finish(self.job_id, JobStatus.cancelled,
                         error=f"did not stop within {self.grace_s:.0f}s; process ended")
        os._exit(1)
