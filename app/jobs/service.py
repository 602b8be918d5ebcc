"""Jobs: validate a fit/evaluate/predict request against what it names, record it, enqueue it
after commit; read it back with its history; cancel it."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import audit, quotas
from app.core.config import get_settings
from app.core.db import get_owned, paginate
from app.core.errors import DomainError, FieldError, invalid
from app.core.json_limits import check_storable
from app.core.storage import get_store
from app.datasets import service as datasets
from app.jobs import callback_specs, job_arrays, state
from app.jobs.schemas import (
    AttemptRead,
    EvaluateJobCreate,
    EvaluateJobParams,
    FitJobCreate,
    FitJobParams,
    JobRead,
    PredictJobCreate,
    PredictJobParams,
)
from app.registry import service as registry
from app.specs import service as specs
from app.specs import targets
from app.tables import (
    Dataset,
    Job,
    JobAttempt,
    JobEpoch,
    JobStatus,
    JobType,
    ModelVersion,
    Spec,
)


def _check_selector(dataset: Dataset, selector: Any, pointer: str) -> None:
    """Every array the job names must exist in the dataset, and it names at least one."""
    if not selector:
        raise invalid("An empty selector names no array.",
                      [FieldError(pointer, "name an array, a list of arrays, or a mapping")])
    if isinstance(selector, dict):
        for key, sub in selector.items():
            _check_selector(dataset, sub, f"{pointer}/{key}")
        return
    names = [selector] if isinstance(selector, str) else selector
    for i, name in enumerate(names):
        if name not in dataset.arrays:
            where = pointer if isinstance(selector, str) else f"{pointer}/{i}"
            raise invalid(
                f"Dataset {dataset.id} has no array '{name}'.",
                [FieldError(where, f"unknown array '{name}'; the dataset has: "
                            f"{', '.join(sorted(dataset.arrays))}")],
            )


def create(session: Session, owner: str,
           body: FitJobCreate | EvaluateJobCreate | PredictJobCreate, *, actor: str) -> Job:
    """Check the request, then queue the job within the tenant's quotas, recorded as `actor`'s;
    it is sent to a worker once the transaction commits."""
    # Before any lookup: an id holding a NUL cannot even be queried on PostgreSQL, and the
    # callbacks' free-form arguments may hold NaN or NUL, which the params column refuses.
    check_storable(body.model_dump())
    dataset = _dataset(session, owner, body.dataset_id, "/dataset_id")
    _check_selector(dataset, body.x, "/x")
    if isinstance(body, FitJobCreate):
        _check_selector(dataset, body.y, "/y")
        job = _fit_job(session, owner, body, dataset)
    elif isinstance(body, EvaluateJobCreate):
        _check_selector(dataset, body.y, "/y")
        found = _model_ref(session, owner, body.model, "/model")
        _check_version_arrays(session, found, dataset, body.x, body.y)
        params = EvaluateJobParams(**body.model_dump(), model_version_id=found.id)
        job = Job(owner=owner, type=JobType.evaluate, params=params.model_dump(mode="json"),
                  dataset_id=dataset.id, model_name=found.name, model_version=found.version)
    else:
        job = _predict_job(session, owner, body, dataset)
    quotas.reserve_job(session, owner)  # held until commit: counted and added as one step
    session.add(job)
    session.flush()
    audit.record(session, tenant=owner, actor=actor, action="job.create", target=f"job/{job.id}",
                 type=job.type.value)
    state.enqueue_after_commit(session, job.id)
    return job


def _predict_job(session: Session, owner: str, body: PredictJobCreate, dataset: Dataset) -> Job:
    # The version is pinned now: "name" means the latest version at submit time, even if a
    # newer one is published while the job waits in the queue.
    found = _model_ref(session, owner, body.model, "/model")
    _check_version_arrays(session, found, dataset, body.x, None)
    params = PredictJobParams(**body.model_dump(), model_version_id=found.id)
    return Job(owner=owner, type=JobType.predict, params=params.model_dump(mode="json"),
               dataset_id=dataset.id, model_name=found.name, model_version=found.version)


def _fit_job(session: Session, owner: str, body: FitJobCreate, dataset: Dataset) -> Job:
    if (body.spec_id is None) == (body.from_model is None):
        raise invalid("Give exactly one of spec_id (train a spec from scratch) or from_model "
                      "(fine-tune a saved version).",
                      [FieldError("/spec_id", "give spec_id or from_model, not both")])
    if body.initial_epoch >= body.epochs:
        raise invalid("initial_epoch must be below epochs (as in Keras, epochs is the index of "
                      "the last epoch plus one).", [FieldError("/initial_epoch", "too large")])
    given = [k for k in ("validation_split", "validation_split_shuffled",
                         "validation_dataset_id") if getattr(body, k)]
    if len(given) > 1:
        raise invalid(f"Give one of validation_split (Keras's last rows), "
                      f"validation_split_shuffled or validation_dataset_id, not {given}.",
                      [FieldError(f"/{given[-1]}", f"conflicts with {given[0]}")])
    _check_work(body, dataset)
    if body.sample_weight is not None:
        _check_selector(dataset, body.sample_weight, "/sample_weight")
    val = None
    if body.validation_dataset_id:
        val = _dataset(session, owner, body.validation_dataset_id, "/validation_dataset_id")
        _check_selector(val, body.x, "/x")
        _check_selector(val, body.y, "/y")
    if body.class_weight is not None:
        # ASCII digits only ('²' is a digit to str.isdigit, not to int()), and a class index
        # Keras can hold.
        bad = [k for k in body.class_weight
               if not (k.isascii() and k.isdigit() and len(k) <= 9)]
        if bad:
            raise invalid("class_weight keys are class indices.",
                          [FieldError(f"/class_weight/{bad[0]}", "expected an integer key")])
    # Refuses unknown callbacks and bad arguments.
    callback_specs.build([c.model_dump() for c in body.callbacks],
                         keep_best=body.keep_best.model_dump() if body.keep_best else None)
    start_id = None
    if body.spec_id is not None:
        spec = _spec(session, owner, body.spec_id)
        inputs = job_arrays.config_inputs(spec.keras_config)
        name, spec_id = body.model_name or _model_name(spec.name), spec.id
    else:
        assert body.from_model is not None
        start = _model_ref(session, owner, body.from_model, "/from_model")
        inputs, spec = _version_inputs(start), _version_spec(session, start)
        name, spec_id, start_id = body.model_name or start.name, start.spec_id, start.id
    for data, where in ((dataset, ""), *([(val, f" in validation dataset {val.id}")]
                                         if val is not None else [])):
        job_arrays.check_x(inputs, data, body.x, where)
        if spec is not None:
            _check_targets(spec, data, body.y)
    params = FitJobParams(**body.model_dump(), from_model_version_id=start_id)
    return Job(owner=owner, type=JobType.fit, params=params.model_dump(mode="json"),
               spec_id=spec_id,
               dataset_id=dataset.id, model_name=name, epochs=body.epochs)


def _check_work(body: FitJobCreate, dataset: Dataset) -> None:
    """Epochs x training rows: a bound on the accelerator time one request can ask for."""
    limit = get_settings().max_fit_epoch_rows
    work = (body.epochs - body.initial_epoch) * dataset.num_rows
    if work > limit:
        raise invalid(f"This fit job asks for {body.epochs - body.initial_epoch} epochs x "
                      f"{dataset.num_rows} rows = {work} row-passes; the limit is {limit} "
                      "(KJ_MAX_FIT_EPOCH_ROWS). Train fewer epochs, on fewer rows, or in "
                      "several jobs (from_model continues a saved version).",
                      [FieldError("/epochs", f"{work} epoch-rows > {limit}")],
                      title="Job too large")


def _check_targets(spec: Any, dataset: Dataset, selector: Any) -> None:
    """Fail at submit time when the arrays named for `y` cannot be the targets of the spec's
    outputs (per-row shapes, with each output's loss in mind); a model trained on them would
    otherwise be saved as the model's latest version. Only clear mismatches are refused (see
    app/specs/targets.py)."""
    found = targets.spec_targets(spec.spec, spec.keras_config, spec.summary)
    if not found:
        return
    if isinstance(selector, dict):
        by_name = {t.name: t for t in found}
        for key, sub in selector.items():
            if key in by_name:
                _check_target(dataset, sub, by_name[key], f"/y/{key}")
            elif len(found) > 1:
                raise invalid("y must map the model's outputs to arrays.",
                              [FieldError(f"/y/{key}", f"no output '{key}'; the outputs are "
                                          f"{sorted(by_name)}")])
    elif len(found) == 1:
        _check_target(dataset, selector, found[0], "/y")


def _check_target(dataset: Dataset, selector: Any, target: targets.Target, pointer: str) -> None:
    rows = targets.row_shape(dataset.arrays, selector)
    problem = targets.mismatch(rows, target) if rows is not None else None
    if problem is not None:
        raise invalid(f"The targets named for output '{target.name}' do not fit it.",
                      [FieldError(pointer, problem)])


def _check_version_arrays(session: Session, version: ModelVersion, dataset: Dataset, x: Any,
                          y: Any) -> None:
    """An evaluate or predict job's arrays against the saved version's inputs (and, for y, the
    outputs of the spec it was trained from, when it was)."""
    job_arrays.check_x(_version_inputs(version), dataset, x)
    spec = _version_spec(session, version) if y is not None else None
    if spec is not None:
        _check_targets(spec, dataset, y)


def _version_inputs(version: ModelVersion) -> list[job_arrays.ModelInput] | None:
    store = get_store()
    path = store.model_file(store.path(version.artifact_key))
    return job_arrays.version_inputs(version.id, str(path))


def _version_spec(session: Session, version: ModelVersion) -> Spec | None:
    return session.get(Spec, version.spec_id) if version.spec_id else None


def _model_ref(session: Session, owner: str, ref: str, pointer: str) -> Any:
    name, _, version = ref.partition("/")
    try:
        return registry.resolve(session, owner, name, int(version) if version else None)
    except DomainError as exc:
        raise invalid(f"Model '{ref}' does not exist.",
                      [FieldError(pointer, "no such model or version")]) from exc


def _model_name(spec_name: str) -> str:
    """A model name derived from a spec name: only the characters a model name allows."""
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in spec_name).strip("-.")
    return (cleaned or "model")[:100]


def _dataset(session: Session, owner: str, dataset_id: str, pointer: str) -> Dataset:
    try:
        return datasets.get(session, owner, dataset_id)
    except DomainError as exc:
        raise invalid(f"Dataset '{dataset_id}' does not exist.",
                      [FieldError(pointer, "no such dataset")]) from exc


def _spec(session: Session, owner: str, spec_id: str) -> Any:
    try:
        return specs.get(session, owner, spec_id)
    except DomainError as exc:
        raise invalid(f"Spec '{spec_id}' does not exist.",
                      [FieldError("/spec_id", "no such spec")]) from exc


def get(session: Session, owner: str, job_id: str) -> Job:
    return get_owned(session, Job, owner, job_id, "Job")


def history(session: Session, job_id: str) -> dict[str, list[float | None]]:
    """Per-epoch logs in Keras's History shape: {"loss": [...], "val_loss": [...], ...}."""
    rows = session.scalars(select(JobEpoch).where(JobEpoch.job_id == job_id)
                           .order_by(JobEpoch.epoch)).all()
    out: dict[str, list[float | None]] = {}
    for i, row in enumerate(rows):
        for key, value in row.logs.items():
            out.setdefault(key, [None] * i).append(value)
        for values in out.values():
            if len(values) < i + 1:
                values.append(None)
    return out


