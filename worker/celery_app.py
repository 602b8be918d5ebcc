"""The Celery worker: prefork pool, one job per child, each child forked from a parent that has
already imported TensorFlow (so a job starts in milliseconds, not seconds of import).

Run it with `keras-jobs worker` (or `celery -A worker.celery_app worker`). SIGTERM is Celery's
warm shutdown: the parent asks its children to hand their jobs back (checkpoint at the next
batch, queued again at the head of the queue), so a deploy or scale-down finishes in seconds
and costs no job an attempt.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
import warnings
from typing import Any

from celery.exceptions import SecurityWarning
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutting_down,
)

from app.core.broker import get_celery

# The Celery app of the worker's application state (`keras-jobs worker` builds that state
# before importing this module; the pool's children inherit it by fork).
app = get_celery()
# worker.observe: job ids for the logs and job durations for the metrics (task signals).
app.conf.include = ["worker.tasks", "worker.observe"]
# Celery's prefork pool, refilled as soon as a child exits (worker/pool.py); `--pool prefork`
# (the default) picks it up from here.
app.conf.worker_pool = "worker.pool:TaskPool"
log = logging.getLogger(__name__)


def _quiet_root_warning() -> None:
    """Celery warns on every start as root (a container's default user). The danger it names
    is a root process unpickling messages, which it refuses outright; with JSON the only
    accepted content there is nothing to unpickle, so the warning is left out. Should pickle
    ever be accepted, the warning (and Celery's refusal) come back."""
    accepted = {*app.conf.accept_content, app.conf.task_serializer, app.conf.result_serializer}
    if accepted <= {"json", "application/json"}:
        warnings.filterwarnings("ignore", message="You're running the worker with superuser",
                                category=SecurityWarning)


_quiet_root_warning()


def _poll_the_embedded_broker_often() -> None:
    """kombu's SQLAlchemy transport (the embedded broker) has no way to wake a consumer: it
    polls its table, once a second by default, which was most of a job's wait for a free slot
    (p50 0.62 s, bench/job_start.py). Every 0.1 s is ten indexed SELECTs a second on a local
    SQLite file. (Its transport options go to create_engine, so the interval cannot go there.)"""
    from kombu.transport import sqlalchemy

    from app.core.config import get_settings

    if get_settings().embedded_broker:
        sqlalchemy.Transport.polling_interval = EMBEDDED_POLL_S


EMBEDDED_POLL_S = 0.1
_poll_the_embedded_broker_often()


@worker_init.connect  # type: ignore[untyped-decorator]
def _load_tensorflow(**_kwargs: Any) -> None:
    """Import TensorFlow, Keras and the job runner in the parent, before the pool forks: every
    child (one per job) inherits them, so a job, or a message whose job was cancelled, costs
    a fork instead of seconds of import. Importing runs no op, starts no TensorFlow thread
    pool and touches no device, which is what makes the fork safe; devices are first listed
    in the child (`_warm_child`)."""
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    import app.training.runner  # noqa: F401

    # Out of the collector's sight: Celery collects before every fork, and over TensorFlow's
    # millions of objects that took 0.3 s per job (and would touch every page the fork shares).
    gc.freeze()


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _warm_child(**_kwargs: Any) -> None:
    """A fresh child, one per job: the hand-back signal set aside first (the parent may send
    it before a job arrives), GPU memory left to grow instead of all taken, and the parent's
    pooled database connections dropped, never shared across the fork."""
    from app.training.cancel import idle_child_signals

    idle_child_signals()
    _grow_gpu_memory()

    from app.core.db import get_engine

    get_engine().dispose(close=False)
    log.info("pool process %d warm: TensorFlow loaded", os.getpid())


def _grow_gpu_memory() -> None:
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized
            log.warning("could not set memory growth on %s", gpu.name)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_orphan_sweep(**_kwargs: Any) -> None:
    """Jobs whose process died, queued jobs whose message was lost, and folders of ended jobs
    (app.jobs.recovery): swept now and every KJ_SWEEP_S from this (parent) process. On the
    embedded broker nothing else would ever bring a dead worker's message back."""
    from app.core.config import get_settings

    settings = get_settings()
    threading.Thread(target=_sweep_forever, args=(settings.sweep_s,),
                     name="orphan-sweep", daemon=True).start()


def _sweep_forever(every_s: float) -> None:
    from app.core.config import get_settings
    from app.core.storage import get_store
    from app.jobs.recovery import UNMIGRATED, failure_line, sweep

    said: set[str] = set()  # failures said last round: one that recurs every round is said once
    while True:
        try:
            swept = sweep(get_settings(), get_store())
        except Exception as error:  # settings or store: try again next round
            log.warning("orphan sweep failed: %s", failure_line(error), exc_info=True)
            time.sleep(every_s)
            continue
        if swept:
            log.warning("sweep: process gone %s, heartbeat stale %s, message re-sent %s, "
                        "folders removed %s", swept.dead, swept.stale, swept.redispatched,
                        swept.cleaned)
        failures: dict[str, tuple[list[str], Exception]] = {}
        for step, exc in swept.failed.items():
            failures.setdefault(failure_line(exc), ([], exc))[0].append(step)
        for line, (steps, exc) in failures.items():
            if line not in said:
                log.warning("orphan sweep failed (%s): %s", ", ".join(steps), line,
                            exc_info=None if line.startswith(UNMIGRATED) else exc)
        said = set(failures)
        time.sleep(every_s)


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _hand_back_jobs(sig: str = "", how: str = "", **_kwargs: Any) -> None:
    """Warm shutdown (SIGTERM): ask every child to hand its job back (SIGUSR2; see
    app.training.cancel), instead of letting the shutdown wait for whole jobs. Runs in the
    parent's signal handler: only signals are sent."""
    if how != "Warm":
        return
    for pid in _children():
        try:
            os.kill(pid, signal.SIGUSR2)
        except OSError:
            pass


def _children() -> list[int]:
    """This process's child processes (the pool's), from /proc (Linux)."""
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and fields[1] == str(me):
            found.append(int(entry))
    return found
