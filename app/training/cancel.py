"""Why a running job stops early, its heartbeat, and a backstop for a job that will not stop.

A thread in the job's process polls the job's cancel flag in the database (works on every
broker, including the embedded one, which has no remote control), writes the heartbeat, and
watches three more reasons to stop: the job's `max_runtime_s` ran out, the worker is shutting
down (hand the job back), or the heartbeat found the job no longer this attempt's (it was taken
as dead and given to another process: write nothing more). Once one is seen, `reason` is set,
then `requested`, and Keras stops at the next batch boundary (callbacks.CancelOnFlag). If the
job is still going `grace_s` later (stuck inside one huge batch or an op), the thread makes the
reason's transition itself and ends this process; the worker replaces the child.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import threading
import time
from typing import Any

from app.jobs import state
from app.tables import JobStatus

log = logging.getLogger(__name__)


class StopReason(enum.StrEnum):
    cancel = "cancel"
    timeout = "timeout"
    hand_back = "hand_back"
    lost = "lost"


# Set in a worker's child when its worker is shutting down (SIGTERM to the worker: a deploy, a
# scale-down): the running job checkpoints at its next batch and is handed back.
HAND_BACK = threading.Event()


def idle_child_signals() -> None:
    """In a worker's fresh child: SIGUSR2 (the parent's warm shutdown asks every child to hand
    its job back) is ignored while no job runs. The pool turns any other handler of it into an
    exit, and that exit beside the pool's own stop signal ends the child with "exitcode 70"."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _on_stop_signal(signum: int, _frame: Any) -> None:
    """While a job runs: SIGUSR2, or a first SIGTERM (the whole process group stopped at once, as
    systemd does), asks the job to hand itself back; a second SIGTERM ends the process."""
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    HAND_BACK.set()


class _JobSignals:
    """The hand-back handlers for the time a job runs in this process's main thread (a job run
    on another thread, as in-process tests do, leaves signals alone: Python allows no other)."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self) -> None:
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.saved = {sig: signal.signal(sig, _on_stop_signal) for sig in self.SIGNALS}

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        self.saved = {}


class CancelWatcher:
    def __init__(self, job_id: str, poll_s: float, grace_s: float, heartbeat_s: float, *,
                 attempt: int, deadline: float | None = None,
                 timeout_error: str = "exceeded its max_runtime_s") -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.heartbeat_s = heartbeat_s
        self.deadline = deadline  # time.monotonic() past which the job has run too long
        self.timeout_error = timeout_error
        self.reason: StopReason | None = None
        self.requested = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{job_id}", daemon=True)
        self._signals = _JobSignals()

    def __enter__(self) -> CancelWatcher:
        self._signals.__enter__()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._signals.__exit__()

    def stop_for(self, reason: StopReason) -> None:
        """Ask the job to stop (the first reason wins)."""
        if self.reason is None:
            self.reason = reason
        self.requested.set()

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(self.poll_s):
            beat = time.monotonic() - last_beat >= self.heartbeat_s
            reason = self._look(beat)
            if beat:
                last_beat = time.monotonic()
            if reason is not None:
                break
        else:
            return
        log.info("job %s (attempt %d) stops: %s", self.job_id, self.attempt, reason.value)
        self.stop_for(reason)
        if self._stop.wait(self.grace_s):
            return
        log.error("job %s did not stop within %.0fs (%s); ending its process",
                  self.job_id, self.grace_s, self.reason)
        self._backstop()
        os._exit(1)

    def _look(self, beat: bool) -> StopReason | None:
        if HAND_BACK.is_set():
            return StopReason.hand_back
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return StopReason.timeout
        try:
            if state.cancel_requested(self.job_id):
                return StopReason.cancel
            if beat and not state.heartbeat(self.job_id, self.attempt):
                return StopReason.lost
        except Exception:  # a database hiccup must not kill training
            log.warning("watch of %s failed", self.job_id, exc_info=True)
        return None

    def _backstop(self) -> None:
        """The transition the job would have made had it stopped in time."""
        why = f"did not stop within {self.grace_s:.0f}s; process ended"
        try:
            if self.reason == StopReason.cancel:
                state.finish(self.job_id, JobStatus.cancelled, error=why, attempt=self.attempt)
            elif self.reason == StopReason.timeout:
                state.finish(self.job_id, JobStatus.failed, error=self.timeout_error,
                             attempt=self.attempt)
            elif self.reason == StopReason.hand_back:
                state.hand_back(self.job_id, self.attempt, f"its worker shut down; {why}")
        except Exception:  # noqa: BLE001 - the sweep finds the job once the process is gone
            log.exception("could not record how job %s ended", self.job_id)
