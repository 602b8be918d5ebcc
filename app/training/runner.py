"""Runs one fit or evaluate job in the worker's child process.

A fit job makes exactly these Keras calls (README, "Reproducing a fit job"):

    keras.utils.set_random_seed(seed)
    model = <spec built as in POST /v1/specs>; model.compile(**spec["compile"])
    # validation_split: rows shuffled by numpy.random.default_rng(seed).permutation(n),
    # the last ceil-rounded fraction held out (data.validation_split)
    model.fit(x, y, epochs=..., batch_size=..., shuffle=..., validation_data=(x_val, y_val),
              callbacks=[...], verbose=0)
"""

from __future__ import annotations

import logging
import secrets
import shutil
from typing import Any

from sqlalchemy.exc import IntegrityError

from app.core.config import get_settings
from app.core.db import on_rollback, session_scope
from app.core.errors import DomainError
from app.core.storage import ArtifactStore, get_store
from app.models import Dataset, Job, JobStatus, JobType, ModelVersion, Spec
from app.predict.service import MODEL_FILE
from app.registry import service as registry
from app.training import data, lifecycle
from app.training.cancel import CancelWatcher

log = logging.getLogger(__name__)
VERSION_RETRIES = 5


class Cancelled(Exception):
    pass


def run_job(job_id: str, redelivered: bool = False) -> None:
    job = lifecycle.claim(job_id, redelivered)
    if job is None:
        log.info("job %s skipped (not queued, or already taken)", job_id)
        return
    settings = get_settings()
    store = get_store()
    with CancelWatcher(job_id, settings.cancel_poll_s, settings.cancel_grace_s) as watcher:
        try:
            if job.type == JobType.fit:
                _fit(job, store, watcher)
            else:
                _evaluate(job, store, watcher)
        except Cancelled:
            lifecycle.finish(job_id, JobStatus.cancelled, error="cancelled by request")
        except DomainError as exc:
            lifecycle.finish(job_id, JobStatus.failed, error=str(exc))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            lifecycle.finish(job_id, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")


def _rows_for(job: Job, dataset_id: str, store: ArtifactStore) -> tuple[Any, Any]:
    with session_scope() as s:
        dataset = s.get(Dataset, dataset_id)
        if dataset is None:
            raise DomainError(422, "Dataset gone", f"Dataset {dataset_id} no longer exists.")
        arrays = data.open_arrays(store, dataset)
    x = data.select(arrays, job.params["x"], "/x")
    y = data.select(arrays, job.params["y"], "/y")
    return x, y


def _fit(job: Job, store: ArtifactStore, watcher: CancelWatcher) -> None:
    import keras

    from app.specs.builder import build_compiled
    from app.training.callbacks import CancelOnFlag, RecordEpochs

    p = job.params
    seed = p.get("seed")
    if seed is None:  # record the seed actually used, so any run can be repeated
        seed = secrets.randbelow(2**31)
    with session_scope() as s:
        spec = s.get(Spec, job.spec_id)
        if spec is None:
            raise DomainError(422, "Spec gone", f"Spec {job.spec_id} no longer exists.")
        spec_body, spec_id = spec.spec, spec.id
    assert job.dataset_id is not None
    x, y = _rows_for(job, job.dataset_id, store)
    validation: tuple[Any, Any] | None = None
    if p.get("validation_split"):
        x, y, x_val, y_val = data.validation_split(x, y, p["validation_split"], seed)
        validation = (data.materialize(x_val), data.materialize(y_val))
    elif p.get("validation_dataset_id"):
        x_val, y_val = _rows_for(job, p["validation_dataset_id"], store)
        validation = (data.materialize(x_val), data.materialize(y_val))

    keras.utils.set_random_seed(seed)
    model = build_compiled(spec_body)
    recorder = RecordEpochs(job.id)
    canceller = CancelOnFlag(watcher.requested)
    checkpoints = store.path(store.checkpoint_key(job.id))
    callbacks = [keras.callbacks.TerminateOnNaN(),
                 # Resumes from the last finished epoch if this job's first process died.
                 keras.callbacks.BackupAndRestore(str(checkpoints), delete_checkpoint=True),
                 recorder, canceller]
    model.fit(data.materialize(x), data.materialize(y), epochs=p["epochs"],
              batch_size=p["batch_size"], shuffle=p["shuffle"], validation_data=validation,
              callbacks=callbacks, verbose=0)
    if canceller.cancelled or watcher.requested.is_set():
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise Cancelled()
    if getattr(model, "stop_training", False) and _nan(recorder.last):
        raise DomainError(422, "Training diverged", "The loss became NaN; training was stopped "
                          "(TerminateOnNaN). Lower the learning rate or check the data.")
    metrics = {k: v for k, v in recorder.last.items() if v is not None}
    _save_version(job, spec_id, store, model, metrics, seed)


def _nan(logs: dict[str, float | None]) -> bool:
    return logs.get("loss", 0.0) is None


def _save_version(job: Job, spec_id: str, store: ArtifactStore, model: Any,
                  metrics: dict[str, float], seed: int) -> None:
    """Save `.keras` into a staging folder, then in one transaction take the next version
    number, publish the folder under it and mark the job succeeded."""
    staging = store.staging_dir()
    model.save(staging / MODEL_FILE)
    assert job.model_name is not None
    for _attempt in range(VERSION_RETRIES):
        try:
            with session_scope() as s:
                version = registry.next_version(s, job.owner, job.model_name)
                key = store.model_key(job.owner, job.model_name, version)
                registry.add_version(s, job.owner, job.model_name, version, key, metrics,
                                     job_id=job.id, spec_id=spec_id)
                store.publish(staging, key)
                on_rollback(s, lambda k=key: _unpublish(store, k, staging))
                result = {"metrics": metrics, "seed": seed, "model": f"{job.model_name}/{version}"}
                lifecycle.finish(job.id, JobStatus.succeeded, result=result, session=s,
                                 model_version=version)
            return
        except IntegrityError:  # another job took that version number first; take the next
            continue
    raise RuntimeError(f"could not allocate a version of {job.model_name}")


def _unpublish(store: ArtifactStore, key: str, staging: Any) -> None:
    """Move a published folder back to staging so the next attempt can publish it again."""
    target = store.path(key)
    if target.exists():
        target.rename(staging)


def _evaluate(job: Job, store: ArtifactStore, watcher: CancelWatcher) -> None:
    import keras

    from app.training.callbacks import CancelOnFlag, clean_logs

    with session_scope() as s:
        mv = s.get(ModelVersion, job.params["model_version_id"])
        if mv is None:
            raise DomainError(422, "Model gone", f"Model {job.model_name}/{job.model_version} "
                              "no longer exists.")
        key = mv.artifact_key
    assert job.dataset_id is not None
    x, y = _rows_for(job, job.dataset_id, store)
    model = keras.saving.load_model(store.path(key) / MODEL_FILE, compile=True, safe_mode=True)
    canceller = CancelOnFlag(watcher.requested)
    logs = model.evaluate(data.materialize(x), data.materialize(y),
                          batch_size=job.params["batch_size"], return_dict=True, verbose=0,
                          callbacks=[canceller])
    if canceller.cancelled:
        raise Cancelled()
    lifecycle.finish(job.id, JobStatus.succeeded, result=clean_logs(logs))
