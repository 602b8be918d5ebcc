"""The worker's pool: Celery's prefork pool, with a slot refilled as soon as its child exits.

With one job per child (`worker_max_tasks_per_child=1`) a slot takes its next job only once a new
child has been forked, and Celery's own pool is slow to do that: billiard's child sleeps 1 s
after reporting its exit, and Celery forks the replacement when the child's sentinel wakes its
event loop, which may come before the child can be reaped; the next try is then its 5 s timer.
Measured on back-to-back jobs: 1.4-5.2 s between one job's end and the next one's start. Here
the child leaves at once and the pool is looked after every `REFILL_S`.

Set as the app's `worker_pool` (worker/celery_app.py), which Celery's default `--pool prefork`
defers to.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from billiard.common import TERM_SIGNAL
from billiard.pool import DEATH, EX_FAILURE, EX_OK
from celery.concurrency import asynpool, prefork

# How often the pool checks for exited children to replace (Celery: 5 s). Cheap: a scan of the
# pool's few processes.
REFILL_S = 0.1


class Worker(asynpool.Worker):  # type: ignore[misc]
    def _do_exit(self, pid: int, exitcode: int | None, exc: BaseException | None = None) -> None:
        """billiard's exit, without its 1 s pause: the parent reads the DEATH message from the
        pipe after the child is gone as well (Celery flushes a dead child's queue)."""
        if exitcode is None:
            exitcode = EX_FAILURE if exc else EX_OK
        if self.on_exit is not None:
            self.on_exit(pid, exitcode)
        if sys.platform == "win32":
            os._exit(exitcode)
        try:
            # on_death's TERM_SIGNAL arriving here would leave outq locked.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {TERM_SIGNAL})
            try:
                self.outq.put((DEATH, (pid, exitcode)))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        finally:
            os._exit(exitcode)


class AsynPool(asynpool.AsynPool):  # type: ignore[misc]
    Worker = Worker

    @property
    def timers(self) -> dict[Callable[[], Any], float]:
        return {self.maintain_pool: REFILL_S}


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    Pool = AsynPool