def read(session: Session, job: Job) -> JobRead:
    return JobRead(
        id=job.id, type=job.type, status=job.status, epoch=job.epoch, epochs=job.epochs,
        history=history(session, job.id), result=job.result, error=job.error,
        model_name=job.model_name, model_version=job.model_version, spec_id=job.spec_id,
        dataset_id=job.dataset_id, params=job.params, cancel_requested=job.cancel_requested,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
        cancel_requested_at=job.cancel_requested_at, attempts=attempts(session, job.id),
        url=f"/v1/jobs/{job.id}",
    )


def attempts(session: Session, job_id: str) -> list[AttemptRead]:
    rows = session.scalars(select(JobAttempt).where(JobAttempt.job_id == job_id)
                           .order_by(JobAttempt.number)).all()
    return [AttemptRead(number=a.number, worker=a.worker, started_at=a.started_at,
                        ended_at=a.ended_at, outcome=a.outcome, reason=a.reason,
                        epoch_at_start=a.epoch_at_start, resumed_from_epoch=a.resumed_from_epoch,
                        warnings=list(a.warnings or [])) for a in rows]


def list_(session: Session, owner: str, status: JobStatus | None, limit: int, offset: int
          ) -> tuple[list[Job], int]:
    query = select(Job).where(Job.owner == owner)
    if status is not None:
        query = query.where(Job.status == status)
    return paginate(session, query, (Job.created_at.desc(), Job.id.desc()), limit, offset)


def cancel(session: Session, owner: str, job_id: str, *, actor: str) -> Job:
    job = get(session, owner, job_id)
    state.request_cancel(session, job)
    audit.record(session, tenant=owner, actor=actor, action="job.cancel", target=f"job/{job_id}")
    return job
