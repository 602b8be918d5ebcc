"""Runs one fit, evaluate or predict job in the worker's child process.

A fit job makes exactly these Keras calls (docs/specs-and-jobs.md, "Reproducing a fit job"):

    keras.utils.set_random_seed(seed)
    model = <spec built as in POST /v1/specs>; model.compile(**spec["compile"])
    # validation_split: the last floor(n * (1 - split)) rows on held out, as Keras does;
    # validation_split_shuffled: rows shuffled by numpy.random.default_rng(seed).permutation(n),
    # the last ceil-rounded fraction held out (data.split_index)
    model.fit(x, y, epochs=..., batch_size=..., shuffle=..., validation_data=(x_val, y_val),
              callbacks=[...], verbose=0)

Each run is one attempt of the job (state.claim). It ends the job, or hands it back when the
worker shuts down (checkpoint first), or stops writing at once when the job was taken from it
(a process taken as dead that was not). `max_runtime_s` counts the running time of all the
job's attempts; past it the job fails and nothing is saved.

What a job keeps (a fit's model version, a predict job's output dataset) counts against its
tenant's stored-bytes quota like an upload: checked before the work starts, so a job whose
result cannot be kept fails without training or predicting (a fit's model needs at least its
weights' bytes), and again, exactly, when the result is recorded (the job then fails and
nothing is kept). Both checks are the registry's and the datasets' services'; what a job
records is in the audit log as done by `job/<id>`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from app.core.config import get_settings
from app.core.db import session_scope
from app.core.errors import DomainError
from app.core.storage import ArtifactStore, get_store
from app.datasets import service as datasets
from app.jobs import recovery, state
from app.jobs.logs import job_log
from app.jobs.schemas import EvaluateJobParams, FitJobParams, PredictJobParams, parse_params
from app.registry import service as registry
from app.tables import Dataset, Job, JobStatus, Spec
from app.training import batch_predict, data
from app.training.cancel import CancelWatcher, StopReason
from app.training.fit_inputs import FitInputs

if TYPE_CHECKING:  # imports Keras: only inside the child's job
    from app.training.checkpoints import Restored

log = logging.getLogger(__name__)


class Stopped(Exception):
    """The job stopped before its end, for its watcher's `reason`."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def run_job(job_id: str, redelivered: bool = False) -> None:
    settings = get_settings()
    me = recovery.this_process()
    job = state.claim(job_id, me)
    if job is None and recovery.take_over_if_dead(job_id, settings.stale_after_s):
        job = state.claim(job_id, me)  # its process is gone: run it here, now
    if job is None:
        log.info("job %s skipped (not queued, or running in a live process; redelivered: %s)",
                 job_id, redelivered)
        return
    store = get_store()
    store.remove_job_staging(job_id)  # what an earlier, killed attempt left
    try:
        with job_log(store, job_id, settings.job_log_bytes):
            _run_attempt(job, store)
    finally:
        _remove_folders_if_ended(job_id, store)


def _run_attempt(job: Job, store: ArtifactStore) -> None:
    settings = get_settings()
    attempt = job.attempt
    try:
        params = parse_params(job.params)
    except DomainError as exc:
        state.finish(job.id, JobStatus.failed, error=str(exc), attempt=attempt)
        return
    deadline, timeout_error = _runtime_limit(job.id, params.max_runtime_s)
    with CancelWatcher(job.id, settings.cancel_poll_s, settings.cancel_grace_s,
                       settings.heartbeat_s, attempt=attempt, deadline=deadline,
                       timeout_error=timeout_error) as watcher:
        try:
            if deadline is not None and time.monotonic() >= deadline:
                raise Stopped(StopReason.timeout)
            if isinstance(params, FitJobParams):
                _fit(job, params, store, watcher)
            elif isinstance(params, PredictJobParams):
                _predict(job, params, store, watcher)
            else:
                _evaluate(job, params, store, watcher)
        except Stopped as stop:
            _stopped(job, stop.reason, timeout_error)
        except DomainError as exc:
            log.warning("job %s failed: %s", job.id, exc)
            state.finish(job.id, JobStatus.failed, error=str(exc), attempt=attempt)
        except Exception as exc:
            log.exception("job %s failed", job.id)
            state.finish(job.id, JobStatus.failed, error=f"{type(exc).__name__}: {exc}",
                         attempt=attempt)


