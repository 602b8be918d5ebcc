"""The Celery worker: prefork pool, one job per child, TensorFlow imported only after the fork.

Run it with `keras-jobs worker` (or `celery -A worker.celery_app worker`).
"""

from __future__ import annotations

import logging
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
def _requeue_orphans(**_kwargs: Any) -> None:
    """Jobs left running by a worker that died (no heartbeat for KJ_STALE_AFTER_S) run again;
    on the embedded broker nothing else would ever bring their messages back."""
    from app.core.config import get_settings
    from app.training.lifecycle import requeue_stale

    requeued = requeue_stale(get_settings().stale_after_s)
    if requeued:
        log.warning("requeued jobs whose worker had died: %s", ", ".join(requeued))
