"""Runs one fit, evaluate or predict job in the worker's child process.

A fit job makes exactly these Keras calls (README, "Reproducing a fit job"):

    keras.utils.set_random_seed(seed)
    model = <spec built as in POST /v1/specs>; model.compile(**spec["compile"])
    # validation_split: rows shuffled by numpy.random.default_rng(seed).permutation(n),
    # the last ceil-rounded fraction held out (data.split_index)
    model.fit(x, y, epochs=..., batch_size=..., shuffle=..., validation_data=(x_val, y_val),
              callbacks=[...], verbose=0)
"""

from __future__ import annotations

import logging
import secrets
import shutil
from typing import Any

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.errors import DomainError
from app.core.storage import ArtifactStore, get_store
from app.datasets import service as datasets
from app.jobs import state
from app.jobs.logs import job_log
from app.jobs.schemas import EvaluateJobParams, FitJobParams, PredictJobParams, parse_params
from app.registry import service as registry
from app.tables import Dataset, Job, JobStatus, Spec
from app.training import batch_predict, data
from app.training.cancel import CancelWatcher
from app.training.fit_inputs import FitInputs

log = logging.getLogger(__name__)


class Cancelled(Exception):
    pass


def run_job(job_id: str, redelivered: bool = False) -> None:
    settings = get_settings()
    job = state.claim(job_id, redelivered, settings.stale_after_s)
    if job is None:
        log.info("job %s skipped (not queued, or running in a live process)", job_id)
        return
    store = get_store()
    with job_log(store, job_id, settings.job_log_bytes), \
            CancelWatcher(job_id, settings.cancel_poll_s, settings.cancel_grace_s,
                          settings.heartbeat_s) as watcher:
        try:
            params = parse_params(job.params)
            if isinstance(params, FitJobParams):
                _fit(job, params, store, watcher)
            elif isinstance(params, PredictJobParams):
                _predict(job, params, store, watcher)
            else:
                _evaluate(job, params, store, watcher)
        except Cancelled:
            state.finish(job_id, JobStatus.cancelled, error="cancelled by request")
        except DomainError as exc:
            log.warning("job %s failed: %s", job_id, exc)
            state.finish(job_id, JobStatus.failed, error=str(exc))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            state.finish(job_id, JobStatus.failed, error=f"{type(exc).__name__}: {exc}")


def _fit(job: Job, p: FitJobParams, store: ArtifactStore, watcher: CancelWatcher) -> None:
    import keras
    import tensorflow as tf

    from app.jobs import callback_specs
    from app.specs.builder import adapt_layers, build_compiled
    from app.specs.model_info import needs_adapting
    from app.training.callbacks import CancelOnFlag, KeepBest, RecordEpochs, StopOnNaN

    seed = p.seed
    if seed is None:  # record the seed actually used, so any run can be repeated
        seed = secrets.randbelow(2**31)
    if p.deterministic:
        tf.config.experimental.enable_op_determinism()
    spec_body = _spec_body(p.spec_id) if p.spec_id else None
    assert job.dataset_id is not None
    inputs = FitInputs.from_params(
        p, _arrays(job.dataset_id, store),
        _arrays(p.validation_dataset_id, store) if p.validation_dataset_id else None,
        seed, get_settings().stream_threshold_bytes)

    keras.utils.set_random_seed(seed)
    if spec_body is not None:
        model = build_compiled(spec_body)
    else:
        assert p.from_model_version_id is not None
        model = _load_version(p.from_model_version_id, store, compile=True)
    recorder = RecordEpochs(job.id)
    canceller = CancelOnFlag(watcher.requested)
    nan_guard = StopOnNaN()
    keep_best = KeepBest(p.keep_best.monitor, p.keep_best.mode) if p.keep_best else None
    checkpoints = store.path(store.checkpoint_key(job.id))
    callbacks = [*callback_specs.build([c.model_dump() for c in p.callbacks]),
                 # Resumes from the last finished epoch if this job's first process died.
                 keras.callbacks.BackupAndRestore(str(checkpoints), delete_checkpoint=True),
                 recorder, canceller]
    callbacks += [nan_guard] if p.terminate_on_nan else []
    callbacks += [keep_best] if keep_best else []
    if needs_adapting(model):  # reading the training rows for adapt() is not free
        adapt_layers(model, inputs.adapt_source())
    inputs.fit(model, batch_size=p.batch_size, shuffle=p.shuffle, seed=seed,
               epochs=p.epochs, initial_epoch=p.initial_epoch,
               steps_per_epoch=p.steps_per_epoch,
               validation_freq=p.validation_freq, callbacks=callbacks,
               class_weight=({int(k): v for k, v in p.class_weight.items()}
                             if p.class_weight else None), verbose=0)
    if canceller.cancelled or watcher.requested.is_set():
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise Cancelled()
    if nan_guard.where is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)
        raise DomainError(422, "Training diverged", f"The loss became NaN or infinite at "
                          f"{nan_guard.where}; training was stopped (TerminateOnNaN). Lower the "
                          "learning rate, clip gradients, or check the data.")
    result: dict[str, Any] = {"seed": seed}
    logs = recorder.last
    if keep_best is not None and keep_best.best_epoch is not None:
        logs = keep_best.best_logs
        result["best_epoch"] = keep_best.best_epoch
    metrics = {k: v for k, v in logs.items() if v is not None}
    _save_version(job, p.spec_id or job.spec_id, store, model, metrics, result)