def _runtime_limit(job_id: str, max_runtime_s: float | None) -> tuple[float | None, str]:
    """The monotonic time past which the job has run for too long (its earlier attempts
    count), and the error it then fails with."""
    if max_runtime_s is None:
        return None, ""
    used = recovery.runtime_used_s(job_id)
    error = (f"exceeded max_runtime_s={max_runtime_s:g}: stopped after {max_runtime_s:g} s of "
             f"running time (all attempts together); nothing was saved")
    return time.monotonic() + max_runtime_s - used, error


def _stopped(job: Job, reason: StopReason, timeout_error: str) -> None:
    if reason == StopReason.cancel:
        state.finish(job.id, JobStatus.cancelled, error="cancelled by request",
                     attempt=job.attempt)
    elif reason == StopReason.timeout:
        state.finish(job.id, JobStatus.failed, error=timeout_error, attempt=job.attempt)
    elif reason == StopReason.hand_back:
        if state.hand_back(job.id, job.attempt, "its worker is shutting down; handed back to "
                           "resume from its checkpoint"):
            log.info("job %s handed back", job.id)
    else:
        log.warning("job %s is no longer this process's (attempt %d): stopped, nothing written",
                    job.id, job.attempt)


def _remove_folders_if_ended(job_id: str, store: ArtifactStore) -> None:
    """Checkpoints and staging folders go once the job has ended (a handed-back job keeps its
    checkpoint). If the database cannot say, the workers' sweep removes them later."""
    try:
        with session_scope() as s:
            job = s.get(Job, job_id)
            ended = job is None or job.status.finished
    except Exception:  # noqa: BLE001 - see above
        log.info("could not check whether job %s has ended; its folders stay for now", job_id)
        return
    if ended:
        store.remove_job_folders(job_id)


def _fit(job: Job, p: FitJobParams, store: ArtifactStore, watcher: CancelWatcher) -> None:
    import keras
    import tensorflow as tf

    from app.jobs import callback_specs
    from app.specs.builder import adapt_layers, build_compiled
    from app.specs.compiler import keep_loss_scaling
    from app.specs.model_info import needs_adapting
    from app.training import observe
    from app.training.callbacks import CancelOnFlag, KeepBest, RecordEpochs, StopOnNaN
    from app.training.checkpoints import SafeBackupAndRestore

    seed = p.seed
    if seed is None:  # record the seed actually used, so any run can be repeated
        seed = _job_seed(job.id)
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
        keep_loss_scaling(model)
    with session_scope() as s:  # before any training: a model that cannot be kept is not made
        registry.check_room(s, job.owner, _weights_bytes(model))
    canceller = CancelOnFlag(watcher.requested)
    checkpointer = SafeBackupAndRestore(
        store.path(store.checkpoint_key(job.id)),
        on_warning=lambda msg: state.note_attempt(job.id, job.attempt, warning=msg),
        hand_back_now=lambda: watcher.reason == StopReason.hand_back,
        cut_short=canceller.cut_short,
        on_restored=lambda restored: _resumed(job, p, restored, recorder))
    recorder = RecordEpochs(job.id, attempt=job.attempt, db_wait_s=get_settings().stale_after_s,
                            cut_short=lambda epoch: canceller.cut_short(epoch)
                            or checkpointer.saved_mid_epoch is not None)
    nan_guard = StopOnNaN()
    specs = [c.model_dump() for c in p.callbacks]
    best_rule = callback_specs.keep_best_of(specs, p.keep_best.model_dump() if p.keep_best
                                            else None)
    keep_best = KeepBest(**best_rule) if best_rule else None
    # The canceller first, so the others know an epoch was cut short; the checkpoint before
    # the epoch is recorded, so a recorded epoch is always in a checkpoint (never trained twice).
    callbacks = [canceller, *callback_specs.build(specs), checkpointer, recorder]
    callbacks += [nan_guard] if p.terminate_on_nan else []
    callbacks += [keep_best] if keep_best else []
    callbacks += observe.fit_callbacks(job.id, p, store)  # epoch metrics, TensorBoard
    # Only a spec's layers are adapted: a saved version (an upload, a notebook's model) comes
    # with its state, adapted or not, and model.fit would not adapt it either.
    if spec_body is not None and needs_adapting(model):  # reading the rows is not free
        adapt_layers(model, inputs.adapt_source())
    inputs.fit(model, batch_size=p.batch_size, shuffle=p.shuffle, seed=seed,
               epochs=p.epochs, initial_epoch=p.initial_epoch,
               steps_per_epoch=p.steps_per_epoch,
               validation_freq=p.validation_freq, callbacks=callbacks,
               class_weight=({int(k): v for k, v in p.class_weight.items()}
                             if p.class_weight else None), verbose=0)
    _raise_if_stopped(watcher, recorder.lost, canceller.cancelled
                      or checkpointer.saved_mid_epoch is not None)
    if nan_guard.where is not None:
        raise DomainError(422, "Training diverged", f"The loss became NaN or infinite at "
                          f"{nan_guard.where}; training was stopped (TerminateOnNaN). Lower the "
                          "learning rate, clip gradients, or check the data.")
    epoch, logs = _held_epoch(recorder, keep_best, callbacks)
    if keep_best is not None and keep_best.missing():
        state.note_attempt(job.id, job.attempt, warning=keep_best.missing())
    result: dict[str, Any] = {"seed": seed, "best_epoch": epoch}
    metrics = {k: v for k, v in logs.items() if v is not None}
    _save_version(job, p.spec_id or job.spec_id, store, model, metrics, result)


