"""The Celery worker: prefork pool, one job per child, TensorFlow imported only after the fork.

Run it with `keras-jobs worker` (or `celery -A worker.celery_app worker`).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.signals import worker_process_init, worker_ready

from app.core.broker import get_celery

app = get_celery()
app.conf.include = ["worker.tasks"]
log = logging.getLogger(__name__)


@worker_process_init.connect  # type: ignore[untyped-decorator]
def _warm_child(**_kwargs: Any) -> None:
    """Import TensorFlow in the fresh child while it waits for a job (never in the parent:
    TensorFlow is not fork-safe), and let GPU memory grow instead of taking it all."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialized
            log.warning("could not set memory growth on %s", gpu.name)
    import keras  # noqa: F401

    from app.core.db import get_engine

    # The parent's pooled connections must not be shared across the fork.
    get_engine().dispose(close=False)


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_orphan_sweep(**_kwargs: Any) -> None:
    """Jobs left running by a worker that died (no heartbeat for KJ_STALE_AFTER_S) run again:
    swept now and every KJ_SWEEP_S from this (parent) process. On the embedded broker nothing
    else would ever bring their messages back."""
    from app.core.config import get_settings

    settings = get_settings()
    threading.Thread(target=_sweep_forever, args=(settings.stale_after_s, settings.sweep_s),
                     name="orphan-sweep", daemon=True).start()


def _sweep_forever(stale_after_s: float, every_s: float) -> None:
    from app.jobs.state import requeue_stale

    while True:
        try:
            requeued = requeue_stale(stale_after_s)
            if requeued:
                log.warning("requeued jobs whose worker had died: %s", ", ".join(requeued))
        except Exception:  # a database or broker hiccup: try again next round
            log.warning("orphan sweep failed", exc_info=True)
        time.sleep(every_s)