def _spec_body(spec_id: str) -> dict[str, Any]:
    with session_scope() as s:
        spec = s.get(Spec, spec_id)
        if spec is None:
            raise DomainError(422, "Spec gone", f"Spec {spec_id} no longer exists.")
        return dict(spec.spec)


def _arrays(dataset_id: str, store: ArtifactStore) -> data.Arrays:
    with session_scope() as s:
        dataset = s.get(Dataset, dataset_id)
        if dataset is None:
            raise DomainError(422, "Dataset gone", f"Dataset {dataset_id} no longer exists.")
        return data.open_arrays(store, dataset)


def _load_version(version_id: str, store: ArtifactStore, compile: bool) -> Any:
    import keras

    with session_scope() as s:
        mv = registry.get_version(s, version_id)
        if mv is None:
            raise DomainError(422, "Model gone", f"Model version {version_id} no longer exists.")
        key = mv.artifact_key
    return keras.saving.load_model(store.model_file(store.path(key)), compile=compile,
                                   safe_mode=True)


def _save_version(job: Job, spec_id: str | None, store: ArtifactStore, model: Any,
                  metrics: dict[str, float], result: dict[str, Any]) -> None:
    """Save `.keras` into a staging folder, then in one transaction publish it as the next
    version and mark the job succeeded."""
    assert job.model_name is not None
    # The staging folder is renamed into place on success; whatever is left is removed.
    with store.staging() as staging:
        model.save(store.model_file(staging))
        with session_scope() as s:
            mv = registry.publish_version(s, store, job.owner, job.model_name, staging,
                                          metrics=metrics, job_id=job.id, spec_id=spec_id)
            result = {**result, "metrics": metrics, "model": f"{mv.name}/{mv.version}"}
            state.finish(job.id, JobStatus.succeeded, result=result, session=s,
                         model_version=mv.version)


def _evaluate(job: Job, p: EvaluateJobParams, store: ArtifactStore,
              watcher: CancelWatcher) -> None:
    from app.training.callbacks import CancelOnFlag, clean_logs

    assert job.dataset_id is not None
    arrays = _arrays(job.dataset_id, store)
    x = data.select(arrays, p.x, "/x")
    y = data.select(arrays, p.y, "/y")
    model = _load_version(p.model_version_id, store, compile=True)
    canceller = CancelOnFlag(watcher.requested)
    logs = model.evaluate(data.in_memory(x), data.in_memory(y),
                          batch_size=p.batch_size, return_dict=True, verbose=0,
                          callbacks=[canceller])
    if canceller.cancelled:
        raise Cancelled()
    state.finish(job.id, JobStatus.succeeded, result=clean_logs(logs))


def _predict(job: Job, p: PredictJobParams, store: ArtifactStore, watcher: CancelWatcher) -> None:
    """`model.predict(x, batch_size)` chunk by chunk into a staging folder, then in one
    transaction record the predictions as a new dataset and mark the job succeeded."""
    assert job.dataset_id is not None
    arrays = _arrays(job.dataset_id, store)
    model = _load_version(p.model_version_id, store, compile=False)

    def check_cancel() -> None:
        if watcher.requested.is_set():
            raise Cancelled()

    with store.staging() as staging:
        out_dir = staging / "arrays"
        out_dir.mkdir()
        written = batch_predict.predict_to_files(
            arrays, p.x, lambda x: model.predict(x, batch_size=p.batch_size, verbose=0),
            out_dir, output_name=p.output_name,
            output_names=list(getattr(model, "output_names", None) or []),
            chunk=batch_predict.chunk_rows(p.batch_size, batch_predict.row_bytes(arrays, p.x)),
            check_cancel=check_cancel)
        check_cancel()  # a cancel that came during the last chunk still wins
        with session_scope() as s:
            name = f"{p.output_name} of {job.model_name}/{job.model_version} on {job.dataset_id}"
            dataset = datasets.record_output(s, store, job.owner, name, out_dir, source=job.id)
            result = {"dataset_id": dataset.id, "rows": written.rows, "arrays": dataset.arrays}
            if not state.finish(job.id, JobStatus.succeeded, result=result, session=s):
                # Ended meanwhile (the cancel backstop): roll back, so no dataset is left.
                raise Cancelled()