def _weights_bytes(model: Any) -> int:
    """What the model's weights take: a `.keras` file holds them and more."""
    import tensorflow as tf

    return sum(math.prod(v.shape) * tf.as_dtype(v.dtype).size for v in model.weights)


def _actor(job: Job) -> str:
    """Who the audit log says recorded what a job keeps."""
    return f"job/{job.id}"


def _held_epoch(recorder: Any, keep_best: Any, callbacks: list[Any]
                ) -> tuple[int | None, dict[str, float | None]]:
    """The epoch whose weights the model holds after fit, and its logs: keep_best's (its
    on_train_end runs last), else an EarlyStopping(restore_best_weights)'s, else the last."""
    import keras

    if keep_best is not None and keep_best.best_epoch is not None:
        return keep_best.best_epoch, keep_best.best_logs
    for cb in callbacks:
        if (isinstance(cb, keras.callbacks.EarlyStopping) and cb.restore_best_weights
                and cb.best_weights is not None and cb.best_epoch in recorder.by_epoch):
            return cb.best_epoch, recorder.by_epoch[cb.best_epoch]
    return recorder.last_epoch, recorder.last


def _job_seed(job_id: str) -> int:
    """A seed for a job that gave none, the same for every attempt (a resumed job must split
    its validation rows as its first attempt did)."""
    import hashlib

    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") % 2**31


def _raise_if_stopped(watcher: CancelWatcher, lost: bool, cut_short: bool) -> None:
    """After training: why it stopped early, if it did. A hand back asked for after the last
    batch is ignored (the job is done: save it rather than hand it back)."""
    if lost or watcher.reason == StopReason.lost:
        raise Stopped(StopReason.lost)
    if cut_short or watcher.reason in (StopReason.cancel, StopReason.timeout):
        raise Stopped(watcher.reason or StopReason.cancel)


def _resumed(job: Job, p: FitJobParams, restored: Restored | None, recorder: Any) -> None:
    """Training is about to start (from a checkpoint, if `restored`): record where, and the
    last finished epoch if its process checkpointed it but was killed before recording it."""
    start = restored.epoch if restored is not None else p.initial_epoch
    state.note_attempt(job.id, job.attempt, resumed_from_epoch=start)
    if restored is None or restored.last_logs is None:
        return
    recorder.last, recorder.last_epoch = restored.last_logs, restored.epoch - 1
    if job.epoch < restored.epoch and restored.batch == 0:
        state.record_epoch(job.id, restored.epoch - 1, restored.last_logs, job.attempt)


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
    from app.registry.keras_load import load_keras

    with session_scope() as s:
        mv = registry.get_version(s, version_id)
        if mv is None:
            raise DomainError(422, "Model gone", f"Model version {version_id} no longer exists.")
        key = mv.artifact_key
    # Assets, if any, unpacked in the store's staging area, not the system temp folder.
    return load_keras(store.model_file(store.path(key)), compile=compile, store=store)


def _save_version(job: Job, spec_id: str | None, store: ArtifactStore, model: Any,
                  metrics: dict[str, float], result: dict[str, Any]) -> None:
    """Save `.keras` into a staging folder, then in one transaction publish it as the next
    version and mark the job succeeded. Tried again while the database is unreachable (the
    trained model is not thrown away for a short outage). If the job is no longer this
    attempt's, the transaction rolls back: no version is left behind."""
    from app.training.callbacks import until_db_answers

    assert job.model_name is not None
    model_name = job.model_name

    def save() -> None:
        # The staging folder is renamed into place on success; whatever is left is removed.
        with store.staging(job.id) as staging:
            model.save(store.model_file(staging))
            with session_scope() as s:
                mv = registry.publish_version(s, store, job.owner, model_name, staging,
                                              actor=_actor(job), metrics=metrics, job_id=job.id,
                                              spec_id=spec_id, best_epoch=result.get("best_epoch"))
                done = {**result, "metrics": metrics, "model": f"{mv.name}/{mv.version}"}
                if not state.finish(job.id, JobStatus.succeeded, result=done, session=s,
                                    attempt=job.attempt, model_version=mv.version):
                    raise Stopped(StopReason.lost)

    until_db_answers(save, get_settings().stale_after_s)


def _evaluate(job: Job, p: EvaluateJobParams, store: ArtifactStore,
              watcher: CancelWatcher) -> None:
    from app.training.callbacks import CancelOnFlag, clean_logs

    assert job.dataset_id is not None
    arrays = _arrays(job.dataset_id, store)
    model = _load_version(p.model_version_id, store, compile=True)
    canceller = CancelOnFlag(watcher.requested)
    logs = evaluate_rows(model, arrays, p.x, p.y, p.batch_size, [canceller])
    if canceller.cancelled:
        raise Stopped(watcher.reason or StopReason.cancel)
    state.finish(job.id, JobStatus.succeeded, result=clean_logs(logs), attempt=job.attempt)


def evaluate_rows(model: Any, arrays: data.Arrays, x: Any, y: Any, batch_size: int,
                  callbacks: list[Any]) -> dict[str, Any]:
    """`model.evaluate(x, y, batch_size)` over the rows in order, streamed from the files in
    large chunks (stream.sequential) rather than loaded whole first."""
    from app.training import stream

    rows = stream.sequential((data.select(arrays, x, "/x"), data.select(arrays, y, "/y")),
                             batch_size)
    logs: dict[str, Any] = model.evaluate(rows, return_dict=True, verbose=0,
                                          callbacks=callbacks)
    return logs


def _predict(job: Job, p: PredictJobParams, store: ArtifactStore, watcher: CancelWatcher) -> None:
    """`model.predict(x, batch_size)` chunk by chunk into a staging folder, then in one
    transaction record the predictions as a new dataset and mark the job succeeded."""
    assert job.dataset_id is not None
    with session_scope() as s:  # before any predicting: output that cannot be kept is not made
        datasets.check_room(s, job.owner)
    arrays = _arrays(job.dataset_id, store)
    model = _load_version(p.model_version_id, store, compile=False)

    def check_cancel() -> None:
        if watcher.requested.is_set():  # cancel, time limit, hand back (it starts over)
            raise Stopped(watcher.reason or StopReason.cancel)

    with store.staging(job.id) as staging:
        out_dir = staging / "arrays"
        out_dir.mkdir()
        written = batch_predict.predict_job(model, arrays, p.x, out_dir,
                                            batch_size=p.batch_size, output_name=p.output_name,
                                            check_cancel=check_cancel)
        check_cancel()  # a cancel that came during the last chunk still wins
        with session_scope() as s:
            name = f"{p.output_name} of {job.model_name}/{job.model_version} on {job.dataset_id}"
            dataset = datasets.record_output(s, store, job.owner, name, out_dir, source=job.id,
                                             actor=_actor(job))
            result = {"dataset_id": dataset.id, "rows": written.rows, "arrays": dataset.arrays}
            if not state.finish(job.id, JobStatus.succeeded, result=result, session=s,
                                attempt=job.attempt):
                # Ended meanwhile (a backstop), or taken from this process: roll back, so no
                # dataset is left.
                raise Stopped(StopReason.lost)
